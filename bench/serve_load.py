"""Serving under load: N concurrent chat sessions against the real app server, over HTTP.

Starts `python app.py` on a free port (or uses --port of a running one with --server-pid),
then for each N opens N sessions at once, each sending one message to `/chat` and reading the
stream (bench/sse_client.py speaks Gradio's queue protocol). Per level it reports:
  TTFC        time to first character, from the moment the request was sent (p50, p95)
  chars/s     characters delivered per session / time from send to the last character, so
              time spent queued counts (the slowest session, and the median)
  gap p95     95th percentile of the time between updates within a stream
  errors      failed, truncated or timed-out streams
  server CPU  the server process's CPU use over the level (100% = one core), peak RSS
  client CPU  this load generator's own CPU use (it shares the machine)
Targets (issue 5, on a 2-core machine): 64 sessions each >= 30 chars/s with gap p95 <= 100 ms,
TTFC p95 <= 0.5 s and no errors; 128 sessions with no errors and TTFC p95 <= 2 s.

    python bench/serve_load.py                         # N = 1, 8, 32, 64, 128; 200 chars each
    python bench/serve_load.py --sessions 64 --repeat 3
    python bench/serve_load.py --quick                 # smoke test: N = 1, 4; 30 chars
"""
from __future__ import annotations

import argparse
import asyncio
import time

import psutil

from common import ROOT, RssSampler, machine_info, percentile
from sse_client import chat_endpoint, connect_app, stop_app, stream_chat

MESSAGES = ["time traveller", "the medical man", "it was a strange thing", "the machine",
            "he said", "the psychologist", "we were", "filby"]


async def level(port: int, prefix: str, fn_index: int, n: int, args):
    async def session(i: int):
        await asyncio.sleep(args.ramp * i / n)
        inputs = [MESSAGES[i % len(MESSAGES)], args.length, args.temperature, args.top_k, None]
        return await stream_chat("127.0.0.1", port, prefix, fn_index, inputs)
    return await asyncio.gather(*(session(i) for i in range(n)))


def run_level(port, prefix, fn_index, server: psutil.Process, n, args) -> dict:
    me = psutil.Process()
    cpu0, mine0, t0 = server.cpu_times(), me.cpu_times(), time.perf_counter()
    with RssSampler(server) as rss:
        streams = asyncio.run(level(port, prefix, fn_index, n, args))
    wall = time.perf_counter() - t0
    cpu1, mine1 = server.cpu_times(), me.cpu_times()
    errors = [s.error or f"reply of {len(s.text)} chars, expected {args.length}"
              for s in streams if s.error or len(s.text) != args.length]
    ok = [s for s in streams if not s.error and s.first_char is not None]
    ttfc = [s.first_char for s in ok]
    rates = [len(s.text) / s.updates[-1] for s in ok if s.updates]
    gaps = [b - a for s in ok for a, b in zip(s.updates, s.updates[1:])]
    return {"n": n, "ttfc": ttfc, "rates": rates, "gaps": gaps, "errors": errors,
            "server_cpu": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall,
            "client_cpu": (mine1.user + mine1.system - mine0.user - mine0.system) / wall,
            "rss": rss.peak, "wall": wall}


def report(r: dict) -> str:
    p = percentile
    return (f"{r['n']:>5} {p(r['ttfc'], 50):>8.3f} {p(r['ttfc'], 95):>8.3f} "
            f"{min(r['rates'], default=float('nan')):>8.1f} {p(r['rates'], 50):>8.1f} "
            f"{p(r['gaps'], 95) * 1000:>8.0f} {len(r['errors']):>6} "
            f"{r['server_cpu']:>7.0%} {r['rss'] / 2**20:>7.0f} {r['client_cpu']:>7.0%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", default="1,8,32,64,128", help="comma-separated N")
    p.add_argument("--length", type=int, default=200, help="characters per reply")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="runs per level (each reported)")
    p.add_argument("--app", default=str(ROOT / "app.py"), help="the app file to start")
    p.add_argument("--ramp", type=float, default=0.0,
                   help="spread the N arrivals evenly over this many seconds (0: all at once)")
    p.add_argument("--port", type=int, default=0, help="a running app (default: start one)")
    p.add_argument("--server-pid", type=int, default=0, help="its pid, with --port")
    p.add_argument("--quick", action="store_true", help="smoke test: N = 1, 4; 30 characters")
    args = p.parse_args(argv)
    if args.quick:
        args.sessions, args.length = "1,4", 30
    levels = [int(n) for n in args.sessions.split(",")]

    port, server, proc, config = connect_app(args.port, args.server_pid, args.app)
    try:
        prefix, fn_index = chat_endpoint(config)
        arrival = f"arriving over {args.ramp:g} s" if args.ramp else "arriving at once"
        print(f"serving under load: {args.app if not args.port else f'port {port}'} "
              f"(pid {server.pid}); sessions {arrival}, each one /chat message, "
              f"{args.length} characters, temperature {args.temperature}, top-k {args.top_k}")
        print(machine_info())
        run_level(port, prefix, fn_index, server, 1, args)  # warm-up, not reported
        print(f"\n{'N':>5} {'TTFC p50':>8} {'TTFC p95':>8} {'c/s min':>8} {'c/s p50':>8} "
              f"{'gap p95':>8} {'errors':>6} {'srv CPU':>7} {'RSS MB':>7} {'cli CPU':>7}")
        results = []
        for n in levels:
            for _ in range(args.repeat):
                r = run_level(port, prefix, fn_index, server, n, args)
                results.append(r)
                print(report(r), flush=True)
        errors = sorted({e for r in results for e in r["errors"]})
        if errors:
            print("\nerrors seen:", *errors[:10], sep="\n  ")
        print("\n(TTFC and gaps in seconds / ms; c/s: characters per second per session, counted "
              "from the request's send; CPU: 100% = one core)")
    finally:
        if proc is not None:
            stop_app(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
