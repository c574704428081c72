#!/usr/bin/env python3
"""Time to first token over a growing conversation, Veil beside llama-server (issue 16).

Every turn resends the whole history, as `veil chat` and OpenAI clients do; the
assistant's turns are fixed text, so both servers get byte-identical requests. Veil is
asked through `veil proxy` (attested TLS to the server) with a `prompt_cache_key` per
conversation, and once more without one (no prompt reuse: the figures before it existed);
llama-server directly, with its default `cache_prompt`. Each round uses a new
conversation (the system prompt names the round), so no round reuses another's prefix.

    bench-conversation.py --veil URL --llama URL [--turns 10] [--rounds 3] [--json FILE]

Prints, per turn, the prompt tokens, the median time to first token of each side and the
ratio Veil / llama-server. Standard library only.
"""

import argparse
import http.client
import json
import secrets
import statistics
import sys
import time
import urllib.parse

ANSWER = (
    "That is a good question. The short answer is that it depends on the context, but "
    "in most cases the simplest explanation is the right one, and the details matter "
    "less than the overall shape of the problem."
)


def conversation(round_no, turns):
    """The messages of each turn: turn k holds k user messages and k - 1 answers."""
    history = [
        {
            "role": "system",
            # The round's own words first: llama-server, which shares its cache between
            # all requests, reuses no more of another round than the template's start.
            "content": f"{secrets.token_hex(6)} (session {round_no}). You are a helpful assistant.",
        }
    ]
    out = []
    for k in range(1, turns + 1):
        history.append(
            {
                "role": "user",
                "content": f"Question {k}: tell me one fact about the number {k * 7}.",
            }
        )
        out.append(list(history))
        history.append({"role": "assistant", "content": ANSWER})
    return out


def first_token(base, messages, cache_key, timeout=300):
    """Streams one chat request; returns (seconds to the first content, prompt tokens,
    cached tokens or None)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    body = {
        "messages": messages,
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cache_key is not None:
        body["prompt_cache_key"] = cache_key
    payload = json.dumps(body).encode()
    start = time.perf_counter()
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=payload,
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"{base} answered {resp.status}: {resp.read()[:300]!r}")
    ttft = None
    prompt = cached = None
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        for choice in chunk.get("choices") or []:
            if ttft is None and (choice.get("delta") or {}).get("content"):
                ttft = time.perf_counter() - start
        usage = chunk.get("usage")
        if usage:
            prompt = usage.get("prompt_tokens")
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    conn.close()
    if ttft is None:
        raise SystemExit(f"{base} streamed no content")
    return ttft, prompt, cached


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--veil", required=True, help="veil proxy's URL (plain HTTP)")
    ap.add_argument("--llama", help="llama-server's URL; Veil's figures only without it")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    sides = {"veil": [], "veil_no_reuse": [], "llama": []}
    tokens = {}
    cached = []
    for r in range(args.rounds):
        turns = conversation(r, args.turns)
        key = secrets.token_hex(16)
        rows = {"veil": [], "veil_no_reuse": [], "llama": []}
        # Alternate which side goes first; each side runs its whole conversation.
        order = ["veil", "llama"] if r % 2 == 0 else ["llama", "veil"]
        for side in order + ["veil_no_reuse"]:
            if side == "llama" and not args.llama:
                continue
            for k, messages in enumerate(turns, 1):
                if side == "llama":
                    t, n, _ = first_token(args.llama, messages, None)
                else:
                    cache_key = key if side == "veil" else None
                    t, n, c = first_token(args.veil, messages, cache_key)
                    if side == "veil":
                        cached.append((r, k, n, c))
                    tokens[k] = n
                rows[side].append(t)
        for side, row in rows.items():
            if row:
                sides[side].append(row)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    def median_at(side, k):
        return statistics.median(row[k - 1] for row in sides[side])

    print(
        f"{'turn':>4} {'prompt':>7} {'veil ms':>9} {'no-reuse ms':>12} "
        f"{'llama ms':>9} {'veil/llama':>10}"
    )
    result = []
    for k in range(1, args.turns + 1):
        v = median_at("veil", k)
        nr = median_at("veil_no_reuse", k)
        line = {"turn": k, "prompt_tokens": tokens[k], "veil_s": v, "veil_no_reuse_s": nr}
        text = f"{k:>4} {tokens[k]:>7} {v * 1e3:>9.1f} {nr * 1e3:>12.1f}"
        if sides["llama"]:
            ll = median_at("llama", k)
            line.update(llama_s=ll, ratio=v / ll)
            text += f" {ll * 1e3:>9.1f} {v / ll:>9.2f}x"
        print(text)
        result.append(line)
    worst = max((r["ratio"] for r in result if "ratio" in r), default=None)
    if worst is not None:
        print(f"worst veil/llama ratio over the turns: {worst:.2f}x (goal <= 1.2x)")
    reused = [c for (_, k, _, c) in cached if k > 1]
    print(
        "veil cached_tokens on turns 2+: "
        + ", ".join(str(c) for c in reused[: args.turns - 1])
        + (" ..." if len(reused) > args.turns - 1 else "")
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"turns": result, "worst_ratio": worst}, f, indent=1)


if __name__ == "__main__":
    main()
