"""The fast training path: the book's RNN math with fewer, bigger matrix products.

`FastRNN(net)(X, state)` returns what `net(X, state)` returns (time-major logits and the new
state), and the same gradients, through a hand-written backward through time. The kernels
below do the book's arithmetic, arranged for the CPU (each choice measured, bench/README.md):

  split (`plain`: public torch ops, any device and dtype)
    forward:  W_xh[x_t] + b_h for every step at once (the one-hot product is a row gather),
              then per step H_t+1 = tanh(that + H_t W_hh): one in-place addmm and one tanh;
              the output layer is one product over all steps.
    backward: dH_t = dY_t W_hq^T for every step at once, then per step
              dA_t = (dH_t + dA_t+1 W_hh^T) * (1 - H_t+1^2): one addmm and one multiply;
              dW_hh is one product over the whole minibatch, dW_xh a row scatter-add.
    Memory: a few (steps x batch x H) buffers, as the book's autograd keeps.

  split into row blocks (`batched`: the same code, whole-batch buffers)
    Each step's product is one batched product over equal blocks of batch rows, one block
    per torch thread (baddbmm_ with W_hh repeated as a view): the threads split the step at
    the block boundary instead of inside one (32 x 512)·(512 x 512) product, which is 25%
    faster per step with AVX-512 and a few percent with AVX2 (measured).

  split across threads (`rows`: the same code, CPU)
    The recurrence never mixes batch rows, so the rows are split into one group per torch
    thread (at least 8 rows each), and each group's chain of per-step products runs on its
    own thread with one core, at the same time; the weight gradients are split by columns.
    Torch's own threading of a (32 x 512)·(512 x 512) product pays an OpenMP barrier per
    step, and collapses when another process wants the same cores.

  fused (`onednn`: float32 on CPU, vocabularies up to the hidden size)
    per step one oneDNN product with tanh fused: [H_t | onehot(x_t) | 1] times
    [W_hh; W_xh; b_h] (the input product and the bias ride along), and backward
    [dA_t+1 | dY_t] times [W_hh^T; W_hq^T]; every weight gradient from one product Z^T E.
    Its buffers are (H + V + 1)^2 floats, so it is only used while V <= H (a 20,000-character
    vocabulary would need gigabytes); the split kernels' memory is proportional to the book's.
    The oneDNN ops are not public API (`torch.ops.mkldnn._linear_pointwise`,
    `_reorder_linear_weight`, `torch.mkldnn_linear_backward_weights`): each is probed once,
    and a missing optional one falls back to torch ops.

Which is fastest depends on the CPU and on what else runs, not only on the instruction set:
on the AMD Zen 5 we measured oneDNN's product was twice MKL's, on an Intel Xeon MKL's was
faster, under AVX-512 and AVX2 alike. So `auto` times one minibatch of each kernel that
applies, at the real shape, the first time a shape is seen on the machine, and keeps the
fastest (remembered for later runs: choices.py).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable

import torch

from .choices import remembered
from .model import RNNModelScratch

BACKENDS = ("auto", "plain", "batched", "rows", "onednn")
_ALIGN = 16  # pad the fused kernel's concatenated width to a multiple of 16 floats


# ---------------------------------------------------------------- the split kernel (plain torch)

class SplitWorkspace:
    """Buffers for minibatches of one shape (steps T, batch B, H, V), reused call after call.

    The batch rows are cut into `row_threads` groups (the recurrence never mixes rows). Each
    group has its own contiguous buffers and does its whole share of a pass on one thread:
    its input rows, its recurrence, its output rows, and its part of every weight gradient
    (summed afterwards). So the threads meet once per forward and once per backward.
    """

    def __init__(self, T: int, B: int, H: int, V: int, dtype: torch.dtype,
                 device: torch.device, row_threads: int = 1, batched: int = 1):
        self.key = (T, B, H, V, dtype, device)
        self.rows = _split(B, row_threads)
        new = functools.partial(torch.empty, dtype=dtype, device=device)
        sizes = [r.stop - r.start for r in self.rows]
        self.Hs = [new((T + 1, n, H)) for n in sizes]  # H_0 .. H_T; H_t+1 starts as W_xh[x_t] + b_h
        self.dA = [new((T, n, H)) for n in sizes]      # dH_t from the output layer, then dA_t
        self.D = [new((T, n, H)) for n in sizes]       # 1 - H_t+1^2, the derivative of tanh
        # Per-step views, made once: [group][t] -> (rows, H), or (batched, rows / batched, H)
        # when each step's product is one batched product over `batched` row blocks
        self.batched = batched
        self.Hs_g, self.dA_g, self.D_g = (
            [buf.view(buf.shape[0], batched, -1, H).unbind(0) if batched > 1 else buf.unbind(0)
             for buf in bufs] for bufs in (self.Hs, self.dA, self.D))
        # The weight gradients of groups 1.. (group 0 writes fresh tensors, the result)
        self.partial = [[new((V, H)), new((H, H)), new(H), new((V, H)), new(V)]
                        for _ in sizes[1:]]
        self.W_hh_T = new((H, H))     # W_hh^T, contiguous: MKL's per-step product is faster
        self.one = torch.ones((), dtype=dtype, device=device)
        self.calls = 0                # forward calls so far, to catch a stale backward

    def product(self, W: torch.Tensor) -> tuple[Callable, torch.Tensor]:
        """(step, W') such that step(out, h, W') does out += h W in place, one product per step:
        addmm_, or baddbmm_ over the row blocks with W repeated for each (a view)."""
        if self.batched > 1:
            return torch.Tensor.baddbmm_, W.expand(self.batched, *W.shape)
        return torch.Tensor.addmm_, W


def _split(n: int, parts: int) -> list[slice]:
    """range(n) in `parts` contiguous, nearly equal slices."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="FastRNN")


