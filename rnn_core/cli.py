"""Command line: `python -m rnn_core generate ...`."""
from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError
from .generation import generate_text
from .hub import load_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rnn_core",
                                description="Use checkpoints of the D2L §8.5 scratch RNN.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="continue a prefix (greedy by default, as predict_ch8)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--model", required=True,
                   help="checkpoint folder, or Hub repo id user/name (downloaded once into the HF cache)")
    g.add_argument("--revision", default=None,
                   help="Hub branch, tag or commit sha to load (default: main); Hub repos only")
    g.add_argument("--prefix", default="time traveller", help="text to continue")
    g.add_argument("--num-preds", type=int, default=50, help="characters to generate")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy; >0: sample")
    g.add_argument("--top-k", type=int, default=0, help="sample only from the k most likely (0: off)")
    g.add_argument("--seed", type=int, default=None, help="seed for sampling")
    return p


def generate(args: argparse.Namespace) -> int:
    if args.num_preds < 0 or args.top_k < 0 or not args.temperature >= 0:
        print("error: --num-preds, --top-k and --temperature must not be negative", file=sys.stderr)
        return 2
    ckpt = load_model(args.model, args.revision)
    print(generate_text(ckpt.net, ckpt.vocab, args.prefix, args.num_preds, ckpt.normalization,
                        args.temperature, args.top_k, args.seed))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"generate": generate}[args.command](args)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
