"""The fast training path: the book's RNN math with fewer, bigger and fused matrix products.

`FastRNN(net)(X, state)` returns what `net(X, state)` returns (time-major logits and the new
state), and the same gradients, through a hand-written backward through time. The same
arithmetic as the book's loop, arranged for the CPU (each choice measured, bench/README.md):
  * one product per time step, forward and backward. Forward multiplies
    Z_t = [H_t | onehot(x_t+1) | 1] by [W_hh; W_xh; b_h], so the input's one-hot product and
    the bias ride along, with tanh fused in; backward multiplies [dA_t+1 | dY_t] by
    [W_hh^T; W_hq^T], so the output layer's gradient rides along too;
  * the output layer is one product over all time steps, and all five weight gradients come
    out of one large product over the minibatch (instead of 35 thin ones);
  * per-step buffers are allocated once and reused, the per-step weights are prepacked once
    per minibatch;
  * on CPU the products go through oneDNN, which on the AMD CPU we measured is about twice as
    fast as torch's default matmul (MKL), and fuses tanh. Those ops are not public API
    (`torch.ops.mkldnn._linear_pointwise`, `_reorder_linear_weight`,
    `torch.mkldnn_linear_backward_weights`): each is probed once, and what is missing falls
    back to plain torch ops; the `plain` backend (torch.mm, the same algorithm) is used where
    oneDNN does not apply (GPU, float64).
"""
from __future__ import annotations

import ctypes
import functools
from typing import Callable, NamedTuple

import torch

from .model import RNNModelScratch

BACKENDS = ("auto", "onednn", "plain")
_ALIGN = 16  # pad the concatenated width to a multiple of 16 floats (one AVX-512 vector)


def _mkldnn_op(name: str):
    """torch.ops.mkldnn.<name>, or None where this torch build lacks it."""
    return getattr(getattr(torch.ops, "mkldnn", None), name, None)


def _probe(fn, *args) -> torch.Tensor | None:
    try:
        return fn(*args)
    except (RuntimeError, AttributeError, TypeError):
        return None


@functools.cache
def onednn_available() -> bool:
    """True when oneDNN's fused linear op exists here and computes what torch does."""
    op = _mkldnn_op("_linear_pointwise")
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    x, w = torch.randn(3, 5), torch.randn(4, 5)
    fused = _probe(op, x, w, None, "tanh", [], "")
    return fused is not None and torch.allclose(fused, torch.tanh(x @ w.T), atol=1e-5)


@functools.cache
def onednn_prepack_available() -> bool:
    """True when weights can be prepacked for oneDNN (another non-public op), and the fused
    linear op gives the same result with them."""
    reorder = _mkldnn_op("_reorder_linear_weight")
    if not onednn_available() or reorder is None:
        return False
    x, w = torch.randn(3, 5), torch.randn(4, 5)
    packed = _probe(reorder, w, 3)
    y = packed if packed is None else _probe(_linear_onednn, x, packed)
    return y is not None and torch.equal(y, _linear_onednn(x, w))


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to serve allocations below 32 MB from its heap and keep freed memory.

    oneDNN's weight-gradient op allocates megabytes of scratch on every call; by default glibc
    maps those with mmap and unmaps them on free, so each call page-faults them back in (ten
    times slower than the product itself, measured). Process-wide, and harmless for a
    training process. False where the C library has no `mallopt` (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20) and mallopt(M_TRIM_THRESHOLD, 128 << 20))