@contextlib.contextmanager
def _one_core_per_group(groups: int):
    """With several row groups, every torch op inside runs on one thread (the groups are the
    parallelism, so torch's threads never oversubscribe the cores); torch's setting after."""
    threads = torch.get_num_threads()
    if groups > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _on_one_core(work: Callable[[int], None], g: int) -> None:
    """work(g) on a worker thread with one torch thread: torch's thread count is per thread,
    so the main thread's `torch.set_num_threads(1)` does not reach the pool's threads."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    work(g)


def _each_group(work: Callable[[int], None], groups: int) -> None:
    """work(g) for every row group g at once: group 0 on this thread, the others on worker
    threads (each on one torch thread); the first error is raised once all have finished."""
    futures = [_pool().submit(_on_one_core, work, g) for g in range(1, groups)]
    try:
        work(0)
    finally:
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


class _SplitRNN(torch.autograd.Function):
    """Logits (T*B, V), time-major, and H_T of the book's RNN over token ids X (B, T)."""

    @staticmethod
    def forward(ctx, ws: SplitWorkspace, X: torch.Tensor, H0: torch.Tensor,
                W_xh: torch.Tensor, W_hh: torch.Tensor, b_h: torch.Tensor,
                W_hq: torch.Tensor, b_q: torch.Tensor):
        T, B, H, V = ws.key[:4]
        groups = len(ws.rows)
        tokens = [X[r].t().reshape(-1) for r in ws.rows]  # time-major, as the book's outputs
        Ys = [None] * groups

        @torch.no_grad()  # grad mode is per thread
        def rows(g: int) -> None:
            Hs, H_t, r = ws.Hs[g], ws.Hs_g[g], ws.rows[g]
            torch.index_select(W_xh, 0, tokens[g], out=Hs[1:].view(-1, H)).add_(b_h)
            Hs[0].copy_(H0[r])
            step, W = ws.product(W_hh)
            for t in range(T):
                step(H_t[t + 1], H_t[t], W).tanh_()
            Ys[g] = torch.addmm(b_q, Hs[1:].view(-1, H), W_hq).view(T, -1, V)

        with _one_core_per_group(groups):
            _each_group(rows, groups)
        Y = Ys[0] if groups == 1 else torch.cat(Ys, dim=1)
        ws.calls += 1
        ctx.ws, ctx.call, ctx.tokens = ws, ws.calls, tokens
        ctx.weights = W_hh.detach(), W_hq.detach()
        ctx.set_materialize_grads(False)
        return Y.view(T * B, V), torch.cat([Hs[T] for Hs in ws.Hs])

    @staticmethod
    def backward(ctx, dY: torch.Tensor | None, dH_T: torch.Tensor | None):
        ws = ctx.ws
        if ws.calls != ctx.call:
            raise RuntimeError("FastRNN reuses its buffers: call backward before the next forward")
        T, B, H, V = ws.key[:4]
        W_hh, W_hq = ctx.weights
        groups, W_hh_T = len(ws.rows), ws.W_hh_T
        new = functools.partial(torch.empty, dtype=W_hh.dtype, device=W_hh.device)
        dY = new((T, B, V)).zero_() if dY is None else dY.view(T, B, V)
        # dW_hq is computed transposed, (V, H): dY^T H is twice as fast as H^T dY (measured)
        grads = [[new((V, H)), new((H, H)), new(H), new((V, H)), new(V)], *ws.partial]
        dH0 = new((B, H)) if ctx.needs_input_grad[2] else None

        @torch.no_grad()
        def rows(g: int) -> None:
            Hs, dA, r = ws.Hs[g], ws.dA[g], ws.rows[g]
            dA_t, D_t = ws.dA_g[g], ws.D_g[g]
            dY_g = (dY if groups == 1 else dY[:, r].contiguous()).view(-1, V)
            torch.mm(dY_g, W_hq.t(), out=dA.view(-1, H))  # dH_t from the output layer
            if dH_T is not None:
                dA[T - 1].add_(dH_T[r])
            torch.addcmul(ws.one, Hs[1:], Hs[1:], value=-1, out=ws.D[g])
            dA[T - 1].mul_(ws.D[g][T - 1])
            step, W = ws.product(W_hh_T)
            for t in range(T - 2, -1, -1):
                step(dA_t[t], dA_t[t + 1], W).mul_(D_t[t])
            dW_xh, dW_hh, db_h, dW_hq_T, db_q = grads[g]
            flat = dA.view(-1, H)
            torch.mm(Hs[:T].view(-1, H).t(), flat, out=dW_hh)
            dW_xh.zero_().index_add_(0, ctx.tokens[g], flat)
            torch.sum(flat, 0, out=db_h)
            torch.mm(dY_g.t(), Hs[1:].view(-1, H), out=dW_hq_T)
            torch.sum(dY_g, 0, out=db_q)
            if dH0 is not None:
                torch.mm(dA[0], W_hh_T, out=dH0[r])

        with _one_core_per_group(groups):
            W_hh_T.copy_(W_hh.t())
            _each_group(rows, groups)
            for partial in grads[1:]:
                for total, part in zip(grads[0], partial):
                    total.add_(part)
        dW_xh, dW_hh, db_h, dW_hq_T, db_q = grads[0]
        return None, None, dH0, dW_xh, dW_hh, db_h, dW_hq_T.t(), db_q


