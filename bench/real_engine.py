"""The real local engine (Ollama built from its Go module, a tiny random model): build, converge, tokens.

    .venv/bin/python bench/real_engine.py [--runs 10] [--tokens 64]

Brings up its own stack ("bench-ollama", single topology, own ports), removes it afterwards, and prints:
  - the image: build time (only when it was not cached), size, tarball size; the model file's size
  - `local up` to a verified stack, and the converge in it that imports the model and creates it in Ollama
  - a no-op converge
  - time to first token and tokens per second of streamed chat completions, the engine directly
    (http://127.0.0.1:8080) and through the edge (TLS, API key), from inside the host; medians of --runs,
    greedy decoding, max_tokens --tokens. Tokens/s counts the streamed chunks after the first (one per token).
The model's text is nonsense; its tokenizer, loading and timings are Ollama's own, on this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmcloud import converge  # noqa: E402
from llmcloud.local import engine_ollama, system  # noqa: E402
from llmcloud.local.stack import LocalStack  # noqa: E402
from llmcloud.progress import Progress  # noqa: E402

# Runs inside the host (Debian's python3, no third-party modules): one streamed chat, timed.
CLIENT = r"""
import json, ssl, sys, time, urllib.request
url, key, model, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
body = {"model": model, "stream": True, "temperature": 0, "max_tokens": tokens,
        "messages": [{"role": "user", "content": "Tell me about the de.NBI cloud."}]}
headers = {"Content-Type": "application/json"}
if key != "-":
    headers["Authorization"] = "Bearer " + key
request = urllib.request.Request(url, json.dumps(body).encode(), headers)
context = ssl._create_unverified_context()  # 127.0.0.1 is not a name in the edge's certificate
began = time.monotonic()
first = last = None
chunks = 0
with urllib.request.urlopen(request, context=context, timeout=120) as response:
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        choices = json.loads(line[6:]).get("choices") or [{}]
        if choices[0].get("delta", {}).get("content"):
            now = time.monotonic()
            first = first or now
            last = now
            chunks += 1
print(json.dumps({"ttft": first - began, "chunks": chunks, "decode": last - first}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    progress = Progress("bench real engine")
    cache = ROOT / ".cache"
    client = system.docker_client()
    began = time.monotonic()
    ref, tarball = engine_ollama.ensure(client, progress, cache / "images")
    build = time.monotonic() - began
    model, _ = engine_ollama.tiny_model(progress, cache / "models")
    stack = LocalStack(
        name="bench-ollama",
        engine="ollama",
        ssh_port=42800,
        http_port=42880,
        https_port=42843,
        idp_port=42890,
    )
    rows: list[tuple[str, str]] = [
        (
            "image build",
            f"{build:.0f} s" if build > 5 else "cached (remove .cache/images/ollama-*.tar to time it)",
        ),
        ("image size / tarball", f"{client.images.get(ref).attrs['Size'] / 1e6:.0f} MB / {_mb(tarball)}"),
        ("model file (GGUF, F16)", _mb(model)),
    ]
    stack.down(progress)
    try:
        began = time.monotonic()
        stack.up(progress)
        first = converge.converge(stack.inventory_dir, progress)
        rows.append(("local up (hosts, converge incl. model import)", f"{time.monotonic() - began:.0f} s"))
        if not first.ok:
            print(first.failures)
            return 1
        began = time.monotonic()
        again = converge.converge(stack.inventory_dir, progress)
        rows.append(
            ("no-op converge", f"{time.monotonic() - began:.1f} s (changed: {sum(again.changed().values())})")
        )
        host = client.containers.get(stack.container_name("llm1"))
        key = stack.status()["api_key"]
        paths = {
            "direct": ("http://127.0.0.1:8080/v1/chat/completions", "-"),
            "edge (TLS, API key)": ("https://127.0.0.1/v1/chat/completions", key),
        }
        figures = {}
        for name, (url, credential) in paths.items():
            progress.log(f"{name}: {args.runs} streamed chats of {args.tokens} tokens")
            runs = []
            for _ in range(args.runs + 1):
                code, out = system.run_in(
                    host,
                    ["python3", "-c", CLIENT, url, credential, engine_ollama.MODEL_NAME, str(args.tokens)],
                )
                if code != 0:
                    print(out.decode()[-2000:])
                    return 1
                runs.append(json.loads(out))
            runs = runs[1:]  # the first loads the model
            figures[name] = {
                "ttft": statistics.median(r["ttft"] for r in runs) * 1000,
                "tps": statistics.median((r["chunks"] - 1) / r["decode"] for r in runs if r["decode"] > 0),
            }
    finally:
        stack.down(progress)
    print(f"\nreal engine: Ollama {engine_ollama.OLLAMA_VERSION} (CPU), tiny random model, this machine")
    for label, value in rows:
        print(f"  {label:<48} {value}")
    direct = figures["direct"]
    print(f"\n  {'path':<22} {'TTFT p50':>10} {'tokens/s p50':>13} {'TTFT ratio':>11} {'tokens/s ratio':>15}")
    for name, f in figures.items():
        print(
            f"  {name:<22} {f['ttft']:>8.1f} ms {f['tps']:>13.1f} "
            f"{f['ttft'] / direct['ttft']:>11.2f} {f['tps'] / direct['tps']:>15.2f}"
        )
    return 0


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.0f} MB"


if __name__ == "__main__":
    sys.exit(main())
