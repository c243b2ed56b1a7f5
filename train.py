"""Train the scratch RNN of D2L §8.5 (or a GRU §9.1, LSTM §9.2, deep §9.3) and write a checkpoint folder.

    python train.py                                  # the book's run: 512 hidden, 500 epochs, 10k chars
    python train.py --use-random-iter                # the book's random-sampling run
    python train.py --arch gru --num-hiddens 256     # the book's §9.1 run (--arch lstm: §9.2)
    python train.py --data shakespeare --val-fraction 0.1 --arch lstm --max-time 140 ...
    python train.py --max-tokens 0 --val-fraction 0.1 --num-epochs 50 --out runs/full
    python train.py --resume runs/full --num-epochs 80   # continue a run exactly
    python train.py --push-to-hub user/timemachine-rnn   # train, then share on the Hub
    python train.py --push-only runs/rnn --push-to-hub user/timemachine-rnn   # share, no training
    torchrun --standalone --nproc_per_node 2 train.py --batch-size 64   # one run on 2 processes

The defaults are the book's settings; see `python train.py --help` for every flag.

Exit status: 0 done; 2 refused before training (bad flags, data, --out, --resume, Hub token:
the message says why); 3 the loss became NaN or infinite (the last good epoch is kept);
4 the push failed (the checkpoint stays on disk); 5 the final checkpoint could not be written
(the previous one survives); 6 another process of a torchrun run failed (rank 0 saved the
last finished epoch); 130 / 143 stopped by Ctrl-C / SIGTERM after saving the last finished
epoch (128 + the signal's number). Under torchrun, torchrun exits 1 for any of these but 0;
its summary names the first failed process's exitcode.
"""
from __future__ import annotations

import argparse
import datetime
import io
import random
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from rnn_core.checkpoint import (CARD_NAME, PLOT_NAME, TRAINING_TEXT_NAME, CheckpointError,
                                 check_model_size, check_out_folder, load_checkpoint,
                                 pack_training_text, recover_interrupted_save, save_checkpoint)
from rnn_core.cells import ARCHS, MAX_LAYERS
from rnn_core.config import CheckpointConfig
from rnn_core.data import (DATASETS, NORMALIZATIONS, DataError, load_corpus, min_corpus_length,
                           normalize_text, read_text, sha1_of, split_corpus, SeqDataLoader)
from rnn_core.distributed import DistributedError, Group, pick_device, resume_command, say, start
from rnn_core.errors import for_command_line
from rnn_core.fast import BACKENDS as RNN_BACKENDS
from rnn_core.fast_cells import BACKENDS as CELL_BACKENDS, applicable, auto_backend, fast_forward
from rnn_core.generation import predict_ch8
from rnn_core.model import RNNModelScratch
from rnn_core.resume import TrainingState, load_training_state
from rnn_core.runlock import LockedError, RunLock
from rnn_core.training import (KERNELS, OPTIMIZERS, Interrupted, NonFiniteLossError, Schedule,
                               StopSignals, evaluate_loss, fit, loss_line, make_updater,
                               num_streams)

EXIT_REFUSED, EXIT_NONFINITE, EXIT_PUSH_FAILED, EXIT_SAVE_FAILED, EXIT_PEER_FAILED = 2, 3, 4, 5, 6
HUB_FLAGS = ("push_to_hub", "private", "commit_message", "revision", "push_only")
FAST_BACKENDS = tuple(dict.fromkeys(RNN_BACKENDS + CELL_BACKENDS))  # --fast-backend's choices
RUN_SETTINGS = ("num_hiddens", "arch", "num_layers", "dropout", "batch_size", "num_steps", "lr",
                "num_epochs", "max_tokens", "use_random_iter", "seed", "data", "normalize",
                "device", "val_fraction", "val_streams", "max_time", "min_lr", "optimizer",
                "kernel", "save_every")  # what training_state.json records
RESUMABLE = ("num_epochs", "out", "data", "device", "save_every", "resume",
             "fast_backend")  # --resume may set these
