"""The book's §9.1 (GRU) and §9.2 (LSTM) runs end to end through the real train.py: 256 hidden
units, lr 1, 500 epochs, sequential partitioning of the first 10,000 characters (the fast
kernel: the book's kernel would take about three times as long)."""
from __future__ import annotations

import pytest

from test_book_run import book_run


@pytest.mark.slow
@pytest.mark.timeout(2400)  # measured 726 s (GRU) and 969 s (LSTM) on a loaded 2-core machine
@pytest.mark.parametrize("arch", ["gru", "lstm"])
def test_book_run_ch9(tmp_path, data_path, arch):
    ppl, lines = book_run(tmp_path, data_path, "--arch", arch, "--num-hiddens", "256")
    assert ppl <= 1.3
    assert lines[-3].startswith("time traveller") and len(lines[-3]) == 64
