#!/usr/bin/env python3
"""Records how llama.cpp's own Jinja engine renders chat templates (issue 16), as the
fixtures that model/src/template.rs is tested against.

For the default model's template (from its GGUF) and each `model/tests/fixtures/*.jinja`
(passed with `--chat-template-file`), starts `llama-server --jinja` on the model, asks its
`/apply-template` for every conversation below, and writes the template, the BOS and EOS
texts and the rendered prompts to `model/tests/fixtures/chat-templates.json`. Run by hand
when a conversation or a template is added:

    scripts/record-chat-templates.py LLAMA_SERVER [MODEL.gguf]

(`LLAMA_SERVER`: the binary scripts/bench-conversation.sh builds.) Standard library only.
"""

import json
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "model" / "tests" / "fixtures"

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [
        {"role": "system", "content": "  Be brief.  \n"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    [{"role": "user", "content": "  spaces around  \n"}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "naïve café 😀 日本語 {{ not a tag }} {% raw %}"}],
    # A final assistant message is continued (prefill), not closed.
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
    ],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two\n"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "five"},
    ],
]


# Conversations with tools, for the templates that render them (tools.jinja).
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
TOOL_CONVERSATIONS = [
    [{"role": "user", "content": "Weather in Paris?"}],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ],
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def record(server, model, template_file):
    port = free_port()
    args = [server, "-m", str(model), "-t", "1", "-c", "2048", "-np", "1", "--jinja"]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    if template_file:
        args += ["--chat-template-file", str(template_file)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                call(port, "/health")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        props = call(port, "/props")
        cases = []
        for messages in CONVERSATIONS:
            try:
                prompt = call(port, "/apply-template", {"messages": messages})["prompt"]
            except urllib.error.HTTPError as e:
                prompt = None  # the template refuses it; Veil must refuse it too
                print(f"  refused: {e.read()[:120]!r}", file=sys.stderr)
            cases.append({"messages": messages, "prompt": prompt})
        if template_file and template_file.name == "tools.jinja":
            for messages in TOOL_CONVERSATIONS:
                body = {"messages": messages, "tools": TOOLS}
                prompt = call(port, "/apply-template", body)["prompt"]
                cases.append({"messages": messages, "tools": TOOLS, "prompt": prompt})
        return {
            "name": template_file.stem if template_file else "smollm2 (from the GGUF)",
            "template": props["chat_template"],
            "bos_token": props["bos_token"],
            "eos_token": props["eos_token"],
            "cases": cases,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    server = sys.argv[1]
    model = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf")
    version = subprocess.run([server, "--version"], capture_output=True, text=True)
    out = {
        "recorded_with": (version.stdout + version.stderr).strip().splitlines()[0],
        "templates": [record(server, model, None)]
        + [record(server, model, f) for f in sorted(FIXTURES.glob("*.jinja"))],
    }
    path = FIXTURES / "chat-templates.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(ROOT)}: {sum(len(t['cases']) for t in out['templates'])} prompts")


if __name__ == "__main__":
    main()
