"""Train the scratch RNN of D2L §8.5 and write a checkpoint folder.

    python train.py                                  # the book's run: 512 hidden, 500 epochs, 10k chars
    python train.py --use-random-iter                # the book's random-sampling run
    python train.py --max-tokens 0 --val-fraction 0.1 --num-epochs 50 --out runs/full
    python train.py --resume runs/full --num-epochs 80   # continue a run exactly
    python train.py --push-to-hub user/timemachine-rnn   # train, then share on the Hub
    python train.py --push-only runs/rnn --push-to-hub user/timemachine-rnn   # share, no training

The defaults are the book's settings; see `python train.py --help` for every flag.
"""
from __future__ import annotations

import argparse
import datetime
import io
import random
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from rnn_core.checkpoint import (TRAINING_TEXT_NAME, CheckpointError, load_checkpoint,
                                 pack_training_text, save_checkpoint)
from rnn_core.card import make_model_card
from rnn_core.data import (NORMALIZATIONS, DataError, download_time_machine, load_corpus,
                           min_corpus_length, normalize_text, read_text, sha1_of, SeqDataLoader)
from rnn_core.generation import predict_ch8
from rnn_core.hub import HubError, check_push_target, push_checkpoint
from rnn_core.model import RNNModelScratch
from rnn_core.resume import TrainingState, load_training_state
from rnn_core.training import KERNELS, OPTIMIZERS, NonFiniteLossError, make_updater, train_ch8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-hiddens", type=int, default=512, help="hidden units H")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per minibatch")
    p.add_argument("--num-steps", type=int, default=35, help="time steps per sequence (BPTT length)")
    p.add_argument("--lr", type=float, default=1.0, help="learning rate")
    p.add_argument("--num-epochs", type=int, default=None,
                   help="passes over the text (default 500; with --resume, the saved run's)")
    p.add_argument("--max-tokens", type=int, default=10000,
                   help="train on the first N characters (the book: 10000); 0 or less: the whole text")
    p.add_argument("--use-random-iter", action="store_true",
                   help="random sampling instead of sequential partitioning")
    p.add_argument("--seed", type=int, default=0, help="seeds Python's random and torch")
    p.add_argument("--data", type=Path, default=None,
                   help="a UTF-8 text file; default: download the book's timemachine.txt (sha1-checked)")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="book",
                   help="book: letters only, lowercase (the book); raw: keep every character")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint folder to write (default runs/rnn; with --resume, the resumed folder)")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out the last fraction of the text for validation perplexity")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                   help="sgd: the book's updater; adam: torch.optim.Adam (try --lr 0.002)")
    p.add_argument("--kernel", choices=KERNELS, default="fast",
                   help="fast: the same math with fused products and a hand-written backward "
                        "(about 2x the tokens/sec on CPU, same gradients up to float rounding); "
                        "book: the book's forward and autograd, bit for bit")
    p.add_argument("--save-every", type=int, default=10,
                   help="write the checkpoint every K epochs (it is also written at the end and on Ctrl-C)")
    p.add_argument("--resume", type=Path, default=None,
                   help="continue the run saved in this folder exactly (other flags but --num-epochs "
                        "and --out are taken from it)")
    h = p.add_argument_group("Hugging Face Hub (token from HF_TOKEN or `hf auth login`)")
    h.add_argument("--push-to-hub", metavar="USER/NAME", default=None,
                   help="after training, upload the checkpoint to this model repo (created if missing)")
    h.add_argument("--private", action="store_true",
                   help="create the repo private (an existing repo keeps its visibility)")
    h.add_argument("--commit-message", default=None, help="message of the push's commit")
    h.add_argument("--revision", metavar="BRANCH", default=None,
                   help="push to this branch (created if missing) instead of main")
    h.add_argument("--push-only", metavar="DIR", type=Path, default=None,
                   help="push this existing checkpoint folder to --push-to-hub; no training")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad settings before any work starts."""
    for name in ("num_hiddens", "batch_size", "num_steps", "num_epochs", "save_every"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.lr > 0 or args.lr == float("inf"):
        raise DataError(f"--lr must be a positive number, got {args.lr}")
    if not 0 <= args.val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    out = args.out
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder; choose another path")
    try:  # a real write probe: permission bits say little when running as root
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as e:
        raise DataError(f"--out {out} cannot be written ({e.strerror}); choose another path") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hub = argparse.Namespace(**{k: vars(args).pop(k) for k in HUB_FLAGS})  # not part of the run
    if hub.push_to_hub is None and (hub.push_only or hub.private or hub.commit_message or hub.revision):
        print("error: --push-only, --private, --commit-message and --revision need --push-to-hub "
              "USER/NAME", file=sys.stderr)
        return 2
    if hub.push_to_hub is not None:
        try:
            check_push_target(hub.push_to_hub)
        except HubError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if hub.push_only is not None:
        return push(hub.push_only, hub)
    state = None
    try:
        if args.resume is not None:
            ckpt = load_checkpoint(args.resume)
            state = load_training_state(args.resume, dict(ckpt.net.named_parameters()))
            keep = {"num_epochs": args.num_epochs or state.args["num_epochs"],
                    "out": args.out or args.resume, "resume": args.resume}
            args = argparse.Namespace(**{**state.args, **keep})
            args.kernel = state.args.get("kernel", "book")  # runs saved before --kernel: book
            args.data = Path(args.data) if args.data else None
        args.num_epochs = 500 if args.num_epochs is None else args.num_epochs
        args.out = args.out or Path("runs/rnn")
        check_args(args)
        path = Path(args.data) if args.data else download_time_machine()
        text = read_text(path)
        corpus, vocab = load_corpus(text, args.normalize, args.max_tokens)
    except (DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    num_val = int(len(corpus) * args.val_fraction)
    train_corpus, val_corpus = corpus[:len(corpus) - num_val], corpus[len(corpus) - num_val:]
    need = min_corpus_length(args.batch_size, args.num_steps, args.use_random_iter)
    if len(train_corpus) < need:
        print(f"error: the training text has {len(train_corpus)} characters but one minibatch of "
              f"--batch-size {args.batch_size} x --num-steps {args.num_steps} needs {need}; "
              "use a longer text or smaller sizes", file=sys.stderr)
        return 2
    if num_val and len(val_corpus) < 2:
        print("error: --val-fraction leaves fewer than 2 validation characters; raise it", file=sys.stderr)
        return 2

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    net = RNNModelScratch(len(vocab), args.num_hiddens, device)
    updater = make_updater(net, args.optimizer, args.lr)
    history = []
    if state is not None:
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(state.weights[name])
        state.restore_optimizer(updater)
        state.restore_rng()
        history = state.history
        print(f"resuming {args.resume} after epoch {state.epoch}")

    run_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("resume", "out")}
    run_args["data"] = str(args.data) if args.data else None
    meta = {"data_name": path.name, "data_sha1": sha1_of(path), "device": str(device),
            "num_train_tokens": len(train_corpus), "num_val_tokens": num_val,
            "command": "python train.py " + shlex.join(argv if argv is not None else sys.argv[1:])}
    # The text the model trains on, carried in the checkpoint for the memorisation check.
    training_text, text_entry = pack_training_text(
        normalize_text(text, args.normalize)[:len(train_corpus)])
    last = state or TrainingState.capture(0, run_args, net, updater, history)
    bar = tqdm(total=args.num_epochs, initial=len(history), unit="epoch", dynamic_ncols=True)

    def save(snap: TrainingState) -> None:
        save_checkpoint(args.out, snap.weights, vocab,
                        {**checkpoint_config(args, snap, meta), "training_text": text_entry},
                        files={**checkpoint_files(snap, vocab, args, meta, device),
                               TRAINING_TEXT_NAME: training_text})

    def on_epoch(result):
        nonlocal last
        history.append(result)
        last = TrainingState.capture(result.epoch, run_args, net, updater, history)
        bar.update(1)
        bar.set_postfix(ppl=f"{result.ppl:.2f}",
                        **({"val_ppl": f"{result.val_ppl:.2f}"} if result.val_ppl else {}))
        if result.epoch % args.save_every == 0:
            save(last)

    try:
        train_ch8(net, SeqDataLoader(train_corpus, args.batch_size, args.num_steps,
                                     args.use_random_iter),
                  vocab, args.lr, args.num_epochs, device, args.use_random_iter,
                  updater=updater, start_epoch=len(history), val_corpus=val_corpus,
                  batch_size=args.batch_size, num_steps=args.num_steps,
                  on_epoch=on_epoch, log=tqdm.write, kernel=args.kernel)
    except KeyboardInterrupt:
        bar.close()
        if last.epoch == 0:
            print("\ninterrupted before the first epoch ended; nothing to save", file=sys.stderr)
            return 130
        save(last)
        print(f"\ninterrupted: saved the run after epoch {last.epoch} to {args.out}; "
              f"continue with: python train.py --resume {args.out}", file=sys.stderr)
        return 130
    except NonFiniteLossError as e:
        bar.close()
        if last.epoch == 0:
            print(f"error: {e}. No epoch finished with finite loss; nothing was saved.", file=sys.stderr)
            return 3
        save(last)
        print(f"error: {e}. The last good weights (epoch {last.epoch}) are kept in {args.out}.",
              file=sys.stderr)
        return 3
    bar.close()
    save(last)
    print(f"saved checkpoint to {args.out}")
    return push(args.out, hub) if hub.push_to_hub else 0


HUB_FLAGS = ("push_to_hub", "private", "commit_message", "revision", "push_only")


def push(folder: Path, hub: argparse.Namespace) -> int:
    """Upload a checkpoint folder in one commit; print the commit, or how to retry on failure."""
    try:
        info = push_checkpoint(folder, hub.push_to_hub, private=hub.private,
                               commit_message=hub.commit_message, revision=hub.revision)
    except CheckpointError as e:
        retry = ["python", "train.py", "--push-only", str(folder), "--push-to-hub", hub.push_to_hub,
                 *(["--revision", hub.revision] if hub.revision else []),
                 *(["--private"] if hub.private else []),
                 *(["--commit-message", hub.commit_message] if hub.commit_message else [])]
        hint = f"; retry with: {shlex.join(retry)}" if isinstance(e, HubError) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 4
    print(f"pushed {folder} to {hub.push_to_hub}@{hub.revision or 'main'}: commit {info.oid}\n"
          f"{info.commit_url}")
    return 0


def checkpoint_config(args: argparse.Namespace, snap: TrainingState, meta: dict) -> dict:
    """config.json: normalisation plus the training metadata of the run so far."""
    history = snap.history
    vals = [h.val_ppl for h in history if h.val_ppl is not None]
    versions = {"torch": torch.__version__, "python": sys.version.split()[0]}
    training = {**meta, "num_epochs": snap.epoch, "lr": args.lr, "batch_size": args.batch_size,
                "num_steps": args.num_steps, "seed": args.seed, "optimizer": args.optimizer,
                "use_random_iter": args.use_random_iter, "max_tokens": args.max_tokens,
                "val_fraction": args.val_fraction, "kernel": args.kernel,
                "final_ppl": history[-1].ppl if history else None,
                "final_val_ppl": vals[-1] if vals else None,
                "best_val_ppl": min(vals) if vals else None,
                "tokens_per_sec": history[-1].speed if history else None,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "versions": versions}
    return {"normalization": args.normalize, "training": training}


def checkpoint_files(snap: TrainingState, vocab, args, meta, device) -> dict[str, bytes]:
    """The model card, the perplexity plot and the resume state."""
    net = RNNModelScratch(len(vocab), args.num_hiddens, "cpu")
    net.load_state_dict({k: v.cpu() for k, v in snap.weights.items()})
    sample = predict_ch8("time traveller", 50, net, vocab, "cpu")
    card = make_model_card({"vocab_size": len(vocab), "num_hiddens": args.num_hiddens,
                            **checkpoint_config(args, snap, meta)}, sample, str(args.out))
    return {"README.md": str(card).encode(), "perplexity.png": plot_perplexity(snap.history),
            **snap.files()}


def plot_perplexity(history) -> bytes:
    """A PNG of training (and validation) perplexity per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    epochs = [h.epoch for h in history]
    ax.plot(epochs, [h.ppl for h in history], label="train")
    if any(h.val_ppl for h in history):
        ax.plot(epochs, [h.val_ppl for h in history], label="validation")
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log", title="perplexity per epoch")
    ax.grid(True, alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