# The library names the setting at fault by its Python parameter; these are its flags here.
FLAGS = {"out_dir": "--out", "repo_id": "--push-to-hub", "normalization": "--normalize",
         "revision": "--revision"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n")[-1].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-hiddens", type=int, default=512, help="hidden units H")
    p.add_argument("--arch", default="rnn",
                   help=f"the cell: {', '.join(ARCHS)} (§8.5 RNN, §9.1 GRU, §9.2 LSTM)")
    p.add_argument("--num-layers", type=int, default=1, help="stacked layers (§9.3)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="char-rnn dropout on each layer's output, in [0, 1) (training only)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per minibatch")
    p.add_argument("--num-steps", type=int, default=35, help="time steps per sequence (BPTT length)")
    p.add_argument("--lr", type=float, default=1.0, help="learning rate")
    p.add_argument("--num-epochs", type=int, default=None,
                   help="passes over the text (default 500; with --resume, the saved run's)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="train on the first N characters (default: the book's 10000; "
                        "shakespeare: all); 0 or less: the whole text")
    p.add_argument("--use-random-iter", action="store_true",
                   help="random sampling instead of sequential partitioning")
    p.add_argument("--seed", type=int, default=0, help="seeds Python's random and torch")
    p.add_argument("--data", type=Path, default=None,
                   help=f"a UTF-8 text file, or {' / '.join(DATASETS)} (downloaded once, "
                        "sha1-checked); default: the book's timemachine")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default=None,
                   help="book: letters only, lowercase (the book's, the default); raw: keep every "
                        "character (the default for shakespeare)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint folder to write (default runs/rnn; with --resume, the resumed "
                        "folder); only a new or empty folder or a checkpoint of this project is "
                        "ever replaced")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out the last fraction F of the text for validation, as nanoGPT: "
                        "train on the first int((1 - F) n) characters")
    p.add_argument("--val-streams", type=int, default=32,
                   help="the final validation reads the held-out text as this many contiguous "
                        "streams, state carried")
    p.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="stop training at this wall-clock budget (from the command's start, at a "
                        "minibatch boundary), then evaluate and save")
    p.add_argument("--min-lr", type=float, default=None,
                   help="decay the learning rate along a cosine to this value over the epochs "
                        "the run was started with (or over --max-time); --resume continues "
                        "that curve, and epochs past its end train at this value; default: "
                        "constant, as the book")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                   help="sgd: the book's updater; adam: torch.optim.Adam (try --lr 0.002)")
    p.add_argument("--kernel", choices=KERNELS, default="fast",
                   help="fast: the same math with fewer, larger products and a hand-written "
                        "backward (same gradients up to float rounding), arranged as measured "
                        "fastest on this CPU at start-up and kept on --resume; speeds in "
                        "bench/README.md. book: the book's forward and autograd, bit for bit")
    p.add_argument("--fast-backend", choices=FAST_BACKENDS, default="auto", metavar="NAME",
                   help="which fast kernel computes: auto (default: the fastest here, timed the "
                        "first time a shape runs on this machine and remembered in "
                        "~/.cache/rnn_core/fast-kernels.json; a --resume keeps its run's), or "
                        "for the one-layer RNN without dropout plain, batched, rows or onednn, "
                        "for the others hand or onednn (LSTM). Kernels agree up to float "
                        "rounding; speeds in bench/README.md")
    p.add_argument("--save-every", type=int, default=10,
                   help="write what --resume needs every K epochs (cheap); the whole checkpoint, "
                        "with the model card and plot, at the end and on Ctrl-C/SIGTERM")
    p.add_argument("--resume", type=Path, default=None,
                   help="continue the run saved in this folder exactly; its settings are the saved "
                        "ones (only --num-epochs, --out, --data and --device may be given; --data "
                        "must be the same text, checked by sha1)")
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
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad settings before any work starts."""
    for name in ("num_hiddens", "batch_size", "num_steps", "num_epochs", "save_every", "val_streams"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.lr > 0 or args.lr == float("inf"):
        raise DataError(f"--lr must be a positive number, got {args.lr}")
    if args.arch not in ARCHS:
        raise DataError(f"--arch must be one of {', '.join(ARCHS)}, got {args.arch!r}")
    if not 1 <= args.num_layers <= MAX_LAYERS:
        raise DataError(f"--num-layers must be from 1 to {MAX_LAYERS}, got {args.num_layers}")
    if not 0 <= args.dropout < 1:
        raise DataError(f"--dropout must be in [0, 1), got {args.dropout}")
    if not 0 <= args.val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.max_time is not None and not 0 < args.max_time < float("inf"):
        raise DataError(f"--max-time must be a positive number of seconds, got {args.max_time}")
    if args.min_lr is not None and not 0 <= args.min_lr <= args.lr:
        raise DataError(f"--min-lr must be from 0 to --lr ({args.lr}), got {args.min_lr}")
    if not -2 ** 63 <= args.seed < 2 ** 64:
        raise DataError(f"--seed must be an integer from -2**63 to 2**64-1 (what torch accepts), "
                        f"got {args.seed}")
    if args.fast_backend != "auto" and args.kernel != "fast":
        raise DataError(f"--fast-backend {args.fast_backend} chooses among the fast kernels; drop "
                        f"it, or drop --kernel {args.kernel}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")


def check_out(out: Path) -> None:
    """Refuse an --out a save must not replace (see `check_out_folder`) or cannot write."""
    check_out_folder(out)
    try:  # a real write probe: permission bits say little when running as root
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as e:
        raise DataError(f"--out {out} cannot be written ({e.strerror}); choose another path") from None


def dataset_of(args: argparse.Namespace):
    """The named text `--data` asks for (`data.DATASETS`: timemachine when none), or None for
    a file."""
    return DATASETS.get(str(args.data) if args.data is not None else "timemachine")


def fill_dataset_defaults(args: argparse.Namespace) -> None:
    """--normalize and --max-tokens not given: the named text's defaults (the book's for a file)."""
    dataset = dataset_of(args) or DATASETS["timemachine"]
    if args.normalize is None:
        args.normalize = dataset.normalization
    if args.max_tokens is None:
        args.max_tokens = dataset.max_tokens


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    hub = argparse.Namespace(**{k: vars(args).pop(k) for k in HUB_FLAGS})  # not part of the run
    group = start()  # this process's place in a torchrun run; without torchrun, the only one

    def refuse(message: str) -> int:  # under torchrun every rank stops, the reason printed once
        group.agree(message)
        return EXIT_REFUSED
    if hub.push_to_hub is None and (hub.push_only or hub.private or hub.commit_message or hub.revision):
        return refuse("error: --push-only, --private, --commit-message and --revision need "
                      "--push-to-hub USER/NAME")
    if hub.push_to_hub is not None:
        from rnn_core.hub import HubError, check_push_target
        try:
            check_push_target(hub.push_to_hub)
        except HubError as e:
            later = "" if e.setting == "repo_id" else \
                "; or train without --push-to-hub and push later with --push-only"
            return refuse(f"error: {for_command_line(e, FLAGS)}{later}")
    if hub.push_only is not None and group.distributed:
        return refuse("error: --push-only does not train; run it with python, not torchrun")
    if hub.push_only is not None:
        try:  # no run may be writing the folder meanwhile
            lock = RunLock(hub.push_only).__enter__()
        except LockedError as e:
            print(f"error: {e}; push it once that run has finished", file=sys.stderr)
            return EXIT_REFUSED
        except OSError:  # no lock file possible there (read-only): nothing trains into it
            lock = None
        try:
            return push(hub.push_only, hub)
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)
    out = args.out or args.resume or Path("runs/rnn")
    if args.resume is not None and not args.resume.parent.is_dir():  # create nothing for a typo
        return refuse(f"error: --resume {args.resume}: no such checkpoint folder")
    lock = None
    try:
        check_out(out)
        if group.is_main:  # the one writer
            lock = RunLock(out).__enter__()
    except (DataError, CheckpointError) as e:
        return refuse(f"error: {for_command_line(e, FLAGS)}")
    except LockedError as e:
        return refuse(f"error: {e}; wait for it to finish or stop it, or choose another --out")
    except OSError as e:
        return refuse(f"error: --out {out}: cannot create its lock file ({e.strerror}); choose "
                      "another path")
    try:
        if lock is not None:
            for note in filter(None, [lock.note, *recover_interrupted_save(out)]):
                print(note if note.startswith("note: ") else f"note: {note}", file=sys.stderr)
        return train(args, out, hub, group, started)
    except (DataError, CheckpointError) as e:
        return refuse(f"error: {for_command_line(e, FLAGS)}")
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def train(args: argparse.Namespace, out: Path, hub: argparse.Namespace, group: Group,
          started: float) -> int:
    """Prepare the run (a new one, or --resume), train it, save it; returns the exit status.
    Under torchrun, `group` is this process's place in the run: rank 0 prints and writes.
    `started`: when the command started (perf_counter), what --max-time counts from."""
    resumed, saved_vocab = None, None
    if args.resume is not None:
        args, resumed, saved_vocab = resume_settings(args)
    args.num_epochs = 500 if args.num_epochs is None else args.num_epochs
    args.out = out
    fill_dataset_defaults(args)
    check_args(args)
    path, data_sha1, text, corpus, vocab = read_data(args, resumed, saved_vocab)
    dataset = dataset_of(args)
    if resumed is not None and args.num_epochs <= resumed.epoch:
        if args.num_epochs < resumed.epoch:
            raise DataError(f"--resume {args.resume}: the run already has {resumed.epoch} epochs; "
                            f"--num-epochs {args.num_epochs} would discard some: pass more")
        say(group, f"the run in {args.resume} already finished its {resumed.epoch} epochs; nothing "
            f"to do (pass --num-epochs N with N > {resumed.epoch} to train longer)")
        return 0
    try:
        check_model_size(len(vocab), args.num_hiddens, args.arch, args.num_layers, args.dropout)
    except CheckpointError as e:
        raise DataError(f"this run would write a checkpoint the loader refuses ({e}): use a smaller "
                        "--num-hiddens, or --normalize book / a text with fewer distinct "
                        "characters") from None

    train_corpus, val_corpus = split_corpus(corpus, args.val_fraction)
    num_val = len(val_corpus)
    need = min_corpus_length(args.batch_size, args.num_steps, args.use_random_iter)
    if len(train_corpus) < need:
        raise DataError(f"the training text has {len(train_corpus)} characters but one minibatch "
                        f"of --batch-size {args.batch_size} x --num-steps {args.num_steps} needs "
                        f"{need}; use a longer text or smaller sizes")
    if num_val and len(val_corpus) < 2:
        raise DataError("--val-fraction leaves fewer than 2 validation characters; raise it")
    if args.batch_size % group.world_size:
        raise DataError(f"--batch-size {args.batch_size} is the global minibatch and must divide "
                        f"by the {group.world_size} processes; pass a multiple of {group.world_size}")
    device = pick_device(group, args.device)
    if not group.agree(None):  # another rank refused (rank 0 said why)
        return EXIT_REFUSED

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    net = RNNModelScratch(len(vocab), args.num_hiddens, device, args.arch, args.num_layers,
                          args.dropout)
    updater = make_updater(net, args.optimizer, args.lr)
    history = []
    run_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k in RUN_SETTINGS}  # a resumed run's args also hold the Hub flags' defaults
    run_args["data"] = (str(args.data) if dataset else str(path)) if args.data else None  # local,
    # for --resume; never pushed
    # The cosine of --min-lr spans the epochs the run was started with, whatever --num-epochs
    # a --resume gives: resuming continues the same curve, and epochs past its end run at
    # --min-lr. The minibatches done are counted and saved, not estimated: an epoch can have
    # fewer than steps_per_epoch (its random offset).
    steps_per_epoch = max(1, len(train_corpus) // (args.batch_size * args.num_steps))
    planned_epochs, steps_done = args.num_epochs, 0
    if resumed is not None:
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(resumed.weights[name])
        resumed.restore_optimizer(updater)
        resumed.restore_rng(device)
        if device.type == "cuda" and resumed.cuda_rng is None and args.dropout > 0:
            say(group, "note: the resume state has no CUDA generator state (saved on CPU or by "
                "an older version): the dropout masks from here on differ from an "
                "uninterrupted run's", sys.stderr)
        history = resumed.history
        planned_epochs = resumed.planned_epochs or args.num_epochs
        steps_done = (len(history) * steps_per_epoch if resumed.schedule_steps is None
                      else resumed.schedule_steps)  # older files: whole epochs
        resumed.args, resumed.data_sha1 = run_args, data_sha1
        resumed.planned_epochs, resumed.schedule_steps = planned_epochs, steps_done
        say(group, f"resuming {args.resume} after epoch {resumed.epoch}")
    group.broadcast_parameters(net.params)
    forward = fast_kernel(net, args, resumed, group) if args.kernel == "fast" else None
    schedule = Schedule(updater, args.lr, args.min_lr, planned_epochs * steps_per_epoch,
                        args.max_time, started, steps_done, group)

    def snapshot(epoch: int) -> TrainingState:
        return TrainingState.capture(epoch, run_args, net, updater, history, data_sha1,
                                     planned_epochs, schedule.steps,
                                     getattr(forward, "backend", None))

    meta = {"data_name": path.name, "data_sha1": data_sha1, "device": str(device),
            "num_train_tokens": len(train_corpus), "num_val_tokens": num_val,
            "processes": group.world_size,
            "command": reproducing_command(run_args, str(args.data) if dataset else path.name)}
    # The text the model trains on, carried in the checkpoint for the memorisation check.
    training_text, text_entry = pack_training_text(
        normalize_text(text, args.normalize)[:len(train_corpus)])
    last = resumed or snapshot(0)
    saved_epoch = resumed.epoch if resumed else 0
    bar = tqdm(total=args.num_epochs, initial=len(history), unit="epoch", dynamic_ncols=True,
               disable=not group.is_main)
    log = tqdm.write if group.is_main else (lambda line: None)

    def save(snap: TrainingState, complete: bool) -> None:
        """Write the checkpoint: what resume needs (cheap, every --save-every epochs), plus the
        model card and plot when `complete` (at the end, on Ctrl-C/SIGTERM). Rank 0 only."""
        nonlocal saved_epoch
        if not group.is_main:
            return
        files = {**snap.files(), TRAINING_TEXT_NAME: training_text}
        if complete:
            files.update(card_and_plot(snap, vocab, args, meta))
        save_checkpoint(args.out, snap.weights, vocab,
                        {**checkpoint_config(args, snap, meta), "training_text": text_entry},
                        files=files, log=warn)
        saved_epoch = snap.epoch

    def on_epoch(result):
        nonlocal last
        history.append(result)
        last = snapshot(result.epoch)
        bar.update(1)
        bar.set_postfix(ppl=f"{result.ppl:.2f}",
                        **({"val_ppl": f"{result.val_ppl:.2f}"} if result.val_ppl else {}))
        if result.epoch % args.save_every == 0:
            try:
                with stop.deferred():
                    save(last, complete=False)
            except (OSError, CheckpointError) as e:
                warn(f"warning: could not save epoch {result.epoch} to {args.out} ({reason(e)}); "
                     f"{saved_state(saved_epoch, args.out)}; training goes on and the next save "
                     "tries again")

    prefix = (dataset or DATASETS["timemachine"]).prefix
    prefixes = ("time traveller", "traveller") if prefix == "time traveller" else (prefix,)
    resume_hint = f"continue with: {resume_command(group, args.out)}"
    status = 0
    group.hold_signals()
    try:
        with StopSignals() as stop:
            fit(net, SeqDataLoader(train_corpus, args.batch_size, args.num_steps,
                                   args.use_random_iter),
                vocab, args.lr, args.num_epochs, device, args.use_random_iter,
                updater=updater, start_epoch=len(history), val_corpus=val_corpus,
                batch_size=args.batch_size, num_steps=args.num_steps,
                on_epoch=on_epoch, log=log, forward=forward, group=group,
                schedule=schedule, prefixes=prefixes)
    except Interrupted as e:
        bar.close()
        how = "interrupted" if e.signum == signal.SIGINT else f"stopped by {e}"
        if last.epoch == 0:
            say(group, f"\n{how} before the first epoch ended; nothing to save", sys.stderr)
            return e.exit_status
        status = e.exit_status
        done = (f"\n{how}: saved the run after epoch {last.epoch} to {args.out}; {resume_hint}")
    except NonFiniteLossError as e:
        bar.close()
        if last.epoch == 0:
            say(group, f"error: {e} (--lr {args.lr}). No epoch finished with finite loss; nothing was saved.",
                sys.stderr)
            return EXIT_NONFINITE
        status = EXIT_NONFINITE
        done = (f"error: {e} (--lr {args.lr}). The last good weights (epoch {last.epoch}) are "
                f"kept in {args.out}.")
    except DistributedError as e:  # every rank says it: rank 0 may be the one that died
        bar.close()
        status = EXIT_PEER_FAILED
        kept = (f"saved the run after epoch {last.epoch} to {args.out}" if group.is_main else
                f"{args.out} keeps the last checkpoint rank 0 wrote")
        done = f"error: rank {group.rank}: {e}; " + (f"{kept}; {resume_hint}" if last.epoch else
                                                     "no epoch had finished; nothing was saved")
        if not last.epoch:
            print(done, file=sys.stderr)
            return status
    else:
        bar.close()
        done = f"saved checkpoint to {args.out}"
        if schedule.stopped_at is not None:
            meta["stopped_at_seconds"] = round(schedule.stopped_at, 3)
            meta["longest_step_seconds"] = round(schedule.longest_step, 3)
        if num_val:  # the run's figure, on the whole held-out text
            nats = evaluate_loss(net, val_corpus, args.val_streams, args.num_steps, device, group)
            meta["final_val_loss"] = nats
            meta["val_streams"] = num_streams(len(val_corpus), args.val_streams, args.num_steps)
    try:
        with StopSignals() as stop, stop.deferred():  # a second Ctrl-C waits for the save
            try:
                save(last, complete=True)
            except (OSError, CheckpointError) as e:
                print(f"error: could not write the checkpoint of epoch {last.epoch} to {args.out} "
                      f"({reason(e)}); {saved_state(saved_epoch, args.out)}; "
                      f"{rescue(last, vocab, args, meta, saved_epoch)}", file=sys.stderr)
                return EXIT_SAVE_FAILED
    except Interrupted as e:  # raised once the save is complete
        status = status or e.exit_status
    if status or not group.is_main:
        if group.is_main or status == EXIT_PEER_FAILED:
            print(done, file=sys.stderr if status else sys.stdout)
        return status
    if num_val:  # with a validation split the run ends with its figure
        print(done, file=sys.stderr)
        print(loss_line(meta["final_val_loss"]))
    else:
        print(done)
    return push(args.out, hub) if hub.push_to_hub else 0


def read_data(args: argparse.Namespace, resumed: TrainingState | None, saved_vocab):
    """The training text (its path, sha1, text) and its corpus and vocabulary; on --resume,
    the very text the run was trained on (by sha1) and the saved vocabulary, or a refusal."""
    dataset = dataset_of(args)
    try:
        path = dataset.download() if dataset else Path(args.data).resolve()
    except DataError as e:
        raise DataError(f"{e} (--data PATH)") from None
    data_sha1 = sha1_of(path) if path.is_file() else None
    if resumed is not None and resumed.data_sha1 and data_sha1 != resumed.data_sha1:
        raise DataError(f"--resume {args.resume}: the run was trained on a text with sha1 "
                        f"{resumed.data_sha1}, but {path} " + ("has sha1 " + data_sha1 if data_sha1 else
                        "does not exist") + "; pass --data with the text the run was trained on")
    try:
        text = read_text(path)
    except DataError as e:
        raise DataError(f"{e}; check --data" if e.setting == "path" else str(e)) from None
    corpus, vocab = load_corpus(text, args.normalize, args.max_tokens)
    if saved_vocab is not None and vocab.idx_to_token != saved_vocab.idx_to_token:
        raise DataError(f"--resume {args.resume}: the text gives a vocabulary other than the saved "
                        "vocab.json (the checkpoint's files do not belong together); start a new run")
    return path, data_sha1, text, corpus, vocab


def resume_settings(args: argparse.Namespace):
    """The saved run's settings with the few that may change (RESUMABLE) taken from `args`;
    its training state (`resumed`, a resume.TrainingState) and vocabulary. Refuses flags that
    would change the run, and any saved setting that does not parse as a command line would."""
    ckpt = load_checkpoint(args.resume)
    resumed = load_training_state(args.resume, dict(ckpt.net.named_parameters()))
    settings = dict(resumed.args)
    settings.setdefault("kernel", "book")  # saved settings without a kernel: the book's
    parser = build_parser()

    def refuse(message):
        raise CheckpointError(f"{args.resume}/training_state.json: the saved settings do not "
                              f"parse ({message}); the resume state is damaged or edited")
    parser.error = refuse
    unknown = set(settings) - set(RUN_SETTINGS)
    if unknown:
        refuse(f"unknown settings {sorted(unknown)}")
    saved = parser.parse_args(settings_argv(settings))
    if saved.num_hiddens != ckpt.config.num_hiddens:
        refuse(f"num_hiddens {saved.num_hiddens}, but the weights have {ckpt.config.num_hiddens}")
    defaults = build_parser().parse_args([])
    changed = [k for k, v in vars(args).items() if k not in RESUMABLE and k in vars(saved)
               and v != getattr(defaults, k) and v != getattr(saved, k)]
    if changed:
        flags = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in changed)
        raise DataError(f"--resume continues the saved run with its own settings, so {flags} "
                        f"cannot apply (the run has " + ", ".join(
                            f"--{k.replace('_', '-')} {getattr(saved, k)}" for k in changed) +
                        "): drop it, or start a new run")
    if resumed.planned_epochs is None:  # older resume files: the cosine spans their --num-epochs
        resumed.planned_epochs = saved.num_epochs
    for key in RESUMABLE:
        if getattr(args, key) is not None:
            setattr(saved, key, getattr(args, key))
    recorded = ckpt.config.training.get("data_sha1")  # when the resume state has none
    if resumed.data_sha1 is None and isinstance(recorded, str):
        resumed.data_sha1 = recorded
    return saved, resumed, ckpt.vocab


def settings_argv(settings: dict, data_name: str | None = None) -> list[str]:
    """A run's settings as command-line flags (`--flag=value`; flags at their default left
    out); `data_name` replaces the --data path (to record a run without local paths)."""
    defaults = vars(build_parser().parse_args([]))
    text = DATASETS.get(str(settings.get("data"))) or DATASETS["timemachine"]
    defaults.update(normalize=text.normalization, max_tokens=text.max_tokens)
    argv = []
    for key, value in settings.items():
        if key == "data" and value is not None and data_name is not None:
            value = data_name
        if key in defaults and value == defaults[key] and type(value) is type(defaults[key]):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        else:  # --flag=value when the value could pass for a flag
            argv += [f"{flag}={value}"] if str(value).startswith("-") else [flag, str(value)]
    return argv


def reproducing_command(run_args: dict, data_name: str) -> str:
    """The command that reproduces the run on another machine: --data names the file only
    (its sha1 is recorded beside), no --out, no --resume."""
    argv = settings_argv(run_args, data_name)
    if "--data" in argv:  # the text first
        i = argv.index("--data")
        argv = argv[i:i + 2] + argv[:i] + argv[i + 2:]
    return shlex.join(["python", "train.py", *argv])


def checkpoint_config(args: argparse.Namespace, snap: TrainingState, meta: dict) -> dict:
    """config.json: normalisation plus the training metadata of the run so far (no local paths)."""
    history = snap.history
    vals = [h.val_ppl for h in history if h.val_ppl is not None]
    versions = {"torch": torch.__version__, "python": sys.version.split()[0]}
    training = {**meta, "num_epochs": snap.epoch, "lr": args.lr, "batch_size": args.batch_size,
                "num_steps": args.num_steps, "seed": args.seed, "optimizer": args.optimizer,
                "use_random_iter": args.use_random_iter, "max_tokens": args.max_tokens,
                "val_fraction": args.val_fraction, "kernel": args.kernel,
                "fast_backend": snap.backend,
                "final_ppl": history[-1].ppl if history else None,
                "final_val_ppl": vals[-1] if vals else None,
                "best_val_ppl": min(vals) if vals else None,
                "tokens_per_sec": history[-1].speed if history else None,
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "versions": versions}
    return {"arch": args.arch, "num_layers": args.num_layers, "dropout": args.dropout,
            "normalization": args.normalize, "training": training}


def fast_kernel(net: RNNModelScratch, args: argparse.Namespace, resumed: TrainingState | None,
                group: Group):
    """The fast kernel for `net`: --fast-backend when not `auto`; else on --resume the backend
    the run was using (so it goes on computing exactly as before); else the one `auto` finds
    fastest here (choices.py), chosen by rank 0 alone under torchrun (the ranks timing at
    once would slow each other, and might choose apart)."""
    B, T = args.batch_size // group.world_size, args.num_steps  # one process's minibatch
    if args.fast_backend != "auto":
        names = applicable(net, B, T)
        if args.fast_backend not in names:
            raise DataError(f"--fast-backend {args.fast_backend} does not apply to this model and "
                            f"minibatch here; use one of auto, {', '.join(names)}")
        return fast_forward(net, args.fast_backend)
    saved = resumed.backend if resumed is not None else None
    if saved is not None:
        try:
            return fast_forward(net, saved)
        except (ValueError, RuntimeError):
            say(group, f"note: the run's fast kernel ({saved}) does not apply on this machine; "
                "another computes from here on, which may differ from an uninterrupted run by "
                "float rounding", sys.stderr)
    if group.distributed:
        return fast_forward(net, group.shared_text(auto_backend(net, B, T) if group.is_main
                                                   else ""))
    return fast_forward(net)


def card_and_plot(snap: TrainingState, vocab, args, meta) -> dict[str, bytes]:
    """The model card (with a greedy sample) and the perplexity plot: written at the end of a
    run, not with every periodic checkpoint (they cost far more than the weights)."""
    from rnn_core.card import make_model_card
    net = RNNModelScratch.from_weights({k: v.cpu() for k, v in snap.weights.items()},
                                       args.arch, args.num_layers, args.dropout)
    sample = predict_ch8((dataset_of(args) or DATASETS["timemachine"]).prefix, 50, net, vocab, "cpu")
    # How the card tells users to load it: the folder as given, unless that is absolute
    # (a local path has no place in a card that may be shared).
    ref = str(args.out) if not args.out.is_absolute() else args.out.name
    config = CheckpointConfig(vocab_size=len(vocab), num_hiddens=args.num_hiddens,
                              **checkpoint_config(args, snap, meta))
    card = make_model_card(config, sample, ref)
    return {CARD_NAME: str(card).encode(), PLOT_NAME: plot_perplexity(snap.history)}


def plot_perplexity(history) -> bytes:
    """A PNG of training (and validation) perplexity per epoch. Drawn on a bare `Figure`, as
    matplotlib recommends outside a GUI: pyplot's import alone took 0.4 s of every run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100, layout="tight")
    ax = fig.subplots()
    epochs = [h.epoch for h in history]
    ax.plot(epochs, [h.ppl for h in history], label="train")
    if any(h.val_ppl for h in history):
        ax.plot(epochs, [h.val_ppl for h in history], label="validation")
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log", title="perplexity per epoch")
    ax.grid(True, alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def rescue(snap: TrainingState, vocab, args, meta, saved_epoch: int) -> str:
    """Keep a run whose --out cannot be written: save it into a new folder under the system's
    temporary directory ($TMPDIR), often another disk. Returns what to tell the user."""
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"{args.out.name}-rescued-")) / args.out.name
        save_checkpoint(folder, snap.weights, vocab, checkpoint_config(args, snap, meta),
                        files=snap.files(), log=warn)
    except (OSError, CheckpointError) as e:
        return (f"saving epoch {snap.epoch} under {tempfile.gettempdir()} instead failed too "
                f"({reason(e)})" + (f"; continue from epoch {saved_epoch} with: python train.py "
                                    f"--resume {shlex.quote(str(args.out))}" if saved_epoch else ""))
    return (f"the run (epoch {snap.epoch}) was saved instead to {folder}: once {args.out} can be "
            f"written, continue with: python train.py --resume {shlex.quote(str(folder))} "
            f"--out {shlex.quote(str(args.out))}")


