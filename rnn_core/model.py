"""The scratch RNN of §8.5, as an `nn.Module` so optimizers, `state_dict` and `.to(device)` work.

The math is the book's, in plain sight:
    H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h),    Y_t = H_t W_hq + b_q
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PARAM_NAMES = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")


def param_shapes(vocab_size: int, num_hiddens: int) -> dict[str, tuple[int, ...]]:
    """§8.5: The five tensors' shapes, in the book's order."""
    V, H = vocab_size, num_hiddens
    return {"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)}


class RNNModelScratch(nn.Module):
    """A character RNN implemented from scratch (D2L §8.5)."""

    def __init__(self, vocab_size: int, num_hiddens: int, device: torch.device | str | None = None):
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens

        def normal(shape):
            return nn.Parameter(torch.randn(size=shape, device=device) * 0.01)

        # Created in the book's `get_params` order, so the same torch seed gives the same weights.
        self.W_xh = normal((vocab_size, num_hiddens))
        self.W_hh = normal((num_hiddens, num_hiddens))
        self.b_h = nn.Parameter(torch.zeros(num_hiddens, device=device))
        self.W_hq = normal((num_hiddens, vocab_size))
        self.b_q = nn.Parameter(torch.zeros(vocab_size, device=device))

    @property
    def params(self) -> list[nn.Parameter]:
        """The parameters as the book's list `[W_xh, W_hh, b_h, W_hq, b_q]`."""
        return [self.W_xh, self.W_hh, self.b_h, self.W_hq, self.b_q]

    def begin_state(self, batch_size: int, device: torch.device | str | None = None
                    ) -> tuple[torch.Tensor]:
        """Zero hidden state `(H,)` of shape (batch_size, num_hiddens)."""
        device = self.W_hh.device if device is None else device
        return (torch.zeros((batch_size, self.num_hiddens), device=device),)

    def forward(self, X: torch.Tensor, state: tuple[torch.Tensor]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        """X: (batch, steps) token ids → logits (steps * batch, V), time-major, and the new state."""
        inputs = F.one_hot(X.T, self.vocab_size).type(torch.float32)
        return rnn(inputs, state, self.params)


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
