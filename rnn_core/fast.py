"""The fast training path: the book's RNN math with fewer, bigger and fused matrix products.

`FastRNN(net)(X, state)` returns what `net(X, state)` returns (time-major logits and the new
state) and its gradients, computed by a hand-written backward through time. What makes it fast
(each measured in bench/train_throughput.py):
  * one product per time step, forward and backward. Forward multiplies
    Z_t = [H_t | onehot(x_t+1) | 1] by [W_hh; W_xh; b_h], so the input's one-hot product and
    the bias ride along, with tanh fused in; backward multiplies [dA_t+1 | dY_t] by
    [W_hh^T; W_hq^T], so the output layer's gradient rides along too;
  * the output layer is one product over all time steps, and all five weight gradients come
    out of one large product over the minibatch;
  * buffers are allocated once and reused (fresh multi-megabyte tensors every minibatch
    page-fault: glibc serves them with mmap);
  * on CPU the products go through oneDNN (`torch.ops.mkldnn._linear_pointwise`), which on
    the AMD CPU we measured is about twice as fast as torch's default matmul, and fuses tanh.
    That op is not a public API: `onednn_available()` probes it once, and the `plain` backend
    (torch.mm, the same algorithm) is used where it is missing or does not apply (GPU, float64).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch

from .model import RNNModelScratch

BACKENDS = ("auto", "onednn", "plain")
_ALIGN = 16  # pad the concatenated width to a multiple of 16 floats (one AVX-512 vector)


@functools.cache
def onednn_available() -> bool:
    """True when oneDNN's fused linear op exists here and computes what torch does."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w = torch.randn(3, 5), torch.randn(4, 5)
        fused = op(x, w, None, "tanh", [], "")
    except (RuntimeError, AttributeError, TypeError):
        return False
    return torch.allclose(fused, torch.tanh(x @ w.T), atol=1e-5)


def _linear_onednn(x: torch.Tensor, w: torch.Tensor, tanh: bool = False) -> torch.Tensor:
    """x @ w.T (then tanh), through oneDNN. x and w must be contiguous: oneDNN copies
    other layouts first, and runs a slow reference kernel on some."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "tanh" if tanh else "none", [], "")


def _linear_plain(x: torch.Tensor, w: torch.Tensor, tanh: bool = False) -> torch.Tensor:
    """x @ w.T (then tanh), through torch's default matmul."""
    y = torch.mm(x, w.t())
    return y.tanh_() if tanh else y


class Backend(NamedTuple):
    """How the products are computed: `linear(x, w, tanh=False)` = x @ w.T, then tanh."""
    name: str
    linear: Callable[..., torch.Tensor]


ONEDNN = Backend("onednn", _linear_onednn)
PLAIN = Backend("plain", _linear_plain)


