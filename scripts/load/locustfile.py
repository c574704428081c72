"""Streaming chat clients for scripts/bench-load.sh, driven by Locust.

Each simulated user sends one streamed chat completion after another through `veil proxy`
(plain HTTP on loopback, as OpenAI clients use Veil) and records, besides Locust's own
entry (time to the response headers, failures by status), the time to the first content
token ("TTFT") and to the end of the answer ("ANSWER") as entries of their own.
A 429 or 503 is waited out as Retry-After says (at most 5 s), as a polite client would.
"""

import json
import time

from locust import HttpUser, constant, events, task

PROMPT = "Write one sentence about the sea."
MAX_TOKENS = 24


class StreamingChat(HttpUser):
    wait_time = constant(0)

    @task
    def chat(self):
        body = {
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
        }
        started = time.perf_counter()
        first = None
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            stream=True,
            catch_response=True,
            name="chat (stream)",
            timeout=120,
        ) as r:
            if r.status_code != 200:
                # Read the (small) error body so that the connection goes back to the
                # pool instead of lingering open.
                _ = r.content
                r.failure(f"HTTP {r.status_code}")
                retry = r.headers.get("retry-after", "1")
                time.sleep(min(5.0, float(retry) if retry.isdigit() else 1.0))
                return
            try:
                for line in r.iter_lines():
                    if first is None and line.startswith(b"data: {"):
                        delta = json.loads(line[6:])["choices"]
                        if delta and delta[0]["delta"].get("content"):
                            first = time.perf_counter()
                if first is None:
                    r.failure("no content token")
                    return
            except Exception as e:  # a stream cut off
                r.failure(f"stream broke: {type(e).__name__}")
                return
            r.success()
        done = time.perf_counter()
        for kind, name, at in (("TTFT", "first token", first), ("ANSWER", "whole answer", done)):
            events.request.fire(
                request_type=kind,
                name=name,
                response_time=(at - started) * 1000,
                response_length=0,
                exception=None,
                context={},
            )