# ---------------------------------------------------------------- oneDNN probes

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
    """w in oneDNN's blocked layout for `batch_size` rows, so each product skips that reorder
    (w itself where prepacking is unavailable)."""
    if not onednn_prepack_available():
        return w
    return torch.ops.mkldnn._reorder_linear_weight(w, batch_size)


# ---------------------------------------------------------------- the fused kernel (oneDNN)

class FusedWorkspace:
    """Buffers for minibatches of one shape (steps T, batch B, H, V), reused call after call.

    Columns of the concatenated width K: [0, H) hidden, [H, H+V) one-hot / dY, H+V the
    constant 1 that carries the biases, then zero padding.
    """

    def __init__(self, T: int, B: int, H: int, V: int, dtype: torch.dtype,
                 device: torch.device):
        self.key = (T, B, H, V, dtype, device)
        K = -(-(H + V + 1) // _ALIGN) * _ALIGN
        new = functools.partial(torch.zeros, dtype=dtype, device=device)
        self.Z = new((T + 1, B, K))   # Z[t] = [H_t | onehot(x_t+1) | 1 | 0]
        self.Z[:, :, H + V] = 1
        self.E = new((T + 1, B, K))   # E[t] = [dA_t+1 | dY_t | 0]: what flows back into step t
        # oneDNN's weight-gradient op takes the result's shape as an mkldnn tensor
        self.weight_grad = (_weight_grad_onednn if onednn_weight_grad_available()
                            else _weight_grad_plain)
        self.grad_shape = (torch.empty(K, K).to_mkldnn()
                           if self.weight_grad is _weight_grad_onednn else None)
        self.D = new((T, B, H))       # 1 - H_t^2 for t = 1..T, the derivative of tanh
        self.W_in = new((H, K))       # [W_hh; W_xh; b_h]^T: A_t+1 = Z_t @ W_in.T
        self.W_out = new((V, K))      # [W_hq; 0; b_q]^T:    Y_t = Z_t @ W_out.T
        self.W_back = new((H, K))     # [W_hh^T; W_hq^T]^T: dH_t = E_t @ W_back.T
        self.W_hh_T = new((H, H))     # W_hh^T staged: torch's fast transpose wants a whole target
        # Per-step views, made once: Z[t], its H_t part, E[t], its dA_t+1 part, D[t].
        self.Z_t, self.E_t, self.D_t = self.Z.unbind(0), self.E.unbind(0), self.D.unbind(0)
        self.H_t = [z[:, :H] for z in self.Z_t]
        self.dA_t = [e[:, :H] for e in self.E_t]
        self.positions = torch.arange(T * B, device=device)  # each token's row in Z
        self.tokens = torch.full((T * B,), H, device=device)  # one-hot columns now set
        self.calls = 0                # forward calls so far, to catch a stale backward
        self.W_in_packed = self.W_back_packed = None

    def load_weights(self, W_xh, W_hh, b_h, W_hq, b_q) -> None:
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
        self.W_in_packed = _pack_onednn(self.W_in, B)
        self.W_back_packed = _pack_onednn(self.W_back, B)

    def load_inputs(self, X: torch.Tensor, H0: torch.Tensor) -> None:
        """Write the one-hot inputs (time-major) and the initial state into Z."""
        T, B, H = self.key[:3]
        onehot = self.Z[:T].view(T * B, -1)
        onehot[self.positions, self.tokens] = 0
        self.tokens = X.t().reshape(-1) + H
        onehot[self.positions, self.tokens] = 1
        self.Z[0, :, :H].copy_(H0)


class _FusedRNN(torch.autograd.Function):
    """Logits (T*B, V), time-major, and H_T of the book's RNN over token ids X (B, T).

    Forward:  H_t+1 = tanh(Z_t W_in^T), one fused product per step; Y = Z_1..T W_out^T.
    Backward: dH_t = E_t W_back^T = dA_t+1 W_hh^T + dY_t W_hq^T;  dA_t = dH_t * (1 - H_t^2);
              every weight gradient at once, from the product Z^T E.
    """

    @staticmethod
    def forward(ctx, ws: FusedWorkspace, X: torch.Tensor, H0: torch.Tensor,
                W_xh: torch.Tensor, W_hh: torch.Tensor, b_h: torch.Tensor,
                W_hq: torch.Tensor, b_q: torch.Tensor):
        T, B, H = ws.key[:3]
        ws.load_weights(W_xh, W_hh, b_h, W_hq, b_q)
        ws.load_inputs(X, H0)
        Z_t, H_t, W_in = ws.Z_t, ws.H_t, ws.W_in_packed
        for t in range(T):
            H_t[t + 1].copy_(_linear_onednn(Z_t[t], W_in, tanh=True))
        Y = _linear_onednn(ws.Z[1:].view(T * B, -1), ws.W_out)
        ws.calls += 1
        ctx.ws, ctx.call = ws, ws.calls
        ctx.set_materialize_grads(False)
        return Y, H_t[T].clone()

    @staticmethod
    def backward(ctx, dY: torch.Tensor | None, dH_T: torch.Tensor | None):
        ws = ctx.ws
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
        E_t, dA_t, D_t, W_back = ws.E_t, ws.dA_t, ws.D_t, ws.W_back_packed
        for t in range(T, 0, -1):
            dH = _linear_onednn(E_t[t], W_back)
            if t == T and dH_T is not None:
                dH += dH_T
            torch.mul(dH, D_t[t - 1], out=dA_t[t - 1])
        dH0 = _linear_onednn(E_t[0], W_back) if ctx.needs_input_grad[2] else None
        # Z^T E: rows [H_t | onehot | 1] meet columns [dA_t+1 | dY_t], so the blocks are the
        # gradients of [W_hh; W_xh; b_h] (first H columns) and [W_hq; -; b_q] (the next V).
        dW = ws.weight_grad(Z.view((T + 1) * B, -1), E.view((T + 1) * B, -1), ws.grad_shape)
        return (None, None, dH0, dW[H:H + V, :H], dW[:H, :H], dW[H + V, :H],
                dW[:H, H:H + V], dW[H + V, H:H + V])


# ---------------------------------------------------------------- choosing and running

KERNELS = {"plain": _SplitRNN, "batched": _SplitRNN, "rows": _SplitRNN, "onednn": _FusedRNN}


def fused_fits(V: int, H: int, dtype: torch.dtype, device: torch.device) -> bool:
    """The fused kernel applies: float32 on a CPU with oneDNN's ops, and V <= H (its buffers
    grow as (H + V + 1)^2, and its per-step product does V wasted columns of work)."""
    return device.type == "cpu" and dtype == torch.float32 and V <= H and onednn_available()


def row_threads(B: int, device: torch.device) -> int:
    """Row groups of the `rows` kernel: one per torch thread, at least 8 rows each, on CPU."""
    return max(1, min(torch.get_num_threads(), B // 8)) if device.type == "cpu" else 1


def row_blocks(B: int) -> int:
    """Row blocks of the `batched` kernel's per-step product: one per torch thread, equal
    blocks of at least 8 rows (1: the kernel does not apply)."""
    blocks = torch.get_num_threads()
    return blocks if blocks > 1 and B % blocks == 0 and B // blocks >= 8 else 1


def candidates(key: tuple) -> list[str]:
    """The kernels that apply to minibatches of shape `key` = (T, B, H, V, dtype, device)."""
    T, B, H, V, dtype, device = key
    return (["plain"] + (["batched"] if row_blocks(B) > 1 else [])
            + (["rows"] if row_threads(B, device) > 1 else [])
            + (["onednn"] if fused_fits(V, H, dtype, device) else []))


def new_workspace(backend: str, key: tuple) -> SplitWorkspace | FusedWorkspace:
    if backend == "onednn":
        return FusedWorkspace(*key)
    if backend == "batched":
        return SplitWorkspace(*key, batched=row_blocks(key[1]))
    groups = row_threads(key[1], key[5]) if backend == "rows" else 1
    return SplitWorkspace(*key, row_threads=groups)


def time_steps(forwards: dict, X: torch.Tensor, y: torch.Tensor,
               state: tuple[torch.Tensor, ...], reps: int = 7) -> dict[str, float]:
    """Seconds of one training step with each of `forwards` (name -> a drop-in for
    `net(X, state)` with its `net`, such as `FastRNN`): the forward and backward, then the rest of the step as
    training runs it (loss, the book's clipping and `sgd`, on the drop-in's `rest_of_step`
    threads, since a kernel that splits the rows runs the rest on one thread). The median of
    `reps` after one warm-up, interleaved so that a burst of other load hits all alike (the
    median, not the fastest: under load it is the typical step that counts)."""
    from .training import grad_clipping, sgd  # the book's update; training does not import us

    seconds: dict[str, list[float]] = {name: [] for name in forwards}
    for rep in range(reps + 1):
        for name, forward in forwards.items():
            start = time.perf_counter()
            with torch.enable_grad():
                Y, _ = forward(X, state)
                with forward.rest_of_step():
                    forward.net.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(Y, y).backward()
                    grad_clipping(forward.net, 1)
                    sgd(forward.net.params, 1e-3, 1)
            if rep:
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in seconds.items()}


def book_model(V: int, H: int, B: int, T: int, dtype: torch.dtype, device: torch.device,
               **cell) -> tuple[RNNModelScratch, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """The book's model (vocabulary V, H hidden units, `cell`: arch, num_layers) on its
    initial weights for seed 0, a minibatch of B x T token ids, T * B labels and the zero
    state: what the choosers time. Leaves the caller's random stream alone."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        net = RNNModelScratch(V, H, **cell).to(device=device, dtype=dtype)
        X, y = torch.randint(0, V, (B, T), device=device), torch.randint(0, V, (T * B,), device=device)
    return net, X, y, tuple(s.to(dtype) for s in net.begin_state(B, device))


def shape_key(net: RNNModelScratch, B: int, T: int) -> tuple:
    """What the kernels and their choice depend on for `net` and B x T minibatches."""
    return (T, B, net.num_hiddens, net.vocab_size, net.W_hh.dtype, net.W_hh.device)


@functools.cache
def choose_backend(key: tuple, threads: int) -> str:
    """`auto`'s choice for minibatches of shape `key` with `threads` torch threads: the kernel
    whose training step measures fastest, `plain` unless another is at least 5% faster;
    timed once per machine (choices.py)."""
    names = candidates(key)
    if len(names) == 1:
        return names[0]
    T, B, H, V, dtype, device = key

    def measure() -> str:
        net, X, y, state = book_model(V, H, B, T, dtype, device)
        return pick_fastest(time_steps({b: FastRNN(net, b) for b in names}, X, y, state),
                            "plain")
    return remembered("rnn", key, threads, device, names, measure)


MIN_PASS_SECONDS = 0.002  # shorter steps are mostly fixed costs and timing noise


def pick_fastest(times: dict[str, float], default: str) -> str:
    """The fastest of `times` (seconds per pass or step) when it beats `default` by at least 5%,
    else `default`; and `default` whenever it takes under 2 ms: at such sizes the kernels
    differ by noise, and keeping the simplest lets separate processes (a resumed run, the
    ranks of torchrun, a run to compare with) compute alike."""
    fastest = min(times, key=times.get)
    if times[default] < MIN_PASS_SECONDS or times[fastest] >= 0.95 * times[default]:
        return default
    return fastest


class FastRNN:
    """A drop-in for `net(X, state)` when training: same outputs and gradients as the book's
    `RNNModelScratch.forward`, much faster. Keeps its buffers between calls.

    backend: `plain` (the split kernel, its products on torch's threads), `rows` (the split
    kernel, batch rows split across threads), `onednn` (the fused kernel), or `auto`: the
    fastest for each minibatch shape, timed once per process (`backend` then says which).
    """

    def __init__(self, net: RNNModelScratch, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
        if backend == "onednn" and not fused_fits(net.vocab_size, net.num_hiddens,
                                                  net.W_hh.dtype, net.W_hh.device):
            raise RuntimeError("the oneDNN backend needs float32 on a CPU with torch's mkldnn "
                               "ops and a vocabulary no larger than the hidden size; use "
                               "backend='plain' or 'auto'")
        self.net, self.requested = net, backend
        self.backend: str | None = None if backend == "auto" else backend
        self.ws = None
        keep_freed_memory()  # each step's fresh gradients reuse memory instead of faulting it in

    def __call__(self, X: torch.Tensor, state: tuple[torch.Tensor]
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        net = self.net
        B, T = X.shape
        key = shape_key(net, B, T)
        if self.ws is None or self.ws.key != key:
            if self.requested == "auto":
                self.backend = choose_backend(key, torch.get_num_threads())
            self.ws = new_workspace(self.backend, key)
        Y, H = KERNELS[self.backend].apply(self.ws, X.to(net.W_hh.device), state[0],
                                           *net.params)
        return Y, (H,)

    def rest_of_step(self):
        """Where the rest of a training step runs (loss, backward, clipping, update): on one
        torch thread when the kernel splits the rows over the cores itself, since those ops'
        elementwise work over the weights would otherwise meet at torch's barrier per op,
        waiting for any core another process holds (measured: the book's `sgd` alone took
        40 ms a minibatch on a loaded 2-core VM)."""
        return _one_core_per_group(len(self.ws.rows) if isinstance(self.ws, SplitWorkspace) else 1)
