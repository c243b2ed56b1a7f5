"""tiny-shakespeare as users compare on it: `--data shakespeare` (downloaded once, sha1-checked),
nanoGPT's split, the validation figure and its one-line report, `--max-time`, the cosine
learning rate."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from rnn_core import data
from rnn_core.data import load_corpus, read_text, split_corpus
from rnn_core.model import RNNModelScratch
from rnn_core.training import Schedule, evaluate_loss, loss_line, make_updater

LINE = re.compile(r"val loss (\d+\.\d{4}) nats/char, (\d+\.\d{4}) bits/char, perplexity (\d+\.\d{2})")


@pytest.fixture
def cache(tmp_path, shakespeare_path) -> Path:
    """A download cache already holding the corpus, as after a first `--data shakespeare`."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "tinyshakespeare.txt").write_bytes(shakespeare_path.read_bytes())
    return folder


def run_train(cache: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", "--data", "shakespeare", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RNN_CORE_CACHE": str(cache)})


def test_the_split_is_nanogpts(shakespeare_path):
    text = read_text(shakespeare_path)
    corpus, vocab = load_corpus(text, "raw", 0)
    assert len(corpus) == 1_115_394 and len(vocab) == 66  # 65 characters and <unk>
    train, val = split_corpus(corpus, 0.1)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    n = len(text)  # nanoGPT's data/shakespeare_char/prepare.py
    assert "".join(vocab.to_tokens(list(train))) == text[:int(n * 0.9)]
    assert "".join(vocab.to_tokens(list(val))) == text[int(n * 0.9):]


def test_download_is_sha1_checked_and_cached(tmp_path, monkeypatch, shakespeare_path):
    monkeypatch.setenv("RNN_CORE_CACHE", str(tmp_path / "cache"))
    good = tmp_path / "good.txt"
    good.write_bytes(shakespeare_path.read_bytes())
    monkeypatch.setattr(data, "SHAKESPEARE_URL", good.as_uri())
    path = data.DATASETS["shakespeare"].download()
    assert path == tmp_path / "cache" / "tinyshakespeare.txt"
    assert data.sha1_of(path) == data.SHAKESPEARE_SHA1
    good.unlink()
    assert data.download_shakespeare() == path  # cached: no second download
    bad = tmp_path / "bad.txt"
    bad.write_text("not the corpus")
    monkeypatch.setattr(data, "SHAKESPEARE_URL", bad.as_uri())
    path.unlink()
    with pytest.raises(data.DataError, match="did not match its sha1"):
        data.download_shakespeare()
    assert not path.exists()


def test_a_run_ends_with_the_validation_line(tmp_path, cache):
    out = tmp_path / "run"
    proc = run_train(cache, "--arch", "lstm", "--num-hiddens", "24", "--max-tokens", "20000",
                     "--val-fraction", "0.1", "--num-epochs", "2", "--batch-size", "16",
                     "--optimizer", "adam", "--lr", "0.01", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.splitlines()[-1]
    m = LINE.fullmatch(last)
    assert m, last
    config = json.loads((out / "config.json").read_text())
    t = config["training"]
    nats = t["final_val_loss"]
    assert last == loss_line(nats)
    assert float(m.group(2)) == pytest.approx(nats / math.log(2), abs=1e-4)
    assert float(m.group(3)) == pytest.approx(math.exp(nats), abs=0.01)
    assert config["normalization"] == "raw" and config["vocab_size"] == 66
    assert t["num_train_tokens"] == 18_000 and t["num_val_tokens"] == 2_000 and t["val_streams"] == 32
    assert "ROMEO:" in proc.stdout  # predictions continue a Shakespeare prefix


def test_max_time_stops_within_one_minibatch_then_evaluates_and_saves(tmp_path, cache):
    out = tmp_path / "timed"
    start = time.monotonic()
    proc = run_train(cache, "--arch", "gru", "--num-hiddens", "32", "--val-fraction", "0.1",
                     "--num-epochs", "1000", "--max-time", "30", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert LINE.fullmatch(proc.stdout.splitlines()[-1])
    t = json.loads((out / "config.json").read_text())["training"]
    assert t["longest_step_seconds"] > 0  # it trained (start-up took less than the budget)
    assert 30 <= t["stopped_at_seconds"] <= 30 + t["longest_step_seconds"]
    assert t["num_epochs"] >= 1 and time.monotonic() - start < 300


@pytest.mark.parametrize("args, message", [
    (["--max-time", "0"], "--max-time must be a positive number of seconds, got 0.0"),
    (["--max-time", "inf"], "--max-time must be a positive number of seconds, got inf"),
    (["--min-lr", "2"], "--min-lr must be from 0 to --lr (1.0), got 2.0"),
    (["--val-streams", "0"], "--val-streams must be at least 1, got 0"),
])
def test_refusals(tmp_path, cache, args, message):
    proc = run_train(cache, *args, "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr == f"error: {message}\n"


def test_cosine_schedule_runs_from_lr_to_min_lr():
    net = RNNModelScratch(5, 4)
    updater = make_updater(net, "sgd", 1.0)
    schedule = Schedule(updater, 1.0, 0.1, total_steps=100)
    lrs = []
    for _ in range(101):
        assert schedule()
        lrs.append(updater.keywords["lr"])
    assert lrs[0] == 1.0 and lrs[50] == pytest.approx(0.55) and lrs[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    adam = make_updater(net, "adam", 0.01)
    timed = Schedule(adam, 0.01, 0.001, max_time=0.2)
    assert timed() and adam.param_groups[0]["lr"] == pytest.approx(0.01, rel=0.05)
    time.sleep(0.25)
    assert not timed() and timed.expired and timed.stopped_at >= 0.2


def test_the_figure_hardly_depends_on_the_number_of_streams(shakespeare_path):
    """A model that has learnt something (a few hundred Adam steps): reading the 111,540
    validation characters as 8 or as 128 streams changes the figure by less than 0.01."""
    corpus, vocab = load_corpus(read_text(shakespeare_path), "raw", 0)
    train, val = split_corpus(corpus, 0.1)
    torch.manual_seed(0)
    net = RNNModelScratch(len(vocab), 64, arch="lstm")
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    data_ = torch.tensor(train[:200_000])
    for _ in range(150):
        i = torch.randint(0, len(data_) - 65, (32,))
        X = torch.stack([data_[j:j + 64] for j in i])
        Y = torch.stack([data_[j + 1:j + 65] for j in i])
        y_hat, _ = net(X, net.begin_state(32))
        loss = torch.nn.functional.cross_entropy(y_hat, Y.T.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    figures = [evaluate_loss(net, val, streams, 64, "cpu") for streams in (8, 32, 128)]
    assert figures[1] < 3.0  # it has learnt something (uniform: 4.19)
    assert max(figures) - min(figures) < 0.01, figures
