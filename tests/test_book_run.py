"""The book's §8.5 runs end to end through the real train.py (a few minutes each)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT


def book_run(tmp_path, data_path, *extra) -> tuple[float, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the machine's threads
    proc = subprocess.run([sys.executable, "train.py", "--data", str(data_path), "--device", "cpu",
                           "--out", str(tmp_path / "book"), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    m = re.fullmatch(r"perplexity (\d+\.\d), (\d+\.\d) tokens/sec on cpu", lines[-4])
    assert m, lines[-4]
    print("\n".join(lines[-4:-1]))
    return float(m.group(1)), lines


@pytest.mark.slow
def test_book_run_sequential(tmp_path, data_path):
    ppl, lines = book_run(tmp_path, data_path)
    assert ppl <= 1.3
    assert sum(line.startswith("time traveller") for line in lines) == 51  # every 10 epochs + end
    assert lines[-3].startswith("time traveller") and len(lines[-3]) == 64


@pytest.mark.slow
def test_book_run_random_sampling(tmp_path, data_path):
    ppl, _ = book_run(tmp_path, data_path, "--use-random-iter")
    assert ppl <= 1.7
