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
    derivatives of the nonlinearities are computed for all steps at once, so a step's
    backward is a handful of elementwise ops;
  * per-step results are written into preallocated buffers (out=), no autograd recording.
Plain torch ops (torch.mm / addmm, MKL or oneBLAS underneath), so it runs on any device and
dtype. The single-layer §8.5 RNN without dropout has its own, faster kernel: fast.FastRNN.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from .cells import dropout_masks
from .fast import FastRNN, keep_freed_memory
from .model import RNNModelScratch

Tensor = torch.Tensor


class _Kernel:
    """One layer's recurrence over T steps of a (B, H) state, with its buffers and per-step
    views made once and reused minibatch after minibatch.

    The caller writes the input terms plus biases of every step into `xw` (T, B, G*H); then
    `forward(state0, W_h)` runs the steps, adding H_t-1 W_h in place, and returns the final
    state. `backward(dHs, dstate, W_h)` takes the gradient reaching each step's H from above
    (dHs, (T, B, H), used as scratch) and the final state's, and returns (dA, the gradients of
    W_h per gate, of the initial state), dA being the gradient of the gates' pre-activations
    (T, B, G*H). Forward also stores each step's local derivatives (`q`), computed while the
    step's values are in cache, so a backward step is a few multiplications and one product."""
    gates = 1

    def __init__(self, T: int, B: int, H: int, dtype: torch.dtype, device: torch.device):
        self.T, self.B, self.H = T, B, H
        G = self.gates * H
        new = functools.partial(torch.empty, dtype=dtype, device=device)
        self.Hs = new((T + 1, B, H))        # H_0 (the initial state), H_1 .. H_T
        self.q = new((T, B, G))             # local derivatives of each step
        self.dA = new((T, B, G))
        self.dH = new((B, H))
        self.one = torch.ones((), dtype=dtype, device=device)
        self.Hs_t, self.q_t, self.dA_t = self.Hs.unbind(0), self.q.unbind(0), self.dA.unbind(0)

    def gate_views(self, x: Tensor, k: int) -> list[list[Tensor]]:
        """Per step, the k gate blocks of (T, B, k*H) `x`, sliced once."""
        H = self.H
        return [[x_t[:, g * H:(g + 1) * H] for g in range(k)] for x_t in x.unbind(0)]

    def _dH_T(self, dHs: Tensor, dH_T: Tensor | None) -> Tensor:
        return dHs[-1].add_(dH_T) if dH_T is not None else dHs[-1]

    def _next_dH(self, t: int, dHs: Tensor, dA_t: Tensor, W_T: Tensor) -> Tensor:
        """dH_t-1 = dHs_t-1 + dA_t W^T, in place (the initial state's gradient at t = 0)."""
        if t:
            return dHs[t - 1].addmm_(dA_t, W_T)
        return torch.mm(dA_t, W_T, out=self.dH)


