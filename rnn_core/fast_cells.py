"""The fast training path for every cell and depth: the math of cells.py, layer by layer, with
the gates fused and a hand-written backward through time.

`FastCells(net)(X, state)` returns what `net(X, state)` returns (time-major logits and the new
state tuple) and the same gradients up to float rounding, dropout included (its masks are drawn
by the same call, so the same torch seed gives the same masks). How it is arranged:
  * layer by layer, not step by step: a layer's input terms for all time steps come out of one
    product (for the first layer, rows of the stacked W_x picked by the tokens, no one-hot),
    the biases folded in;
  * the gates of a step are one product, H @ [W_h{g} for every gate] (the GRU needs a second
    one for its candidate, whose input R*H depends on the first); backward, one product per
    step the same way, dA @ W_h^T;
  * every weight gradient is one large product over the minibatch after the loop, and the
    derivatives of the nonlinearities are computed for all steps at once after the forward
    loop, so a step does only what the next step needs (an LSTM step: one product and six
    elementwise ops forward, one product and five backward);
  * per-step results are written into preallocated buffers (out=), no autograd recording;
  * the batch rows are split into one group per torch thread, each group's whole pass on its
    own core (as fast.FastRNN's `rows` kernel): torch's own threading of these small
    products pays a barrier per op and collapses when another process wants the cores.
Plain torch ops (torch.mm / addmm, MKL or oneBLAS underneath), so it runs on any device and
dtype: the `hand` backend.

The LSTM has a second backend, `onednn`: the book's §9.2 cell is exactly nn.LSTM's (its gate
blocks ordered i, f, g, o), so each layer runs through oneDNN's fused LSTM primitive: the
op nn.LSTM.forward calls (`torch.lstm`), with the book's parameters kept in its layout
(`FusedLSTM`: each of the book's tensors a view of its gate's block). The layers are run
one by one so that the dropout between them stays ours (the same masks). float32 on CPU.
`auto` (the default) times each backend that applies at the real shape, once per machine,
and keeps the fastest, as fast.FastRNN does.

The single-layer §8.5 RNN without dropout has its own, faster kernel: fast.FastRNN.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from .choices import remembered
from . import fast
from .fast import (FastRNN, _each_group, _one_core_per_group, _split, book_model,
                   keep_freed_memory, pick_fastest, row_threads, time_steps)
from .generation import _scripted
from .model import RNNModelScratch

Tensor = torch.Tensor
BACKENDS = ("auto", "hand", "onednn")


class _Kernel:
    """One layer's recurrence over T steps of a (B, H) state, with its buffers and per-step
    views made once and reused minibatch after minibatch.

    `weights(W_h)` arranges the layer's hidden-to-hidden weights once per minibatch (gates
    side by side, and transposed for the backward). The caller writes the input terms plus
    biases of every step into `xw` (T, B, G*H); then `forward(state0, w)` runs the steps,
    adding H_t-1 W_h in place, and returns the final state. The caller writes the gradient
    reaching each step's H from above into `dHs` (T, B, H); `backward(dstate, w)` takes it
    (as scratch) and the final state's, and returns (dA, the gradients of W_h per gate, of
    the initial state), dA being the gradient of the gates' pre-activations (T, B, G*H).
    The loop does only what the next step needs; the local derivatives of every step (`q`)
    are computed after it, for all steps at once, so a backward step is a few multiplications
    and one product."""
    gates = 1

    def __init__(self, T: int, B: int, H: int, dtype: torch.dtype, device: torch.device):
        self.T, self.B, self.H = T, B, H
        G = self.gates * H
        new = functools.partial(torch.empty, dtype=dtype, device=device)
        self.Hs = new((T + 1, B, H))        # H_0 (the initial state), H_1 .. H_T
        self.q = new((T, B, G))             # local derivatives of each step
        self.dA = new((T, B, G))
        self.dHs = new((T, B, H))           # the gradient reaching each step's H from above
        self.dH = new((B, H))
        self.one = torch.ones((), dtype=dtype, device=device)
        self.Hs_t, self.q_t, self.dA_t = self.Hs.unbind(0), self.q.unbind(0), self.dA.unbind(0)
        self.dHs_t = list(self.dHs.unbind(0))

    @staticmethod
    def weights(W_h: list[Tensor]) -> tuple[Tensor, Tensor]:
        """All gates' W_h side by side (H, G*H), and its transpose, contiguous."""
        W = torch.cat(W_h, dim=1)
        return W, W.t().contiguous()

    def gate(self, x: Tensor, g: int, k: int = 1) -> Tensor:
        """Gates g .. g+k-1 of (..., G*H) `x`, a view."""
        return x[..., g * self.H:(g + k) * self.H]

    def steps(self, x: Tensor, g: int, k: int = 1) -> list[Tensor]:
        """Per step, gates g .. g+k-1 of (T, B, G*H) `x`: views, made once for the loops."""
        return [self.gate(x_t, g, k) for x_t in x.unbind(0)]

    def _dH_T(self, dH_T: Tensor | None) -> Tensor:
        return self.dHs[-1].add_(dH_T) if dH_T is not None else self.dHs[-1]

    def _next_dH(self, t: int, dA_t: Tensor, W_T: Tensor) -> Tensor:
        """dH_t-1 = dHs_t-1 + dA_t W^T, in place (the initial state's gradient at t = 0)."""
        if t:
            return self.dHs[t - 1].addmm_(dA_t, W_T)
        return torch.mm(dA_t, W_T, out=self.dH)


