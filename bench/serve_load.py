"""Serving under load: N concurrent chat sessions against the real app server, over HTTP,
side by side with the framework's floor (bench/bare_app.py: the same /chat API, the same pace,
no model).

Starts `python app.py` and the bare app on free ports (or uses --port of a running app with
--server-pid), then for each N, for each repeat, runs both in turn (alternating which goes
first): N sessions at once, each sending one message to `/chat` and reading the stream
(bench/sse_client.py speaks Gradio's queue protocol). Per run it reports:
  TTFC        time to first character, from the moment the request was sent (p50, p95)
  chars/s     characters delivered per session / time from send to the last character, so
              time spent queued counts (the slowest session, and the median)
  gap p95     95th percentile of the time between updates within a stream
  errors      failed, truncated or timed-out streams
  server CPU  the server process's CPU use over the level (100% = one core), peak RSS
  client CPU  this load generator's own CPU use (it shares the machine)
and per level the medians over repeats, with ours / bare for TTFC p95 and gap p95.
Targets (on a 2-core machine): at 64 and 128 sessions within 1.25x of the bare app's
TTFC p95 and gap p95, no errors, every session >= 30 chars/s; 64 sessions TTFC p95 <= 0.5 s
and gap p95 <= 100 ms; 128 sessions TTFC p95 <= 2 s.

    python -m bench.serve_load                         # N = 1, 8, 32, 64, 128; 200 chars each
    python -m bench.serve_load --sessions 64,128 --repeat 5
    python -m bench.serve_load --no-baseline           # ours only
    python -m bench.serve_load --quick                 # smoke test: N = 1, 4; 30 chars
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import psutil

from bench.common import ROOT, RssSampler, machine_info, percentile
from bench.app_server import connect_app
from bench.sse_client import chat_endpoint, stream_chat

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


def report(name: str, r: dict) -> str:
    p = percentile
    return (f"{r['n']:>5} {name:>5} {p(r['ttfc'], 50):>8.3f} {p(r['ttfc'], 95):>8.3f} "
            f"{min(r['rates'], default=float('nan')):>8.1f} {p(r['rates'], 50):>8.1f} "
            f"{p(r['gaps'], 95) * 1000:>8.0f} {len(r['errors']):>6} "
            f"{r['server_cpu']:>7.0%} {r['rss'] / 2**20:>7.0f} {r['client_cpu']:>7.0%}")


def summary(n: int, runs: dict[str, list[dict]]) -> str:
    """Medians over the repeats of one level, and ours / bare."""
    def med(name, key, q):
        return statistics.median(percentile(r[key], q) for r in runs[name])
    line = []
    for name in runs:
        line.append(f"{name}: TTFC p95 {med(name, 'ttfc', 95):.3f} s, gap p95 "
                    f"{med(name, 'gaps', 95) * 1000:.0f} ms, slowest "
                    f"{min(min(r['rates'], default=0) for r in runs[name]):.1f} chars/s, errors "
                    f"{sum(len(r['errors']) for r in runs[name])}")
    if "bare" in runs and "ours" in runs:
        line.append(f"ours/bare: TTFC p95 {med('ours', 'ttfc', 95) / med('bare', 'ttfc', 95):.2f}x, "
                    f"gap p95 {med('ours', 'gaps', 95) / med('bare', 'gaps', 95):.2f}x")
    return f"N={n} (medians of {len(next(iter(runs.values())))}): " + " | ".join(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", default="1,8,32,64,128", help="comma-separated N")
    p.add_argument("--length", type=int, default=200, help="characters per reply")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="runs per level (each reported)")
    p.add_argument("--app", default=str(ROOT / "app.py"), help="the app file to start")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="do not run the bare app (bench/bare_app.py) alongside")
    p.add_argument("--ramp", type=float, default=0.0,
                   help="spread the N arrivals evenly over this many seconds (0: all at once)")
    p.add_argument("--port", type=int, default=0, help="a running app (default: start one)")
    p.add_argument("--server-pid", type=int, default=0, help="its pid, with --port")
    p.add_argument("--quick", action="store_true", help="smoke test: N = 1, 4; 30 characters")
    args = p.parse_args(argv)
    if args.quick:
        args.sessions, args.length = "1,4", 30
    levels = [int(n) for n in args.sessions.split(",")]

    servers, procs = {}, []
    try:
        port, server, proc, config = connect_app(args.port, args.server_pid, args.app)
        servers["ours"] = (port, server, *chat_endpoint(config))
        procs.append(proc)
        if args.baseline:
            port, server, proc, config = connect_app(0, 0, ROOT / "bench" / "bare_app.py")
            servers["bare"] = (port, server, *chat_endpoint(config))
            procs.append(proc)
        arrival = f"arriving over {args.ramp:g} s" if args.ramp else "arriving at once"
        print(f"serving under load: {args.app if not args.port else f'port {args.port}'} "
              f"(pid {servers['ours'][1].pid}){' and bench/bare_app.py' if args.baseline else ''}; "
              f"sessions {arrival}, each one /chat message, {args.length} characters, "
              f"temperature {args.temperature}, top-k {args.top_k}")
        print(machine_info())
        for port, server, prefix, fn_index in servers.values():
            run_level(port, prefix, fn_index, server, 1, args)  # warm-up, not reported
        print(f"\n{'N':>5} {'app':>5} {'TTFC p50':>8} {'TTFC p95':>8} {'c/s min':>8} {'c/s p50':>8} "
              f"{'gap p95':>8} {'errors':>6} {'srv CPU':>7} {'RSS MB':>7} {'cli CPU':>7}")
        results, summaries = [], []
        for n in levels:
            runs = {name: [] for name in servers}
            for i in range(args.repeat):
                order = list(servers) if i % 2 == 0 else list(reversed(servers))
                for name in order:
                    port, server, prefix, fn_index = servers[name]
                    r = run_level(port, prefix, fn_index, server, n, args)
                    runs[name].append(r)
                    results.append(r)
                    print(report(name, r), flush=True)
            summaries.append(summary(n, runs))
        print("", *summaries, sep="\n")
        errors = sorted({e for r in results for e in r["errors"]})
        if errors:
            print("\nerrors seen:", *errors[:10], sep="\n  ")
        print("\n(TTFC and gaps in seconds / ms; c/s: characters per second per session, counted "
              "from the request's send; CPU: 100% = one core)")
    finally:
        for proc in procs:
            if proc is not None:
                proc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
