"""Looking inside the model, server time: what `/score`, `/trace` and the memorisation check
cost on the bundled model, one thread (as the app runs).

    score     2,000 characters with the top 5 per character, then the JSON (the issue: ≤ 0.2 s)
    forward   the book's forward over the same characters alone (the baseline inside score)
    trace     one unit's activations over the same characters (one forward call per character)
    memorise  a 1,000-character reply against the 162,051-character training text

Rounds are interleaved, the first is warm-up; medians with their spread, and score / forward
taken within each round. The same text every run (a passage of the training text).

    python -m bench.inspect_score                 # 15 rounds
    python -m bench.inspect_score --quick         # smoke test
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 \\
        python -m bench.inspect_score             # as on an AVX2-only machine
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import time

import torch

from bench.common import ROOT, machine_info, summary

from rnn_core import inspector
from rnn_core.checkpoint import load_checkpoint

CHARS = 2000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="3 rounds")
    args = p.parse_args()
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(1)
    isa = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    print(machine_info(), "|", f"isa limits {isa or 'none'}")

    ckpt = load_checkpoint(ROOT / "checkpoints" / "timemachine-rnn512")
    training = inspector.notes_for(ckpt).training_text
    text = training[50_000:50_000 + CHARS]
    rng = random.Random(0)
    reply = "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(1000))

    def score():
        return json.dumps(inspector.score(ckpt, text).to_json())

    def forward():
        return inspector.logits_of(ckpt.net, ckpt.vocab, text)

    def trace():
        return json.dumps(inspector.trace(ckpt, text, 42))

    def memorise():
        return inspector.memorised(reply, training)

    contenders = {"score": score, "forward": forward, "trace": trace, "memorise": memorise}
    times = {name: [] for name in contenders}
    ratios = []
    for r in range(rounds + 1):
        row = {}
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            row[name] = time.perf_counter() - start
        if r:  # round 0 is warm-up
            for name, t in row.items():
                times[name].append(t * 1000)
            ratios.append(row["score"] / row["forward"])
    print(f"{CHARS:,} characters, bundled model (512 hidden units), ms per call:")
    for name, values in times.items():
        print(f"  {name:<9} {summary(values, '{:.1f}')}")
    print(f"  score / forward: median {statistics.median(ratios):.2f} "
          f"[{min(ratios):.2f}–{max(ratios):.2f}]")
    ok = statistics.median(times["score"]) <= 200
    print(f"score with top-5 for {CHARS:,} characters: {'within' if ok else 'OVER'} 0.2 s")


if __name__ == "__main__":
    main()