class _RNNKernel(_Kernel):
    """§8.5: H_t = tanh(xw_t + H_t-1 W_hh); q_t = 1 - H_t^2."""

    def __init__(self, T, B, H, dtype, device):
        super().__init__(T, B, H, dtype, device)
        self.xw = self.Hs[1:]              # each step's input terms, overwritten by its H

    def forward(self, state0: Sequence[Tensor], w: tuple[Tensor, Tensor]):
        Hs = self.Hs_t
        Hs[0].copy_(state0[0])
        W_hh = w[0]
        for t in range(self.T):
            Hs[t + 1].addmm_(Hs[t], W_hh).tanh_()
        torch.addcmul(self.one, self.xw, self.xw, value=-1, out=self.q)
        return (Hs[self.T].clone(),)

    def backward(self, dstate: Sequence[Tensor | None], w: tuple[Tensor, Tensor]):
        dH = self._dH_T(dstate[0])
        for t in range(self.T - 1, -1, -1):
            torch.mul(dH, self.q_t[t], out=self.dA_t[t])
            dH = self._next_dH(t, self.dA_t[t], w[1])
        H_prev = self.Hs[:self.T].view(-1, self.H)
        return self.dA, [torch.mm(H_prev.t(), self.dA.view(-1, self.H))], (dH.clone(),)


@_scripted
def gru_forward_steps(Hs: list[Tensor], ZR: list[Tensor], Z: list[Tensor], R: list[Tensor],
                      Ht: list[Tensor], RH: list[Tensor], W_hzr: Tensor, W_hh: Tensor,
                      minus_one: Tensor) -> None:
    """The GRU's steps (see _GRUKernel) in one TorchScript call: two threads' loops then
    run side by side instead of handing the GIL to each other at every op. Every argument
    but the weights is a list of per-step views (made once: no view op inside the loop).
    H~ = tanh(a) is taken as 2 sigmoid(2a) - 1, 2a exact from the product's alpha and beta:
    the same up to float rounding, and the forward loop 6% faster (torch's tanh of a 16 x 256
    step took 12 us, its sigmoid of twice that 4 to 7 us, measured)."""
    for t in range(len(ZR)):
        ZR[t].addmm_(Hs[t], W_hzr).sigmoid_()
        s = Ht[t].addmm_(torch.mul(R[t], Hs[t], out=RH[t]), W_hh, beta=2, alpha=2).sigmoid_()
        torch.add(minus_one, s, alpha=2, out=Ht[t])
        torch.lerp(Ht[t], Hs[t], Z[t], out=Hs[t + 1])   # H~ + Z (H - H~)


@_scripted
def gru_backward_steps(dHs: list[Tensor], dHs_zh: list[Tensor], dA_zh: list[Tensor],
                       q_zh: list[Tensor], dA_h: list[Tensor], dA_r: list[Tensor],
                       q_r: list[Tensor], dA_zr: list[Tensor], Z: list[Tensor], R: list[Tensor],
                       dRH: Tensor, dH0: Tensor, W_hzr_T: Tensor, W_hh_T: Tensor) -> Tensor:
    """The GRU's backward steps (see _GRUKernel.backward) in one TorchScript call; returns
    the initial state's gradient (in dH0). dHs_zh[t] is dHs[t] against gates z and h."""
    T = len(dHs)
    for t in range(T - 1, -1, -1):
        dH = dHs[t]
        torch.mul(dHs_zh[t], q_zh[t], out=dA_zh[t])    # dA_z, dA_h
        torch.mm(dA_h[t], W_hh_T, out=dRH)
        torch.mul(dRH, q_r[t], out=dA_r[t])
        if t > 0:
            nxt = dHs[t - 1].addmm_(dA_zr[t], W_hzr_T)
        else:
            nxt = torch.mm(dA_zr[t], W_hzr_T, out=dH0)
        nxt.addcmul_(dH, Z[t]).addcmul_(dRH, R[t])
    return dH0


