"""The one rule for "local folder or Hub repo id?" (rnn_core/modelref.py), and library
refusals that name a setting, re-worded with a command's flags (rnn_core/errors.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from rnn_core.checkpoint import CheckpointError, check_out_folder
from rnn_core.errors import for_command_line
from rnn_core.modelref import ModelRef, parse_model_ref


@pytest.fixture
def here(tmp_path, monkeypatch):
    (tmp_path / "runs" / "rnn").mkdir(parents=True)
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("ref, expected", [
    ("runs/rnn", ModelRef(folder=Path("runs/rnn"))),           # 1. an existing folder
    ("model", ModelRef(folder=Path("model"))),
    (" runs/rnn ", ModelRef(folder=Path("runs/rnn"))),
    ("./missing", ModelRef(folder=Path("./missing"))),         # 2. path-shaped, missing or not
    ("/no/such/folder", ModelRef(folder=Path("/no/such/folder"))),
    ("~/nothing", ModelRef(folder=Path("~/nothing"))),
    ("a/b/c", ModelRef(folder=Path("a/b/c"))),
    ("owner/", ModelRef(folder=Path("owner/"))),
    ("a\\b", ModelRef(folder=Path("a\\b"))),
    ("someone/timemachine-rnn", ModelRef(repo_id="someone/timemachine-rnn")),   # 3. Hub ids
    ("gpt2", ModelRef(repo_id="gpt2")),
    ("runs/other", ModelRef(repo_id="runs/other")),            # no such folder: a repo id
])
def test_folder_or_hub_repo_id(here, ref, expected):
    assert parse_model_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "  ", None, 42, "a b/c", "owner/na me", "owner/--x",
                                 "own..er/x", "x" * 300, "owner/name\x00", "owner/<script>",
                                 "ünï/code", "-lead/x", "not a repo!"])
def test_neither_is_refused(here, ref):
    with pytest.raises(CheckpointError) as e:
        parse_model_ref(ref)
    assert e.value.setting == "ref" and "\n" not in str(e.value)


def test_revisions_are_for_hub_repos_and_checked(here):
    assert parse_model_ref("someone/model", " v1.0 ") == ModelRef(repo_id="someone/model",
                                                                   revision="v1.0")
    assert parse_model_ref("runs/rnn", "  ") == ModelRef(folder=Path("runs/rnn"))
    for ref in ("runs/rnn", "./missing"):
        with pytest.raises(CheckpointError, match="^revision only applies to Hub repo ids"):
            parse_model_ref(ref, "main")
    for revision in ("../../etc", "a b", "\x00", "x" * 200, "-rf"):
        with pytest.raises(CheckpointError, match="^revision .* is not a valid revision") as e:
            parse_model_ref("someone/model", revision)
        assert e.value.setting == "revision"


def test_the_caller_says_which_folders_exist(here):
    """The app's rule 1: only folders under its checkpoints/ count, whatever else exists."""
    allowed = {"checkpoints/good": here / "checkpoints" / "good"}
    assert parse_model_ref("checkpoints/good", folder=allowed.get).folder == allowed["checkpoints/good"]
    assert parse_model_ref("runs/rnn", folder=allowed.get) == ModelRef(repo_id="runs/rnn")


def test_library_words_and_command_line_words(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError) as e:
        check_out_folder(tmp_path / "file")
    assert str(e.value).startswith(f"out_dir {tmp_path / 'file'} is a file") and "--" not in str(e.value)
    assert for_command_line(e.value, {"out_dir": "--out"}).startswith(f"--out {tmp_path / 'file'} is a file")
    assert for_command_line(e.value, {}) == str(e.value)
    assert for_command_line(ValueError("out_dir x"), {"out_dir": "--out"}) == "out_dir x"
