"""GRU, LSTM and deep models through everything a user touches: train.py's flags and refusals,
checkpoints (the exact tensor set per cell, old checkpoints), the card, `generate`, exact
resume after SIGKILL, and the Hub (push, then load by repo id)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from conftest import ROOT
from rnn_core.cells import param_shapes
from rnn_core.checkpoint import CheckpointError, load_checkpoint
from rnn_core.generation import predict_ch8
from test_hub import TOKEN, USER, env, generate, hub, push, pushed_sha  # noqa: F401 (fixtures)
from test_train_cli import SMALL, sigkill_then_resume, train

LSTM2 = ["--arch", "lstm", "--num-layers", "2", "--dropout", "0.2"]


@pytest.fixture(scope="module")
def lstm_checkpoint(tmp_path_factory, data_path):
    out = tmp_path_factory.mktemp("lstm") / "lstm"
    train("--data", data_path, *SMALL, *LSTM2, "--num-epochs", "4", "--val-fraction", "0.1",
          "--out", out)
    return out


@pytest.mark.parametrize("args, message", [
    (["--arch", "transformer"], "--arch must be one of rnn, gru, lstm, got 'transformer'"),
    (["--num-layers", "0"], "--num-layers must be from 1 to 16, got 0"),
    (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    (["--dropout", "-0.5"], "--dropout must be in [0, 1), got -0.5"),
    (["--dropout", "nan"], "--dropout must be in [0, 1), got nan"),
])
def test_cell_settings_are_refused_in_one_line(tmp_path, data_path, args, message):
    proc = train("--data", data_path, *args, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_an_lstm_checkpoint_names_its_cell(lstm_checkpoint):
    config = json.loads((lstm_checkpoint / "config.json").read_text())
    assert (config["arch"], config["num_layers"], config["dropout"]) == ("lstm", 2, 0.2)
    tensors = load_file(lstm_checkpoint / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == param_shapes(28, 16, "lstm", 2)
    assert "W_xi_l1" in tensors and len(tensors) == 26
    card = (lstm_checkpoint / "README.md").read_text()
    assert "| cell | 2-layer LSTM, 16 hidden units (§9.2), dropout 0.2 |" in card
    assert "stacked 2 layers deep as in §9.3" in card and "- lstm" in card
    ckpt = load_checkpoint(lstm_checkpoint)
    assert ckpt.net.arch == "lstm" and ckpt.net.num_layers == 2 and not ckpt.net.training


def test_generate_greedy_is_predict_ch8_for_an_lstm(lstm_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "rnn_core", "generate", "--model",
                           lstm_checkpoint, "--prefix", "time traveller", "--num-preds", "40"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    ckpt = load_checkpoint(lstm_checkpoint)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == predict_ch8("time traveller", 40, ckpt.net, ckpt.vocab, "cpu") + "\n"


def test_old_rnn_checkpoints_load_as_the_rnn(bundled_checkpoint):
    assert "arch" not in json.loads((bundled_checkpoint / "config.json").read_text())
    ckpt = load_checkpoint(bundled_checkpoint)
    assert (ckpt.net.arch, ckpt.net.num_layers, ckpt.net.dropout) == ("rnn", 1, 0.0)
    assert ckpt.config.arch == "rnn"


@pytest.mark.parametrize("edit, message", [
    ({"arch": "gru"}, "expected exactly ['W_xz', 'W_hz', 'b_z'"),
    ({"num_layers": 3}, "expected exactly"),
    ({"arch": "mamba"}, "unknown arch 'mamba'; use one of rnn, gru, lstm"),
    ({"num_layers": 0}, "num_layers must be an integer from 1 to 16"),
    ({"num_layers": "2"}, "num_layers must be an integer"),
    ({"dropout": 1.5}, "dropout must be a number in [0, 1)"),
])
def test_a_checkpoint_whose_tensors_do_not_match_its_cell_is_refused(tmp_path, lstm_checkpoint,
                                                                     edit, message):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in ("model.safetensors", "vocab.json", "config.json"):
        (folder / f).write_bytes((lstm_checkpoint / f).read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(folder)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_deep_checkpoint_with_a_wrong_layer_shape_is_refused(tmp_path, lstm_checkpoint):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in ("vocab.json", "config.json"):
        (folder / f).write_bytes((lstm_checkpoint / f).read_bytes())
    tensors = load_file(lstm_checkpoint / "model.safetensors")
    tensors["W_xi_l1"] = tensors["W_xi"].clone()  # (28, 16) where (16, 16) belongs
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"W_xi_l1 has shape \(28, 16\), expected \(16, 16\)"):
        load_checkpoint(folder)


def test_sigkill_then_resume_is_bit_identical_for_a_deep_lstm_with_dropout(tmp_path, data_path):
    common = ["--data", data_path, *SMALL, *LSTM2, "--save-every", "2", "--seed", "4"]
    a, b, killed = sigkill_then_resume(tmp_path, common, 16, 4)
    assert set(a) == set(b) == set(param_shapes(28, 16, "lstm", 2))
    assert all(a[k].equal(b[k]) for k in a)
    config = json.loads((killed / "config.json").read_text())
    assert (config["arch"], config["num_layers"], config["dropout"]) == ("lstm", 2, 0.2)


def test_resume_continues_adam_exactly_for_a_deep_gru(tmp_path, data_path):
    """Adam's state is saved per parameter of the cell's own list (12 for a 2-layer GRU)."""
    common = ["--data", data_path, *SMALL, "--arch", "gru", "--num-layers", "2",
              "--optimizer", "adam", "--lr", "0.01"]
    train(*common, "--num-epochs", "4", "--out", tmp_path / "whole")
    train(*common, "--num-epochs", "2", "--out", tmp_path / "half")
    assert "resuming" in train("--resume", tmp_path / "half", "--num-epochs", "4").stdout
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in ("whole", "half"))
    assert set(a) == set(param_shapes(28, 16, "gru", 2)) and all(a[k].equal(b[k]) for k in a)


def test_push_and_load_an_lstm_through_the_hub(env, lstm_checkpoint):  # noqa: F811
    ckpt = load_checkpoint(lstm_checkpoint)
    expected = predict_ch8("time traveller", 40, ckpt.net, ckpt.vocab, "cpu") + "\n"
    sha = pushed_sha(push(env, lstm_checkpoint, f"{USER}/deep-lstm"))
    r = generate(env, f"{USER}/deep-lstm", "--revision", sha)
    assert r.returncode == 0 and r.stdout == expected