class _GRUKernel(_Kernel):
    """§9.1: [Z R] = sigmoid(xw_zr + H W_h[zr]); H~ = tanh(xw_h + (R*H) W_hh);
    H = H~ + Z*(H - H~). q = [q_z, q_r, q_h] with dA_z = dH q_z, dA_r = d(RH) q_r,
    dA_h = dH q_h."""
    gates = 3

    def __init__(self, T, B, H, dtype, device):
        super().__init__(T, B, H, dtype, device)
        new = functools.partial(torch.empty, dtype=dtype, device=device)
        self.xw = new((T, B, 3 * H))   # [Z R | H~]: input terms, then the gates in place
        self.RH, self.diff = new((T, B, H)), new((T, B, H))
        self.dRH = new((B, H))
        xw, dA, q = self.xw, self.dA, self.q
        self.Z, self.R = self.steps(xw, 0), self.steps(xw, 1)
        self.forward_views = (list(self.Hs_t), self.steps(xw, 0, 2), self.Z, self.R,
                              self.steps(xw, 2), list(self.RH.unbind(0)))
        self.minus_one = -self.one
        zh = [list(x.view(T, B, 3, H)[:, :, ::2].unbind(0)) for x in (dA, q)]   # gates z, h
        self.backward_views = (self.dHs_t, [d.unsqueeze(1) for d in self.dHs_t], *zh,
                               self.steps(dA, 2), self.steps(dA, 1), self.steps(q, 1),
                               self.steps(dA, 0, 2), self.Z, self.R)

    @staticmethod
    def weights(W_h: list[Tensor]) -> tuple[Tensor, ...]:
        """[W_hz W_hr] and W_hh, and their transposes: H~ needs R first."""
        W_hzr, W_hh = torch.cat(W_h[:2], dim=1), W_h[2]
        return W_hzr, W_hh, W_hzr.t().contiguous(), W_hh.t().contiguous()

    def forward(self, state0: Sequence[Tensor], w: tuple[Tensor, ...]):
        self.Hs[0].copy_(state0[0])
        gru_forward_steps(*self.forward_views, *w[:2], self.minus_one)
        Z, R, Ht = (self.gate(self.xw, g) for g in range(3))
        q_z, q_r, q_h = (self.gate(self.q, g) for g in range(3))
        torch.sub(self.Hs[:-1], Ht, out=self.diff)
        torch.addcmul(self.diff, self.diff, Z, value=-1, out=q_z).mul_(Z)  # (H - H~) Z (1 - Z)
        torch.addcmul(self.RH, self.RH, R, value=-1, out=q_r)              # H R (1 - R)
        torch.addcmul(self.one, Ht, Ht, value=-1, out=q_h).addcmul_(q_h, Z, value=-1)  # (1 - Z)(1 - H~^2)
        return (self.Hs[self.T].clone(),)

    def backward(self, dstate: Sequence[Tensor | None], w: tuple[Tensor, ...]):
        H, T, B = self.H, self.T, self.B
        self._dH_T(dstate[0])
        dH = gru_backward_steps(*self.backward_views, self.dRH, self.dH, *w[2:])
        flat = self.dA.view(T * B, 3 * H)
        dW_hzr = torch.mm(self.Hs[:T].view(T * B, H).t(), flat[:, :2 * H])
        dW_hh = torch.mm(self.RH.view(T * B, H).t(), flat[:, 2 * H:])
        return self.dA, [dW_hzr[:, :H], dW_hzr[:, H:], dW_hh], (dH.clone(),)


@_scripted
def lstm_forward_steps(Hs: list[Tensor], Cs: list[Tensor], X: list[Tensor], IFO: list[Tensor],
                       I: list[Tensor], F: list[Tensor], O: list[Tensor], Ct: list[Tensor],
                       IC: list[Tensor], tanhC: list[Tensor], W: Tensor) -> None:
    """The LSTM's steps (see _LSTMKernel) in one TorchScript call, as the GRU's."""
    for t in range(len(X)):
        X[t].addmm_(Hs[t], W)
        IFO[t].sigmoid_()
        ic = torch.mul(I[t], Ct[t].tanh_(), out=IC[t])
        C = torch.addcmul(ic, F[t], Cs[t], out=Cs[t + 1])
        torch.mul(O[t], torch.tanh(C, out=tanhC[t]), out=Hs[t + 1])


