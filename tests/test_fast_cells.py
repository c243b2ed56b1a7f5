"""The fast kernels of every cell (rnn_core/fast_cells.py) compute the scratch model's outputs
and gradients: against autograd through cells.py's math in float64, for every cell, one to
three layers, with and without dropout."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from rnn_core.cells import ARCHS, dropout_masks, layer_param_names, stacked_forward
from rnn_core.fast import FastRNN
from rnn_core.fast_cells import FastCells, fast_forward
from rnn_core.model import RNNModelScratch
from test_fast import check_buffers_reused_and_stale_backward_refused


def random_problem(arch, V, H, B, T, num_layers, dropout):
    """A model with trained-like weights (entries ~ 1/sqrt(H), so the nonlinearities are far
    from linear), token ids, a random state, and weights for a loss touching every output."""
    torch.manual_seed(0)
    net = RNNModelScratch(V, H, arch=arch, num_layers=num_layers, dropout=dropout)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * (1 / H ** 0.5 if p.dim() == 2 else 0.1))
    state = tuple(torch.randn(B, H) * 0.5 for _ in net.begin_state(B))
    return (net, torch.randint(0, V, (B, T)), state, torch.randn(T * B, V),
            [torch.randn(B, H) for _ in state])


def outputs_and_grads(forward, params, X, state, wY, wS):
    for p in params:
        p.grad = None
    state = tuple(s.clone().requires_grad_(True) for s in state)
    Y, new_state = forward(X, state)
    loss = (Y * wY).sum() + sum((s * w).sum() for s, w in zip(new_state, wS, strict=True))
    loss.backward()
    return ([Y.detach(), *(s.detach() for s in new_state), *(s.grad for s in state)]
            + [p.grad.clone() for p in params])


@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("V,H,B,T", [(28, 64, 8, 12), (7, 5, 3, 5), (6, 4, 1, 1)])
def test_gradients_equal_autograd(arch, num_layers, dropout, V, H, B, T):
    """Every output, state and gradient within 1e-5 relative (L2) error of float64 autograd
    through the scratch math, with the same dropout masks."""
    net, X, state, wY, wS = random_problem(arch, V, H, B, T, num_layers, dropout)
    net.train()
    params64 = [p.detach().double().requires_grad_(True) for p in net.params]
    torch.manual_seed(5)
    masks = dropout_masks(dropout, num_layers, T, B, H) if dropout else None
    names = [n for n, _ in net.named_parameters()]

    def scratch64(X, state):
        p = dict(zip(names, params64))
        layers = []
        for k in range(num_layers):
            w = [p[n] for n in layer_param_names(net.cell, k)]
            layers.append((w[0::3], w[1::3], w[2::3]))
        return stacked_forward(net.cell, F.one_hot(X.T, V).double(), state, layers,
                               p["W_hq"], p["b_q"], None if masks is None else masks.double())

    expected = outputs_and_grads(scratch64, params64, X, [s.double() for s in state],
                                 wY.double(), [w.double() for w in wS])
    torch.manual_seed(5)
    got = outputs_and_grads(FastCells(net), net.params, X, state, wY, wS)
    labels = ["logits"] + [f"state{i}" for i in range(len(state))] + \
        [f"d state{i}" for i in range(len(state))] + names
    assert len(got) == len(expected) == len(labels)
    for name, e, g in zip(labels, expected, got):
        assert g.shape == e.shape and g.dtype == torch.float32, name
        rel = float((g.double() - e).norm() / e.norm())
        assert rel <= 1e-5, f"{name}: relative error {rel:.2e}"
    # and the float32 scratch model, drawing its own masks from the same seed, agrees
    torch.manual_seed(5)
    Y, _ = net(X, state)
    assert torch.allclose(Y, got[0], atol=1e-5)


def test_dropout_is_off_in_eval_mode():
    net, X, state, _, _ = random_problem("lstm", 9, 6, 2, 5, 2, 0.5)
    net.eval()
    a, _ = FastCells(net)(X, state)
    b, _ = net(X, state)
    assert torch.allclose(a, b, atol=1e-6)


def test_fast_forward_picks_the_kernel():
    assert isinstance(fast_forward(RNNModelScratch(5, 4)), FastRNN)
    for kwargs in ({"arch": "gru"}, {"arch": "lstm"}, {"num_layers": 2}, {"dropout": 0.1}):
        assert isinstance(fast_forward(RNNModelScratch(5, 4, **kwargs)), FastCells)


def test_buffers_are_reused_but_a_stale_backward_is_refused():
    torch.manual_seed(0)
    net = RNNModelScratch(10, 16, arch="lstm", num_layers=2)
    check_buffers_reused_and_stale_backward_refused(net, FastCells(net))
    assert net.W_hi_l1.grad is not None


@pytest.mark.parametrize("arch", ARCHS)
def test_row_groups_on_their_own_threads_compute_the_same(arch):
    """With two torch threads the batch rows are split into two groups, each group's whole
    pass on its own thread: still float64 autograd's results, dropout included; torch's
    thread count is back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        test_gradients_equal_autograd(arch, 2, 0.4, 28, 32, 17, 6)
        net, X, state, _, _ = random_problem(arch, 28, 32, 17, 6, 2, 0.0)
        f = FastCells(net)
        f(X, state)
        assert [len(r) for r in (range(17)[s] for s in f.ws.rows)] == [8, 9]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
