"""Exact resume: everything a run needs to continue bit for bit, saved at an epoch boundary.

Saved beside the model files as `training_state.safetensors` (optimizer tensors, torch RNG)
and `training_state.json` (epoch, Python RNG, history, arguments). No pickle: the optimizer
state is flattened to named tensors.
"""
from __future__ import annotations

import copy
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load, save

from .checkpoint import CheckpointError
from .training import EpochResult

STATE_TENSORS, STATE_JSON = "training_state.safetensors", "training_state.json"


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

    @classmethod
    def capture(cls, epoch: int, args: dict, net: torch.nn.Module, updater,
                history: list[EpochResult]) -> "TrainingState":
        """Copy the live run (cheap: a few MB) so it can be saved later, even mid-epoch."""
        opt = (copy.deepcopy(updater.state_dict()["state"])
               if isinstance(updater, torch.optim.Optimizer) else {})
        return cls(epoch, dict(args), {k: v.detach().clone() for k, v in net.named_parameters()},
                   opt, random.getstate(), torch.get_rng_state(), list(history))

    def files(self) -> dict[str, bytes]:
        """The two files, as bytes for `save_checkpoint`."""
        tensors = {"torch_rng": self.torch_rng}
        scalars = {}
        for idx, st in self.optimizer_state.items():
            for key, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"optim.{idx}.{key}"] = value
        version, internal, gauss = self.python_rng
        meta = {"epoch": self.epoch, "args": self.args, "optim_scalars": scalars,
                "python_rng": [version, list(internal), gauss],
                "history": [asdict(h) for h in self.history]}
        return {STATE_TENSORS: save(tensors),
                STATE_JSON: (json.dumps(meta, indent=1) + "\n").encode()}

    def restore_rng(self) -> None:
        random.setstate(self.python_rng)
        torch.set_rng_state(self.torch_rng)

    def restore_optimizer(self, updater) -> None:
        if isinstance(updater, torch.optim.Optimizer) and self.optimizer_state:
            sd = updater.state_dict()
            sd["state"] = self.optimizer_state
            updater.load_state_dict(sd)


def load_training_state(folder: str | Path, weights: dict[str, torch.Tensor]) -> TrainingState:
    """Read the resume files of a checkpoint folder (weights come from `model.safetensors`)."""
    folder = Path(folder)
    tpath, jpath = folder / STATE_TENSORS, folder / STATE_JSON
    if not (tpath.is_file() and jpath.is_file()):
        raise CheckpointError(f"{folder} has no {STATE_JSON}/{STATE_TENSORS}; it was not written "
                              "by a run that can be resumed (or it is a pushed model folder)")
    try:
        tensors = load(tpath.read_bytes())
        meta = json.loads(jpath.read_text())
        version, internal, gauss = meta["python_rng"]
    except Exception as e:  # any damage to these files means the same thing to the user
        raise CheckpointError(f"{folder}: resume state is damaged ({e}); "
                              "start a new run or resume from another copy") from None
    optimizer_state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *meta["optim_scalars"].items()]:
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            optimizer_state.setdefault(int(idx), {})[key] = value
    return TrainingState(meta["epoch"], meta["args"], weights, optimizer_state,
                         (version, tuple(internal), gauss), tensors["torch_rng"],
                         [EpochResult(**h) for h in meta["history"]])
