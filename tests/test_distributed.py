"""train.py under torchrun (2 processes, gloo on CPU) against the single-process run: the same
weights (up to float summation order) for every cell, depth, dropout and kernel, the same
printed perplexities, samples and validation line, one checkpoint writer, resume across single
and distributed runs, a time budget that ends every rank at the same minibatch, a killed rank."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

from rnn_core.model import RNNModelScratch
from rnn_core.training import Schedule, make_updater

SMALL = ["--num-hiddens", "16", "--max-tokens", "4000", "--batch-size", "8", "--num-steps", "10",
         "--val-fraction", "0.2", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun_cmd(nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--standalone", "train.py"]


def run(cmd: list, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([*map(str, cmd)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV, check=False)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    return proc


def printed(proc: subprocess.CompletedProcess) -> list[str]:
    """What the run printed to stdout but the speed: perplexity line, samples, saved line."""
    return [re.sub(r", [\d.]+ tokens/sec", "", line) for line in proc.stdout.splitlines()]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("flags", [
    ["--kernel", "fast"],                                                  # sequential, SGD
    ["--kernel", "book", "--use-random-iter", "--optimizer", "adam", "--lr", "0.01"],
    # dropout masks are drawn for the global minibatch and sliced: the single process's
    ["--kernel", "fast", "--arch", "lstm", "--num-layers", "2", "--dropout", "0.3"],
    ["--kernel", "book", "--arch", "gru", "--num-layers", "2", "--dropout", "0.2",
     "--use-random-iter", "--optimizer", "adam", "--lr", "0.01"],
], ids=["sequential-fast-sgd", "random-book-adam", "lstm-2layers-dropout-fast",
        "gru-2layers-dropout-random-book-adam"])
def test_two_processes_train_the_single_process_model(tmp_path, data_path, flags):
    common = ["--data", data_path, *SMALL, *flags]
    single = run([sys.executable, "train.py", *common, "--num-epochs", "4",
                  "--out", tmp_path / "single"])
    two = run([*torchrun_cmd(), *common, "--num-epochs", "4", "--out", tmp_path / "two"])
    assert_same_weights(tmp_path / "single", tmp_path / "two")
    lines = printed(two)
    assert lines[0].startswith("perplexity ") and lines == [
        line.replace("single", "two") for line in printed(single)]
    saved = f"saved checkpoint to {tmp_path / 'two'}"  # on stderr: the val loss line ends stdout
    assert (two.stdout + two.stderr).splitlines().count(saved) == 1  # rank 0 alone reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["single", "two"]  # no stray writes
    cfg_one = json.loads((tmp_path / "single" / "config.json").read_text())["training"]
    cfg_two = json.loads((tmp_path / "two" / "config.json").read_text())["training"]
    assert (cfg_one["processes"], cfg_two["processes"]) == (1, 2)
    for key in ("final_ppl", "final_val_ppl"):  # the tqdm/plot figures, to printed precision
        assert f"{cfg_one[key]:.2f}" == f"{cfg_two[key]:.2f}"
    from rnn_core.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "two").net.W_hq.shape[0] == 16

    # A single-process checkpoint continued by two processes is the same run.
    run([sys.executable, "train.py", *common, "--num-epochs", "2", "--out", tmp_path / "half"])
    resumed = run([*torchrun_cmd(), "--resume", tmp_path / "half", "--num-epochs", "4"])
    assert f"resuming {tmp_path / 'half'} after epoch 2" in resumed.stdout
    assert_same_weights(tmp_path / "single", tmp_path / "half")


class RankOne:
    """Rank 1's group as the Schedule sees it: `shared` hands it rank 0's clock."""

    def __init__(self, rank0_elapsed: float):
        self.rank0_elapsed = rank0_elapsed

    def shared(self, value: float) -> float:
        return self.rank0_elapsed


LEAVE = """
import os, sys, torch
sys.path.insert(0, os.getcwd())
from rnn_core.distributed import start
group = start()
group.sum(1.0)
p = torch.zeros(2, requires_grad=True)
p.sum().backward()
torch.optim.Adam([p]).step()  # imports torch._dynamo, and with it torch.distributed.nn
group.close()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(f"rank {group.rank}: {sorted(names)}")
"""


def test_closing_the_group_stops_its_threads_after_adam(tmp_path):
    """A gloo thread left running at interpreter shutdown can abort a finished rank (SIGABRT);
    after `close`, every rank's process has no gloo thread left, even after an Adam step."""
    script = tmp_path / "leave.py"
    script.write_text(LEAVE)
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--standalone", script])
    # the two ranks share the pipe: their lines may land run together, so find each report
    threads = dict(re.findall(r"rank (\d+): (\[[^\]]*\])", proc.stdout))
    assert sorted(threads) == ["0", "1"], proc.stdout
    assert not any("gloo" in names for names in threads.values()), threads


