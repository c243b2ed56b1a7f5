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
DATA = Path(os.environ.get("TIMEMACHINE_TXT", ROOT.parent / "shared" / "data" / "timemachine.txt"))


@pytest.fixture(scope="session")
def data_path() -> Path:
    """`../shared/data/timemachine.txt` (or $TIMEMACHINE_TXT); fails, never skips, if absent."""
    if not DATA.is_file():
        pytest.fail(f"test data missing: expected the book's text at {DATA} "
                    "(../shared/data/timemachine.txt beside the checkout, or set TIMEMACHINE_TXT)")
    return DATA


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
