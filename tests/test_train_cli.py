"""train.py as a user runs it: flags, refusals before training, checkpoints, exact resume."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ROOT

SMALL = ["--num-hiddens", "16", "--max-tokens", "4000", "--batch-size", "8", "--num-steps", "10"]


def train(*args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_help_documents_every_flag():
    out = train("--help").stdout
    for flag in ("--num-hiddens", "--batch-size", "--num-steps", "--lr", "--num-epochs", "--max-tokens",
                 "--use-random-iter", "--seed", "--data", "--device", "--out", "--normalize",
                 "--val-fraction", "--optimizer", "--resume", "--save-every", "--fast-backend"):
        assert flag in out


def test_training_writes_a_complete_checkpoint(tmp_path, data_path):
    out = tmp_path / "run"
    proc = train("--data", data_path, *SMALL, "--num-epochs", "10", "--val-fraction", "0.2", "--out", out)
    lines = proc.stdout.strip().splitlines()
    assert lines[-4].startswith("perplexity ") and "tokens/sec on cpu" in lines[-4]
    assert lines[-3].startswith("time traveller") and len(lines[-3]) == len("time traveller") + 50
    assert lines[-2].startswith("traveller")
    assert sum(line.startswith("time traveller") for line in lines) == 2  # epoch 10 + the end
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "vocab.json", "config.json",
                                                "README.md", "perplexity.png"}
    tensors = load_file(out / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "W_xh": (28, 16), "W_hh": (16, 16), "b_h": (16,), "W_hq": (16, 28), "b_q": (28,)}
    assert json.loads((out / "vocab.json").read_text())[:3] == ["<unk>", " ", "e"]
    config = json.loads((out / "config.json").read_text())
    t = config["training"]
    assert config["normalization"] == "book" and config["vocab_size"] == 28
    assert t["data_sha1"] == "090b5e7e70c295757f55df93cb0a180b9691891a" and t["num_epochs"] == 10
    assert t["best_val_ppl"] <= t["final_val_ppl"] and t["num_val_tokens"] == 800
    assert (out / "perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "perplexity" in card and "python train.py --data" in card


def test_generate_cli_greedy_and_sampled(tiny_checkpoint):
    def gen(*args):
        return subprocess.run([sys.executable, "-m", "rnn_core", "generate", "--model", tiny_checkpoint,
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    greedy = gen("--prefix", "Time Traveller!!", "--num-preds", "30")
    assert greedy.returncode == 0 and greedy.stdout.startswith("time traveller ")
    assert len(greedy.stdout.rstrip("\n")) == len("time traveller ") + 30
    s1 = gen("--prefix", "the", "--temperature", "1", "--top-k", "5", "--seed", "1").stdout
    assert s1 == gen("--prefix", "the", "--temperature", "1", "--top-k", "5", "--seed", "1").stdout
    emoji = gen("--prefix", "日本 🚀 time", "--num-preds", "5")
    assert emoji.returncode == 0 and emoji.stdout.startswith(" time")
    empty = gen("--prefix", "!!!???")
    assert empty.returncode == 0 and empty.stdout.startswith(" ")
    none = gen("--prefix", "")
    assert none.returncode == 2 and "prefix is empty" in none.stderr and "Traceback" not in none.stderr


@pytest.mark.parametrize("setup, args, message", [
    (None, ["--num-hiddens", "0"], "--num-hiddens must be at least 1"),
    (None, ["--batch-size", "-3"], "--batch-size must be at least 1"),
    (None, ["--lr", "-1"], "--lr must be a positive number"),
    (None, ["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
    (None, ["--data", "missing.txt"], "does not exist"),
    ("empty", [], "is empty"),
    ("binary", [], "looks binary"),
    ("latin1", [], "is not valid UTF-8"),
    ("short", [], "needs 1156"),
    ("out-file", [], "is a file, not a folder"),
    ("out-under-file", [], "cannot be written"),
])
def test_bad_settings_are_refused_before_training(tmp_path, data_path, setup, args, message):
    files = {"empty": b"  \n", "binary": b"\x00\x01\x02abc", "latin1": "café".encode("latin1"),
             "short": b"hello world, a short text"}
    extra = ["--data", data_path]
    if setup in files:
        (tmp_path / "d.txt").write_bytes(files[setup])
        extra = ["--data", tmp_path / "d.txt"]
    out = tmp_path / "out"
    if setup == "out-file":
        out.write_text("precious")
    if setup == "out-under-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "out"
    proc = train(*extra, *args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "%|" not in proc.stderr  # refused before any epoch
    if setup == "out-file":
        assert out.read_text() == "precious"


def test_raw_normalisation_keeps_every_character(tmp_path):
    text = ("Ünïcode Straße — ÇA VA? 日本語のテキスト。\n" * 200)
    (tmp_path / "u.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "raw"
    train("--data", tmp_path / "u.txt", "--normalize", "raw", "--max-tokens", "0", *SMALL[:2],
          "--num-epochs", "2", "--out", out)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert {"Ü", "ß", "—", "日", "。", "\n", "?"} <= set(vocab)
    assert json.loads((out / "config.json").read_text())["normalization"] == "raw"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_path):
    out = tmp_path / "nan"
    train("--data", data_path, *SMALL, "--num-epochs", "2", "--out", out)
    before = (out / "model.safetensors").read_bytes()
    proc = train("--data", data_path, *SMALL, "--lr", "1e38", "--num-epochs", "5", "--out", out, check=False)
    assert proc.returncode == 3 and "NaN or infinite" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "model.safetensors").read_bytes() == before  # nothing good to save: untouched


def _wait_for(predicate, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _epochs_saved(folder: Path) -> int:
    try:
        return json.loads((folder / "config.json").read_text())["training"]["num_epochs"]
    except (OSError, ValueError):
        return 0


def sigkill_then_resume(tmp_path: Path, common: list, num_epochs: int, kill_after: int):
    """Train `common` for `num_epochs` whole into tmp_path/whole; again into tmp_path/killed,
    SIGKILLed inside the epoch after `kill_after` were saved, then resumed. Returns the two
    model.safetensors as tensors and the killed run's folder."""
    common = [*common, "--num-epochs", str(num_epochs)]
    train(*common, "--out", tmp_path / "whole")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *map(str, common), "--out", killed], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: _epochs_saved(killed) >= kill_after)
    time.sleep(0.05)  # somewhere inside a later epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert kill_after <= _epochs_saved(killed) < num_epochs
    resumed = train("--resume", killed)
    assert "resuming" in resumed.stdout
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(killed / "model.safetensors")
    return a, b, killed


@pytest.mark.parametrize("mode", [["--optimizer", "adam", "--lr", "0.01"], ["--use-random-iter"],
                                  ["--min-lr", "0.1"]])  # the cosine goes on from its minibatch
def test_sigkill_then_resume_gives_bit_identical_weights(tmp_path, data_path, mode):
    common = ["--data", data_path, *SMALL, "--save-every", "3", "--seed", "4", *mode]
    a, b, killed = sigkill_then_resume(tmp_path, common, 24, 6)
    assert all(a[k].equal(b[k]) for k in a)
    assert _epochs_saved(killed) == 24


def test_ctrl_c_saves_and_exits_cleanly(tmp_path, data_path):
    out = tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "train.py", "--data", str(data_path), *SMALL,
                             "--num-epochs", "100000", "--save-every", "2", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _epochs_saved(out) >= 2)  # inside the training loop
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "interrupted: saved the run after epoch" in err and f"--resume {out}" in err
    assert _epochs_saved(out) >= 1
    assert train("--resume", out, "--num-epochs", str(_epochs_saved(out) + 1)).returncode == 0
