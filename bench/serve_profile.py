"""Where the chat server's core goes under load, for app.py and the bare Gradio app.

Starts each server, sends N sessions at once (as bench/serve_load.py does) while py-spy
samples the server process (`pip install py-spy`; a measuring tool, not a dependency), then
attributes every sample of the event-loop thread, and of app.py's generation thread
(rnn_core/engine.py), to the innermost frame of a known kind and prints the shares, with the
server's CPU per session and per streamed update.

    python -m bench.serve_profile                      # 128 sessions, app.py and bare_app.py
    python -m bench.serve_profile --sessions 64 --rate 200
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, machine_info
from bench.serve_load import level
from bench.app_server import connect_app
from bench.sse_client import chat_endpoint

# Innermost match wins: a sample counts for the first kind found walking from the leaf out.
KINDS = [
    ("our model step and sampling", ("rnn_core/generation.py",)),
    ("generation thread waiting for work or the GIL", ("rnn_core/engine.py", "queue.py")),
    ("our chat logic and pacing", ("rnn_core/session.py", "rnn_core/streaming.py", "app.py",
                                   "bare_app.py")),
    ("JSON encoding", ("json/", "orjson")),
    ("Gradio: diffs and postprocessing", ("gradio/utils.py", "gradio/processing_utils.py",
                                          "gradio/data_classes.py", "gradio/components/")),
    ("Gradio: per-session state and config", ("gradio/state_holder.py", "gradio/blocks.py")),
    ("Gradio: queue and SSE", ("gradio/queueing.py", "gradio/route_utils.py", "gradio/routes.py",
                               "gradio/server_messages.py", "gradio/helpers.py")),
    ("FastAPI / Starlette / pydantic", ("fastapi/", "starlette/", "pydantic")),
    ("HTTP server (uvicorn, h11)", ("uvicorn/", "h11/", "httptools")),
    ("asyncio event loop", ("asyncio/", "selectors.py", "anyio/")),
]


def kind_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for kind, needles in KINDS:
            if any(n in frame for n in needles):
                return kind
    return "other"


def profile(name: str, app: Path, args) -> None:
    port, server, proc, config = connect_app(0, 0, app)
    prefix, fn_index = chat_endpoint(config)
    try:
        asyncio.run(level(port, prefix, fn_index, 1, args))   # warm-up
        out = Path(tempfile.mkdtemp()) / f"{name}.txt"
        spied = time.perf_counter()
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--rate",
                                str(args.rate), "--format", "raw", "--nonblocking", "--threads",
                                "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        cpu0, t0 = server.cpu_times(), time.perf_counter()
        streams = asyncio.run(level(port, prefix, fn_index, args.sessions, args))
        wall = time.perf_counter() - t0
        cpu1 = server.cpu_times()
        spied = time.perf_counter() - spied
        spy.send_signal(2)
        spy.wait(30)
        cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
        updates = sum(len(s.updates) for s in streams)
        errors = sum(1 for s in streams if s.error)
        counts: collections.Counter = collections.Counter()
        marks: collections.Counter = collections.Counter()   # (thread, role) -> samples
        for line in out.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            for role, needle in (("loop", "asyncio/base_events.py"), ("generation", "engine.py")):
                if needle in stack:
                    marks[(frames[0], role)] += int(n)
            if "idle" in stack:
                continue
            counts[(frames[0], kind_of(frames))] += int(n)
        print(f"\n{name}: {args.sessions} sessions, {updates} updates, {errors} errors; server CPU "
              f"{cpu:.2f} s over {wall:.1f} s ({cpu / wall:.0%} of a core): "
              f"{cpu / args.sessions * 1000:.1f} ms per session, "
              f"{cpu / max(updates, 1) * 1000:.2f} ms per update (all included)")
        for role in ("loop", "generation"):
            ranked = [(c, t) for (t, r), c in marks.items() if r == role]
            if not ranked:
                continue
            thread = max(ranked)[1]
            busy = {k: c for (t, k), c in counts.items() if t == thread}
            total = sum(busy.values())
            print(f"  {role} thread: busy {total / (spied * args.rate):.0%} of the time sampled "
                  f"({spied:.1f} s, load included); by kind:")
            for kind, c in sorted(busy.items(), key=lambda kv: -kv[1]):
                print(f"  {c / max(total, 1):6.1%}  {kind}")
    finally:
        proc.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=128)
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--ramp", type=float, default=0.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = p.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("error: py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    print(machine_info())
    profile("ours", ROOT / "app.py", args)
    profile("bare", ROOT / "bench" / "bare_app.py", args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
