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
SHARED_SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def text_file(env_var: str, shared: Path, download, what: str) -> Path:
    """A text the tests read: $`env_var` if set, else `shared` (in ../shared/data beside the
    checkout), else the project's own sha1-checked `download` into its cache (a fresh clone).
    Where none of these works the suite fails with one line saying where the file is
    expected; it never skips."""
    from rnn_core.data import DataError, cache_dir
    if os.environ.get(env_var):
        path = Path(os.environ[env_var])
        if not path.is_file():
            pytest.fail(f"test data missing: {env_var}={path} is not a file", pytrace=False)
        return path
    if shared.is_file():
        return shared
    try:
        return download()
    except DataError as e:
        pytest.fail(f"test data missing: {what} is expected at {shared} or in "
                    f"{cache_dir()}/{shared.name}, and downloading it failed ({e})", pytrace=False)


@pytest.fixture(scope="session")
def data_path() -> Path:
    """The book's text (text_file: $TIMEMACHINE_TXT, the shared copy, or the download)."""
    from rnn_core.data import download_time_machine
    return text_file("TIMEMACHINE_TXT", SHARED_DATA, download_time_machine, "the book's text")


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """tiny-shakespeare (text_file: $SHAKESPEARE_TXT, the shared copy, or the download)."""
    from rnn_core.data import download_shakespeare
    return text_file("SHAKESPEARE_TXT", SHARED_SHAKESPEARE, download_shakespeare,
                     "tiny-shakespeare")


@pytest.fixture(scope="module")
def d2l(data_path):
    """The book's own library (d2l 0.17.6), reading the local copy of its text."""
    from d2l_book import load_d2l
    return load_d2l(data_path)


@pytest.fixture(scope="module")
def book_corpus(data_path):
    """The book's corpus and vocabulary: the first 10,000 characters, as in §8.5 and ch. 9."""
    from rnn_core.data import load_corpus, read_text
    return load_corpus(read_text(data_path), "book", 10000)


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