def pick_backend(backend: str, dtype: torch.dtype, device: torch.device) -> Backend:
    """oneDNN when asked for, or for `auto` where it applies (float32 on a CPU that has it);
    plain otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    fits = device.type == "cpu" and dtype == torch.float32 and onednn_available()
    if backend == "onednn" and not fits:
        raise RuntimeError("the oneDNN backend needs float32 on a CPU with torch's mkldnn ops; "
                           "use backend='plain' or 'auto'")
    return ONEDNN if backend != "plain" and fits else PLAIN


class Workspace:
    """Buffers for minibatches of one shape (steps T, batch B, H, V), reused call after call.

    Columns of the concatenated width K: [0, H) hidden, [H, H+V) one-hot / dY, H+V the
    constant 1 that carries the biases, then zero padding.
    """

    def __init__(self, T: int, B: int, H: int, V: int, dtype: torch.dtype, device: torch.device):
        self.key = (T, B, H, V, dtype, device)
        K = -(-(H + V + 1) // _ALIGN) * _ALIGN
        new = functools.partial(torch.zeros, dtype=dtype, device=device)
        self.Z = new((T + 1, B, K))   # Z[t] = [H_t | onehot(x_t+1) | 1 | 0]
        self.Z[:, :, H + V] = 1
        self.E = new((T + 1, B, K))   # E[t] = [dA_t+1 | dY_t | 0]: what flows back into step t
        self.ZT = new((K, (T + 1) * B))  # Z and E transposed, for the weight-gradient product
        self.ET = new((K, (T + 1) * B))
        self.D = new((T, B, H))       # 1 - H_t^2 for t = 1..T, the derivative of tanh
        self.W_in = new((H, K))       # [W_hh; W_xh; b_h]^T: A_t+1 = Z_t @ W_in.T
        self.W_out = new((V, K))      # [W_hq; 0; b_q]^T:    Y_t = Z_t @ W_out.T
        self.W_back = new((H, K))     # [W_hh^T; W_hq^T]^T: dH_t = E_t @ W_back.T
        self.W_hh_T = new((H, H))     # staging for the transposed copy (the fast copy path)
        self.rows = torch.arange(T * B, device=device)
        self.tokens = torch.full((T * B,), H, device=device)  # one-hot columns now set
        self.calls = 0                # forward calls so far, to catch a stale backward

    def load_weights(self, W_xh, W_hh, b_h, W_hq, b_q) -> None:
        """Copy the five parameters into the concatenated layouts."""
        H, V = self.key[2:4]
        self.W_hh_T.copy_(W_hh.t())
        self.W_in[:, :H].copy_(self.W_hh_T)
        self.W_in[:, H:H + V].copy_(W_xh.t())
        self.W_in[:, H + V].copy_(b_h)
        self.W_out[:, :H].copy_(W_hq.t())
        self.W_out[:, H + V].copy_(b_q)
        self.W_back[:, :H].copy_(W_hh)
        self.W_back[:, H:H + V].copy_(W_hq)

    def load_inputs(self, X: torch.Tensor, H0: torch.Tensor) -> None:
        """Write the one-hot inputs (time-major) and the initial state into Z."""
        T, B, H = self.key[:3]
        onehot = self.Z[:T].view(T * B, -1)
        onehot[self.rows, self.tokens] = 0
        self.tokens = X.t().reshape(-1) + H
        onehot[self.rows, self.tokens] = 1
        self.Z[0, :, :H].copy_(H0)


class _RNNFunction(torch.autograd.Function):
    """Logits (T*B, V), time-major, and H_T of the book's RNN over token ids X (B, T).

    Forward:  H_t+1 = tanh(Z_t W_in^T), one fused product per step; Y = Z_1..T W_out^T.
    Backward: dH_t = E_t W_back^T = dA_t+1 W_hh^T + dY_t W_hq^T;  dA_t = dH_t * (1 - H_t^2);
              every weight gradient at once, from the product Z^T E.
    """

    @staticmethod
    def forward(ctx, ws: Workspace, be: Backend, X: torch.Tensor, H0: torch.Tensor,
                W_xh: torch.Tensor, W_hh: torch.Tensor, b_h: torch.Tensor,
                W_hq: torch.Tensor, b_q: torch.Tensor):
        T, B, H = ws.key[:3]
        Z = ws.Z
        ws.load_weights(W_xh, W_hh, b_h, W_hq, b_q)
        ws.load_inputs(X, H0)
        for t in range(T):
            Z[t + 1, :, :H].copy_(be.linear(Z[t], ws.W_in, tanh=True))
        Y = be.linear(Z[1:].view(T * B, -1), ws.W_out)
        ws.calls += 1
        ctx.ws, ctx.be, ctx.call = ws, be, ws.calls
        ctx.set_materialize_grads(False)
        return Y, Z[T, :, :H].clone()

    @staticmethod
    def backward(ctx, dY: torch.Tensor | None, dH_T: torch.Tensor | None):
        ws, be = ctx.ws, ctx.be
        if ws.calls != ctx.call:
            raise RuntimeError("FastRNN reuses its buffers: call backward before the next forward")
        T, B, H, V = ws.key[:4]
        Z, E, D = ws.Z, ws.E, ws.D
        torch.addcmul(torch.ones((), dtype=D.dtype, device=D.device), Z[1:, :, :H],
                      Z[1:, :, :H], value=-1, out=D)
        if dY is None:
            E[1:, :, H:H + V].zero_()
        else:
            E[1:, :, H:H + V].copy_(dY.view(T, B, V))
        for t in range(T, 0, -1):
            dH = be.linear(E[t], ws.W_back)
            if t == T and dH_T is not None:
                dH += dH_T
            torch.mul(dH, D[t - 1], out=E[t - 1, :, :H])
        dH0 = be.linear(E[0], ws.W_back) if ctx.needs_input_grad[3] else None
        ws.ZT.copy_(Z.view((T + 1) * B, -1).t())
        ws.ET.copy_(E.view((T + 1) * B, -1).t())
        # Z^T E: rows [H_t | onehot | 1] meet columns [dA_t+1 | dY_t], so the blocks are the
        # gradients of [W_hh; W_xh; b_h] (first H columns) and [W_hq; -; b_q] (the next V).
        dW = be.linear(ws.ZT[:H + V + 1], ws.ET[:H + V])
        return (None, None, None, dH0, dW[H:H + V, :H], dW[:H, :H], dW[H + V, :H],
                dW[:H, H:], dW[H + V, H:])


class FastRNN:
    """A drop-in for `net(X, state)` when training: same outputs and gradients as the book's
    `RNNModelScratch.forward`, much faster. Keeps its buffers between calls."""

    def __init__(self, net: RNNModelScratch, backend: str = "auto"):
        self.net = net
        self.backend = pick_backend(backend, net.W_hh.dtype, net.W_hh.device)
        self.ws: Workspace | None = None

    def __call__(self, X: torch.Tensor, state: tuple[torch.Tensor]
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        net = self.net
        B, T = X.shape
        key = (T, B, net.num_hiddens, net.vocab_size, net.W_hh.dtype, net.W_hh.device)
        if self.ws is None or self.ws.key != key:
            self.ws = Workspace(*key)
        Y, H = _RNNFunction.apply(self.ws, self.backend, X.to(net.W_hh.device), state[0],
                                  *net.params)
        return Y, (H,)