@_scripted
def lstm_backward_steps(dHs: list[Tensor], dA: list[Tensor], dA_if: list[Tensor],
                        q_if: list[Tensor], dA_o: list[Tensor], q_o: list[Tensor],
                        dA_c: list[Tensor], q_c: list[Tensor], q_cc: list[Tensor],
                        F: list[Tensor], dC: Tensor, dH0: Tensor, W_T: Tensor) -> Tensor:
    """The LSTM's backward steps (see _LSTMKernel.backward) in one TorchScript call; `dC`
    holds the final C's gradient and ends as the initial one's; returns the initial H's
    gradient (in dH0)."""
    T = len(dHs)
    dH = dHs[T - 1]
    dC_if = dC.unsqueeze(1)   # dC against gates i and f side by side
    for t in range(T - 1, -1, -1):
        dC.addcmul_(dH, q_cc[t])
        torch.mul(dC_if, q_if[t], out=dA_if[t])
        torch.mul(dH, q_o[t], out=dA_o[t])
        torch.mul(dC, q_c[t], out=dA_c[t])
        dC.mul_(F[t])
        if t > 0:
            dH = dHs[t - 1].addmm_(dA[t], W_T)
        else:
            dH = torch.mm(dA[t], W_T, out=dH0)
    return dH


class _LSTMKernel(_Kernel):
    """§9.2: [I F O] = sigmoid, C~ = tanh of xw + H W_h[ifoc]; C = F*C + I*C~; H = O*tanh(C).
    q = [q_i, q_f, q_o, q_c] with dA_i = dC q_i, dA_f = dC q_f, dA_o = dH q_o, dA_c = dC q_c,
    and dC = dC_next F_next + dH q_cc."""
    gates = 4

    def __init__(self, T, B, H, dtype, device):
        super().__init__(T, B, H, dtype, device)
        new = functools.partial(torch.empty, dtype=dtype, device=device)
        self.xw = new((T, B, 4 * H))   # input terms, then the gates I, F, O, C~ in place
        self.Cs = new((T + 1, B, H))
        self.IC, self.tanhC, self.q_cc = new((T, B, H)), new((T, B, H)), new((T, B, H))
        self.dC = new((B, H))
        xw, dA, q = self.xw, self.dA, self.q
        F = self.steps(xw, 1)
        self.forward_views = (list(self.Hs_t), list(self.Cs.unbind(0)), list(xw.unbind(0)),
                              self.steps(xw, 0, 3), self.steps(xw, 0), F, self.steps(xw, 2),
                              self.steps(xw, 3), list(self.IC.unbind(0)),
                              list(self.tanhC.unbind(0)))
        if_ = [[x[:, :2 * H].view(B, 2, H) for x in d.unbind(0)] for d in (dA, q)]  # gates i, f
        self.backward_views = (list(self.dA_t), *if_, self.steps(dA, 2), self.steps(q, 2),
                               self.steps(dA, 3), self.steps(q, 3), list(self.q_cc.unbind(0)),
                               F)

    def forward(self, state0: Sequence[Tensor], w: tuple[Tensor, Tensor]):
        self.Hs[0].copy_(state0[0])
        self.Cs[0].copy_(state0[1])
        lstm_forward_steps(*self.forward_views, w[0])
        I, F, O, Ct = (self.gate(self.xw, g) for g in range(4))
        q_i, q_f, q_o, q_c = (self.gate(self.q, g) for g in range(4))
        h, IC, tc = self.Hs[1:], self.IC, self.tanhC
        torch.addcmul(IC, IC, I, value=-1, out=q_i)                     # C~ I (1 - I)
        torch.mul(F, self.Cs[:-1], out=q_f)
        q_f.addcmul_(q_f, F, value=-1)                                  # C F (1 - F)
        torch.addcmul(h, h, O, value=-1, out=q_o)                       # tanh(C) O (1 - O)
        torch.addcmul(I, IC, Ct, value=-1, out=q_c)                     # I (1 - C~^2)
        torch.addcmul(O, h, tc, value=-1, out=self.q_cc)                # O (1 - tanh(C)^2)
        return self.Hs[self.T].clone(), self.Cs[self.T].clone()

    def backward(self, dstate: Sequence[Tensor | None], w: tuple[Tensor, Tensor]):
        H, T, B = self.H, self.T, self.B
        self._dH_T(dstate[0])
        dC = self.dC.zero_() if dstate[1] is None else self.dC.copy_(dstate[1])
        dH = lstm_backward_steps(self.dHs_t, *self.backward_views, dC, self.dH, w[1])
        dW = torch.mm(self.Hs[:T].view(T * B, H).t(), self.dA.view(T * B, 4 * H))
        return self.dA, [dW[:, k * H:(k + 1) * H] for k in range(4)], (dH.clone(), dC.clone())


