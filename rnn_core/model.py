"""The scratch models of §8.5 and ch. 9 as one `nn.Module`, so optimizers, `state_dict` and
`.to(device)` work: the book's `RNNModelScratch` interface (`forward(X, state)`,
`begin_state`) for every cell of `cells.CELLS`, any number of layers, char-rnn dropout.

The §8.5 RNN's math, in plain sight (the other cells are in cells.py):
    H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h),    Y_t = H_t W_hq + b_q
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .cells import (ARCHS, check_structure, dropout_masks, layer_param_names, num_params,
                    param_shapes, stacked_forward)
from .distributed import SINGLE, Group

__all__ = ["ARCHS", "PARAM_NAMES", "RNNModelScratch", "num_params", "param_shapes"]
PARAM_NAMES = tuple(param_shapes(1, 1))  # the §8.5 RNN's: W_xh, W_hh, b_h, W_hq, b_q


class RNNModelScratch(nn.Module):
    """A character RNN implemented from scratch (D2L §8.5; GRU §9.1, LSTM §9.2, deep §9.3)."""

    group: Group = SINGLE  # under torchrun, the process whose rows of each minibatch it trains

    def __init__(self, vocab_size: int, num_hiddens: int, device: torch.device | str | None = None,
                 arch: str = "rnn", num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.cell = check_structure(arch, num_layers, dropout)
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.arch, self.num_layers, self.dropout = arch, num_layers, float(dropout)
        # Created in the book's `get_params` order (layer by layer, then the output layer), so
        # the same torch seed gives the book's weights: normal(0, 0.01) matrices, zero biases.
        for name, shape in param_shapes(vocab_size, num_hiddens, arch, num_layers).items():
            if name.startswith("b_"):
                value = torch.zeros(shape, device=device)
            else:
                value = torch.randn(size=shape, device=device) * 0.01
            self.register_parameter(name, nn.Parameter(value))

    @classmethod
    def from_weights(cls, weights: dict[str, torch.Tensor], arch: str = "rnn",
                     num_layers: int = 1, dropout: float = 0.0) -> RNNModelScratch:
        """The model holding `weights` (checked names and shapes), in eval mode. Built without
        touching the caller's random stream."""
        W_hq = weights["W_hq"]
        with torch.random.fork_rng(devices=[]):
            net = cls(W_hq.shape[1], W_hq.shape[0], "cpu", arch, num_layers, dropout)
        net.load_state_dict(weights, assign=True)
        return net.to(W_hq.device).eval()

    @property
    def params(self) -> list[nn.Parameter]:
        """The parameters as the book's list, e.g. `[W_xh, W_hh, b_h, W_hq, b_q]` (§8.5)."""
        return list(self.parameters())

    def num_params(self) -> int:
        return num_params(self.vocab_size, self.num_hiddens, self.arch, self.num_layers)

    def layer(self, k: int) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
        """Layer k's (W_x, W_h, b) lists, in gate order."""
        p = [getattr(self, name) for name in layer_param_names(self.cell, k)]
        return p[0::3], p[1::3], p[2::3]

    def begin_state(self, batch_size: int, device: torch.device | str | None = None
                    ) -> tuple[torch.Tensor, ...]:
        """Zero state: each layer's `H` (and `C` for the LSTM), each (batch_size, num_hiddens)."""
        device = self.W_hq.device if device is None else device
        return tuple(torch.zeros((batch_size, self.num_hiddens), device=device)
                     for _ in range(self.num_layers * len(self.cell.state)))

    def dropout_masks(self, steps: int, batch_size: int, device: torch.device | str,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """This minibatch's dropout masks (L, T, B, H), None without dropout. Under torchrun
        (`group`) they are drawn for the global minibatch, as one process draws them, and
        this process keeps its rows: every process applies the single process's masks."""
        if not self.dropout > 0:
            return None
        masks = dropout_masks(self.dropout, self.num_layers, steps,
                              batch_size * self.group.world_size, self.num_hiddens, device, dtype)
        return self.group.shard(masks, dim=2).contiguous()

    def forward(self, X: torch.Tensor, state: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """X: (batch, steps) token ids → logits (steps * batch, V), time-major, and the new state."""
        inputs = F.one_hot(X.T, self.vocab_size).type(torch.float32)
        masks = self.dropout_masks(*inputs.shape[:2], inputs.device) if self.training else None
        layers = [self.layer(k) for k in range(self.num_layers)]
        return stacked_forward(self.cell, inputs, state, layers, self.W_hq, self.b_q, masks)


def rnn(inputs: torch.Tensor, state: tuple[torch.Tensor], params: list[torch.Tensor]
        ) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
    """§8.5: The book's `rnn`: loop over time steps of inputs (steps, batch, V)."""
    W_xh, W_hh, b_h, W_hq, b_q = params
    H, = state
    outputs = []
    for X in inputs:
        H = torch.tanh(torch.mm(X, W_xh) + torch.mm(H, W_hh) + b_h)
        Y = torch.mm(H, W_hq) + b_q
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)
