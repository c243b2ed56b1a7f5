"""Shared by the bench scripts: machine description, summaries, and the repo on sys.path."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> str:
    """One line: date, CPU, usable cores, load, Python, torch and its thread count."""
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = "%.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else "n/a"
    now = datetime.datetime.now().astimezone().isoformat(timespec="minutes")
    return (f"date {now} | cpu {cpu_model()} | cores {cores} | load avg {load} | "
            f"python {platform.python_version()} | torch {torch.__version__} | "
            f"threads {torch.get_num_threads()}")


def summary(values: list[float], fmt: str = "{:.0f}") -> str:
    """`median [min–max] (n)`: the spread next to the median, always."""
    med = statistics.median(values)
    return f"{fmt.format(med)} [{fmt.format(min(values))}–{fmt.format(max(values))}] (n={len(values)})"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