KERNELS = {"rnn": _RNNKernel, "gru": _GRUKernel, "lstm": _LSTMKernel}


# ------------------------------------------------------------------ the whole model

class Workspace:
    """Buffers for minibatches of one shape, reused call after call. The batch rows are cut
    into groups, one per torch thread as in fast.FastRNN's `rows` kernel (no layer ever mixes
    rows): each group has every layer's kernel for its rows and does its whole share of a
    pass on its own thread, so the threads meet once per forward and once per backward.
    `calls` counts forwards, to catch a backward of an older one."""

    def __init__(self, net: RNNModelScratch, T: int, B: int, groups: int = 1):
        dtype, device, H = net.W_hq.dtype, net.W_hq.device, net.num_hiddens
        self.key = (net.arch, net.num_layers, T, B, H, dtype, device, groups)
        self.rows = _split(B, groups)
        self.kernels = [[KERNELS[net.arch](T, r.stop - r.start, H, dtype, device)
                         for _ in range(net.num_layers)] for r in self.rows]
        self.calls = 0


def _layers(net: RNNModelScratch, params: Sequence[Tensor]) -> list[tuple]:
    """Per layer, arranged once per minibatch for every row group: W_x and b with the gates
    side by side, and the kernel's arrangement of W_h."""
    G3, kernel = 3 * len(net.cell.gates), KERNELS[net.arch]
    return [(torch.cat(p[0::3], dim=1), torch.cat(p[2::3]), kernel.weights(list(p[1::3])))
            for p in (params[k * G3:(k + 1) * G3] for k in range(net.num_layers))]


def _forward_rows(kernels: list[_Kernel], X: Tensor, masks: Tensor | None,
                  state: Sequence[Tensor], layers: list[tuple], W_hq: Tensor, b_q: Tensor):
    """One row group's forward through every layer and the output layer: logits (T, rows, V),
    the new state, and what its backward needs (each layer's input, the top's output)."""
    n, T = X.shape
    S = len(state) // len(kernels)
    tokens = X.t().reshape(-1)
    inputs, new_state = [tokens], []
    for k, (kernel, (W_x, b, w)) in enumerate(zip(kernels, layers)):
        xw = kernel.xw.view(T * n, -1)
        if k == 0:
            torch.index_select(W_x, 0, tokens, out=xw).add_(b)   # one-hot X @ W_x, + b
        else:
            below = kernels[k - 1].Hs[1:]
            inp = (below * masks[k - 1] if masks is not None else below).reshape(T * n, -1)
            inputs.append(inp)
            torch.addmm(b, inp, W_x, out=xw)
        new_state.extend(kernel.forward(state[k * S:(k + 1) * S], w))
    top = kernels[-1].Hs[1:]
    top = (top * masks[-1] if masks is not None else top).reshape(T * n, -1)
    return torch.addmm(b_q, top, W_hq).view(T, n, -1), new_state, (inputs, top)


def _backward_rows(kernels: list[_Kernel], dY: Tensor, dstate: Sequence[Tensor | None],
                   masks: Tensor | None, layers: list[tuple], W_hq: Tensor, saved: tuple,
                   V: int):
    """One row group's backward: the gradients of its initial state and its part of every
    parameter's gradient (the model's order)."""
    inputs, top = saved
    L, T, n, H = len(kernels), kernels[0].T, kernels[0].B, kernels[0].H
    S, G = len(dstate) // L, kernels[0].gates
    grads: list[Tensor] = []
    torch.mm(dY, W_hq.t(), out=kernels[-1].dHs.view(T * n, H))
    if masks is not None:
        kernels[-1].dHs.mul_(masks[L - 1])
    dstate_in: list[Tensor] = [None] * (L * S)
    for k in range(L - 1, -1, -1):
        W_x, _, w = layers[k]
        dA, dW_h, d0 = kernels[k].backward(dstate[k * S:(k + 1) * S], w)
        dstate_in[k * S:(k + 1) * S] = d0
        flat = dA.view(T * n, G * H)
        db = flat.sum(0)
        if k == 0:   # one-hot X^T dA: rows of dA added by token
            dW_x = flat.new_zeros((V, G * H)).index_add_(0, inputs[0], flat)
        else:
            dW_x = torch.mm(inputs[k].t(), flat)
            torch.mm(flat, W_x.t(), out=kernels[k - 1].dHs.view(T * n, H))
            if masks is not None:
                kernels[k - 1].dHs.mul_(masks[k - 1])
        layer = []
        for g in range(G):
            cols = slice(g * H, (g + 1) * H)
            layer += [dW_x[:, cols], dW_h[g], db[cols]]
        grads[:0] = layer
    return dstate_in, grads + [torch.mm(top.t(), dY), dY.sum(0)]


