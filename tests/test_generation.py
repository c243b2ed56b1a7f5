"""Generation settings: one rule (rnn_core.generation.check_generation_settings) for the CLI,
CharRNN and TextStream, each refusing bad values with a message naming the setting."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from rnn_core import CharRNN
from rnn_core.generation import TextStream, SettingsError

BAD = [(-1, 0.0, 0, "num_preds must be a whole number >= 0, got -1"),
       (10, -0.5, 0, "temperature must be a finite number >= 0 (0 = greedy), got -0.5"),
       (10, math.nan, 0, "temperature must be a finite number >= 0 (0 = greedy), got nan"),
       (10, 1.0, -2, "top_k must be a whole number >= 0, got -2"),
       (10, 1.0, 2.5, "top_k must be a whole number >= 0, got 2.5")]


@pytest.mark.parametrize("num_preds, temperature, top_k, message", BAD)
def test_library_refuses_bad_settings_naming_the_setting(bundled_checkpoint, num_preds,
                                                         temperature, top_k, message):
    rnn = CharRNN.load(bundled_checkpoint)
    with pytest.raises(SettingsError) as e:
        rnn.generate("time", num_preds, temperature, top_k)
    assert str(e.value) == message
    gen = TextStream(rnn.net, rnn.vocab)
    gen.feed("time")
    with pytest.raises(SettingsError) as e:
        list(gen.generate(num_preds, temperature, top_k))
    assert str(e.value) == message


def test_cli_refuses_bad_settings_with_the_flag_name(bundled_checkpoint):
    r = subprocess.run([sys.executable, "-m", "rnn_core", "generate", "--model", str(bundled_checkpoint),
                        "--prefix", "time", "--top-k", "-2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "error: --top-k must be a whole number >= 0, got -2\n"


def test_without_torchscript_generation_runs_the_same_steps_eagerly(bundled_checkpoint,
                                                                      monkeypatch):
    """TorchScript is deprecated in torch 2.13: where `torch.jit.script` is gone or fails, the
    step runs as plain Python, with the same greedy text and the same sampled text."""
    import torch

    from rnn_core import generation
    rnn = CharRNN.load(bundled_checkpoint)

    def texts() -> list[str]:
        torch.manual_seed(3)
        return [rnn.generate("time traveller", 60), rnn.generate("the ", 60, 0.8, 5)]
    scripted = texts()
    assert generation.rnn_steps.compiled() is not generation.rnn_steps.__wrapped__

    def gone(fn):
        raise AttributeError("module 'torch.jit' has no attribute 'script'")
    every = (generation.rnn_steps, generation.rnn_draw_each, generation.draw,
             generation.sampling_weights)
    for fn in every:
        fn.compiled.cache_clear()
    monkeypatch.setattr(torch.jit, "script", gone)
    try:
        assert texts() == scripted
        assert generation.rnn_steps.compiled.cache_info().currsize == 1  # the texts ran it
        assert generation.rnn_steps.compiled() is generation.rnn_steps.__wrapped__
        assert generation.rnn_draw_each.compiled() is generation.rnn_draw_each.__wrapped__
    finally:
        for fn in every:
            fn.compiled.cache_clear()  # the next caller compiles again
