"""Shared by the bench scripts: machine description (CPU, instruction sets in force),
summaries, a process's memory over time. Run the scripts from the repo's root as modules
(`python -m bench.NAME`), so `rnn_core` and `bench` import as they are."""
from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from rnn_core.choices import ISA_LIMITS, cpu_model

ROOT = Path(__file__).resolve().parent.parent


def book_text() -> Path:
    """The book's timemachine.txt: $TIMEMACHINE_TXT or ../shared/data/ beside the checkout (as
    the tests use) when present, else downloaded once (raises DataError when that fails)."""
    local = Path(os.environ.get("TIMEMACHINE_TXT", ROOT.parent / "shared" / "data" / "timemachine.txt"))
    if local.is_file():
        return local
    from rnn_core.data import download_time_machine
    return download_time_machine()


def machine_info() -> str:
    """One line: date, CPU, usable cores, load, Python, torch and its thread count, the
    CPU's vector extensions, the ones torch's kernels use and any limits set (isa_info says
    what MKL and oneDNN use too)."""
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    now = datetime.datetime.now().astimezone().isoformat(timespec="minutes")
    return (f"date {now} | cpu {cpu_model()} | cores {cores} | load avg {load} | "
            f"python {platform.python_version()} | torch {torch.__version__} | "
            f"threads {torch.get_num_threads()} | {cpu_flags()}, torch kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, ISA limits: {isa_limits()}")


_KERNEL_ISAS = r"""
import torch
x = torch.randn(64, 64)
x @ x
torch.ops.mkldnn._linear_pointwise(x, x, None, "none", [], "")
"""


def cpu_flags() -> str:
    """The widest vector extensions the CPU reports: AVX-512 / AVX2 / neither."""
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)[1].split())
    except (OSError, TypeError):
        return "unknown"
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"


def isa_limits() -> str:
    """The instruction-set (and thread) limits set in the environment, or "none"."""
    return ", ".join(f"{k}={os.environ[k]}" for k in ISA_LIMITS if k in os.environ) or "none"


def isa_info() -> str:
    """One line: what the CPU has, the limits set in the environment, and what torch's own
    kernels, MKL and oneDNN actually use (MKL and oneDNN report it in their verbose output,
    read from a fresh interpreter with the same environment)."""
    import torch
    env = {**os.environ, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", _KERNEL_ISAS], env=env, capture_output=True,
                             text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    mkl = re.search(r"^MKL_VERBOSE oneMKL.*?architecture (.*?)(?: enabled processors)?, Lnx",
                    out, re.M)
    if mkl:  # "Intel(R) Advanced Vector Extensions 2 (Intel(R) AVX2)" -> "AVX2"
        mkl = "+".join(re.findall(r"\((?:Intel\(R\) )?([A-Z][\w-]+)\)", mkl[1])) or mkl[1]
    dnnl = re.search(r"^onednn_verbose,.*,isa:(.*)$", out, re.M)
    return (f"cpu has {cpu_flags()} | limits in force: {isa_limits()} | torch kernels "
            f"{torch.backends.cpu.get_cpu_capability()} | MKL {mkl or 'n/a'} | "
            f"oneDNN {dnnl[1] if dnnl else 'n/a'}")


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


class RssSampler:
    """A process's resident memory, sampled every `every` seconds on a thread while in use:
    `samples` as (seconds since start, bytes), and the `peak`."""

    def __init__(self, proc, every: float = 0.05):
        self.proc, self.every = proc, every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    def _run(self):
        start = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - start, self.proc.memory_info().rss))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