def test_the_schedule_reads_rank_0s_clock():
    net = RNNModelScratch(5, 4)
    updater = make_updater(net, "sgd", 1.0)
    group = RankOne(50.0)  # its own clock says ~0 s: lr 1.0, no stop
    schedule = Schedule(updater, 1.0, 0.1, max_time=100, group=group)
    assert schedule() and updater.keywords["lr"] == pytest.approx(0.55)
    group.rank0_elapsed = 100.0
    assert not schedule() and schedule.expired and schedule.stopped_at == 100.0


def test_a_time_budget_stops_every_rank_at_the_same_minibatch(tmp_path, data_path):
    """Rank 1 starts 2 s after rank 0, so its own clock would end its budget 2 s later, in
    the middle of rank 0's next collective; with rank 0's clock shared both stop together."""
    out = tmp_path / "timed"
    train = shlex.join([sys.executable, "train.py", "--data", str(data_path), *SMALL, "--arch", "lstm",
                        "--num-epochs", "500", "--max-time", "12", "--min-lr", "0.1",
                        "--out", str(out)])
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--standalone", "--no-python", "bash", "-c",
                f'[ "$RANK" = 1 ] && sleep 2; exec {train}'])
    assert (proc.stdout + proc.stderr).count(f"saved checkpoint to {out}") == 1
    assert proc.stdout.splitlines()[-1].startswith("val loss ")
    t = json.loads((out / "config.json").read_text())["training"]
    assert t["processes"] == 2 and 1 <= t["num_epochs"] < 500
    assert t["longest_step_seconds"] > 0  # it trained before the budget ran out
    assert 12 <= t["stopped_at_seconds"] <= 12 + t["longest_step_seconds"]


def test_batch_size_must_divide_by_the_processes(tmp_path, data_path):
    proc = subprocess.run([*torchrun_cmd(), "--data", str(data_path), *SMALL, "--batch-size", "5",
                           "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=ENV, check=False)
    message = ("error: --batch-size 5 is the global minibatch and must divide by the 2 "
               "processes; pass a multiple of 2")
    assert proc.stderr.count(message) == 1  # agreed by both ranks, printed once
    # What the README says users see: torchrun's own status 1, the refusal's 2 in its summary.
    assert proc.returncode == 1
    assert re.search(r"Root Cause \(first observed failure\):.*?exitcode\s*: 2 ", proc.stderr,
                     re.DOTALL), proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def workers(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (its children, RANK in their environment)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher_pid:
            for var in env:
                if var.startswith(b"RANK="):
                    found[int(var[5:])] = int(entry.name)
    return found


def saved_epoch(out: Path) -> int:
    try:
        return json.loads((out / "training_state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_rank_stops_the_run_and_resume_continues(tmp_path, data_path):
    out = tmp_path / "run"
    cmd = [*torchrun_cmd(), "--data", str(data_path), *SMALL, "--num-epochs", "500",
           "--save-every", "1", "--out", str(out)]
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while saved_epoch(out) < 2:
            assert launcher.poll() is None and time.monotonic() < deadline, "no epoch saved"
            time.sleep(0.1)
        ranks = workers(launcher.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = launcher.communicate(timeout=60)  # no hang
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert time.monotonic() - killed_at < 45
    assert launcher.returncode != 0
    epoch = saved_epoch(out)
    assert 2 <= epoch < 500
    # Rank 0 sees the dead peer's closed connection, or torchrun's SIGTERM, whichever first.
    message = re.search(r"(error: rank 0: another process of this run stopped or timed out \(.*\); "
                        r"|\nstopped by SIGTERM: )"
                        rf"saved the run after epoch {epoch} to {re.escape(str(out))}; continue "
                        rf"with: torchrun --nproc_per_node 2 train.py --resume {re.escape(str(out))}",
                        stderr)
    assert message, stderr[-3000:]
    from rnn_core.checkpoint import load_checkpoint
    load_checkpoint(out)

    # The distributed run's checkpoint continues in one process, from the epoch it kept.
    resumed = run([sys.executable, "train.py", "--resume", out, "--num-epochs", epoch + 2])
    assert f"resuming {out} after epoch {epoch}" in resumed.stdout
    assert saved_epoch(out) == epoch + 2
