"""`auto`'s kernel choices, remembered per machine.

The fast kernels (fast.py, fast_cells.py) time the backends that apply the first time a
minibatch shape is seen and keep the fastest. The winner is recorded in the cache folder
(`RNN_CORE_CACHE`, default ~/.cache/rnn_core) as fast-kernels.json, keyed by what a timing
depends on: the kernels' code, the shape, the torch threads, the CPU, torch's version and the
instruction-set limits in force. Later processes on the machine take the recorded kernel
without timing again, so a resumed run, the ranks of torchrun and a run to compare with all
compute alike (two kernels agree only up to float rounding), and one timing taken during a
burst of other load is not redrawn at random in every run. Delete the file to time again.

The file is untrusted input like any other: an entry that is not a backend that applies is
ignored and timed afresh, an unreadable file is treated as empty, and where the folder cannot
be written the choice is kept for this process only.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .data import cache_dir

FILENAME = "fast-kernels.json"
FORMAT = 1            # of the key; the kernels' own code is in it too (kernels_digest)
MAX_ENTRIES = 64      # shapes remembered; the oldest go first
MAX_BYTES = 1 << 20   # a larger file is not read
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
              "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> list[str]:
    """What a kernel's speed depends on besides the shape and the threads."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return [cpu_model(), str(os.cpu_count()), gpu, torch.__version__,
            torch.backends.cpu.get_cpu_capability(),
            *(f"{name}={os.environ.get(name, '')}" for name in ISA_LIMITS)]


@functools.cache
def kernels_digest() -> str:
    """A digest of the kernels' source: a timing holds for the code that was timed, so a
    changed or upgraded kernel is timed afresh."""
    digest = hashlib.sha1()
    for name in ("fast.py", "fast_cells.py", "cells.py", "model.py"):  # the kernels, their model
        try:
            digest.update((Path(__file__).with_name(name)).read_bytes())
        except OSError:  # no source beside us (a frozen build): the rest of the key must do
            digest.update(name.encode())
    return digest.hexdigest()[:16]


def path() -> Path:
    """The file (raises RuntimeError where there is no cache folder: no RNN_CORE_CACHE and
    no home directory)."""
    return cache_dir() / FILENAME


def remembered(kind: str, shape: tuple, threads: int, device: torch.device,
               allowed: list[str], measure: Callable[[], str]) -> str:
    """The backend recorded for (`kind`, `shape`, `threads`) on this machine if it is one of
    `allowed`; else `measure()`'s, recorded for the next process."""
    key = json.dumps([FORMAT, kernels_digest(), kind, [str(s) for s in shape], threads,
                      *machine(device)])
    choices = _read()
    if choices.get(key) in allowed:
        return choices[key]
    choice = measure()
    choices = _read()  # another process may have recorded other shapes meanwhile
    choices.pop(key, None)
    choices[key] = choice
    _write(dict(list(choices.items())[-MAX_ENTRIES:]))
    return choice


def _read() -> dict[str, str]:
    """The recorded choices, or none where the file is missing, too large or malformed."""
    try:
        file = path()
        if not file.is_file():  # missing, or a folder or a pipe that would block the read
            return {}
        with open(file, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except (OSError, RuntimeError):
        return {}
    try:
        data = json.loads(raw) if len(raw) <= MAX_BYTES else None
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("choices"), dict):
        return {}
    return {k: v for k, v in data["choices"].items() if isinstance(v, str) and len(k) < 4096}


def _write(choices: dict[str, str]) -> None:
    """Replace the file at once (a reader sees the old or the new one, never half); where the
    cache cannot be written, nothing is remembered."""
    part = None
    try:
        target = path()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, part = tempfile.mkstemp(dir=target.parent, prefix=".fast-kernels.", suffix=".part")
        with os.fdopen(fd, "w") as f:
            json.dump({"choices": choices}, f, indent=1)
        os.replace(part, target)
    except (OSError, RuntimeError):
        if part is not None:
            with contextlib.suppress(OSError):
                os.unlink(part)