def warn(message: str) -> None:
    """A line on stderr that keeps the progress bar intact."""
    tqdm.write(message, file=sys.stderr)


def reason(e: Exception) -> str:
    """Why a save failed, in a few words: the OS's reason (e.g. "No space left on device")."""
    return (e.strerror or str(e)) if isinstance(e, OSError) else for_command_line(e, FLAGS)


def saved_state(epoch: int, out: Path) -> str:
    return (f"{out} still holds the checkpoint of epoch {epoch}" if epoch else
            f"nothing of this run is saved in {out} yet")


def push(folder: Path, hub: argparse.Namespace) -> int:
    """Upload a checkpoint folder in one commit; print the commit, or how to retry on failure."""
    from rnn_core.hub import HubError, push_checkpoint
    try:
        info = push_checkpoint(folder, hub.push_to_hub, private=hub.private,
                               commit_message=hub.commit_message, revision=hub.revision)
    except CheckpointError as e:
        retry = ["python", "train.py", "--push-only", str(folder), "--push-to-hub", hub.push_to_hub,
                 *(["--revision", hub.revision] if hub.revision else []),
                 *(["--private"] if hub.private else []),
                 *(["--commit-message", hub.commit_message] if hub.commit_message else [])]
        hint = f"; retry with: {shlex.join(retry)}" if isinstance(e, HubError) else ""
        print(f"error: {for_command_line(e, FLAGS)}{hint}", file=sys.stderr)
        return EXIT_PUSH_FAILED
    print(f"pushed {folder} to {hub.push_to_hub}@{hub.revision or 'main'}: commit {info.oid}\n"
          f"{info.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