class _StackFunction(torch.autograd.Function):
    """Logits (T*B, V), time-major, and the new state of a stacked model over token ids X (B, T).

    Inputs after the workspace, X and the dropout masks (L, T, B, H) or None: the state
    tensors (S per layer), then the parameters in the model's order (per layer: W_x{g},
    W_h{g}, b_{g} for each gate; then W_hq, b_q)."""

    @staticmethod
    def forward(ctx, ws: Workspace, net: RNNModelScratch, X: Tensor, masks: Tensor | None,
                *tensors: Tensor):
        L, S = net.num_layers, len(net.cell.state)
        state, params = tensors[:L * S], tensors[L * S:]
        B, T = X.shape
        groups = len(ws.rows)
        out = [None] * groups

        @torch.no_grad()  # grad mode is per thread
        def rows(g: int) -> None:
            r = ws.rows[g]
            out[g] = _forward_rows(ws.kernels[g], X[r], None if masks is None else masks[:, :, r],
                                   [s[r] for s in state], layers, *params[-2:])

        with _one_core_per_group(groups):
            layers = _layers(net, params)
            _each_group(rows, groups)
            Y = torch.cat([o[0] for o in out], dim=1).view(T * B, -1)
            new_state = [torch.cat([o[1][i] for o in out]) for i in range(L * S)]
        ws.calls += 1
        ctx.ws, ctx.call, ctx.net, ctx.masks, ctx.layers = ws, ws.calls, net, masks, layers
        ctx.W_hq, ctx.saved = params[-2], [o[2] for o in out]
        ctx.set_materialize_grads(False)
        return (Y, *new_state)

    @staticmethod
    def backward(ctx, dY: Tensor | None, *dstate: Tensor | None):
        ws, net, masks = ctx.ws, ctx.net, ctx.masks
        if ws.calls != ctx.call:
            raise RuntimeError("FastCells reuses its buffers: call backward before the next forward")
        V, T, B = net.vocab_size, ws.key[2], ws.key[3]
        groups = len(ws.rows)
        if dY is None:
            dY = ctx.W_hq.new_zeros((T * B, V))
        dY = dY.view(T, B, V)
        out = [None] * groups

        @torch.no_grad()
        def rows(g: int) -> None:
            r = ws.rows[g]
            out[g] = _backward_rows(ws.kernels[g], dY[:, r].reshape(-1, V),
                                    [None if d is None else d[r] for d in dstate],
                                    None if masks is None else masks[:, :, r], ctx.layers,
                                    ctx.W_hq, ctx.saved[g], V)

        with _one_core_per_group(groups):
            _each_group(rows, groups)
            dstate_in = [torch.cat([o[0][i] for o in out]) for i in range(len(dstate))]
            grads = out[0][1]
            for _, partial in out[1:]:
                for total, part in zip(grads, partial):
                    total.add_(part)
        ctx.saved = None
        return (None, None, None, None, *dstate_in, *grads)


# ------------------------------------------------------------------ the LSTM through oneDNN

LSTM_BLOCKS = (0, 1, 3, 2)   # the book's gates i, f, o, c in nn.LSTM's block order i, f, g, o


