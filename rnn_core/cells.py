"""The recurrent cells — RNN (§8.5), GRU (§9.1), LSTM (§9.2) — and their stacking (§9.3).

One registry, `CELLS`: adding a cell is one `Cell` entry here. A cell is the book's step with
the math in plain sight, and the names of its gates; everything else (parameter names and
shapes, the draw order, the state's size, checkpoints, the fast kernels' layout) follows.

A step takes each gate's input term already multiplied (`xs[g] = X @ W_x{g}`; the generator
passes the row of W_x{g} that a one-hot X selects, the same numbers), the layer's state and
its hidden-to-hidden weights and biases, in gate order, and returns the new state. It does the
book's operations in the book's order, so its results are the book's bit for bit.

Stacking (§9.3): layer 0 reads the input, layer l ≥ 1 reads layer l−1's H; only the top
layer's H feeds the output layer. Layer 0's parameters keep the book's names, layer k ≥ 1's
add the suffix `_l{k}` (as `nn.GRU`'s `weight_ih_l1`). The state is one tuple: each layer's
state in turn (`H` for RNN and GRU, `H, C` for LSTM). Dropout is char-rnn's: on the input of
every layer above the first and on the top layer's output before `W_hq`, only in training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import torch

Tensor = torch.Tensor
MAX_LAYERS = 16


def rnn_step(xs: Sequence[Tensor], state: Sequence[Tensor], Ws: Sequence[Tensor],
             bs: Sequence[Tensor]) -> tuple[Tensor]:
    """§8.5: H = tanh(X W_xh + H W_hh + b_h)."""
    (x_h,), (H,), (W_hh,), (b_h,) = xs, state, Ws, bs
    return (torch.tanh(x_h + torch.mm(H, W_hh) + b_h),)


def gru_step(xs: Sequence[Tensor], state: Sequence[Tensor], Ws: Sequence[Tensor],
             bs: Sequence[Tensor]) -> tuple[Tensor]:
    """§9.1: update gate Z, reset gate R, candidate H_tilda, then H = Z*H + (1-Z)*H_tilda."""
    (x_z, x_r, x_h), (H,), (W_hz, W_hr, W_hh), (b_z, b_r, b_h) = xs, state, Ws, bs
    Z = torch.sigmoid(x_z + (H @ W_hz) + b_z)
    R = torch.sigmoid(x_r + (H @ W_hr) + b_r)
    H_tilda = torch.tanh(x_h + ((R * H) @ W_hh) + b_h)
    return (Z * H + (1 - Z) * H_tilda,)


def lstm_step(xs: Sequence[Tensor], state: Sequence[Tensor], Ws: Sequence[Tensor],
              bs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """§9.2: input, forget and output gates I, F, O, candidate cell C_tilda;
    C = F*C + I*C_tilda, H = O*tanh(C)."""
    (x_i, x_f, x_o, x_c), (H, C), (W_hi, W_hf, W_ho, W_hc), (b_i, b_f, b_o, b_c) = xs, state, Ws, bs
    I = torch.sigmoid(x_i + (H @ W_hi) + b_i)
    F = torch.sigmoid(x_f + (H @ W_hf) + b_f)
    O = torch.sigmoid(x_o + (H @ W_ho) + b_o)
    C_tilda = torch.tanh(x_c + (H @ W_hc) + b_c)
    C = F * C + I * C_tilda
    H = O * torch.tanh(C)
    return H, C


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: its `gates` (each a triple W_x{g}, W_h{g}, b_{g}, drawn in this
    order), the `state` tensors of one layer (H first: it is the layer's output), its step,
    and its math for people (`formula`)."""
    name: str
    title: str
    section: str
    gates: tuple[str, ...]
    state: tuple[str, ...]
    step: Callable[..., tuple[Tensor, ...]]
    formula: str
    url: str


CELLS = {
    "rnn": Cell("rnn", "RNN", "§8.5", ("h",), ("H",), rnn_step,
                "H = tanh(X W_xh + H W_hh + b_h)",
                "https://d2l.ai/chapter_recurrent-neural-networks/rnn-scratch.html"),
    "gru": Cell("gru", "GRU", "§9.1", ("z", "r", "h"), ("H",), gru_step,
                "Z = σ(X W_xz + H W_hz + b_z), R = σ(X W_xr + H W_hr + b_r), "
                "H~ = tanh(X W_xh + (R⊙H) W_hh + b_h), H = Z⊙H + (1−Z)⊙H~",
                "https://d2l.ai/chapter_recurrent-modern/gru.html"),
    "lstm": Cell("lstm", "LSTM", "§9.2", ("i", "f", "o", "c"), ("H", "C"), lstm_step,
                 "I, F, O = σ(X W_x{i,f,o} + H W_h{i,f,o} + b_{i,f,o}), "
                 "C~ = tanh(X W_xc + H W_hc + b_c), C = F⊙C + I⊙C~, H = O⊙tanh(C)",
                 "https://d2l.ai/chapter_recurrent-modern/lstm.html"),
}
ARCHS = tuple(CELLS)


