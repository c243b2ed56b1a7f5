"""train.py never loses a user's files: what --out may replace, interrupted saves, one run per
folder, SIGTERM, a full disk, checked --resume, sizes the loader accepts, what config.json
records, file modes. Each test runs train.py as a user would, in a subprocess."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ROOT
from test_train_cli import _epochs_saved as epochs_saved, _wait_for as wait_for

SMALL = ["--num-hiddens", "16", "--max-tokens", "2000", "--batch-size", "4", "--num-steps", "10"]


def train(*args, cwd=ROOT, check=True, timeout=300, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one `error:` line naming the problem, no traceback, no training started."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "%|" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Background:
    """train.py running in the background (a long run of the small model); its stderr is
    collected as it comes, so a test can wait for a line."""

    def __init__(self, data_path, out: Path, *flags, **kw):
        self.proc = subprocess.Popen(
            [sys.executable, "train.py", "--data", str(data_path), *SMALL, "--num-epochs", "100000",
             *map(str, flags), "--out", str(out)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
        self.pid, self.lines = self.proc.pid, []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr),
                                        daemon=True)
        self._reader.start()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout=120) -> tuple[int, str]:
        self.proc.wait(timeout)
        self._reader.join(timeout)
        return self.proc.returncode, self.stderr


@pytest.fixture
def start(data_path):
    """`start(out, *flags)`: a Background run, killed at the end of the test if still running."""
    runs = []
    yield lambda out, *flags, **kw: runs.append(Background(data_path, out, *flags, **kw)) or runs[-1]
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


@pytest.fixture(scope="module")
def run2(tmp_path_factory, data_path) -> Path:
    """A finished 2-epoch run (resumable) to copy from."""
    out = tmp_path_factory.mktemp("run2") / "run"
    train("--data", data_path, *SMALL, "--num-epochs", "2", "--out", out)
    return out


# -- 1. --out may only replace a checkpoint of this project ------------------------------------

@pytest.mark.parametrize("setup, words", [
    ("data-folder", ["holds files that are not part of a checkpoint", "notes.txt", "would delete"]),
    ("parent-of-checkpoint", ["holds files that are not part of a checkpoint", "timemachine-rnn512"]),
    ("checkpoint-plus-notes", ["notes.txt"]),
    ("foreign-config", ["is not a checkpoint of this project"]),
    ("link-to-folder", ["is a symbolic link"]),
    ("link-to-checkpoint", ["is a symbolic link"]),
    ("file", ["is a file, not a folder"]),
])
def test_out_that_is_not_a_checkpoint_is_refused_before_training(tmp_path, data_path, run2, setup,
                                                                  words):
    out = tmp_path / "out"
    if setup == "data-folder":  # `--out mydata`: the training text and a notes file
        out.mkdir()
        shutil.copy(data_path, out / "timemachine.txt")
        (out / "notes.txt").write_text("my notes")
    elif setup == "parent-of-checkpoint":  # `--out checkpoints`
        out.mkdir()
        shutil.copytree(run2, out / "timemachine-rnn512")
    elif setup == "checkpoint-plus-notes":
        shutil.copytree(run2, out)
        (out / "notes.txt").write_text("my notes")
    elif setup == "foreign-config":  # another project's model: config.json + model.safetensors
        out.mkdir()
        (out / "config.json").write_text('{"vocab_size": 28, "num_hiddens": 16}')
        shutil.copy(run2 / "model.safetensors", out)
    elif setup.startswith("link-to"):
        target = tmp_path / "target"
        if setup == "link-to-checkpoint":
            shutil.copytree(run2, target)
        else:
            target.mkdir()
            (target / "keep.txt").write_text("keep")
        out.symlink_to(target)
    elif setup == "file":
        out.write_text("precious")
    before = {p: tree(p) if p.is_dir() else p.read_bytes() for p in tmp_path.iterdir()}
    proc = train("--data", data_path, *SMALL, "--num-epochs", "1", "--out", out, check=False)
    refused(proc, f"--out {out}", *words)
    after = {p: tree(p) if p.is_dir() else p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # nothing touched, no lock file left
    assert out.is_symlink() == setup.startswith("link-to")


def test_out_dot_is_refused(tmp_path, data_path):
    (tmp_path / "keep.txt").write_text("keep")
    for out in (".", "..", "sub/.."):
        refused(train("--data", data_path, *SMALL, "--out", out, cwd=tmp_path, check=False),
                "does not name a checkpoint folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_empty_folder_and_existing_checkpoint_are_written(tmp_path, data_path, run2):
    empty = tmp_path / "empty"
    empty.mkdir()
    train("--data", data_path, *SMALL, "--num-epochs", "1", "--out", empty)
    assert epochs_saved(empty) == 1
    again = tmp_path / "again"
    shutil.copytree(run2, again)
    train("--data", data_path, *SMALL, "--num-epochs", "1", "--out", again)
    assert epochs_saved(again) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "empty"]  # no leftovers, no lock


# -- 2. whatever an interrupted save left is recovered, and said ---------------------------------

def test_leftovers_of_interrupted_saves_are_recovered_and_reported(tmp_path, data_path, run2):
    out = tmp_path / "run"
    shutil.copytree(run2, out)
    # killed while deleting the old copy: a partial `.run.previous` beside the new folder
    shutil.copytree(run2, tmp_path / ".run.previous")
    (tmp_path / ".run.previous" / "model.safetensors").unlink()
    # killed while writing: an unfinished temporary folder
    shutil.copytree(run2, tmp_path / ".run.tmp-1a2b3c4d")
    (tmp_path / ".run.tmp-1a2b3c4d" / "config.json").unlink()
    proc = train("--data", data_path, *SMALL, "--num-epochs", "3", "--out", out)
    assert "note: deleted .run.previous" in proc.stderr and "note: deleted .run.tmp-1a2b3c4d" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and epochs_saved(out) == 3


def test_a_save_killed_between_its_renames_is_restored_then_resumed(tmp_path, data_path, run2):
    out = tmp_path / "run"
    shutil.copytree(run2, tmp_path / ".run.previous")  # `run` itself is missing
    proc = train("--resume", out, "--num-epochs", "3")
    assert "note: restored" in proc.stderr and ".run.previous" in proc.stderr
    assert "resuming" in proc.stdout and epochs_saved(out) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_leftover_holding_other_files_is_never_deleted(tmp_path, data_path, run2):
    out = tmp_path / "run"
    shutil.copytree(run2, out)
    (tmp_path / ".run.previous").mkdir()
    (tmp_path / ".run.previous" / "thesis.tex").write_text("years of work")
    proc = train("--data", data_path, *SMALL, "--num-epochs", "1", "--out", out, check=False)
    refused(proc, ".run.previous", "move it away")
    assert (tmp_path / ".run.previous" / "thesis.tex").read_text() == "years of work"
    assert epochs_saved(out) == 2


# -- 3. one run per --out ---------------------------------------------------------------------------

def test_a_second_run_into_the_same_out_is_refused_naming_the_first(tmp_path, data_path, start):
    out = tmp_path / "run"
    first = start(out, "--save-every", "1")
    wait_for(lambda: epochs_saved(out) >= 1)
    began = time.time()
    line = refused(train("--data", data_path, *SMALL, "--out", out, check=False),
                   "is being written by another run", f"pid {first.pid} on {socket.gethostname()}",
                   "started 20")
    assert time.time() - began < 30  # at once, not after training
    refused(train("--resume", out, check=False), f"pid {first.pid}")
    assert "choose another --out" in line
    first.proc.send_signal(signal.SIGINT)
    assert first.finish()[0] == 130
    assert not (tmp_path / ".run.lock").exists()  # released on exit


def test_a_stale_lock_of_a_dead_run_is_taken_over(tmp_path, data_path):
    out = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".run.lock").write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}))
    proc = train("--data", data_path, *SMALL, "--num-epochs", "1", "--out", out)
    assert "note: took over the lock" in proc.stderr and f"pid {dead.pid}" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_killed_with_sigkill_leaves_no_lock_that_blocks_the_next(tmp_path, data_path, start):
    out = tmp_path / "run"
    run = start(out, "--save-every", "1")
    wait_for(lambda: epochs_saved(out) >= 1)
    run.proc.kill()
    run.proc.wait()
    resumed = train("--resume", out, "--num-epochs", str(epochs_saved(out) + 1))
    assert "took over the lock" in resumed.stderr and "resuming" in resumed.stdout


# -- 4. SIGTERM is Ctrl-C -----------------------------------------------------------------------

def test_sigterm_saves_the_last_epoch_and_prints_the_resume_command(tmp_path, data_path, start):
    out = tmp_path / "term"
    run = start(out, "--save-every", "1000")
    wait_for(lambda: "| 2/100000 [" in run.stderr)  # two epochs done, none saved (--save-every 1000)
    assert not out.exists()
    run.proc.send_signal(signal.SIGTERM)
    status, err = run.finish()
    assert status == 143, err
    assert "Traceback" not in err
    assert "stopped by SIGTERM: saved the run after epoch" in err
    assert f"continue with: python train.py --resume {out}" in err
    saved = epochs_saved(out)
    assert saved >= 1 and {"README.md", "perplexity.png", "training_state.json"} <= {
        p.name for p in out.iterdir()}
    resumed = train("--resume", out, "--num-epochs", str(saved + 1))
    assert f"resuming {out} after epoch {saved}" in resumed.stdout and epochs_saved(out) == saved + 1


def test_help_documents_the_exit_statuses():
    out = train("--help").stdout
    assert "Exit status: 0 done; 2 refused before training" in out
    assert "5 the final checkpoint could not be written" in out and "130 / 143" in out


# -- 5. --resume reads the text the run was trained on, with the saved vocabulary ----------------

def test_resume_refuses_a_changed_data_file_and_accepts_the_same_text_elsewhere(tmp_path, data_path):
    text = tmp_path / "book.txt"
    shutil.copy(data_path, text)
    out = tmp_path / "run"
    train("--data", text, *SMALL, "--num-epochs", "2", "--out", out)
    before = tree(out)
    text.write_text(text.read_text() + "\nZebra quiz, jumping vex!\n")  # same name, other text
    refused(train("--resume", out, "--num-epochs", "3", check=False), "sha1", "--data")
    text.write_text("Völlig anderer Text, ganz neue Zeichen: ÄÖÜß. " * 200)  # other vocabulary
    refused(train("--resume", out, "--num-epochs", "3", check=False), "sha1")
    text.unlink()
    refused(train("--resume", out, "--num-epochs", "3", check=False), "does not exist",
            "pass --data")
    assert tree(out) == before  # vocab.json and weights untouched by every refusal
    moved = tmp_path / "moved" / "copy.txt"
    moved.parent.mkdir()
    shutil.copy(data_path, moved)
    resumed = train("--resume", out, "--data", moved, "--num-epochs", "3")
    assert "resuming" in resumed.stdout and epochs_saved(out) == 3
    assert json.loads((out / "vocab.json").read_text()) == json.loads(before["vocab.json"])


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, run2):
    refused(train("--resume", tmp_path / "typo" / "run", check=False), "no such checkpoint folder")
    refused(train("--resume", tmp_path / "typo", check=False), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    out = tmp_path / "run"
    shutil.copytree(run2, out)
    refused(train("--resume", out, "--lr", "0.5", "--num-epochs", "3", check=False),
            "--lr 0.5 cannot apply", "--lr 1.0")
    refused(train("--resume", out, "--num-epochs", "1", check=False), "already has 2 epochs")
    done = train("--resume", out)
    assert "already finished its 2 epochs; nothing to do" in done.stdout
    assert epochs_saved(out) == 2


def test_extending_a_cosine_run_keeps_its_curve_then_trains_at_min_lr(tmp_path, data_path,
                                                                      monkeypatch):
    """The cosine spans the epochs the run was started with: --resume --num-epochs N continues
    that curve to its end, then --min-lr; extending in one go or in steps is the same run."""
    import train as cli
    from rnn_core import training
    lrs = []
    set_lr = training.set_lr
    monkeypatch.setattr(training, "set_lr", lambda updater, lr: (lrs.append(lr), set_lr(updater, lr)))
    once, steps = tmp_path / "once", tmp_path / "steps"
    assert cli.main(["--data", str(data_path), *SMALL, "--min-lr", "0.1", "--num-epochs", "2",
                     "--device", "cpu", "--out", str(once)]) == 0
    curve, lrs[:] = list(lrs), []
    shutil.copytree(once, steps)
    assert cli.main(["--resume", str(once), "--num-epochs", "4"]) == 0
    assert lrs[0] <= curve[-1] and lrs == sorted(lrs, reverse=True)  # on down the same curve
    assert lrs[-1] == 0.1 and lrs.count(0.1) > len(lrs) // 2  # then at --min-lr
    assert cli.main(["--resume", str(steps), "--num-epochs", "3"]) == 0
    assert cli.main(["--resume", str(steps), "--num-epochs", "4"]) == 0
    a, b = load_file(once / "model.safetensors"), load_file(steps / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)
    assert epochs_saved(once) == epochs_saved(steps) == 4


def test_resume_files_keep_the_cuda_generator_and_older_files_still_resume(tmp_path, run2):
    """The CUDA generator's state (16 bytes: seed, offset) survives the files' round trip; a
    CPU run saves none. Files without it or the schedule (older versions) still resume."""
    import torch
    from rnn_core.checkpoint import load_checkpoint
    from rnn_core.resume import load_training_state
    out = tmp_path / "run"
    shutil.copytree(run2, out)
    weights = dict(load_checkpoint(out).net.named_parameters())
    state = load_training_state(out, weights)
    assert state.cuda_rng is None and "cuda_rng" not in load_file(out / "training_state.safetensors")
    assert (state.planned_epochs, state.schedule_steps) == (2, 98)  # 2 epochs of 49 minibatches
    state.cuda_rng = torch.arange(100, 116, dtype=torch.uint8)
    for name, data in state.files().items():
        (out / name).write_bytes(data)
    again = load_training_state(out, weights)
    assert again.cuda_rng.equal(state.cuda_rng) and again.schedule_steps == 98
    assert again.torch_rng.equal(state.torch_rng) and again.python_rng == state.python_rng
    older = tmp_path / "older"
    shutil.copytree(run2, older)
    _edit_state(older, lambda m: m.pop("schedule"))
    assert "resuming" in train("--resume", older, "--num-epochs", "3").stdout


def test_resume_computes_with_the_fast_kernel_backend_the_run_used(tmp_path, data_path, run2):
    """`auto` picks a backend by timing, which may pick another in a new process: the resume
    state records the run's, and the resumed run uses it; one that does not apply here (an
    LSTM's for an RNN) gets a note and auto's choice."""
    def state(folder):
        return json.loads((folder / "training_state.json").read_text())
    assert state(run2)["backend"] == "plain"  # the only fast RNN kernel for a batch of 4
    out = tmp_path / "run"
    shutil.copytree(run2, out)
    _edit_state(out, lambda m: m.update(backend="rows"))
    done = train("--resume", out, "--num-epochs", "3")
    assert "note:" not in done.stderr and state(out)["backend"] == "rows"
    _edit_state(out, lambda m: m.update(backend="hand"))
    done = train("--resume", out, "--num-epochs", "4")
    assert "note: the run's fast kernel (hand) does not apply on this machine" in done.stderr
    assert state(out)["backend"] == "plain" and state(out)["epoch"] == 4
    book = tmp_path / "book"
    train("--data", data_path, *SMALL, "--num-epochs", "1", "--kernel", "book", "--out", book)
    assert "backend" not in state(book)


# -- 6. a full disk during a save -----------------------------------------------------------------

def test_a_failing_save_is_one_line_and_the_previous_checkpoint_survives(tmp_path, data_path, start):
    """The file-size limit (RLIMIT_FSIZE, set on the running process) fails writes the way a
    full disk does: an OSError from write()."""
    out = tmp_path / "run"
    run = start(out, "--num-epochs", "60", "--save-every", "1")
    wait_for(lambda: epochs_saved(out) >= 1)
    resource.prlimit(run.pid, resource.RLIMIT_FSIZE, (1000, 1000))  # the weights need ~5 KB
    status, err = run.finish(timeout=300)
    saved = epochs_saved(out)
    assert status == 5 and "Traceback" not in err, err[-3000:]
    assert 1 <= saved < 60
    assert "warning: could not save epoch" in err and "File too large" in err
    assert "training goes on and the next save tries again" in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "could not write the checkpoint of epoch 60" in errors[0]
    assert f"still holds the checkpoint of epoch {saved}" in errors[0] and "failed too" in errors[0]
    assert f"continue from epoch {saved} with: python train.py --resume {out}" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no half-written folder left
    resumed = train("--resume", out)  # the disk has room again: the run completes
    assert f"after epoch {saved}" in resumed.stdout and epochs_saved(out) == 60


def test_a_run_whose_out_cannot_be_written_at_the_end_is_rescued(tmp_path, data_path, start):
    """A file dropped into --out during training: the final save must not delete it, and the
    run is kept in a new folder under $TMPDIR instead, with the command to continue."""
    out, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    run = start(out, "--save-every", "2", env={**os.environ, "TMPDIR": str(tmp)})
    wait_for(lambda: epochs_saved(out) >= 2)
    (out / "notes.txt").write_text("mine")
    wait_for(lambda: "warning: could not save epoch" in run.stderr)
    run.proc.send_signal(signal.SIGINT)
    status, err = run.finish()
    assert status == 5 and "Traceback" not in err
    assert "warning: could not save epoch" in err and "notes.txt" in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "was saved instead to" in errors[0], err[-2000:]
    rescued = Path(errors[0].split("was saved instead to ")[1].split(":")[0])
    assert rescued.parent.parent == tmp and (out / "notes.txt").read_text() == "mine"
    epoch = epochs_saved(rescued)
    assert epoch > epochs_saved(out) >= 2
    command = errors[0].split("continue with: ")[1].split()
    assert command[:3] == ["python", "train.py", "--resume"]
    again = train(*command[2:-2], "--out", tmp_path / "fresh", "--num-epochs", epoch + 1)
    assert f"after epoch {epoch}" in again.stdout and epochs_saved(tmp_path / "fresh") == epoch + 1


# -- 7. never write a checkpoint the loader refuses ------------------------------------------------

def test_sizes_the_loader_refuses_are_refused_before_training(tmp_path, data_path):
    refused(train("--data", data_path, "--num-hiddens", "8193", "--out", tmp_path / "h", check=False),
            "num_hiddens must be an integer from 1 to 8192")
    wide = tmp_path / "wide.txt"  # 70,000 distinct characters, as --normalize raw keeps them
    wide.write_text("".join(chr(0x40000 + i) for i in range(70_000)) * 2, encoding="utf-8")
    refused(train("--data", wide, "--normalize", "raw", "--max-tokens", "0", "--num-hiddens", "8",
                  "--out", tmp_path / "v", check=False),
            "vocab_size must be an integer from 1 to 65536, got 70001")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.txt"]


# -- 9. what is shared holds no local paths, and reproduces the run -------------------------------

def test_config_records_a_reproducing_command_without_local_paths(tmp_path, data_path):
    home = tmp_path / "home" / "alice" / "secret-project"
    home.mkdir(parents=True)
    shutil.copy(data_path, home / "timemachine.txt")
    out = home / "runs" / "rnn"
    train("--data", home / "timemachine.txt", *SMALL, "--num-epochs", "2", "--seed", "3",
          "--out", out)
    config = (out / "config.json").read_text()
    card = (out / "README.md").read_text()
    for text in (config, card):
        assert str(tmp_path) not in text and "alice" not in text
    command = json.loads(config)["training"]["command"]
    assert command == ("python train.py --data timemachine.txt --num-hiddens 16 --batch-size 4 "
                       "--num-steps 10 --num-epochs 2 --max-tokens 2000 --seed 3")
    assert command in card
    # Someone else, with the text under its recorded name, runs the recorded command.
    elsewhere = tmp_path / "bob"
    elsewhere.mkdir()
    shutil.copy(data_path, elsewhere / "timemachine.txt")
    argv = command.split()[2:]
    train(*argv, "--out", "again", cwd=elsewhere)
    a, b = load_file(out / "model.safetensors"), load_file(elsewhere / "again" / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)


def test_resumed_run_records_the_command_of_the_whole_run(tmp_path, run2):
    out = tmp_path / "run"
    shutil.copytree(run2, out)
    train("--resume", out, "--num-epochs", "3")
    command = json.loads((out / "config.json").read_text())["training"]["command"]
    assert "--num-epochs 3" in command and "--resume" not in command and str(tmp_path) not in command


# -- 10. modes the umask asks for -------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_files_get_the_umask_modes(tmp_path, data_path, umask):
    out = tmp_path / "run"
    train("--data", data_path, *SMALL, "--num-epochs", "1", "--out", out,
          preexec_fn=lambda: os.umask(umask))
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


# -- 23. edited or odd files give one line, never a traceback -------------------------------------

def _edit_state(folder: Path, change) -> None:
    path = folder / "training_state.json"
    meta = json.loads(path.read_text())
    result = change(meta)
    path.write_text(result if isinstance(result, str) else json.dumps(meta))


@pytest.mark.parametrize("change", [
    lambda m: "{not json",
    lambda m: "[1, 2, 3]",
    lambda m: m.update(epoch="two"),
    lambda m: m.update(epoch=-1),
    lambda m: m.update(epoch=5),  # more epochs than the history holds
    lambda m: m.pop("history"),
    lambda m: m["history"][0].update(ppl="n/a"),
    lambda m: m["history"].append({"bogus": 1}),
    lambda m: m.update(python_rng=[3, [1, 2], None]),
    lambda m: m.update(python_rng="random"),
    lambda m: m.update(optim_scalars=[]),
    lambda m: m.update(optim_scalars={"optim.9.step": 1}),
    lambda m: m.update(data_sha1=12),
    lambda m: m.update(args=None),
    lambda m: m["args"].update(num_hiddens="sixteen"),
    lambda m: m["args"].update(num_hiddens=32),  # not what the weights have
    lambda m: m["args"].update(lr=[1]),
    lambda m: m["args"].update(optimizer="rmsprop"),
    lambda m: m["args"].update(use_random_iter="yes"),
    lambda m: m["args"].update(out="/etc"),
    lambda m: m["args"].update(seed=10 ** 30),
    lambda m: m["args"].update(num_steps=None),
    lambda m: '{"epoch": ' + "9" * 5000 + "}",  # an integer too long for Python to read
    lambda m: m.update(schedule={"planned_epochs": 0, "steps": 98}),
    lambda m: m.update(schedule=[2, 98]),
    lambda m: m.update(backend="turbo"),
    lambda m: m.update(backend=["plain"]),
])
def test_edited_training_state_is_refused_in_one_line(tmp_path, run2, change):
    out = tmp_path / "run"
    shutil.copytree(run2, out)
    _edit_state(out, change)
    before = tree(out)
    line = refused(train("--resume", out, "--num-epochs", "3", check=False))
    assert ("resume state is damaged or edited" in line or "--seed must be" in line), line
    assert tree(out) == before


def test_an_edited_cuda_generator_state_is_refused_in_one_line(tmp_path, run2):
    import torch
    from safetensors.torch import save_file
    out = tmp_path / "run"
    shutil.copytree(run2, out)
    tensors = load_file(out / "training_state.safetensors")
    tensors["cuda_rng"] = torch.zeros(16, dtype=torch.float32)
    save_file(tensors, out / "training_state.safetensors")
    refused(train("--resume", out, "--num-epochs", "3", check=False), "cuda_rng", "edited")


def test_edited_optimizer_state_is_refused_in_one_line(tmp_path, data_path):
    from safetensors.torch import save_file
    out = tmp_path / "adam"
    train("--data", data_path, *SMALL, "--num-epochs", "1", "--optimizer", "adam", "--lr", "0.01",
          "--out", out)
    tensors = load_file(out / "training_state.safetensors")
    tensors["optim.0.exp_avg"] = tensors["optim.0.exp_avg"][:3].contiguous()
    save_file(tensors, out / "training_state.safetensors")
    refused(train("--resume", out, "--num-epochs", "2", check=False), "optim.0.exp_avg", "edited")
    tensors.pop("optim.0.exp_avg")
    save_file(tensors, out / "training_state.safetensors")
    refused(train("--resume", out, "--num-epochs", "2", check=False), "not Adam's", "edited")


def test_config_with_an_integer_too_long_to_read_is_one_line(tmp_path, run2):
    folder = tmp_path / "run"
    shutil.copytree(run2, folder)
    text = (folder / "config.json").read_text().replace('"num_hiddens": 16', '"num_hiddens": ' + "1" * 5000)
    (folder / "config.json").write_text(text)
    gen = subprocess.run([sys.executable, "-m", "rnn_core", "generate", "--model", str(folder)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert gen.returncode == 2 and "Traceback" not in gen.stderr
    assert gen.stderr.startswith("error: ") and "config.json is not valid JSON" in gen.stderr
    refused(train("--resume", folder, "--num-epochs", "3", check=False), "config.json is not valid JSON")


def test_train_throughput_bench_without_network_uses_the_local_text_or_says_why(tmp_path):
    env = {**os.environ, "RNN_CORE_CACHE": str(tmp_path / "cache"),
           "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # no network
    bench = [sys.executable, "-m", "bench.train_throughput"]
    ok = subprocess.run([*bench, "--quick"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
    assert ok.returncode == 0 and "Traceback" not in ok.stderr, ok.stderr[-2000:]
    assert "tokens/sec" in ok.stdout
    bad = subprocess.run([*bench, "--quick", "--data", str(tmp_path / "missing.txt")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "does not exist" in bad.stderr


# -- 24 and --push-only: the Hub side (the test Hub of hub_server.py) ---------------------------

@pytest.fixture(scope="module")
def hub():
    from hub_server import HubServer
    server = HubServer({"hf_good": "alice", "hf_readonly": "alice"}).start()
    server.read_only.add("hf_readonly")
    yield server
    server.stop()


def hub_env(hub, tmp_path, token="hf_good", endpoint=None) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    return {**base, "HF_ENDPOINT": endpoint or hub.url, "HF_HOME": str(tmp_path / "hf-home"),
            "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1"}


@pytest.mark.parametrize("token, endpoint, words", [
    ("hf_expired", None, ["refused the Hugging Face token", "HF_TOKEN"]),
    ("hf_readonly", None, ["read-only"]),
    ("hf_good", "http://127.0.0.1:9", ["cannot reach the Hub", "--push-only"]),
])
def test_push_to_hub_checks_the_token_with_the_hub_before_training(hub, tmp_path, data_path, token,
                                                                   endpoint, words):
    out = tmp_path / "run"
    start = time.time()
    proc = train("--data", data_path, *SMALL, "--num-epochs", "50", "--out", out,
                 "--push-to-hub", "alice/never", env=hub_env(hub, tmp_path, token, endpoint),
                 check=False)
    refused(proc, *words)
    assert not out.exists() and time.time() - start < 60
    assert "alice/never" not in hub.repos


@pytest.mark.parametrize("training, words", [
    (["a", "list"], "training must be a JSON object"),
    ("n/a", "training must be a JSON object"),
    ({"final_ppl": 10 ** 400, "num_epochs": 3}, "training.final_ppl must be a number"),
])
def test_push_only_with_unreadable_training_metadata_is_refused_in_one_line(hub, tmp_path, run2, training,
                                                                    words):
    folder = tmp_path / "run"
    shutil.copytree(run2, folder)
    config = json.loads((folder / "config.json").read_text())
    config["training"] = training
    (folder / "config.json").write_text(json.dumps(config))
    repo = f"alice/odd-{abs(hash(json.dumps(training))) % 10 ** 8}"
    proc = train("--push-only", folder, "--push-to-hub", repo, env=hub_env(hub, tmp_path), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr
    assert len(lines[0]) < 400 and repo not in hub.repos


def test_push_only_with_odd_training_entries_pushes_a_sane_card(hub, tmp_path, run2):
    folder = tmp_path / "run"
    shutil.copytree(run2, folder)
    config = json.loads((folder / "config.json").read_text())
    config["training"] = {"final_ppl": "n/a", "num_epochs": "n/a", "best_val_ppl": [1], "command": 7}
    (folder / "config.json").write_text(json.dumps(config))
    proc = train("--push-only", folder, "--push-to-hub", "alice/odd", env=hub_env(hub, tmp_path))
    assert "Traceback" not in proc.stderr and "pushed" in proc.stdout
    assert "| train perplexity | — |" in hub.files("alice/odd")["README.md"].decode()


def test_push_only_refuses_a_folder_a_run_is_writing(hub, tmp_path, data_path, start):
    out = tmp_path / "run"
    first = start(out, "--save-every", "1")
    wait_for(lambda: epochs_saved(out) >= 1)
    refused(train("--push-only", out, "--push-to-hub", "alice/busy", env=hub_env(hub, tmp_path),
                  check=False), f"pid {first.pid}", "once that run has finished")
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish()[0] == 143
