"""Exact resume: everything a run needs to continue bit for bit, saved at an epoch boundary.

Saved beside the model files as `training_state.safetensors` (optimizer tensors, torch's CPU
generator, and the run's CUDA generator on a GPU: dropout masks are drawn there) and
`training_state.json` (epoch, Python RNG, history, arguments, the learning-rate schedule's
place, the fast kernel's backend). No pickle: the optimizer state is flattened to named
tensors. Files written before the CUDA generator, the schedule and the backend were saved
still load (see `TrainingState`).
"""
from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load, save

from . import fast, fast_cells
from .checkpoint import MAX_JSON_BYTES, STATE_JSON, STATE_TENSORS, CheckpointError
from .training import EpochResult

ADAM_STATE_KEYS = {"step", "exp_avg", "exp_avg_sq"}  # what torch.optim.Adam keeps per parameter
FAST_BACKENDS = (set(fast.BACKENDS) | set(fast_cells.BACKENDS)) - {"auto"}  # what auto can pick
MAX_CUDA_RNG_BYTES = 1024  # torch's CUDA generator state: 16 bytes (seed, offset)


@dataclass
class TrainingState:
    """A run at the end of `epoch` (1-based count of finished epochs)."""
    epoch: int
    args: dict
    weights: dict[str, torch.Tensor]
    optimizer_state: dict[int, dict[str, torch.Tensor]]
    python_rng: tuple
    torch_rng: torch.Tensor
    history: list[EpochResult] = field(default_factory=list)
    data_sha1: str | None = None  # the training text's, checked on resume
    # The generator of the CUDA device the run trains on; None on CPU (and in older files).
    cuda_rng: torch.Tensor | None = None
    # The learning-rate schedule: the epochs its cosine spans (the length the run was started
    # with, so that --resume continues the same curve) and the minibatches done. None in
    # older files: train.py then uses the saved --num-epochs and whole epochs.
    planned_epochs: int | None = None
    schedule_steps: int | None = None
    # The fast kernel's backend `auto` chose (fast.FastRNN / fast_cells.FastCells), kept so
    # that a resumed run computes with the same one; None for the book's kernel (and in older
    # files).
    backend: str | None = None

    @classmethod
    def capture(cls, epoch: int, args: dict, net: torch.nn.Module, updater,
                history: list[EpochResult], data_sha1: str | None = None,
                planned_epochs: int | None = None, schedule_steps: int | None = None,
                backend: str | None = None) -> TrainingState:
        """Copy the live run (cheap: a few MB) so it can be saved later, even mid-epoch.
        The run's device is where its weights are."""
        opt = (copy.deepcopy(updater.state_dict()["state"])
               if isinstance(updater, torch.optim.Optimizer) else {})
        device = next(net.parameters()).device
        cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(epoch, dict(args), {k: v.detach().clone() for k, v in net.named_parameters()},
                   opt, random.getstate(), torch.get_rng_state(), list(history), data_sha1,
                   cuda_rng, planned_epochs, schedule_steps, backend)

    def files(self) -> dict[str, bytes]:
        """The two files, as bytes for `save_checkpoint`."""
        tensors = {"torch_rng": self.torch_rng}
        if self.cuda_rng is not None:
            tensors["cuda_rng"] = self.cuda_rng
        scalars = {}
        for idx, st in self.optimizer_state.items():
            for key, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"optim.{idx}.{key}"] = value
        version, internal, gauss = self.python_rng
        meta = {"epoch": self.epoch, "args": self.args, "data_sha1": self.data_sha1,
                "optim_scalars": scalars,
                "python_rng": [version, list(internal), gauss],
                "history": [dict(vars(h)) for h in self.history]}
        if self.backend is not None:
            meta["backend"] = self.backend
        if self.planned_epochs is not None and self.schedule_steps is not None:
            meta["schedule"] = {"planned_epochs": self.planned_epochs,
                                "steps": self.schedule_steps}
        # Compact JSON: with an indent, json runs its pure-Python encoder (~20x slower here).
        return {STATE_TENSORS: save(tensors), STATE_JSON: (json.dumps(meta) + "\n").encode()}

    def restore_rng(self, device: torch.device | str = "cpu") -> None:
        """Python's and torch's generators as saved; on CUDA also the run's `device`'s, when
        the files hold it (a state saved on CPU, or by an older version, leaves it seeded)."""
        random.setstate(self.python_rng)
        torch.set_rng_state(self.torch_rng)
        device = torch.device(device)
        if device.type == "cuda" and self.cuda_rng is not None:
            try:
                torch.cuda.set_rng_state(self.cuda_rng, device)
            except RuntimeError as e:  # torch checks the size
                raise CheckpointError(f"the saved CUDA generator state does not fit this "
                                      f"torch ({str(e).splitlines()[0][:200]}); the resume "
                                      "state is damaged or edited") from None

    def restore_optimizer(self, updater) -> None:
        """Load the saved optimizer state into `updater` (torch.optim.Adam; the book's SGD has
        none), refusing a state that is not one Adam leaves after an epoch."""
        if isinstance(updater, torch.optim.Optimizer):
            num_params = sum(len(g["params"]) for g in updater.param_groups)
            if (sorted(self.optimizer_state) != list(range(num_params)) or any(
                    set(st) != ADAM_STATE_KEYS for st in self.optimizer_state.values())):
                raise CheckpointError(f"the saved optimizer state is not Adam's for {num_params} "
                                      f"parameters (each with {sorted(ADAM_STATE_KEYS)}); the "
                                      "resume state is damaged or edited")
            sd = updater.state_dict()
            sd["state"] = self.optimizer_state
            updater.load_state_dict(sd)