class FusedLSTM:
    """The book's LSTM parameters kept in nn.LSTM's layout, so that oneDNN's LSTM reads them
    without a copy a step: per layer one (4H, inputs) `weight_ih`, one (4H, H) `weight_hh` and
    one 4H bias, in nn.LSTM's block order, with each of the book's tensors (`W_xi`, `W_hi`,
    `b_i`, ...) re-pointed to its block (transposed for the weights: the book's (inputs, H)).
    The model keeps its parameters (the optimizer's, the checkpoint's, the book's names and
    values); only their memory moves. After each backward the fused tensors' gradients are
    handed to the book's parameters as views of the same blocks. Measured: 3-8% of a training
    step at the book's shape over concatenating the gates every step (bench/README.md)."""

    def __init__(self, net: RNNModelScratch):
        self.net = net
        self.layers = [(self._fuse(W_x, True), self._fuse(W_h, True), self._fuse(b, False))
                       for W_x, W_h, b in map(net.layer, range(net.num_layers))]
        self.zero_bias = torch.zeros_like(self.layers[0][2])
        self.where = [(p.data_ptr(), p.stride()) for p in net.params]

    def current(self) -> bool:
        """Whether every parameter still lives where it was put (a `.to()` or an assignment
        to `.data` would move it, and the fused tensors would go stale)."""
        return [(p.data_ptr(), p.stride()) for p in self.net.params] == self.where

    @staticmethod
    def _fuse(parts: Sequence[Tensor], transpose: bool) -> Tensor:
        """One fused leaf from the book's gate tensors `parts` (gates i, f, o, c), each
        re-pointed to its block, and the hook that hands its gradient to them."""
        blocks = [parts[g].detach().t() if transpose else parts[g].detach() for g in LSTM_BLOCKS]
        fused = torch.cat(blocks).requires_grad_(True)
        size = blocks[0].shape[0]
        gates = [(parts[g], slice(i * size, (i + 1) * size)) for i, g in enumerate(LSTM_BLOCKS)]
        for param, rows in gates:
            param.data = fused.detach()[rows].t() if transpose else fused.detach()[rows]

        def hand_over(fused: Tensor) -> None:
            for param, rows in gates:
                grad = fused.grad[rows].t() if transpose else fused.grad[rows]
                if param.grad is None:
                    param.grad = grad
                else:                      # accumulate, as autograd does
                    param.grad += grad
            fused.grad = None
        fused.register_post_accumulate_grad_hook(hand_over)
        return fused


