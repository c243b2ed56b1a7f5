"""Start-up: `python app.py` to the first successful answer on the bundled model, median of 5.

Each run starts a fresh `python app.py` on a free port and times, from the spawn:
  ready    the server answers /config (imports, model load, page build, uvicorn up)
  first    the first character of a /chat reply arrives
  answer   that reply (20 characters, greedy) is complete
To say what dominates, it also times, in fresh interpreters, `import torch` and
`import gradio` alone, and loading the bundled checkpoint.

    python -m bench.startup            # 5 runs
    python -m bench.startup --quick    # smoke test: 1 run
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

from bench.common import ROOT, machine_info, summary
from bench.app_server import AppServer
from bench.sse_client import chat_endpoint, stream_chat

LOAD_MODEL = ("import time; t = time.perf_counter(); from rnn_core.checkpoint import load_checkpoint; "
              "import torch; t1 = time.perf_counter(); "
              "load_checkpoint('checkpoints/timemachine-rnn512'); print(time.perf_counter() - t1)")


def one_start() -> dict[str, float]:
    start = time.perf_counter()
    proc = AppServer(timeout=60)
    try:
        prefix, fn_index = chat_endpoint(proc.config)
        ready = time.perf_counter() - start
        sent = time.perf_counter()
        stream = asyncio.run(stream_chat("127.0.0.1", proc.port, prefix, fn_index,
                                         ["time traveller", 20, 0.0, 0, None]))
        if stream.error or len(stream.text) != 20:
            raise SystemExit(f"the first answer failed: {stream.error or stream.text!r}")
        base = sent - start
        return {"ready": ready, "first": base + stream.first_char, "answer": base + stream.done}
    finally:
        proc.stop()


def seconds(code: str) -> float:
    """Wall time of `python -c code` (a fresh interpreter), or what it prints if anything."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    return float(out) if out else time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smoke test: 1 run")
    args = p.parse_args(argv)
    runs = 1 if args.quick else args.runs
    print("start-up: python app.py -> first successful answer (bundled model)")
    print(machine_info())
    times = [one_start() for _ in range(runs)]
    parts = {"python alone": seconds("pass"),
             "import torch": seconds("import torch"),
             "import gradio": seconds("import gradio"),
             "load the bundled model": seconds(LOAD_MODEL)}
    print(f"\n{'from spawn to':<24} seconds: median [min–max]")
    for key, label in (("ready", "server answers"), ("first", "first character"),
                       ("answer", "first answer complete")):
        print(f"{label:<24} {summary([t[key] for t in times], '{:.2f}')}")
    print("\nparts, each in a fresh interpreter (one run each):")
    for label, value in parts.items():
        print(f"  {label:<24} {value:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