def get_cell(arch: str) -> Cell:
    """The cell named `arch`, or a ValueError listing the known ones."""
    if arch not in CELLS:
        raise ValueError(f"unknown arch {arch!r}; use one of {', '.join(ARCHS)}")
    return CELLS[arch]


def check_structure(arch: str, num_layers: int, dropout: float) -> Cell:
    """Refuse an unknown cell, fewer than one layer (or absurdly many) and dropout outside
    [0, 1), with the reason; returns the cell."""
    cell = get_cell(arch)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or \
            not 1 <= num_layers <= MAX_LAYERS:
        raise ValueError(f"num_layers must be an integer from 1 to {MAX_LAYERS}, got {num_layers!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or \
            not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return cell


def layer_param_names(cell: Cell, layer: int) -> list[str]:
    """One layer's parameter names in draw order: W_x{g}, W_h{g}, b_{g} per gate."""
    suffix = f"_l{layer}" if layer else ""
    return [f"{kind}{g}{suffix}" for g in cell.gates for kind in ("W_x", "W_h", "b_")]


def param_shapes(vocab_size: int, num_hiddens: int, arch: str = "rnn", num_layers: int = 1
                 ) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape, in the book's draw order (layer by layer, then W_hq, b_q)."""
    cell, V, H = get_cell(arch), vocab_size, num_hiddens
    shapes = {}
    for layer in range(num_layers):
        for name in layer_param_names(cell, layer):
            shapes[name] = (H,) if name.startswith("b_") else \
                (V if layer == 0 and name.startswith("W_x") else H, H)
    return {**shapes, "W_hq": (H, V), "b_q": (V,)}


def num_params(vocab_size: int, num_hiddens: int, arch: str = "rnn", num_layers: int = 1) -> int:
    """How many numbers the model holds (80,156 for the §8.5 RNN at V = 28, H = 256)."""
    return sum(math.prod(s) for s in param_shapes(vocab_size, num_hiddens, arch, num_layers).values())


def describe(arch: str, num_layers: int, num_hiddens: int) -> str:
    """For people: "2-layer LSTM, 256 hidden units (§9.2)"."""
    cell = get_cell(arch)
    layers = f"{num_layers}-layer " if num_layers > 1 else ""
    return f"{layers}{cell.title}, {num_hiddens} hidden units ({cell.section})"


def dropout_masks(p: float, num_layers: int, steps: int, batch_size: int, num_hiddens: int,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                  ) -> Tensor:
    """char-rnn's dropout masks, drawn at once from torch's generator: masks[l, t] multiplies
    layer l's H at step t where it leaves the layer (to the next layer, or to the output
    layer for the top one); kept units are scaled by 1/(1-p). Shape (L, T, B, H)."""
    masks = torch.empty((num_layers, steps, batch_size, num_hiddens), device=device, dtype=dtype)
    return masks.bernoulli_(1 - p).div_(1 - p)


def stacked_forward(cell: Cell, inputs: Tensor, state: Sequence[Tensor],
                    layers: Sequence[tuple[list[Tensor], list[Tensor], list[Tensor]]],
                    W_hq: Tensor, b_q: Tensor, masks: Tensor | None = None
                    ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The book's loop over time steps of one-hot `inputs` (steps, batch, V), through every
    layer (its (W_x, W_h, b) lists), then the output layer; returns the logits
    (steps * batch, V), time-major, and the new state. For one layer without dropout this is
    the book's `rnn` / `gru` / `lstm` function, operation for operation."""
    S = len(cell.state)
    state = list(state)
    outputs = []
    for t, X in enumerate(inputs):
        for layer, (W_x, W_h, b) in enumerate(layers):
            new = cell.step([torch.mm(X, W) for W in W_x], state[layer * S:(layer + 1) * S], W_h, b)
            state[layer * S:(layer + 1) * S] = new
            X = new[0] if masks is None else new[0] * masks[layer, t]
        outputs.append(torch.mm(X, W_hq) + b_q)
    return torch.cat(outputs, dim=0), tuple(state)