def _weight_grad_plain(x: torch.Tensor, dy: torch.Tensor, w: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """x^T dy: the weight gradient of a linear layer (rows of x and dy are tokens)."""
    return torch.mm(x.t(), dy)


def _weight_grad_onednn(x: torch.Tensor, dy: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x^T dy through oneDNN's weight-gradient primitive, which reads both token-major
    (no transposed copies). `w`: an mkldnn tensor of the result's shape (only its shape is
    used)."""
    grad, _ = torch.mkldnn_linear_backward_weights(x.to_mkldnn(), dy.to_mkldnn(), w, False)
    return grad.to_dense()


@functools.cache
def onednn_weight_grad_available() -> bool:
    """True when oneDNN's weight-gradient op works here (another non-public op) and glibc
    can be told to keep its scratch memory (without that it is slower than torch.mm)."""
    if not onednn_available() or not hasattr(torch, "mkldnn_linear_backward_weights"):
        return False
    x, dy = torch.randn(6, 5), torch.randn(6, 4)
    w = _probe(lambda: torch.empty(5, 4).to_mkldnn())
    grad = w if w is None else _probe(_weight_grad_onednn, x, dy, w)
    return (grad is not None and torch.allclose(grad, x.T @ dy, atol=1e-5)
            and keep_freed_memory())


def _linear_onednn(x: torch.Tensor, w: torch.Tensor, tanh: bool = False) -> torch.Tensor:
    """x @ w.T (then tanh), through oneDNN. x and w must be contiguous (or w prepacked):
    oneDNN copies other layouts first, and runs a slow reference kernel on some."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "tanh" if tanh else "none", [], "")


def _pack_onednn(w: torch.Tensor, batch_size: int) -> torch.Tensor:
    """w in oneDNN's blocked layout for `batch_size` rows, so each product skips that reorder."""
    if not onednn_prepack_available():
        return w
    return torch.ops.mkldnn._reorder_linear_weight(w, batch_size)


def _linear_plain(x: torch.Tensor, w: torch.Tensor, tanh: bool = False) -> torch.Tensor:
    """x @ w.T (then tanh), through torch's default matmul."""
    y = torch.mm(x, w.t())
    return y.tanh_() if tanh else y


def _pack_plain(w: torch.Tensor, batch_size: int) -> torch.Tensor:
    return w


class Backend(NamedTuple):
    """How the products are computed: `linear(x, w, tanh=False)` = x @ w.T, then tanh;
    `pack(w, batch_size)`: w prepared for many `linear` calls with that many rows;
    `weight_grad(x, dy, w)` = x^T @ dy, w an mkldnn tensor of that shape (oneDNN only)."""
    name: str
    linear: Callable[..., torch.Tensor]
    pack: Callable[[torch.Tensor, int], torch.Tensor]
    weight_grad: Callable[..., torch.Tensor]


PLAIN = Backend("plain", _linear_plain, _pack_plain, _weight_grad_plain)


def _onednn_backend() -> Backend:
    fast_grad = onednn_weight_grad_available()
    return Backend("onednn", _linear_onednn, _pack_onednn,
                   _weight_grad_onednn if fast_grad else _weight_grad_plain)


def pick_backend(backend: str, dtype: torch.dtype, device: torch.device) -> Backend:
    """oneDNN when asked for, or for `auto` where it applies (float32 on a CPU that has it);
    plain otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    fits = device.type == "cpu" and dtype == torch.float32 and onednn_available()
    if backend == "onednn" and not fits:
        raise RuntimeError("the oneDNN backend needs float32 on a CPU with torch's mkldnn ops; "
                           "use backend='plain' or 'auto'")
    return _onednn_backend() if backend != "plain" and fits else PLAIN


class Workspace:
    """Buffers for minibatches of one shape (steps T, batch B, H, V), reused call after call.

    Columns of the concatenated width K: [0, H) hidden, [H, H+V) one-hot / dY, H+V the
    constant 1 that carries the biases, then zero padding.
    """

    def __init__(self, be: Backend, T: int, B: int, H: int, V: int, dtype: torch.dtype,
                 device: torch.device):
        self.key = (T, B, H, V, dtype, device)
        K = -(-(H + V + 1) // _ALIGN) * _ALIGN
        new = functools.partial(torch.zeros, dtype=dtype, device=device)
        self.Z = new((T + 1, B, K))   # Z[t] = [H_t | onehot(x_t+1) | 1 | 0]
        self.Z[:, :, H + V] = 1
        self.E = new((T + 1, B, K))   # E[t] = [dA_t+1 | dY_t | 0]: what flows back into step t
        # oneDNN's weight-gradient op takes the result's shape as an mkldnn tensor
        self.grad_shape = (torch.empty(K, K).to_mkldnn()
                           if be.weight_grad is _weight_grad_onednn else None)
        self.D = new((T, B, H))       # 1 - H_t^2 for t = 1..T, the derivative of tanh
        self.W_in = new((H, K))       # [W_hh; W_xh; b_h]^T: A_t+1 = Z_t @ W_in.T
        self.W_out = new((V, K))      # [W_hq; 0; b_q]^T:    Y_t = Z_t @ W_out.T
        self.W_back = new((H, K))     # [W_hh^T; W_hq^T]^T: dH_t = E_t @ W_back.T
        self.W_hh_T = new((H, H))     # W_hh^T staged: torch's fast transpose wants a whole target
        # Per-step views, made once: Z[t], its H_t part, E[t], its dA_t+1 part, D[t].
        self.Z_t, self.E_t, self.D_t = self.Z.unbind(0), self.E.unbind(0), self.D.unbind(0)
        self.H_t = [z[:, :H] for z in self.Z_t]
        self.dA_t = [e[:, :H] for e in self.E_t]
        self.rows = torch.arange(T * B, device=device)
        self.tokens = torch.full((T * B,), H, device=device)  # one-hot columns now set
        self.calls = 0                # forward calls so far, to catch a stale backward
        self.W_in_packed = self.W_back_packed = None

    def load_weights(self, be: Backend, W_xh, W_hh, b_h, W_hq, b_q) -> None:
        """Copy the five parameters into the concatenated layouts; pack the per-step ones."""
        B, H, V = self.key[1:4]
        self.W_hh_T.copy_(W_hh.t())
        self.W_in[:, :H].copy_(self.W_hh_T)
        self.W_in[:, H:H + V].copy_(W_xh.t())
        self.W_in[:, H + V].copy_(b_h)
        self.W_out[:, :H].copy_(W_hq.t())
        self.W_out[:, H + V].copy_(b_q)
        self.W_back[:, :H].copy_(W_hh)
        self.W_back[:, H:H + V].copy_(W_hq)
        self.W_in_packed = be.pack(self.W_in, B)
        self.W_back_packed = be.pack(self.W_back, B)

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
        ws.load_weights(be, W_xh, W_hh, b_h, W_hq, b_q)
        ws.load_inputs(X, H0)
        linear, Z_t, H_t, W_in = be.linear, ws.Z_t, ws.H_t, ws.W_in_packed
        for t in range(T):
            H_t[t + 1].copy_(linear(Z_t[t], W_in, tanh=True))
        Y = linear(ws.Z[1:].view(T * B, -1), ws.W_out)
        ws.calls += 1
        ctx.ws, ctx.be, ctx.call = ws, be, ws.calls
        ctx.set_materialize_grads(False)
        return Y, H_t[T].clone()

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
        linear, E_t, dA_t, D_t, W_back = be.linear, ws.E_t, ws.dA_t, ws.D_t, ws.W_back_packed
        for t in range(T, 0, -1):
            dH = linear(E_t[t], W_back)
            if t == T and dH_T is not None:
                dH += dH_T
            torch.mul(dH, D_t[t - 1], out=dA_t[t - 1])
        dH0 = linear(E_t[0], W_back) if ctx.needs_input_grad[3] else None
        # Z^T E: rows [H_t | onehot | 1] meet columns [dA_t+1 | dY_t], so the blocks are the
        # gradients of [W_hh; W_xh; b_h] (first H columns) and [W_hq; -; b_q] (the next V).
        dW = be.weight_grad(Z.view((T + 1) * B, -1), E.view((T + 1) * B, -1), ws.grad_shape)
        return (None, None, None, dH0, dW[H:H + V, :H], dW[:H, :H], dW[H + V, :H],
                dW[:H, H:H + V], dW[H + V, H:H + V])


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
            self.ws = Workspace(self.backend, *key)
        Y, H = _RNNFunction.apply(self.ws, self.backend, X.to(net.W_hh.device), state[0],
                                  *net.params)
        return Y, (H,)
