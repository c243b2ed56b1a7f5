"""Shared fixtures: the book's text and a tiny trained checkpoint made by the real train.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests run many small models, often side by side on 2 cores: one intra-op thread each avoids
# OpenMP spin-waiting that makes tiny models 50x slower under load (subprocesses inherit this).
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data" / "timemachine.txt"


@pytest.fixture(scope="session")
def data_path() -> Path:
    """The book's text: $TIMEMACHINE_TXT if set, else `../shared/data/timemachine.txt` beside the
    checkout, else the project's own sha1-checked download into its cache (a fresh clone).
    Where none of these works the suite fails with one line saying where the file is expected;
    it never skips."""
    from rnn_core.data import DataError, cache_dir, download_time_machine
    if os.environ.get("TIMEMACHINE_TXT"):
        path = Path(os.environ["TIMEMACHINE_TXT"])
        if not path.is_file():
            pytest.fail(f"test data missing: TIMEMACHINE_TXT={path} is not a file", pytrace=False)
        return path
    if SHARED_DATA.is_file():
        return SHARED_DATA
    try:
        return download_time_machine()
    except DataError as e:
        pytest.fail(f"test data missing: the book's text is expected at {SHARED_DATA} or in "
                    f"{cache_dir()}/timemachine.txt, and downloading it failed ({e})", pytrace=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, data_path) -> Path:
    """A small model (32 hidden units, 30 epochs on 10k characters) trained by train.py."""
    import train
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    rc = train.main(["--data", str(data_path), "--num-hiddens", "32", "--num-epochs", "30",
                     "--val-fraction", "0.1", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def bundled_checkpoint() -> Path:
    """The default model shipped in checkpoints/."""
    return ROOT / "checkpoints" / "timemachine-rnn512"


@pytest.fixture(scope="session")
def bundled(bundled_checkpoint):
    """The bundled model, loaded."""
    from rnn_core.checkpoint import load_checkpoint
    return load_checkpoint(bundled_checkpoint)
