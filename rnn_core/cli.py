"""Command line: `python -m rnn_core generate|deploy ...` (also installed as `rnn-core`)."""
from __future__ import annotations

import argparse
import os
import sys

from .checkpoint import CheckpointError
from .generation import generate_text
from .hub import load_model


def build_parser() -> argparse.ArgumentParser:
    prog = "rnn-core" if os.path.basename(sys.argv[0]) == "rnn-core" else "python -m rnn_core"
    p = argparse.ArgumentParser(prog=prog,
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
    d = sub.add_parser("deploy", help="upload the chat app to a Hugging Face Space (one commit)",
                       description="Create or update a Gradio Space running app.py with this "
                       "checkout's library and bundled checkpoints; with --model it serves that "
                       "Hub model, pinned to its current commit.")
    d.add_argument("space", metavar="OWNER/NAME", help="the Space (created if missing)")
    d.add_argument("--model", default=None, help="Hub model repo id the Space serves "
                   "(sets RNN_MODEL); default: the bundled model")
    d.add_argument("--revision", default=None, help="branch, tag or sha of --model to serve "
                   "(sets RNN_MODEL_REVISION; default: the model's current commit sha)")
    d.add_argument("--private", action="store_true", help="create the Space private "
                   "(an existing Space keeps its visibility)")
    d.add_argument("--dry-run", action="store_true", help="list the files and variables; upload nothing")
    return p


def generate(args: argparse.Namespace) -> int:
    if args.num_preds < 0 or args.top_k < 0 or not args.temperature >= 0:
        print("error: --num-preds, --top-k and --temperature must not be negative", file=sys.stderr)
        return 2
    ckpt = load_model(args.model, args.revision)
    print(generate_text(ckpt.net, ckpt.vocab, args.prefix, args.num_preds, ckpt.normalization,
                        args.temperature, args.top_k, args.seed))
    return 0


def deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy as run_deploy  # the Hub upload code loads only when used
    run_deploy(args.space, args.model, args.revision, private=args.private, dry_run=args.dry_run)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"generate": generate, "deploy": deploy}[args.command](args)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
