"""Training throughput of one train.py run on 1 and on N processes (torchrun), whole commands.

The same global minibatch (--batch-size is global) and settings for every process count, so
each configuration does the same arithmetic; on CPU the machine's cores are shared out
(OMP_NUM_THREADS = cores / processes, at least 1, or --threads), on CUDA each process drives its own GPU.
Reports, per process count: tokens/sec of the last epoch as train.py prints it (the whole
run's, summed over ranks), the wall time of the whole command (start-up, rendezvous, the
epochs, the checkpoint), and the ratio to one process within each round (rounds interleaved,
the order rotated, median of the ratios).

    python -m bench.distributed                         # 1 and 2 processes, CPU, book settings
    python -m bench.distributed --nprocs 1,2,4,8 --device cuda --batch-size 256
    python -m bench.distributed --arch lstm --num-layers 2 --dropout 0.2 --num-hiddens 256
    python -m bench.distributed --quick                 # smoke test: small model, one round
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

from bench.common import ROOT, isa_info, machine_info, summary

from rnn_core.cells import ARCHS, describe
from rnn_core.data import DataError, download_time_machine

SPEED = re.compile(r"^perplexity [\d.]+, ([\d.]+) tokens/sec on ", re.MULTILINE)


def command(nproc: int, args, out: str) -> list[str]:
    train = ["train.py", "--data", str(args.data), "--num-hiddens", str(args.num_hiddens),
             "--arch", args.arch, "--num-layers", str(args.num_layers), "--dropout", str(args.dropout),
             "--batch-size", str(args.batch_size), "--num-steps", "35", "--kernel", args.kernel,
             "--num-epochs", str(args.epochs), "--save-every", str(args.epochs),
             "--device", args.device, "--out", out]
    if nproc == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(nproc), *train]


def threads_each(nproc: int, args, cores: int) -> int:
    return args.threads or max(1, cores // nproc)


def run_once(nproc: int, args, cores: int) -> tuple[float, float]:
    """(tokens/sec of the last epoch, wall seconds of the whole command)."""
    env = dict(os.environ)
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = str(threads_each(nproc, args, cores))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.run(command(nproc, args, f"{tmp}/run"), cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=3600, check=False)
        wall = time.perf_counter() - start
    match = SPEED.search(proc.stdout)
    if proc.returncode or not match:
        sys.exit(f"{nproc} process(es) failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return float(match[1]), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nprocs", default="1,2", help="process counts to compare, the first is the base")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--arch", choices=ARCHS, default="rnn")
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--num-hiddens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32, help="the global minibatch")
    p.add_argument("--kernel", choices=("fast", "book"), default="fast")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default=None, help="default: the book's text (downloaded once)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default: cores / processes)")
    p.add_argument("--quick", action="store_true", help="smoke test: H 64, 1 epoch, 1 round")
    args = p.parse_args()
    if args.quick:
        args.num_hiddens, args.epochs, args.rounds = 64, 1, 1
    try:
        args.data = args.data or download_time_machine()
    except DataError as e:
        sys.exit(f"error: {e}")
    nprocs = [int(n) for n in args.nprocs.split(",")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(machine_info())
    if args.device == "cpu":
        print(isa_info())
    print(f"settings: {describe(args.arch, args.num_layers, args.num_hiddens)}, --dropout "
          f"{args.dropout}; --batch-size {args.batch_size} (global) "
          f"--num-steps 35 --kernel {args.kernel} --num-epochs {args.epochs} on {args.device}, "
          f"10,000 characters; {args.rounds} round(s)")

    speeds = {n: [] for n in nprocs}
    walls = {n: [] for n in nprocs}
    ratios = {n: [] for n in nprocs}
    for r in range(args.rounds):
        order = nprocs[r % len(nprocs):] + nprocs[:r % len(nprocs)]
        got = {n: run_once(n, args, cores) for n in order}
        for n in nprocs:
            speeds[n].append(got[n][0])
            walls[n].append(got[n][1])
            ratios[n].append(got[n][0] / got[nprocs[0]][0])
    print(f"{'processes':<10} {'threads each':<13} {'tokens/sec':<32} {'x one':<7} wall seconds")
    for n in nprocs:
        threads = threads_each(n, args, cores) if args.device == "cpu" else "-"
        print(f"{n:<10} {threads!s:<13} {summary(speeds[n]):<32} "
              f"{statistics.median(ratios[n]):<7.2f} {summary(walls[n], '{:.1f}')}")


if __name__ == "__main__":
    main()