class _RNNKernel(_Kernel):
    """§8.5: H_t = tanh(xw_t + H_t-1 W_hh); q_t = 1 - H_t^2."""

    def __init__(self, T, B, H, dtype, device):
        super().__init__(T, B, H, dtype, device)
        self.xw = self.Hs[1:]              # each step's input terms, overwritten by its H

    def forward(self, state0: Sequence[Tensor], W_h: list[Tensor]):
        Hs, q = self.Hs_t, self.q_t
        Hs[0].copy_(state0[0])
        (W_hh,) = W_h
        for t in range(self.T):
            H = Hs[t + 1].addmm_(Hs[t], W_hh).tanh_()
            torch.addcmul(self.one, H, H, value=-1, out=q[t])
        return (Hs[self.T].clone(),)

    def backward(self, dHs: Tensor, dstate: Sequence[Tensor | None], W_h: list[Tensor]):
        W_T = W_h[0].t().contiguous()
        dH = self._dH_T(dHs, dstate[0])
        for t in range(self.T - 1, -1, -1):
            torch.mul(dH, self.q_t[t], out=self.dA_t[t])
            dH = self._next_dH(t, dHs, self.dA_t[t], W_T)
        H_prev = self.Hs[:self.T].view(-1, self.H)
        return self.dA, [torch.mm(H_prev.t(), self.dA.view(-1, self.H))], (dH.clone(),)


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
        self.omz, self.dRH = new((B, H)), new((B, H))
        self.zr = [x_t[:, :2 * H] for x_t in self.xw.unbind(0)]
        self.gates_t = self.gate_views(self.xw, 3)     # Z, R, H~ per step
        self.q_g = self.gate_views(self.q, 3)
        self.dA_g = self.gate_views(self.dA, 3)
        self.dA_zr = [d[:, :2 * H] for d in self.dA_t]

    def forward(self, state0: Sequence[Tensor], W_h: list[Tensor]):
        Hs = self.Hs_t
        Hs[0].copy_(state0[0])
        W_hzr, W_hh = torch.cat(W_h[:2], dim=1), W_h[2]
        self.W_hzr_T, self.W_hh_T = W_hzr.t().contiguous(), W_hh.t().contiguous()
        for t in range(self.T):
            (Z, R, ht), (q_z, q_r, q_h) = self.gates_t[t], self.q_g[t]
            self.zr[t].addmm_(Hs[t], W_hzr).sigmoid_()
            rh = torch.mul(R, Hs[t], out=self.RH[t])
            ht.addmm_(rh, W_hh).tanh_()
            w = torch.sub(Hs[t], ht, out=self.diff[t])
            torch.addcmul(w, w, Z, value=-1, out=q_z).mul_(Z)       # (H - H~) Z (1 - Z)
            w.mul_(Z)
            torch.add(ht, w, out=Hs[t + 1])
            torch.addcmul(rh, rh, R, value=-1, out=q_r)             # H R (1 - R)
            omz = torch.sub(self.one, Z, out=self.omz)
            torch.addcmul(omz, omz * ht, ht, value=-1, out=q_h)      # (1 - Z)(1 - H~^2)
        return (Hs[self.T].clone(),)

    def backward(self, dHs: Tensor, dstate: Sequence[Tensor | None], W_h: list[Tensor]):
        H, T, B = self.H, self.T, self.B
        dH = self._dH_T(dHs, dstate[0])
        for t in range(T - 1, -1, -1):
            (dA_z, dA_r, dA_h), (q_z, q_r, q_h) = self.dA_g[t], self.q_g[t]
            Z, R, _ = self.gates_t[t]
            torch.mul(dH, q_h, out=dA_h)
            dRH = torch.mm(dA_h, self.W_hh_T, out=self.dRH)
            torch.mul(dH, q_z, out=dA_z)
            torch.mul(dRH, q_r, out=dA_r)
            nxt = self._next_dH(t, dHs, self.dA_zr[t], self.W_hzr_T)
            dH = nxt.addcmul_(dH, Z).addcmul_(dRH, R)
        flat = self.dA.view(T * B, 3 * H)
        dW_hzr = torch.mm(self.Hs[:T].view(T * B, H).t(), flat[:, :2 * H])
        dW_hh = torch.mm(self.RH.view(T * B, H).t(), flat[:, 2 * H:])
        return self.dA, [dW_hzr[:, :H], dW_hzr[:, H:], dW_hh], (dH.clone(),)


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
        self.tanhC, self.q_cc = new((T, B, H)), new((T, B, H))
        self.u, self.v, self.dC = new((B, H)), new((B, H)), new((B, H))
        self.gates_t = self.gate_views(self.xw, 4)
        self.ifo = [x_t[:, :3 * H] for x_t in self.xw.unbind(0)]
        self.q_g = self.gate_views(self.q, 4)
        self.dA_g = self.gate_views(self.dA, 4)
        self.q_if = [q_t[:, :2 * H].view(B, 2, H) for q_t in self.q_t]
        self.dA_if = [d[:, :2 * H].view(B, 2, H) for d in self.dA_t]
        self.Cs_t, self.tanhC_t, self.q_cc_t = self.Cs.unbind(0), self.tanhC.unbind(0), self.q_cc.unbind(0)

    def forward(self, state0: Sequence[Tensor], W_h: list[Tensor]):
        Hs, Cs = self.Hs_t, self.Cs_t
        Hs[0].copy_(state0[0])
        Cs[0].copy_(state0[1])
        W_hall = torch.cat(W_h, dim=1)
        self.W_T = W_hall.t().contiguous()
        u, v = self.u, self.v
        for t in range(self.T):
            (I, F, O, Ct), (q_i, q_f, q_o, q_c) = self.gates_t[t], self.q_g[t]
            self.xw[t].addmm_(Hs[t], W_hall)
            self.ifo[t].sigmoid_()
            Ct.tanh_()
            torch.mul(I, Ct, out=u)
            torch.mul(F, Cs[t], out=v)
            C = torch.add(u, v, out=Cs[t + 1])
            tc = torch.tanh(C, out=self.tanhC_t[t])
            h = torch.mul(O, tc, out=Hs[t + 1])
            torch.addcmul(u, u, I, value=-1, out=q_i)             # C~ I (1 - I)
            torch.addcmul(v, v, F, value=-1, out=q_f)             # C F (1 - F)
            torch.addcmul(h, h, O, value=-1, out=q_o)             # tanh(C) O (1 - O)
            torch.addcmul(I, u, Ct, value=-1, out=q_c)            # I (1 - C~^2)
            torch.addcmul(O, h, tc, value=-1, out=self.q_cc_t[t])  # O (1 - tanh(C)^2)
        return Hs[self.T].clone(), Cs[self.T].clone()

    def backward(self, dHs: Tensor, dstate: Sequence[Tensor | None], W_h: list[Tensor]):
        H, T, B = self.H, self.T, self.B
        dH = self._dH_T(dHs, dstate[0])
        dC = self.dC.zero_() if dstate[1] is None else self.dC.copy_(dstate[1])
        for t in range(T - 1, -1, -1):
            (_, _, dA_o, dA_c), (_, _, q_o, q_c) = self.dA_g[t], self.q_g[t]
            dC.addcmul_(dH, self.q_cc_t[t])
            torch.mul(dC.unsqueeze(1), self.q_if[t], out=self.dA_if[t])
            torch.mul(dH, q_o, out=dA_o)
            torch.mul(dC, q_c, out=dA_c)
            dC.mul_(self.gates_t[t][1])
            dH = self._next_dH(t, dHs, self.dA_t[t], self.W_T)
        dW = torch.mm(self.Hs[:T].view(T * B, H).t(), self.dA.view(T * B, 4 * H))
        return self.dA, [dW[:, k * H:(k + 1) * H] for k in range(4)], (dH.clone(), dC.clone())