def load_training_state(folder: str | Path, weights: dict[str, torch.Tensor]) -> TrainingState:
    """Read and check the resume files of a checkpoint folder (weights come from
    `model.safetensors`). Anything malformed is a CheckpointError naming the problem; the
    run's arguments are checked by the caller (train.py parses them like a command line)."""
    folder = Path(folder)
    tpath, jpath = folder / STATE_TENSORS, folder / STATE_JSON
    if not (tpath.is_file() and jpath.is_file()):
        raise CheckpointError(f"{folder} has no {STATE_JSON}/{STATE_TENSORS}; it was not written "
                              "by a run that can be resumed (or it is a pushed model folder)")
    try:
        if jpath.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"{STATE_JSON} is larger than {MAX_JSON_BYTES >> 20} MB")
        tensors = load(tpath.read_bytes())
        meta = json.loads(jpath.read_text(encoding="utf-8"))
        return _parse_state(meta, tensors, weights)
    except (OSError, ValueError, TypeError, KeyError, IndexError, OverflowError,
            RuntimeError) as e:  # any damage to these files means the same thing to the user
        reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise CheckpointError(f"{folder}: the resume state is damaged or edited ({reason}); "
                              "start a new run or resume from another copy") from None


def _parse_state(meta, tensors: dict[str, torch.Tensor],
                 weights: dict[str, torch.Tensor]) -> TrainingState:
    """Check every field of the resume files and build the state (raises ValueError)."""
    if not isinstance(meta, dict):
        raise ValueError(f"{STATE_JSON} must hold a JSON object")
    epoch, history, args = meta.get("epoch"), meta.get("history"), meta.get("args")
    if not _is_int(epoch) or epoch < 1:
        raise ValueError(f"epoch must be a whole number of at least 1, got {epoch!r}")
    if not isinstance(args, dict):
        raise ValueError("args must be a JSON object of the run's settings")
    if not isinstance(history, list) or len(history) != epoch:
        raise ValueError(f"history must list the {epoch} finished epochs")
    results = []
    for i, h in enumerate(history, 1):
        if not (isinstance(h, dict) and set(h) == {"epoch", "ppl", "speed", "val_ppl"}
                and h["epoch"] == i and _is_number(h["ppl"]) and _is_number(h["speed"])
                and (h["val_ppl"] is None or _is_number(h["val_ppl"]))):
            raise ValueError(f"history entry {i} must be {{epoch: {i}, ppl, speed, val_ppl}} "
                             "with finite numbers")
        results.append(EpochResult(**h))
    sha1 = meta.get("data_sha1")
    if sha1 is not None and not (isinstance(sha1, str) and len(sha1) == 40):
        raise ValueError(f"data_sha1 must be a 40-character hex string, got {sha1!r}")
    rng = meta.get("python_rng")
    if not (isinstance(rng, list) and len(rng) == 3 and isinstance(rng[1], list)):
        raise ValueError("python_rng is not a saved state of Python's random")
    python_rng = (rng[0], tuple(rng[1]), rng[2])
    random.Random().setstate(python_rng)  # checks it thoroughly, on a throwaway generator
    torch_rng = tensors.get("torch_rng")
    expected = torch.get_rng_state()
    if torch_rng is None or torch_rng.dtype != expected.dtype or torch_rng.shape != expected.shape:
        raise ValueError("torch_rng is not a saved state of torch's CPU generator")
    cuda_rng = tensors.get("cuda_rng")  # its size is checked by torch when it is restored
    if cuda_rng is not None and not (cuda_rng.dtype == torch.uint8 and cuda_rng.dim() == 1
                                     and 0 < len(cuda_rng) <= MAX_CUDA_RNG_BYTES):
        raise ValueError("cuda_rng is not a saved state of a CUDA generator")
    schedule = meta.get("schedule")  # absent in older files
    planned_epochs = schedule_steps = None
    if schedule is not None:
        if not (isinstance(schedule, dict) and set(schedule) == {"planned_epochs", "steps"}
                and _is_int(schedule["planned_epochs"]) and schedule["planned_epochs"] >= 1
                and _is_int(schedule["steps"]) and schedule["steps"] >= 0):
            raise ValueError("schedule must be {planned_epochs: a whole number of at least 1, "
                             "steps: a whole number of at least 0}")
        planned_epochs, schedule_steps = schedule["planned_epochs"], schedule["steps"]
    backend = meta.get("backend")  # absent in older files and for the book's kernel
    if backend is not None and not (isinstance(backend, str) and backend in FAST_BACKENDS):
        raise ValueError(f"backend must be one of {', '.join(sorted(FAST_BACKENDS))}, "
                         f"got {str(backend)[:40]!r}")
    scalars = meta.get("optim_scalars")
    if not isinstance(scalars, dict):
        raise ValueError("optim_scalars must be a JSON object")
    optimizer_state: dict[int, dict] = {}
    param_names = list(weights)  # the optimizer's numbering: the model's parameter order
    for name, value in [*tensors.items(), *scalars.items()]:
        if name in ("torch_rng", "cuda_rng"):
            continue
        parts = name.split(".", 2)
        if not (len(parts) == 3 and parts[0] == "optim" and parts[1].isdigit()
                and int(parts[1]) < len(param_names) and parts[2]):
            raise ValueError(f"unexpected optimizer entry {name!r}")
        idx, key = int(parts[1]), parts[2]
        param = weights[param_names[idx]]
        if torch.is_tensor(value) and value.dim() > 0 and (value.shape != param.shape
                                                           or value.dtype != param.dtype):
            raise ValueError(f"optimizer tensor {name} is {value.dtype} {tuple(value.shape)}, but "
                             f"{param_names[idx]} is {param.dtype} {tuple(param.shape)}")
        if not torch.is_tensor(value) and not (_is_number(value) or isinstance(value, bool)):
            raise ValueError(f"optimizer entry {name} must be a number, got {value!r}")
        optimizer_state.setdefault(idx, {})[key] = value
    return TrainingState(epoch, args, weights, optimizer_state, python_rng, torch_rng, results,
                         sha1, cuda_rng, planned_epochs, schedule_steps, backend)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
