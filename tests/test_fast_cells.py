"""The fast kernels of every cell (rnn_core/fast_cells.py) compute the scratch model's outputs
and gradients: against autograd through cells.py's math in float64, for every cell and
backend, one to three layers, with and without dropout; `auto` picks a backend that applies
and falls back to the hand-written kernel where oneDNN's LSTM does not."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from rnn_core.cells import ARCHS, dropout_masks, layer_param_names, stacked_forward
from rnn_core.fast import FastRNN
from rnn_core import fast_cells
from rnn_core.fast_cells import FastCells, candidates, fast_forward, onednn_lstm_available
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


ARCH_BACKENDS = [(arch, "hand") for arch in ARCHS] + [("lstm", "onednn")]
needs_onednn = pytest.mark.skipif(not onednn_lstm_available(),
                                  reason="torch's LSTM has no oneDNN kernel here")


@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("arch,backend", ARCH_BACKENDS)
@pytest.mark.parametrize("V,H,B,T", [(28, 64, 8, 12), (7, 5, 3, 5), (6, 4, 1, 1)])
def test_gradients_equal_autograd(arch, num_layers, dropout, V, H, B, T, backend):
    """Every output, state and gradient within 1e-5 relative (L2) error of float64 autograd
    through the scratch math, with the same dropout masks, for each backend."""
    if backend == "onednn" and not onednn_lstm_available():
        pytest.skip("torch's LSTM has no oneDNN kernel here")
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
    got = outputs_and_grads(FastCells(net, backend), net.params, X, state, wY, wS)
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


@pytest.mark.parametrize("backend", ["hand", pytest.param("onednn", marks=needs_onednn)])
def test_dropout_is_off_in_eval_mode(backend):
    net, X, state, _, _ = random_problem("lstm", 9, 6, 2, 5, 2, 0.5)
    net.eval()
    a, _ = FastCells(net, backend)(X, state)
    b, _ = net(X, state)
    assert torch.allclose(a, b, atol=1e-6)


def test_fast_forward_picks_the_kernel():
    assert isinstance(fast_forward(RNNModelScratch(5, 4)), FastRNN)
    for kwargs in ({"arch": "gru"}, {"arch": "lstm"}, {"num_layers": 2}, {"dropout": 0.1}):
        assert isinstance(fast_forward(RNNModelScratch(5, 4, **kwargs)), FastCells)


def test_buffers_are_reused_but_a_stale_backward_is_refused():
    torch.manual_seed(0)
    net = RNNModelScratch(10, 16, arch="lstm", num_layers=2)
    check_buffers_reused_and_stale_backward_refused(net, FastCells(net, "hand"))
    assert net.W_hi_l1.grad is not None


@pytest.mark.parametrize("arch", ARCHS)
def test_row_groups_on_their_own_threads_compute_the_same(arch):
    """With two torch threads the batch rows are split into two groups, each group's whole
    pass on its own thread: still float64 autograd's results, dropout included; torch's
    thread count is back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        test_gradients_equal_autograd(arch, 2, 0.4, 28, 32, 17, 6, "hand")
        net, X, state, _, _ = random_problem(arch, 28, 32, 17, 6, 2, 0.0)
        f = FastCells(net, "hand")
        f(X, state)
        assert [len(r) for r in (range(17)[s] for s in f.ws.rows)] == [8, 9]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@needs_onednn
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_auto_picks_the_faster_backend_once_per_shape_and_keeps_the_random_stream(
        dropout, monkeypatch, tmp_path):
    """`auto` times the backends that apply at the real shape (an LSTM: both), uses the one it
    picked, draws nothing from torch's generator while choosing (the dropout masks stay the
    ones the book's model draws), and remembers the choice for the shape."""
    monkeypatch.setenv("RNN_CORE_CACHE", str(tmp_path))  # nothing recorded: it times
    fast_cells.choose_backend.cache_clear()
    net, X, state, _, _ = random_problem("lstm", 28, 32, 8, 7, 2, dropout)
    f = FastCells(net)
    assert f.backend is None and candidates("lstm", torch.float32, torch.device("cpu")) == \
        ["hand", "onednn"]
    torch.manual_seed(3)
    Y, new_state = f(X, state)
    torch.manual_seed(3)
    Y_book, state_book = net(X, state)
    assert f.backend in ("hand", "onednn")
    assert torch.allclose(Y, Y_book, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(new_state, state_book))
    for s in new_state:
        s.detach_()   # as train_epoch_ch8 cuts the graph between minibatches
    assert fast_cells.choose_backend.cache_info().misses == 1
    FastCells(net)(X, state)
    assert fast_cells.choose_backend.cache_info().hits == 1


