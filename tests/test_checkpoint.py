"""Checkpoint folders: round trip, atomic save, and every kind of damage refused clearly."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rnn_core.checkpoint import (CheckpointError, load_checkpoint, recover_checkpoint,
                                 save_checkpoint)
from rnn_core.data import Vocab
from rnn_core.generation import predict_ch8
from rnn_core.model import RNNModelScratch


@pytest.fixture
def ckpt(tmp_path, tiny_checkpoint) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    return folder


def _error(folder) -> str:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(folder)
    return str(e.value)


def test_round_trip_loads_the_same_model(tmp_path, ckpt):
    c = load_checkpoint(ckpt)
    out = save_checkpoint(tmp_path / "copy", dict(c.net.named_parameters()), c.vocab,
                          {"normalization": "book"})
    d = load_checkpoint(out)
    assert d.vocab.idx_to_token == c.vocab.idx_to_token and d.config.num_hiddens == 32
    assert predict_ch8("time traveller", 40, d.net, d.vocab, "cpu") == \
        predict_ch8("time traveller", 40, c.net, c.vocab, "cpu")


def test_save_is_atomic_a_crash_while_writing_keeps_the_old_checkpoint(tmp_path, ckpt, monkeypatch):
    before = (ckpt / "model.safetensors").read_bytes()
    c = load_checkpoint(ckpt)
    import rnn_core.checkpoint as mod

    def crash(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(mod, "_write_json", crash)
    with pytest.raises(OSError):
        save_checkpoint(ckpt, dict(c.net.named_parameters()), c.vocab, {"normalization": "book"})
    assert (ckpt / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left behind
    load_checkpoint(ckpt)


def test_crash_between_the_two_renames_is_recovered(tmp_path, ckpt):
    aside = ckpt.with_name(".ckpt.previous")
    os.rename(ckpt, aside)  # what a crash right after the first rename leaves
    recover_checkpoint(ckpt)
    assert ckpt.is_dir() and not aside.exists()
    load_checkpoint(ckpt)


def test_loading_never_undoes_a_save_that_a_live_run_is_making(tmp_path, ckpt):
    """Between a save's two renames only `.NAME.previous` exists; a reader (the app) must not
    move it back while the run that is saving holds the lock."""
    from rnn_core.runlock import RunLock
    aside = ckpt.with_name(".ckpt.previous")
    os.rename(ckpt, aside)
    with RunLock(ckpt):
        with pytest.raises(CheckpointError, match="does not exist"):
            load_checkpoint(ckpt)
        assert aside.is_dir() and not ckpt.exists()
    load_checkpoint(ckpt)  # the run died mid-save: now it is put back
    assert not aside.exists()


def test_gpu_style_tensors_and_float_weights_load_on_cpu(ckpt):
    c = load_checkpoint(ckpt, device="cpu")
    assert c.net.W_hh.device.type == "cpu" and c.net.W_hh.dtype == torch.float32


def test_missing_files(ckpt):
    (ckpt / "vocab.json").unlink()
    assert "vocab.json is missing" in _error(ckpt)


def test_missing_folder(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope")


def test_truncated_safetensors(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "not a valid safetensors file" in _error(ckpt)


def test_random_bytes_as_safetensors(ckpt):
    (ckpt / "model.safetensors").write_bytes(os.urandom(4096))
    assert "model.safetensors" in _error(ckpt)


def test_a_pickle_disguised_as_safetensors_is_never_executed(ckpt, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))
    (ckpt / "model.safetensors").write_bytes(pickle.dumps({"W_xh": Evil()}))
    torch.save({"W_xh": torch.zeros(1)}, tmp_path / "t.pt")
    assert "not a valid safetensors file" in _error(ckpt)
    (ckpt / "model.safetensors").write_bytes((tmp_path / "t.pt").read_bytes())
    assert "not a valid safetensors file" in _error(ckpt)
    assert not marker.exists()


def test_huge_header_length_is_refused_without_allocating(ckpt):
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    assert "not a valid safetensors file" in _error(ckpt)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(W_hh=t["W_hh"].double()), "W_hh is F64, expected float32"),
    (lambda t: t.update(W_hh=t["W_hh"][:, :5].contiguous()), "W_hh has shape (32, 5), expected (32, 32)"),
    (lambda t: t.pop("b_q"), "expected exactly"),
    (lambda t: t.update(extra=torch.zeros(2)), "expected exactly"),
    (lambda t: t["W_hq"].__setitem__((0, 0), float("nan")), "NaN or infinite"),
])
def test_wrong_tensors(ckpt, change, message):
    tensors = load_file(ckpt / "model.safetensors")
    change(tensors)
    save_file(tensors, ckpt / "model.safetensors")
    assert message in _error(ckpt)


@pytest.mark.parametrize("edit, message", [
    ({"vocab_size": 29}, "has 28 tokens but config.json says vocab_size 29"),
    ({"num_hiddens": 10 ** 9}, "num_hiddens must be an integer from 1 to 8192"),
    ({"vocab_size": "28"}, "vocab_size must be an integer"),
    ({"num_hiddens": 8192, "vocab_size": 65536}, "refusing to allocate"),
    ({"normalization": "shout"}, "normalization must be one of"),
])
def test_bad_configs(ckpt, edit, message):
    config = json.loads((ckpt / "config.json").read_text())
    config.update(edit)
    (ckpt / "config.json").write_text(json.dumps(config))
    assert message in _error(ckpt)


def test_format_version_is_written_and_checked_on_load(tmp_path, ckpt):
    """Saves say format_version 1; a config without one (written before it existed) loads as
    version 1; a newer version is refused with one line saying to upgrade."""
    c = load_checkpoint(ckpt)
    out = save_checkpoint(tmp_path / "copy", dict(c.net.named_parameters()), c.vocab,
                          {"normalization": "book"})
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "d2l-char-rnn-scratch" and config["format_version"] == 1
    del config["format_version"]
    (out / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(out).config.format_version == 1
    for version, message in [(2, "format_version 2 is newer than this code reads (1); upgrade the "
                                 "rnn_core package to load it"),
                             ("1", "format_version must be a positive integer, got '1'"),
                             (True, "format_version must be a positive integer, got True")]:
        config["format_version"] = version
        (out / "config.json").write_text(json.dumps(config))
        error = _error(out)
        assert error == f"{out / 'config.json'}: {message}" and "\n" not in error


def test_bad_vocab_and_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    assert "config.json is not valid JSON" in _error(ckpt)


def test_vocab_must_start_with_unk(ckpt):
    tokens = json.loads((ckpt / "vocab.json").read_text())
    (ckpt / "vocab.json").write_text(json.dumps(tokens[::-1]))
    assert "must start with '<unk>'" in _error(ckpt)


def test_vocab_weights_mismatch(ckpt):
    tokens = json.loads((ckpt / "vocab.json").read_text())
    (ckpt / "vocab.json").write_text(json.dumps(tokens + ["@"]))
    config = json.loads((ckpt / "config.json").read_text())
    config["vocab_size"] = 29
    (ckpt / "config.json").write_text(json.dumps(config))
    assert "W_xh has shape (28, 32), expected (29, 32)" in _error(ckpt)


def test_save_refuses_a_file_as_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    net = RNNModelScratch(3, 2)
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        save_checkpoint(tmp_path / "f", dict(net.named_parameters()), Vocab(list("ab")),
                        {"normalization": "raw"})
