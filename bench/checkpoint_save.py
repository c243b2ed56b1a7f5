"""What `python train.py` spends on its checkpoints, at the book's settings (H 512, V 28, the
first 10,000 characters, 250 epochs of history), the two kinds interleaved:
  periodic  every --save-every epochs: weights, vocabulary, config, resume state and training
            text, written atomically and synced (what --resume needs)
  complete  at the end and on Ctrl-C/SIGTERM: the same plus the model card (with its greedy
            sample) and the perplexity plot; before, every periodic save was one of these
and what the book run's 50 saves (500 epochs, --save-every 10) cost each way.

    python -m bench.checkpoint_save            # 1 warm-up + 9 rounds
    python -m bench.checkpoint_save --quick    # smoke test: 1 + 2 rounds
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import book_text, machine_info, summary

import train
from rnn_core.checkpoint import TRAINING_TEXT_NAME, pack_training_text, save_checkpoint
from rnn_core.data import DataError, load_corpus, read_text
from rnn_core.model import RNNModelScratch
from rnn_core.resume import TrainingState
from rnn_core.training import EpochResult, make_updater

BOOK_SAVES = 50  # 500 epochs, --save-every 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9, help="measured rounds (one save of each kind)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 rounds")
    p.add_argument("--data", default=None, help="the book's text (default: ../shared/data, else download)")
    args = p.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    try:
        text = read_text(args.data or book_text())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    corpus, vocab = load_corpus(text, "book", 10_000)
    run = train.parse_args(["--normalize", "book", "--out", str(Path(tempfile.mkdtemp()) / "rnn")])
    run.num_epochs = 500
    net = RNNModelScratch(len(vocab), run.num_hiddens)
    updater = make_updater(net, "sgd", run.lr)
    history = [EpochResult(i + 1, 2.0, 50_000.0) for i in range(250)]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(run).items()}
    meta = {"data_name": "timemachine.txt", "data_sha1": "0" * 40, "device": "cpu",
            "num_train_tokens": len(corpus), "num_val_tokens": 0, "command": "python train.py"}
    training_text, entry = pack_training_text(text[:len(corpus)])

    def save(complete: bool) -> float:
        start = time.perf_counter()
        snap = TrainingState.capture(250, settings, net, updater, history)
        files = {**snap.files(), TRAINING_TEXT_NAME: training_text}
        if complete:
            files.update(train.card_and_plot(snap, vocab, run, meta))
        save_checkpoint(run.out, snap.weights, vocab,
                        {**train.checkpoint_config(run, snap, meta), "training_text": entry},
                        files=files)
        return time.perf_counter() - start

    print("checkpoint saves at the book's settings: H 512, V 28, 250 epochs of history")
    print(machine_info())
    first = save(True)  # warm-up: imports matplotlib and huggingface_hub once
    times = {"periodic": [], "complete": []}
    for _ in range(rounds):
        for kind in times:
            times[kind].append(save(kind == "complete"))
    ms = {k: [t * 1000 for t in v] for k, v in times.items()}
    print(f"\n{'save':<10} {'ms: median [min–max]':<30}")
    for kind, values in ms.items():
        print(f"{kind:<10} {summary(values):<30}")
    ratio = statistics.median(c / p for c, p in zip(ms["complete"], ms["periodic"]))
    print(f"complete / periodic: {ratio:.1f}x; the first complete save (imports): {first * 1000:.0f} ms")
    before = (BOOK_SAVES - 1) * statistics.median(times["complete"]) + first
    after = (BOOK_SAVES - 1) * statistics.median(times["periodic"]) + first
    print(f"the book run's {BOOK_SAVES} saves: {before:.1f} s when every save was complete, "
          f"{after:.1f} s now (periodic ones, then one complete)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