KERNELS = {"rnn": _RNNKernel, "gru": _GRUKernel, "lstm": _LSTMKernel}


# ------------------------------------------------------------------ the whole model

class Workspace:
    """Every layer's kernel (buffers included) for minibatches of one shape, reused call after
    call; `calls` counts forwards, to catch a backward of an older one."""

    def __init__(self, net: RNNModelScratch, T: int, B: int):
        dtype, device = net.W_hq.dtype, net.W_hq.device
        self.key = (net.arch, net.num_layers, T, B, net.num_hiddens, dtype, device)
        self.kernels = [KERNELS[net.arch](T, B, net.num_hiddens, dtype, device)
                        for _ in range(net.num_layers)]
        self.calls = 0


class _StackFunction(torch.autograd.Function):
    """Logits (T*B, V), time-major, and the new state of a stacked model over token ids X (B, T).

    Inputs after the workspace, X and the dropout masks (L, T, B, H) or None: the state
    tensors (S per layer), then the parameters in the model's order (per layer: W_x{g},
    W_h{g}, b_{g} for each gate; then W_hq, b_q)."""

    @staticmethod
    def forward(ctx, ws: Workspace, net: RNNModelScratch, X: Tensor, masks: Tensor | None,
                *tensors: Tensor):
        L, S, G3 = net.num_layers, len(net.cell.state), 3 * len(net.cell.gates)
        state, params = tensors[:L * S], tensors[L * S:]
        B, T = X.shape
        tokens = X.t().reshape(-1)
        inputs, new_state = [None], []
        for k, kernel in enumerate(ws.kernels):
            p = params[k * G3:(k + 1) * G3]
            W_x, W_h, b = torch.cat(p[0::3], dim=1), list(p[1::3]), torch.cat(p[2::3])
            xw = kernel.xw.view(T * B, -1)
            if k == 0:
                torch.index_select(W_x, 0, tokens, out=xw).add_(b)   # one-hot X @ W_x, + b
            else:
                below = ws.kernels[k - 1].Hs[1:]
                inp = (below * masks[k - 1] if masks is not None else below).reshape(T * B, -1)
                inputs.append(inp)
                torch.addmm(b, inp, W_x, out=xw)
            new_state.extend(kernel.forward(state[k * S:(k + 1) * S], W_h))
        W_hq, b_q = params[-2:]
        top = ws.kernels[-1].Hs[1:]
        top = (top * masks[L - 1] if masks is not None else top).view(T * B, -1)
        Y = torch.addmm(b_q, top, W_hq)
        ws.calls += 1
        ctx.ws, ctx.call, ctx.net, ctx.params, ctx.masks = ws, ws.calls, net, params, masks
        ctx.inputs, ctx.top, ctx.tokens = inputs, top, tokens
        ctx.set_materialize_grads(False)
        return (Y, *new_state)

    @staticmethod
    def backward(ctx, dY: Tensor | None, *dstate: Tensor | None):
        ws, net, params, masks = ctx.ws, ctx.net, ctx.params, ctx.masks
        if ws.calls != ctx.call:
            raise RuntimeError("FastCells reuses its buffers: call backward before the next forward")
        L, V, H = net.num_layers, net.vocab_size, net.num_hiddens
        S, G = len(net.cell.state), len(net.cell.gates)
        T, B = ws.key[2:4]
        W_hq = params[-2]
        grads: list[Tensor | None] = [None] * len(params)
        if dY is None:
            dY = W_hq.new_zeros((T * B, V))
        grads[-2], grads[-1] = torch.mm(ctx.top.t(), dY), dY.sum(0)
        dHs = torch.mm(dY, W_hq.t()).view(T, B, H)
        if masks is not None:
            dHs.mul_(masks[L - 1])
        dstate_in: list[Tensor | None] = [None] * (L * S)
        for k in range(L - 1, -1, -1):
            p = params[k * 3 * G:(k + 1) * 3 * G]
            dA, dW_h, d0 = ws.kernels[k].backward(dHs, dstate[k * S:(k + 1) * S], list(p[1::3]))
            dstate_in[k * S:(k + 1) * S] = d0
            flat = dA.view(T * B, G * H)
            db = flat.sum(0)
            if k == 0:   # one-hot X^T dA
                dW_x = torch.mm(F.one_hot(ctx.tokens, V).to(flat.dtype).t(), flat)
            else:
                dW_x = torch.mm(ctx.inputs[k].t(), flat)
                dHs = torch.mm(flat, torch.cat(p[0::3], dim=1).t()).view(T, B, H)
                if masks is not None:
                    dHs.mul_(masks[k - 1])
            for g in range(G):
                cols = slice(g * H, (g + 1) * H)
                grads[k * 3 * G + 3 * g:k * 3 * G + 3 * g + 3] = [dW_x[:, cols], dW_h[g], db[cols]]
        ctx.inputs = ctx.top = None
        return (None, None, None, None, *dstate_in, *grads)