def test_backend_falls_back_to_the_hand_kernel_where_onednn_does_not_apply(monkeypatch):
    """GRU, RNN, float64 and a torch without oneDNN's LSTM all get the hand-written kernel
    from `auto` (and still the scratch model's results); asking for `onednn` there is
    refused with the reason; an unknown backend is refused."""
    cpu = torch.device("cpu")
    for arch in ("rnn", "gru"):
        assert candidates(arch, torch.float32, cpu) == ["hand"]
    assert candidates("lstm", torch.float64, cpu) == ["hand"]
    net, X, state, _, _ = random_problem("lstm", 9, 6, 2, 5, 2, 0.0)
    monkeypatch.setattr(fast_cells, "onednn_lstm_available", lambda: False)
    assert candidates("lstm", torch.float32, cpu) == ["hand"]
    f = FastCells(net)
    Y, _ = f(X, state)
    assert f.backend == "hand" and torch.allclose(Y, net(X, state)[0], atol=1e-6)
    with pytest.raises(RuntimeError, match="oneDNN backend needs an LSTM in float32"):
        FastCells(net, "onednn")
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="use backend='hand' or 'auto'"):
        FastCells(RNNModelScratch(5, 4, arch="gru"), "onednn")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        FastCells(net, "fast")


@needs_onednn
def test_onednn_lstm_trains_as_the_hand_kernel():
    """Two SGD steps of a 2-layer LSTM with dropout through each backend, from the same
    weights and seeds, end at the same weights (up to float rounding)."""
    results = []
    for backend in ("hand", "onednn"):
        net, X, state, wY, _ = random_problem("lstm", 28, 16, 4, 6, 2, 0.3)
        f = FastCells(net, backend)
        torch.manual_seed(7)
        for _ in range(2):
            Y, state = f(X, tuple(s.detach() for s in state))
            (Y * wY).sum().backward()
            with torch.no_grad():
                for p in net.params:
                    p -= 0.1 * p.grad
                    p.grad = None
        results.append([p.detach().clone() for p in net.params])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)


@needs_onednn
def test_the_fused_lstm_keeps_the_books_parameters_and_follows_them():
    """`onednn` keeps the book's parameters (same objects, names and values) as views of
    nn.LSTM's fused layout: an update to them is what the next step computes with, gradients
    accumulate over two backwards as autograd's do, and a parameter whose memory is replaced
    (a `.data` assignment) is picked up, not left stale."""
    net, X, state, wY, wS = random_problem("lstm", 11, 8, 4, 6, 2, 0.0)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    params = list(net.params)
    f = FastCells(net, "onednn")
    f(X, state)
    assert net.params == params and all(p.equal(before[n]) for n, p in net.named_parameters())
    assert net.W_xi.data_ptr() == f.fused.layers[0][0].data_ptr() and not net.W_xi.is_contiguous()

    def book_grads(runs):
        ref = RNNModelScratch.from_weights({n: p.detach().clone() for n, p in
                                            net.named_parameters()}, "lstm", 2)
        for _ in range(runs):
            Y, new_state = ref(X, state)
            ((Y * wY).sum() + sum((s * w).sum() for s, w in zip(new_state, wS))).backward()
        return [p.grad for p in ref.params]

    with torch.no_grad():
        for p in net.params:
            p.mul_(0.9)                       # an update, in place, as the book's sgd does
    for p in net.params:
        p.grad = None
    for _ in range(2):
        Y, new_state = f(X, state)
        ((Y * wY).sum() + sum((s * w).sum() for s, w in zip(new_state, wS))).backward()
    for got, expected in zip([p.grad for p in net.params], book_grads(2), strict=True):
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)

    net.W_hf_l1.data = torch.zeros_like(net.W_hf_l1)   # memory replaced: re-fused
    Y, _ = f(X, state)
    Y_book, _ = net(X, state)
    assert torch.allclose(Y, Y_book, atol=1e-5)
    assert f.fused.current() and not net.W_hf_l1.is_contiguous()