def onednn_lstm_forward(fused: FusedLSTM, X: Tensor, state: Sequence[Tensor],
                        masks: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """`net(X, state)` for an LSTM of any depth with the given dropout masks, each layer one
    call of nn.LSTM's fused op (oneDNN on a float32 CPU) on `fused`'s weights; autograd does
    the backward. Layer 0 reads the one-hot inputs (T, B, V), as the book's model does."""
    net = fused.net
    inp = F.one_hot(X.t(), net.vocab_size).to(net.W_hq.dtype)
    new_state: list[Tensor] = []
    for k, (weight_ih, weight_hh, bias) in enumerate(fused.layers):
        if k and masks is not None:
            inp = inp * masks[k - 1]
        H0, C0 = state[2 * k:2 * k + 2]
        # torch.lstm(input, (h0, c0), params, has_biases, num_layers, dropout, train,
        #            bidirectional, batch_first): what nn.LSTM.forward calls; the book's one
        #            bias per gate is bias_ih, bias_hh is zero
        inp, H, C = torch.lstm(inp, (H0[None], C0[None]),
                               [weight_ih, weight_hh, bias, fused.zero_bias],
                               True, 1, 0.0, True, False, False)
        new_state += [H[0].clone(), C[0].clone()]   # not views: training detaches them in place
    top = inp if masks is None else inp * masks[-1]
    return torch.addmm(net.b_q, top.reshape(-1, net.num_hiddens), net.W_hq), tuple(new_state)


@functools.cache
def onednn_lstm_available() -> bool:
    """True when torch's LSTM runs on oneDNN here (mkldnn built and enabled) and computes
    the book's LSTM with the rearranged parameters (checked on a small model)."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    with torch.random.fork_rng(devices=[]):  # leaves the caller's random stream alone
        torch.manual_seed(0)
        net = RNNModelScratch(5, 4, arch="lstm", num_layers=2)
        X = torch.randint(0, 5, (3, 2))
        state = tuple(torch.randn((3, 4)) for _ in range(4))
    try:
        with torch.no_grad():
            got, expected = onednn_lstm_forward(FusedLSTM(net), X, state, None), net(X, state)
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return False
    return all(torch.allclose(g, e, atol=1e-5) for g, e in
               zip((got[0], *got[1]), (expected[0], *expected[1]), strict=True))


def backend_fits(backend: str, arch: str, dtype: torch.dtype, device: torch.device) -> bool:
    """`hand` runs everywhere; `onednn` needs an LSTM in float32 on a CPU with oneDNN."""
    if backend == "onednn":
        return (arch == "lstm" and device.type == "cpu" and dtype == torch.float32
                and onednn_lstm_available())
    return backend == "hand"


def candidates(arch: str, dtype: torch.dtype, device: torch.device) -> list[str]:
    """The backends that apply, `hand` first."""
    return [b for b in BACKENDS[1:] if backend_fits(b, arch, dtype, device)]


def shape_key(net: RNNModelScratch, B: int, T: int) -> tuple:
    """What the backends and their choice depend on for `net` and B x T minibatches."""
    return (net.arch, net.num_layers, T, B, net.num_hiddens, net.vocab_size, net.W_hq.dtype,
            net.W_hq.device)


@functools.cache
def choose_backend(shape: tuple, threads: int) -> str:
    """`auto`'s choice for minibatches of `shape` with `threads` torch threads: the fastest
    backend that applies, measured; `hand` unless another is at least 5% faster; timed once
    per machine (choices.py)."""
    arch, layers, T, B, H, V, dtype, device = shape
    names = candidates(arch, dtype, device)
    if len(names) == 1:
        return names[0]

    model = functools.partial(book_model, V, H, B, T, dtype, device, arch=arch, num_layers=layers)

    def measure() -> str:
        _, X, y, state = model()
        forwards = {b: FastCells(model()[0], b) for b in names}  # each its own copy of the model
        return pick_fastest(time_steps(forwards, X, y, state), "hand")
    return remembered("cells", shape, threads, device, names, measure)


# ------------------------------------------------------------------ the drop-in

class FastCells:
    """A drop-in for `net(X, state)` when training any cell, depth and dropout: same outputs
    and gradients as `RNNModelScratch.forward` up to float rounding, and the same dropout
    masks for the same torch random state.

    backend: `hand` (the hand-written kernels above, any device and dtype; keeps its buffers
    between calls), `onednn` (LSTM only: oneDNN's fused LSTM per layer), or `auto`: the
    fastest that applies for each minibatch shape, timed once per process (`backend` then
    says which)."""

    def __init__(self, net: RNNModelScratch, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if backend == "onednn" and not backend_fits(backend, net.arch, net.W_hq.dtype,
                                                     net.W_hq.device):
            raise RuntimeError("the oneDNN backend needs an LSTM in float32 on a CPU with "
                               "torch's oneDNN (mkldnn) enabled; use backend='hand' or 'auto'")
        self.net, self.requested = net, backend
        self.backend: str | None = None if backend == "auto" else backend
        self.shape: tuple | None = None
        self.ws: Workspace | None = None
        self.fused: FusedLSTM | None = None
        keep_freed_memory()  # large temporaries reuse memory instead of page-faulting it in

    def __call__(self, X: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        net = self.net
        X = X.to(net.W_hq.device)
        B, T = X.shape
        shape = shape_key(net, B, T)
        if self.shape != shape and self.requested == "auto":
            self.backend = choose_backend(shape, torch.get_num_threads())
        self.shape = shape
        masks = net.dropout_masks(T, B, X.device, net.W_hq.dtype) if net.training else None
        if self.backend == "onednn":
            if self.fused is None or not self.fused.current():
                self.fused = FusedLSTM(net)
            return onednn_lstm_forward(self.fused, X, state, masks)
        groups = row_threads(B, X.device)
        key = (net.arch, net.num_layers, T, B, net.num_hiddens, net.W_hq.dtype, net.W_hq.device,
               groups)
        if self.ws is None or self.ws.key != key:
            self.ws = Workspace(net, T, B, groups)
        Y, *new_state = _StackFunction.apply(self.ws, net, X, masks, *state, *net.params)
        return Y, tuple(new_state)

    def rest_of_step(self):
        """As FastRNN.rest_of_step: one torch thread when the hand-written kernel splits the
        rows over the cores; torch's own threads for oneDNN's LSTM."""
        groups = len(self.ws.rows) if self.backend == "hand" and self.ws is not None else 1
        return _one_core_per_group(groups)


def fast_forward(net: RNNModelScratch, backend: str = "auto"):
    """The fastest training forward for `net`: fast.FastRNN for the one-layer §8.5 RNN without
    dropout, FastCells otherwise; `backend` one of theirs (ValueError for another, RuntimeError
    where it does not apply here)."""
    return (FastRNN if is_book_rnn(net) else FastCells)(net, backend)


def applicable(net: RNNModelScratch, B: int, T: int) -> list[str]:
    """The backends of `fast_forward(net)` that apply to B x T minibatches here."""
    if is_book_rnn(net):
        return fast.candidates(fast.shape_key(net, B, T))
    return candidates(net.arch, net.W_hq.dtype, net.W_hq.device)


def auto_backend(net: RNNModelScratch, B: int, T: int) -> str:
    """What `fast_forward(net)` (`auto`) will run on B x T minibatches, chosen now."""
    if is_book_rnn(net):
        return fast.choose_backend(fast.shape_key(net, B, T), torch.get_num_threads())
    return choose_backend(shape_key(net, B, T), torch.get_num_threads())


def is_book_rnn(net: RNNModelScratch) -> bool:
    """The one-layer §8.5 RNN without dropout: the model fast.FastRNN computes."""
    return net.arch == "rnn" and net.num_layers == 1 and net.dropout == 0
