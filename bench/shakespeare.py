"""The tiny-shakespeare race, side by side on this machine: nanoGPT's CPU configuration, then a
from-scratch recurrent model given the same wall-clock time (`train.py --max-time`).

nanoGPT runs from a scratch copy of ../shared/reference/nanogpt/ (never copied into the
project), exactly as its README's CPU example: 4 layers x 128, context 64, batch 12, 2,000
iterations. Its whole command (data preparation included) is timed; our command gets that
wall time, less `--margin` seconds for our start-up and final evaluation, as `--max-time`, so
our whole command ends no later than nanoGPT's. Both validation losses are on nanoGPT's split
(the last 10% of the characters), in nats per character: nanoGPT's is its own estimate (20
random batches of 12 x 64, context up to 64), ours reads the whole held-out text with carried
state (train.py's final line).

    python -m bench.shakespeare                  # the race: nanoGPT, then ours, and a summary
    python -m bench.shakespeare --budget 142     # ours only, with a given budget
    python -m bench.shakespeare --budget 590     # the stretch: 10 minutes for the whole command
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, isa_info, machine_info

NANOGPT = ROOT.parent / "shared" / "reference" / "nanogpt"
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
                "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                "--lr_decay_iters=2000", "--dropout=0.0"]
# The recurrent side: found by trying cells, sizes and schedules (README: "The race").
OURS = ["--arch", "gru", "--num-hiddens", "256", "--num-layers", "1", "--batch-size", "64",
        "--num-steps", "64", "--optimizer", "adam", "--lr", "0.016", "--min-lr", "0.0016",
        "--num-epochs", "1000", "--val-fraction", "0.1", "--save-every", "1000"]
VAL_LINE = re.compile(r"val loss (\d+\.\d+) nats/char, (\d+\.\d+) bits/char, perplexity (\d+\.\d+)")


def run_nanogpt(nanogpt: Path, data: Path) -> tuple[float, float, str]:
    """nanoGPT's README CPU run in a scratch copy; returns (val loss, wall seconds, last line)."""
    with tempfile.TemporaryDirectory(prefix="nanogpt-") as tmp:
        work = Path(tmp) / "ng"
        shutil.copytree(nanogpt, work)
        shutil.copyfile(data, work / "data" / "shakespeare_char" / "input.txt")
        start = time.perf_counter()
        subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=work, check=True,
                       capture_output=True)
        proc = subprocess.run([sys.executable, "train.py", *NANOGPT_ARGS], cwd=work,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{proc.stderr[-2000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step ") and "val loss" in ln]
    return float(lines[-1].rsplit("val loss ", 1)[1]), wall, lines[-1]


def run_ours(data: Path, budget: float, extra: list[str], out: Path) -> tuple[float, float, list[str]]:
    """Our train.py with `--max-time budget`; returns (val loss, wall seconds, command)."""
    with tempfile.TemporaryDirectory(prefix="rnn-cache-") as cache:
        shutil.copyfile(data, Path(cache) / "tinyshakespeare.txt")  # as if downloaded once
        cmd = ["train.py", "--data", "shakespeare", *OURS, *extra, "--max-time", f"{budget:.0f}",
               "--out", str(out)]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "RNN_CORE_CACHE": cache})
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed:\n{proc.stderr[-2000:]}")
    m = VAL_LINE.fullmatch(proc.stdout.splitlines()[-1])
    return float(m.group(1)), wall, ["python", *cmd]


def sample(out: Path, prefix: str = "ROMEO:", n: int = 300) -> str:
    proc = subprocess.run([sys.executable, "-m", "rnn_core", "generate", "--model", str(out),
                           "--prefix", prefix, "--num-preds", str(n), "--temperature", "0.8",
                           "--seed", "0"], cwd=ROOT, capture_output=True, text=True, check=True)
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", type=Path, default=NANOGPT, help="nanoGPT's files")
    p.add_argument("--data", type=Path, default=DATA, help="tinyshakespeare.txt")
    p.add_argument("--budget", type=float, default=None,
                   help="skip nanoGPT and give ours this many seconds")
    p.add_argument("--margin", type=float, default=8.0,
                   help="seconds of nanoGPT's wall time kept for our start-up and final evaluation")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "shakespeare-race")
    args, extra = p.parse_known_args(argv)
    print("tiny-shakespeare race |", machine_info())
    print(isa_info())
    if args.budget is None:
        if not (args.nanogpt / "train.py").is_file():
            raise SystemExit(f"nanoGPT not found at {args.nanogpt}; pass --nanogpt DIR or --budget S")
        ng_loss, ng_wall, ng_line = run_nanogpt(args.nanogpt, args.data)
        print(f"nanoGPT 4x128, 2000 iters: val loss {ng_loss:.4f} in {ng_wall:.1f} s ({ng_line})")
        budget = ng_wall - args.margin
    else:
        budget = args.budget
    loss, wall, cmd = run_ours(args.data, budget, extra, args.out)
    config = json.loads((args.out / "config.json").read_text())
    t = config["training"]
    print(f"ours ({config['arch']} x {config['num_layers']}, {config['num_hiddens']} hidden): "
          f"val loss {loss:.4f} in {wall:.1f} s (training stopped at {t.get('stopped_at_seconds')} s, "
          f"{t['num_epochs']} epochs, {t['tokens_per_sec']:.0f} tokens/s)")
    print("command:", " ".join(cmd))
    if args.budget is None:
        verdict = "lower" if loss < ng_loss else "NOT lower"
        print(f"summary: ours {loss:.4f} vs nanoGPT {ng_loss:.4f} nats/char ({verdict}), "
              f"wall {wall:.1f} s vs {ng_wall:.1f} s")
    print("sample (temperature 0.8, seed 0):\n" + sample(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
