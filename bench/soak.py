"""The long soak (load and isolation): many chat sessions at once against the real
app for minutes, each sending random messages with random settings, turn after turn.

Starts `python app.py` on a free loopback port (or uses a running one: --port, --server-pid),
runs --sessions conversations at once for --seconds, then stops by itself and checks:
  errors     every turn streamed to its end with the length asked for; no failed event
  isolation  every session's transcript, replayed offline through the book's predict_ch8,
             gives its greedy replies exactly. Sampled replies are read as received, so the
             greedy turns after them check that the carried state read exactly those
             characters and nothing from any other session.
  memory     the server's RSS, sampled every second, stays flat after the warm-up
Each session keeps its Gradio session (as a browser tab or gradio_client does) and starts a
new chat now and then. Exits 1 if a check fails. The short version is in tests/test_app.py.

    python -m bench.soak                        # 64 sessions for 180 s (~5 min with the replay)
    python -m bench.soak --seconds 600
    python -m bench.soak --quick                # smoke test: 8 sessions for 8 s
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

from bench.common import ROOT, RssSampler, machine_info, percentile
from bench.conversations import Turn, random_message, random_settings, replay
from bench.app_server import connect_app
from bench.sse_client import endpoint, new_session_hash, stream_chat

from rnn_core.checkpoint import load_checkpoint

BUNDLED = ROOT / "checkpoints" / "timemachine-rnn512"


@dataclass
class Session:
    """What one simulated visitor sent and received."""
    turns: list[Turn] = field(default_factory=list)
    ttfc: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)   # characters/s, from the request's send
    error: str | None = None


async def converse(i: int, port: int, args, deadline: float, vocab_size: int) -> Session:
    """One visitor: random turns (and sometimes a new chat) until the deadline; stops at the
    first error, since its transcript is then unknown."""
    rng, session, me = random.Random(args.seed * 100_003 + i), Session(), new_session_hash()
    prefix, chat_fn = args.chat_endpoint
    _, new_chat_fn = args.new_chat_endpoint
    while time.monotonic() < deadline:
        if session.turns and rng.random() < args.new_chat:
            s = await stream_chat("127.0.0.1", port, prefix, new_chat_fn, [None],
                                  session_hash=me)
            if s.error:
                session.error = f"new chat: {s.error}"
                return session
            session.turns.append((None, "", True))
            continue
        message = random_message(rng)
        length, temperature, top_k = random_settings(rng, vocab_size, args.max_length)
        s = await stream_chat("127.0.0.1", port, prefix, chat_fn,
                              [message, length, temperature, top_k, None], session_hash=me)
        if s.error or len(s.text) != length:
            session.error = s.error or f"reply of {len(s.text)} characters, asked {length}"
            return session
        session.turns.append((message, s.text, temperature == 0))
        session.ttfc.append(s.first_char)
        session.rates.append(length / s.updates[-1])
    return session


async def soak(port: int, args, vocab_size: int) -> list[Session]:
    deadline = time.monotonic() + args.seconds
    return await asyncio.gather(*(converse(i, port, args, deadline, vocab_size)
                                  for i in range(args.sessions)))


def memory_report(samples: list[tuple[float, int]], warmup: float) -> tuple[str, float]:
    """The server's RSS in words, and its growth in MB after the warm-up: the median of the
    last five samples against the median of the warm-up's last five seconds."""
    mb = [(t, rss / 2**20) for t, rss in samples]
    warm = [m for t, m in mb if warmup - 5 <= t <= warmup] or [mb[0][1]]
    after = [(t, m) for t, m in mb if t > warmup] or mb[-1:]
    base, values = statistics.median(warm), [m for _, m in after]
    growth = statistics.median(values[-5:]) - base
    slope = 0.0
    if len(after) > 2:  # least squares, MB per minute
        ts = [t for t, _ in after]
        t_mean, m_mean = statistics.fmean(ts), statistics.fmean(values)
        slope = 60 * sum((t - t_mean) * (m - m_mean) for t, m in after) / \
            sum((t - t_mean) ** 2 for t in ts)
    line = (f"server RSS: {mb[0][1]:.0f} MB at start, {base:.0f} MB after the {warmup:.0f} s "
            f"warm-up; then min {min(values):.0f}, max {max(values):.0f}, end {values[-1]:.0f} MB, "
            f"trend {slope:+.2f} MB/min ({len(samples)} samples, one a second)")
    return line, growth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=64, help="concurrent visitors")
    p.add_argument("--seconds", type=float, default=180, help="how long to keep sending")
    p.add_argument("--warmup", type=float, default=0,
                   help="seconds excluded from the memory check (default: a third, at most 60)")
    p.add_argument("--max-length", type=int, default=200, help="longest reply asked for")
    p.add_argument("--new-chat", type=float, default=0.1, help="chance a turn is a new chat")
    p.add_argument("--max-growth", type=float, default=25,
                   help="MB the server's RSS may grow after the warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=str(BUNDLED),
                   help="the checkpoint folder the app serves (RNN_MODEL) and the replay uses")
    p.add_argument("--port", type=int, default=0, help="a running app (default: start one)")
    p.add_argument("--server-pid", type=int, default=0, help="its pid, with --port")
    p.add_argument("--quick", action="store_true", help="smoke test: 8 sessions for 8 s")
    args = p.parse_args(argv)
    if args.quick:
        args.sessions, args.seconds, args.max_length = 8, 8.0, 60
    args.warmup = args.warmup or min(60.0, args.seconds / 3)
    ckpt = load_checkpoint(args.model)

    port, server, proc, config = connect_app(args.port, args.server_pid, ROOT / "app.py",
                                             RNN_MODEL=args.model)
    args.chat_endpoint, args.new_chat_endpoint = endpoint(config, "chat"), endpoint(config,
                                                                                   "new_chat")
    print(f"soak: {args.sessions} sessions for {args.seconds:g} s against "
          f"{f'port {port}' if args.port else 'app.py'} (pid {server.pid}), model "
          f"{args.model}; replies of 1–{args.max_length} characters, ~40% greedy, "
          f"new chat on ~{args.new_chat:.0%} of turns")
    print(machine_info(), flush=True)
    try:
        cpu0 = server.cpu_times()
        with RssSampler(server, every=1.0) as rss:
            sessions = asyncio.run(soak(port, args, len(ckpt.vocab)))
        cpu1 = server.cpu_times()
    finally:
        if proc is not None:
            proc.stop()

    turns = [t for s in sessions for t in s.turns if t[0] is not None]
    greedy = sum(1 for t in turns if t[2])
    errors = [f"session {i}: {s.error}" for i, s in enumerate(sessions) if s.error]
    ttfc = [x for s in sessions for x in s.ttfc]
    rates = [x for s in sessions for x in s.rates]
    print(f"\nturns: {len(turns)} ({greedy} greedy, {len(turns) - greedy} sampled), "
          f"{sum(len(t[1]) for t in turns):,} characters, "
          f"{sum(1 for s in sessions for t in s.turns if t[0] is None)} new chats; "
          f"server CPU {(sum(cpu1[:2]) - sum(cpu0[:2])) / args.seconds:.0%} of a core")
    print(f"time to first character p50 {percentile(ttfc, 50):.3f} s, p95 "
          f"{percentile(ttfc, 95):.3f} s; characters/s per reply p5 {percentile(rates, 5):.1f}, "
          f"p50 {percentile(rates, 50):.1f}")
    print(f"errors: {len(errors)}", *errors[:10], sep="\n  ")

    start, mismatches, checked, after_sampled = time.monotonic(), [], 0, 0
    for i, s in enumerate(sessions):
        try:
            c, a = replay(ckpt, s.turns)
            checked, after_sampled = checked + c, after_sampled + a
        except AssertionError as e:
            mismatches.append(f"session {i}: {e}")
    print(f"replay: {checked} greedy replies equal the book's predict_ch8 continuation of their "
          f"whole transcript ({after_sampled} of them after sampled replies); "
          f"{len(mismatches)} sessions differ ({time.monotonic() - start:.0f} s)",
          *mismatches[:5], sep="\n  ")

    line, growth = memory_report(rss.samples, args.warmup)
    print(line)
    flat = growth <= args.max_growth
    print(f"memory: {'flat' if flat else 'GREW'} after warm-up ({growth:+.1f} MB, limit "
          f"{args.max_growth:g} MB)")
    ok = not errors and not mismatches and flat and checked > 0
    print("soak passed" if ok else "soak FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