class FastCells:
    """A drop-in for `net(X, state)` when training any cell, depth and dropout: same outputs
    and gradients as `RNNModelScratch.forward` up to float rounding, and the same dropout
    masks for the same torch random state. Keeps its buffers between calls."""

    def __init__(self, net: RNNModelScratch):
        self.net = net
        self.ws: Workspace | None = None
        keep_freed_memory()  # large temporaries reuse memory instead of page-faulting it in

    def __call__(self, X: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        net = self.net
        X = X.to(net.W_hq.device)
        B, T = X.shape
        key = (net.arch, net.num_layers, T, B, net.num_hiddens, net.W_hq.dtype, net.W_hq.device)
        if self.ws is None or self.ws.key != key:
            self.ws = Workspace(net, T, B)
        masks = None
        if net.training and net.dropout > 0:
            masks = dropout_masks(net.dropout, net.num_layers, T, B, net.num_hiddens,
                                  X.device, net.W_hq.dtype)
        Y, *new_state = _StackFunction.apply(self.ws, net, X, masks, *state, *net.params)
        return Y, tuple(new_state)


def fast_forward(net: RNNModelScratch):
    """The fastest training forward for `net`: fast.FastRNN for the one-layer §8.5 RNN without
    dropout, FastCells otherwise."""
    if net.arch == "rnn" and net.num_layers == 1 and net.dropout == 0:
        return FastRNN(net)
    return FastCells(net)
