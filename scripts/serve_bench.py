#!/usr/bin/env python3
"""Load benchmark for a running `mixtral serve` on loopback (standard library only).

  scripts/serve_bench.py --url http://127.0.0.1:8080 [--clients 1,8,32,64] [--requests 4]
                         [--max-tokens 16] [--chat-turns 10] [--json]

For each client count C: C threads each send --requests streamed /v1/completions one after
another; reports generated tokens/s over the wall time and TTFT (request sent -> first text
chunk) p50/p95. Then one multi-turn chat of --chat-turns turns (greedy), reporting each turn's
prompt tokens, the tokens the server prefilled (from /health's prefix_cache counters) and the
turn's TTFT. Run it against `serve` and `serve --no-prefix-cache` to compare (serve_bench.sh).
Every loop is bounded in count, every request by --timeout, the whole run by --deadline.
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "Mistral.ai is a company that",
    "Simply put, the theory of relativity states that",
    "Translate English to French: cheese =>",
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Paris is the capital of",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
]


def percentile(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


class Server:
    def __init__(self, url, timeout, key):
        u = urllib.parse.urlparse(url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("serve_bench: only loopback servers (127.0.0.1, localhost, ::1), not " + str(u.hostname))
        self.host, self.port, self.timeout, self.key = u.hostname, u.port or 80, timeout, key

    def _conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _headers(self):
        h = {"Content-Type": "application/json"}
        if self.key:
            h["Authorization"] = "Bearer " + self.key
        return h

    def get_json(self, path):
        c = self._conn()
        try:
            c.request("GET", path, headers=self._headers())
            r = c.getresponse()
            return json.loads(r.read())
        finally:
            c.close()

    def stream(self, path, body):
        """Sends a streamed request; returns (ttft seconds, total seconds, completion tokens, text)."""
        body = dict(body, stream=True, stream_options={"include_usage": True})
        c = self._conn()
        t0 = time.monotonic()
        ttft, tokens, text = None, 0, []
        try:
            c.request("POST", path, body=json.dumps(body), headers=self._headers())
            r = c.getresponse()
            if r.status != 200:
                raise RuntimeError("HTTP %d: %s" % (r.status, r.read()[:200]))
            for _ in range(100000):  # bounded: far more lines than any reply here has
                line = r.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for ch in chunk.get("choices", []):
                    piece = ch.get("text") or (ch.get("delta") or {}).get("content") or ""
                    if piece and ttft is None:
                        ttft = time.monotonic() - t0
                    text.append(piece)
        finally:
            c.close()
        total = time.monotonic() - t0
        return (ttft if ttft is not None else total), total, tokens, "".join(text)


def load_phase(srv, clients, requests, max_tokens, deadline):
    ttfts, tokens, errors = [], [0], [0]
    lock = threading.Lock()

    def client(i):
        for k in range(requests):
            if time.monotonic() > deadline:
                return
            body = {"prompt": PROMPTS[(i + k) % len(PROMPTS)] + " (client %d, request %d)" % (i, k),
                    "max_tokens": max_tokens, "temperature": 0.6, "seed": i * 1000 + k}
            try:
                ttft, _, n, _ = srv.stream("/v1/completions", body)
                with lock:
                    ttfts.append(ttft)
                    tokens[0] += n
            except Exception as e:  # counted, reported; the run goes on
                with lock:
                    errors[0] += 1
                print("serve_bench: client %d: %s" % (i, e), file=sys.stderr)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 1)
    wall = time.monotonic() - t0
    return {"clients": clients, "requests": len(ttfts), "errors": errors[0], "tokens": tokens[0],
            "seconds": round(wall, 3), "tokens_per_s": round(tokens[0] / wall, 2) if wall > 0 else 0,
            "ttft_p50_s": round(percentile(ttfts, 50), 4), "ttft_p95_s": round(percentile(ttfts, 95), 4)}


def chat_phase(srv, turns, max_tokens, deadline):
    messages = [{"role": "system", "content": "You are a storyteller. Keep every answer short."},
                {"role": "user", "content": "Tell me a story about a lighthouse keeper."}]
    out = []
    for turn in range(turns):
        if time.monotonic() > deadline:
            break
        before = srv.get_json("/health").get("prefix_cache", {})
        ttft, total, _, text = srv.stream("/v1/chat/completions",
                                          {"messages": messages, "max_tokens": max_tokens, "temperature": 0})
        after = srv.get_json("/health").get("prefix_cache", {})
        prompt = after.get("prompt_tokens", 0) - before.get("prompt_tokens", 0)
        reused = after.get("reused_tokens", 0) - before.get("reused_tokens", 0)
        out.append({"turn": turn + 1, "prompt_tokens": prompt, "prefilled": prompt - reused,
                    "ttft_s": round(ttft, 4), "seconds": round(total, 4)})
        messages.append({"role": "assistant", "content": text})
        messages.append({"role": "user", "content": "What happened next? (part %d)" % (turn + 2)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--chat-turns", type=int, default=10)
    ap.add_argument("--chat-max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per request")
    ap.add_argument("--deadline", type=float, default=3600, help="seconds for the whole run")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--api-key", default="")
    a = ap.parse_args()
    if not (1 <= a.requests <= 1000 and 0 <= a.chat_turns <= 100):
        sys.exit("serve_bench: --requests in 1..1000, --chat-turns in 0..100")
    srv = Server(a.url, a.timeout, a.api_key)
    deadline = time.monotonic() + a.deadline
    result = {"load": [], "chat": []}
    if not a.skip_load:
        for c in [int(x) for x in a.clients.split(",") if x]:
            if not 1 <= c <= 256:
                sys.exit("serve_bench: client counts in 1..256")
            r = load_phase(srv, c, a.requests, a.max_tokens, deadline)
            result["load"].append(r)
            if not a.json:
                print("clients %3d: %4d requests (%d errors), %6d tokens in %7.2f s = %8.2f tok/s, "
                      "TTFT p50 %.3f s p95 %.3f s" % (c, r["requests"], r["errors"], r["tokens"], r["seconds"],
                                                       r["tokens_per_s"], r["ttft_p50_s"], r["ttft_p95_s"]),
                      flush=True)
    result["chat"] = chat_phase(srv, a.chat_turns, a.chat_max_tokens, deadline)
    result["health"] = srv.get_json("/health")
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        for t in result["chat"]:
            print("chat turn %2d: prompt %5d tokens, prefilled %5d, TTFT %.3f s, turn %.3f s" %
                  (t["turn"], t["prompt_tokens"], t["prefilled"], t["ttft_s"], t["seconds"]))
        print("prefix cache:", json.dumps(result["health"].get("prefix_cache")))


if __name__ == "__main__":
    main()
