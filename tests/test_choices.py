"""`auto`'s kernel choice, remembered per machine (rnn_core/choices.py): timed once, then taken
from the cache by later processes (train.py runs included); a damaged or foreign file is
timed afresh and repaired; an unwritable cache only costs the remembering."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from rnn_core import choices, fast_cells
from rnn_core.fast import onednn_available
from rnn_core.fast_cells import FastCells, onednn_lstm_available
from rnn_core.model import RNNModelScratch
from rnn_core.resume import STATE_JSON
from test_train_cli import SMALL

needs_onednn = pytest.mark.skipif(not onednn_lstm_available(), reason="this torch build has no "
                                  "oneDNN LSTM: one backend, nothing to choose")


@pytest.fixture
def timings(monkeypatch, tmp_path):
    """An empty cache in tmp_path, nothing chosen in this process, and the timing replaced by
    a record of its calls (oneDNN measured faster): returns the calls."""
    monkeypatch.setenv("RNN_CORE_CACHE", str(tmp_path))
    calls = []

    def timed(forwards, X, y, state, reps=7):
        calls.append(list(forwards))
        return {"hand": 0.010, "onednn": 0.005}
    monkeypatch.setattr(fast_cells, "time_steps", timed)
    fast_cells.choose_backend.cache_clear()
    yield calls
    fast_cells.choose_backend.cache_clear()


def first_step() -> str:
    """A new process's first minibatch of a small 2-layer LSTM (the in-process choice
    forgotten first); the backend it ran."""
    fast_cells.choose_backend.cache_clear()
    torch.manual_seed(0)
    net = RNNModelScratch(28, 16, arch="lstm", num_layers=2)
    f = FastCells(net)
    f(torch.randint(0, 28, (4, 5)), net.begin_state(4))
    return f.backend


def recorded() -> dict[str, str]:
    return json.loads(choices.path().read_text())["choices"]


@needs_onednn
def test_a_choice_is_timed_once_and_taken_from_the_cache_by_later_processes(timings):
    assert first_step() == "onednn" and timings == [["hand", "onednn"]]
    assert list(recorded().values()) == ["onednn"]
    assert first_step() == "onednn" and len(timings) == 1      # not timed again
    (key,) = recorded()
    choices._write({key: "hand"})                                # what an earlier run measured
    assert first_step() == "hand" and len(timings) == 1


@needs_onednn
def test_another_instruction_set_limit_or_changed_kernel_code_is_timed_afresh(timings,
                                                                          monkeypatch):
    first_step()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    first_step()
    assert len(timings) == 2 and len(recorded()) == 2
    monkeypatch.setattr(choices, "kernels_digest", lambda: "an upgraded kernel")
    first_step()
    assert len(timings) == 3 and len(recorded()) == 3


@needs_onednn
@pytest.mark.parametrize("content", [
    "not json", "", "[]", '{"choices": []}', '{"choices": {"x": 1}}', "[" * 200_000,
    '{"choices": {KEY: "../../etc/passwd"}}',                  # not a backend
    '{"choices": {KEY: "hand"}}' + " " * choices.MAX_BYTES,   # a valid entry, too large to read
], ids=["text", "empty", "list", "choices-list", "number", "nested", "unknown-backend", "huge"])
def test_a_damaged_or_foreign_file_is_timed_afresh_and_repaired(timings, content):
    first_step()
    (key,) = recorded()
    choices.path().write_text(content.replace("KEY", json.dumps(key)))
    assert first_step() == "onednn" and len(timings) == 2
    assert list(recorded().values()) == ["onednn"]


@needs_onednn
def test_an_unwritable_cache_only_costs_the_remembering(timings, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("RNN_CORE_CACHE", str(blocker / "cache"))  # under a file: cannot exist
    assert first_step() == "onednn" and first_step() == "onednn" and len(timings) == 2
    assert not (blocker / "cache").exists()
    monkeypatch.delenv("RNN_CORE_CACHE")             # and no home directory to find one in

    def no_home():
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(choices.Path, "home", no_home)
    assert first_step() == "onednn" and len(timings) == 3


def test_the_file_keeps_the_latest_shapes_only(monkeypatch, tmp_path):
    monkeypatch.setenv("RNN_CORE_CACHE", str(tmp_path))
    cpu = torch.device("cpu")
    for n in range(choices.MAX_ENTRIES + 5):
        choices.remembered("test", (n,), 1, cpu, ["a"], lambda: "a")
    kept = recorded()
    assert len(kept) == choices.MAX_ENTRIES and json.loads(next(iter(kept)))[3] == ["5"]
    assert not [p for p in tmp_path.iterdir() if p.name != choices.FILENAME]  # no leftovers


@needs_onednn
def test_train_py_takes_the_recorded_kernel(tmp_path, data_path):
    """Two runs of train.py on one machine: the first times and records its choice, the second
    runs (and saves for --resume) whatever the cache says, without timing."""
    env = {**os.environ, "RNN_CORE_CACHE": str(tmp_path / "cache")}

    def run(out):
        subprocess.run([sys.executable, "train.py", "--data", str(data_path), *SMALL,
                        "--arch", "lstm", "--num-layers", "2", "--num-epochs", "1",
                        "--out", str(tmp_path / out)], cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=300)
        return json.loads((tmp_path / out / STATE_JSON).read_text())["backend"]
    first = run("first")
    file = tmp_path / "cache" / choices.FILENAME
    entries = json.loads(file.read_text())["choices"]
    assert list(entries.values()) == [first]
    other = {"hand": "onednn", "onednn": "hand"}[first]
    file.write_text(json.dumps({"choices": dict.fromkeys(entries, other)}))
    assert run("second") == other


def train_py(tmp_path, *args):
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "RNN_CORE_CACHE": str(tmp_path / "cache")})


def test_fast_backend_forces_a_kernel_and_the_run_records_it(tmp_path, data_path):
    """--fast-backend NAME computes with that kernel without timing (nothing recorded), the
    resume state and config.json name it, and a --resume may switch to another."""
    common = ["--data", data_path, *SMALL, "--num-hiddens", "32", "--out", tmp_path / "run"]
    proc = train_py(tmp_path, *common, "--num-epochs", "1", "--fast-backend", "plain")
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((tmp_path / "run" / STATE_JSON).read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert state["backend"] == config["training"]["fast_backend"] == "plain"
    assert not (tmp_path / "cache" / choices.FILENAME).exists()
    if not onednn_available():
        return
    proc = train_py(tmp_path, "--resume", tmp_path / "run", "--num-epochs", "2",
                    "--fast-backend", "onednn")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / STATE_JSON).read_text())["backend"] == "onednn"


@pytest.mark.parametrize("args, message", [
    (["--fast-backend", "hand"], "error: --fast-backend hand does not apply to this model and "
                                 "minibatch here; use one of auto, plain"),
    (["--fast-backend", "rows"], "error: --fast-backend rows does not apply to this model and "
                                 "minibatch here; use one of auto, plain"),  # 8 rows, 1 thread
    (["--arch", "gru", "--fast-backend", "onednn"],
     "error: --fast-backend onednn does not apply to this model and minibatch here; use one of "
     "auto, hand"),
    (["--fast-backend", "rows", "--kernel", "book"],
     "error: --fast-backend rows chooses among the fast kernels; drop it, or drop --kernel book"),
])
def test_a_fast_backend_that_does_not_apply_is_refused_in_one_line(tmp_path, data_path, args,
                                                                   message):
    proc = train_py(tmp_path, "--data", data_path, *SMALL, "--out", tmp_path / "run", *args)
    assert proc.returncode == 2 and proc.stderr.strip() == message
    assert not (tmp_path / "run").exists()
