"""What a user waits for: the whole book run, `python train.py`, against the book's own library.

Both are timed from process start to exit, in fresh interpreters, alternately:
  ours   python train.py --data TEXT --device cpu --out TMP   (the book's settings: batch 32,
         35 steps, 512 hidden, lr 1, 500 epochs, sequential, the first 10,000 characters)
  book   the same run through d2l 0.17.6: `d2l.load_data_time_machine(32, 35)`, the §8.5
         chapter code (`get_params`, `init_rnn_state`, `rnn`) in `d2l.RNNModelScratch`, and
         `d2l.train_ch8(net, train_iter, vocab, 1, 500, d2l.try_gpu())`, run as a script
         (its progress plot is drawn every 10 epochs, as in the notebook)
and the ratio ours / book of each pair, then the median (goal: <= 0.5). The two print the
same samples every 10 epochs and end at the same kind of perplexity, which is checked.

    python -m bench.book_run                   # 3 pairs of 500-epoch runs (~10 minutes)
    python -m bench.book_run --save-every 1000 # ours without the periodic checkpoints
    python -m bench.book_run --quick           # smoke test: 1 pair of 10-epoch runs
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import ROOT, book_text, isa_info, machine_info, summary

from rnn_core.data import DataError

# The book's run, as a script: tests/d2l_book.py holds the chapter code and points d2l's
# download at the local text (d2l itself would fetch it).
BOOK = """
import sys
sys.path.insert(0, {tests!r})
from d2l_book import get_params, init_rnn_state, load_d2l, rnn
d2l = load_d2l({data!r})
train_iter, vocab = d2l.load_data_time_machine(32, 35)
net = d2l.RNNModelScratch(len(vocab), 512, d2l.try_gpu(), get_params, init_rnn_state, rnn)
d2l.train_ch8(net, train_iter, vocab, 1, {epochs}, d2l.try_gpu())
"""
PERPLEXITY = re.compile(r"^perplexity ([\d.]+), ([\d.]+) tokens/sec on cpu$", re.M)


def timed(cmd: list[str], cwd) -> tuple[float, str]:
    """Wall seconds of a command from spawn to exit, and its stdout; fails loudly."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="pairs of runs (ours, book)")
    p.add_argument("--epochs", type=int, default=500, help="epochs per run (the book: 500)")
    p.add_argument("--data", default=None,
                   help="the book's text (default: ../shared/data/timemachine.txt, else download)")
    p.add_argument("--save-every", type=int, default=None,
                   help="passed to train.py (default: train.py's own default)")
    p.add_argument("--kernel", default=None, help="passed to train.py (default: its default)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 pair of 10-epoch runs")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.epochs = 1, 10
    try:
        data = os.path.abspath(args.data or book_text())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    extra = [*(["--save-every", str(args.save_every)] if args.save_every else []),
             *(["--kernel", args.kernel] if args.kernel else [])]
    print(f"the whole book run, process start to exit: python train.py vs d2l.train_ch8 "
          f"({args.epochs} epochs, batch 32, 35 steps, H 512, 10,000 characters)")
    print(machine_info())
    print(isa_info())
    print("ours: python train.py --data TEXT --device cpu --out TMP --num-epochs "
          f"{args.epochs} {' '.join(extra)}".rstrip())
    times: dict[str, list[float]] = {"ours": [], "book": []}
    final = {}
    with tempfile.TemporaryDirectory() as tmp:
        book_script = BOOK.format(tests=str(ROOT / "tests"), data=data, epochs=args.epochs)
        for r in range(args.runs):
            out = os.path.join(tmp, f"run{r}")
            for name, cmd, cwd in (
                    ("ours", [sys.executable, "train.py", "--data", data, "--device", "cpu",
                              "--out", out, "--num-epochs", str(args.epochs), *extra], ROOT),
                    ("book", [sys.executable, "-c", book_script], tmp)):
                seconds, stdout = timed(cmd, cwd)
                m = PERPLEXITY.search(stdout)
                if m is None:
                    raise SystemExit(f"{name}: no final perplexity line in its output:\n"
                                     f"{stdout[-2000:]}")
                times[name].append(seconds)
                final[name] = (float(m[1]), float(m[2]))
                print(f"  run {r + 1} {name}: {seconds:7.1f} s, final perplexity {m[1]}, "
                      f"last epoch {float(m[2]):,.0f} tokens/sec", flush=True)
    ratios = [o / b for o, b in zip(times["ours"], times["book"])]
    print(f"\n{'':<6} {'seconds: median [min–max]':<32} final ppl")
    for name in times:
        print(f"{name:<6} {summary(times[name], '{:.1f}'):<32} {final[name][0]:.1f}")
    print(f"ours / book: {statistics.median(ratios):.2f} (median of {len(ratios)} pairs: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; goal <= 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
