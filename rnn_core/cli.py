"""Command line: `python -m rnn_core generate|score|deploy ...` (also installed as `rnn-core`)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .validation import MAX_MESSAGE_CHARS
from .checkpoint import CheckpointError
from .errors import for_command_line
from .generation import check_generation_settings, generate_text
from .hub import load_model
from .inspector import score


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
    s = sub.add_parser("score", help="how surprised the model is by a text: bits/char, perplexity")
    s.add_argument("--model", required=True,
                   help="checkpoint folder, or Hub repo id user/name (downloaded once into the HF cache)")
    s.add_argument("--revision", default=None, help="Hub branch, tag or commit sha; Hub repos only")
    text = s.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help=f"the text to read (at most {MAX_MESSAGE_CHARS:,} characters)")
    text.add_argument("--file", type=Path, help="a UTF-8 text file to read")
    s.add_argument("--per-char", action="store_true",
                   help="also print each character's probability, surprisal and the top 5 guesses")
    return p


# The library names the setting at fault by its Python parameter; these are its flags here.
FLAGS = {"num_preds": "--num-preds", "temperature": "--temperature", "top_k": "--top-k",
         "revision": "--revision"}


def generate(args: argparse.Namespace) -> int:
    check_generation_settings(args.num_preds, args.temperature, args.top_k)  # before loading
    ckpt = load_model(args.model, args.revision)
    print(generate_text(ckpt.net, ckpt.vocab, args.prefix, args.num_preds, ckpt.normalization,
                        args.temperature, args.top_k, args.seed))
    return 0


def deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy as run_deploy  # the Hub upload code loads only when used
    run_deploy(args.space, args.model, args.revision, private=args.private, dry_run=args.dry_run)
    return 0


def read_input(path: Path, max_bytes: int = 1 << 20) -> str:
    """A text file for `score`, refused in one line when missing, binary, not UTF-8 or over
    `max_bytes` (the length limit itself is the chat's, checked on the text)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise ValueError(f"cannot read --file {path} ({e.strerror}); check the path") from None
    if len(raw) > max_bytes:
        raise ValueError(f"--file {path} is larger than {max_bytes >> 20} MB; the limit is "
                         f"{MAX_MESSAGE_CHARS:,} characters: use a shorter passage")
    if b"\x00" in raw:
        raise ValueError(f"--file {path} looks binary (it contains NUL bytes); pass a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--file {path} is not valid UTF-8 (byte {e.start}); convert it, "
                         "e.g. iconv -f latin1 -t utf-8") from None


def shown(token: str) -> str:
    """A token for a terminal table: space and control characters made visible."""
    return {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(token, token)


def score_text(args: argparse.Namespace) -> int:
    text = args.text if args.file is None else read_input(args.file)
    ckpt = load_model(args.model, args.revision)
    result = score(ckpt, text)
    if args.per_char:
        print(f"{'pos':>5}  {'char':<5} {'prob':>8} {'bits':>7}  top 5 next (prob)")
        for pos, c in enumerate(result.chars, start=1):
            top = "  ".join(f"{shown(t)} {p:.3f}" for t, p in c["top"])
            print(f"{pos:>5}  {shown(c['char']):<5} {c['prob']:>8.4f} {c['bits']:>7.3f}  {top}")
    print(f"read {len(result.text):,} characters, scored {len(result.chars):,} (the first is "
          f"only read): {result.bits_per_char:.4f} bits/char, perplexity {result.perplexity:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"generate": generate, "score": score_text, "deploy": deploy}[args.command](args)
    except (CheckpointError, ValueError) as e:
        print(f"error: {for_command_line(e, FLAGS)}", file=sys.stderr)
        return 2
