"""The fast paths compute what the book computes: training (gradients included) through oneDNN
where it exists and plain torch.mm where it does not, and generation bit for bit."""
from __future__ import annotations

import contextlib
import random
import re
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from conftest import ROOT
from rnn_core import fast
from rnn_core.checkpoint import load_checkpoint
from rnn_core.data import SeqDataLoader, load_corpus, read_text
from rnn_core.fast import FastRNN, onednn_available
from rnn_core.fast_cells import FastCells, fast_forward
from rnn_core.generation import TextStream, pick, predict_ch8
from rnn_core.model import RNNModelScratch, rnn
from rnn_core.training import fit, make_updater, sgd, train_epoch_ch8

BACKENDS = [pytest.param("onednn", marks=pytest.mark.skipif(
    not onednn_available(), reason="this torch build has no oneDNN linear op")), "plain", "batched",
    "rows"]
NAMES = ["logits", "H_T", "dH0", "W_xh", "W_hh", "b_h", "W_hq", "b_q"]


def outputs_and_grads(forward, params, X, H0, wY, wH):
    """Logits, final state, and the gradients of a loss that touches both outputs."""
    for p in params:
        p.grad = None
    h0 = H0.clone().requires_grad_(True)
    Y, (H_T,) = forward(X, (h0,))
    ((Y * wY).sum() + (H_T * wH).sum()).backward()
    return [Y.detach(), H_T.detach(), h0.grad] + [p.grad.clone() for p in params]


def random_problem(V, H, B, T):
    """A model with trained-like weights (W_hh entries ~ 1/sqrt(H), as in the bundled model,
    so tanh is far from linear), token ids, a state, and weights for the loss."""
    torch.manual_seed(0)
    net = RNNModelScratch(V, H)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * (1 / H ** 0.5 if p.dim() == 2 else 0.1))
    return (net, torch.randint(0, V, (B, T)), torch.randn(B, H) * 0.5,
            torch.randn(T * B, V), torch.randn(B, H))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("V,H,B,T", [(28, 512, 32, 35), (7, 13, 3, 5), (28, 64, 1, 1)])
def test_gradients_equal_autograd_on_the_scratch_math(backend, V, H, B, T):
    """Against plain autograd through the book's `rnn`, run in float64 (the exact math):
    every output and gradient within 1e-5 relative (L2) error."""
    check_against_autograd(backend, V, H, B, T)


def test_split_kernel_on_a_vocabulary_larger_than_the_hidden_size():
    """Where only the split kernel applies; 48 positions over 40 tokens must repeat some, so
    the scatter-add of dW_xh sums rows."""
    check_against_autograd("plain", 40, 16, 4, 12)


def check_against_autograd(backend, V, H, B, T):
    net, X, H0, wY, wH = random_problem(V, H, B, T)
    params64 = [p.detach().double().requires_grad_(True) for p in net.params]

    def book_rnn_float64(X, state):
        return rnn(F.one_hot(X.T, V).double(), state, params64)

    expected = outputs_and_grads(book_rnn_float64, params64, X, H0.double(), wY.double(),
                                 wH.double())
    got = outputs_and_grads(FastRNN(net, backend), net.params, X, H0, wY, wH)
    for name, e, g in zip(NAMES, expected, got):
        assert g.shape == e.shape and g.dtype == torch.float32, name
        rel = float((g.double() - e).norm() / e.norm())
        assert rel <= 1e-5, f"{name}: relative error {rel:.2e}"


def check_buffers_reused_and_stale_backward_refused(net: RNNModelScratch, f) -> None:
    """Two forwards of one shape share `f`'s buffers and agree; a backward through the older
    one is refused, through the latest it reaches every weight; another shape gets new ones."""
    X = torch.randint(0, net.vocab_size, (4, 6))
    Y1, _ = f(X, net.begin_state(4))
    ws = f.ws
    Y2, _ = f(X, net.begin_state(4))
    assert f.ws is ws and torch.equal(Y1, Y2)
    with pytest.raises(RuntimeError, match="call backward before the next forward"):
        Y1.sum().backward()
    Y2.sum().backward()  # the latest forward is fine
    assert all(p.grad is not None for p in net.parameters())
    f(torch.randint(0, net.vocab_size, (2, 3)), net.begin_state(2))  # another shape: new buffers
    assert f.ws is not ws


@pytest.mark.parametrize("backend", BACKENDS)
def test_buffers_are_reused_but_a_stale_backward_is_refused(backend):
    torch.manual_seed(0)
    net = RNNModelScratch(10, 16)
    check_buffers_reused_and_stale_backward_refused(net, FastRNN(net, backend))


@pytest.fixture
def fresh_detection(monkeypatch, tmp_path):
    """Re-run oneDNN detection inside the test, and again after it (with no recorded choices)."""
    monkeypatch.setenv("RNN_CORE_CACHE", str(tmp_path))
    probes = (fast.onednn_available, fast.onednn_prepack_available,
              fast.onednn_weight_grad_available, fast.choose_backend)
    for probe in probes:
        probe.cache_clear()
    yield
    for probe in probes:
        probe.cache_clear()


def missing_op(monkeypatch):
    monkeypatch.setattr(torch.ops, "mkldnn", object())  # a torch build without the namespace


def raising_op(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("oneDNN: unsupported")
    monkeypatch.setattr(torch.ops, "mkldnn", type("Ns", (), {"_linear_pointwise": broken})())


def wrong_op(monkeypatch):
    def wrong(x, w, b, attr, scalars, algorithm):
        return torch.zeros(x.shape[0], w.shape[0])
    monkeypatch.setattr(torch.ops, "mkldnn", type("Ns", (), {"_linear_pointwise": wrong})())


def mkldnn_disabled(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)


@pytest.mark.parametrize("breakage", [missing_op, raising_op, wrong_op, mkldnn_disabled])
def test_without_a_working_onednn_op_the_plain_backend_is_used(monkeypatch, fresh_detection,
                                                                breakage):
    breakage(monkeypatch)
    assert not onednn_available()
    torch.manual_seed(0)
    net = RNNModelScratch(28, 32)
    f = FastRNN(net)
    X = torch.randint(0, 28, (4, 5))
    Y, _ = f(X, net.begin_state(4))
    assert f.backend == "plain"
    Y.sum().backward()
    assert torch.allclose(Y, net(X, net.begin_state(4))[0], atol=1e-6)
    with pytest.raises(RuntimeError, match="use backend='plain' or 'auto'"):
        FastRNN(net, "onednn")


def no_prepack(monkeypatch):
    ns = torch.ops.mkldnn
    monkeypatch.setattr(torch.ops, "mkldnn", type("Ns", (), {
        "_linear_pointwise": ns._linear_pointwise})())


def broken_weight_grad(monkeypatch):
    def broken(*args):
        raise RuntimeError("mkldnn_linear_backward_weights: unsupported")
    monkeypatch.setattr(torch, "mkldnn_linear_backward_weights", broken)


def no_mallopt(monkeypatch):
    monkeypatch.setattr(fast, "keep_freed_memory", lambda: False)


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear op")
@pytest.mark.parametrize("breakage", [no_prepack, broken_weight_grad, no_mallopt])
def test_onednn_backend_without_its_optional_ops_still_computes_the_same(
        monkeypatch, fresh_detection, breakage):
    """Prepacking and the weight-gradient op are optional extras (more non-public API):
    without them the oneDNN backend uses plain weights and torch.mm for the gradient."""
    net, X, H0, wY, wH = random_problem(11, 24, 3, 6)
    expected = outputs_and_grads(FastRNN(net, "plain"), net.params, X, H0, wY, wH)
    breakage(monkeypatch)
    f = FastRNN(net, "onednn")
    assert not (fast.onednn_prepack_available() and fast.onednn_weight_grad_available())
    got = outputs_and_grads(f, net.params, X, H0, wY, wH)
    for name, e, g in zip(NAMES, expected, got):
        assert float((g - e).norm() / e.norm()) <= 1e-5, name


@pytest.fixture
def fresh_choice(monkeypatch, tmp_path):
    """`auto` chooses afresh: nothing chosen in this process, nothing recorded (choices.py)."""
    monkeypatch.setenv("RNN_CORE_CACHE", str(tmp_path))
    fast.choose_backend.cache_clear()
    yield
    fast.choose_backend.cache_clear()


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear op")
@pytest.mark.parametrize("ms,expected", [
    ({"plain": 12.0, "rows": 11.0, "onednn": 9.0}, "onednn"),
    ({"plain": 12.0, "rows": 9.0, "onednn": 10.0}, "rows"),
    ({"plain": 9.0, "rows": 11.0, "onednn": 12.0}, "plain"),
    ({"plain": 10.0, "rows": 9.7, "onednn": 9.9}, "plain"),  # within 5%: the simplest
    ({"plain": 1.9, "rows": 0.5, "onednn": 0.5}, "plain"),  # passes under 2 ms: the simplest
])
def test_auto_keeps_the_kernel_that_measures_fastest(monkeypatch, fresh_choice, ms, expected):
    """The choice is made by timing the kernels at the minibatch's shape, once per shape."""
    calls = []

    def timed(forwards, X, y, state, reps=3):
        net = next(iter(forwards.values())).net
        calls.append((list(forwards), (X.shape[1], X.shape[0], net.num_hiddens, net.vocab_size)))
        assert [f.requested for f in forwards.values()] == list(forwards)
        return {b: ms[b] / 1e3 for b in forwards}
    monkeypatch.setattr(fast, "candidates", lambda key: ["plain", "rows", "onednn"])
    monkeypatch.setattr(fast, "time_steps", timed)
    net = RNNModelScratch(28, 32)
    f = FastRNN(net)
    for _ in range(2):
        Y, _ = f(torch.randint(0, 28, (4, 5)), net.begin_state(4))
        Y.sum().backward()
    assert f.backend == expected and len(calls) == 1
    assert calls[0][0] == ["plain", "rows", "onednn"] and calls[0][1][:4] == (5, 4, 32, 28)


def test_the_real_timing_runs_every_kernel_that_applies_and_picks_one(fresh_choice, two_threads):
    net = RNNModelScratch(28, 32)
    f = FastRNN(net)
    f(torch.randint(0, 28, (16, 5)), net.begin_state(16))
    names = ["plain", "batched", "rows"] + (["onednn"] if onednn_available() else [])
    assert fast.candidates(f.ws.key) == names
    assert f.backend in names
    net, X, y, state = fast.book_model(28, 32, 16, 5, torch.float32, torch.device("cpu"))
    times = fast.time_steps({b: FastRNN(net, b) for b in names}, X, y, state, reps=1)
    assert set(times) == set(names) and all(0 < t < 10 for t in times.values())


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def like_plain(backend: str, B: int) -> FastRNN:
    """FastRNN(backend) on a random problem with B rows: outputs and gradients as the plain
    kernel's (1e-5 relative); returns it."""
    net, X, H0, wY, wH = random_problem(11, 24, B, 6)
    expected = outputs_and_grads(FastRNN(net, "plain"), net.params, X, H0, wY, wH)
    f = FastRNN(net, backend)
    got = outputs_and_grads(f, net.params, X, H0, wY, wH)
    for name, e, g in zip(NAMES, expected, got):
        assert float((g - e).norm() / e.norm()) <= 1e-5, name
    return f


@pytest.mark.parametrize("threads,B,blocks", [(2, 32, 2), (3, 24, 3), (2, 14, 1), (3, 25, 1)])
def test_batched_kernel_runs_each_step_as_one_product_over_row_blocks(threads, B, blocks):
    """One block of at least 8 rows per torch thread when the batch divides evenly (else the
    plain kernel's single product); outputs and gradients as the plain kernel's."""
    with torch_threads(threads):
        f = like_plain("batched", B)
        assert f.ws.batched == blocks and f.ws.Hs_g[0][0].shape[:-1] == (
            (blocks, B // blocks) if blocks > 1 else (B,))
        assert ("batched" in fast.candidates(f.ws.key)) == (blocks > 1)


@pytest.mark.parametrize("threads,B", [(2, 32), (3, 25)])
def test_rows_kernel_splits_the_batch_across_threads_and_restores_torchs_threads(threads, B):
    """Groups of at least 8 rows, one per torch thread; the products inside run on one thread
    each, and torch's thread count is back afterwards, also when a group fails."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        f = like_plain("rows", B)
        assert [len(g[0]) for g in f.ws.Hs_g] == [B // threads + (i >= threads - B % threads)
                                                 for i in range(threads)]
        assert torch.get_num_threads() == threads
        seen = []

        def chain(g):
            seen.append(torch.get_num_threads())
            if g == 1:
                raise ValueError("group 1 failed")
        with pytest.raises(ValueError, match="group 1 failed"):
            with fast._one_core_per_group(threads):
                fast._each_group(chain, threads)
        assert seen == [1] * threads and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("net", [RNNModelScratch(28, 32).double(), RNNModelScratch(40, 32)],
                         ids=["float64", "vocabulary larger than hidden"])
def test_auto_uses_the_split_kernel_where_the_fused_one_does_not_fit(monkeypatch, fresh_choice,
                                                                      net):
    monkeypatch.setattr(fast, "time_steps", lambda *a: pytest.fail("nothing to time"))
    f = FastRNN(net)
    V = net.vocab_size
    f(torch.randint(0, V, (3, 4)), net.begin_state(3))
    assert f.backend == "plain"
    with pytest.raises(RuntimeError, match="use backend='plain' or 'auto'"):
        FastRNN(net, "onednn")


def test_memory_on_a_large_vocabulary_stays_the_books():
    """A 20,000-character vocabulary (e.g. raw Chinese text): one training step's peak memory
    with the fast kernel is no more than the book kernel's (the fused kernel's (H+V+1)^2
    buffers would need gigabytes). Each kernel in its own process, peak RSS measured there."""
    peak = {}
    for k in ("book", "fast"):
        proc = subprocess.run([sys.executable, "-c", LARGE_VOCAB_STEP, k], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        base, peak_kb, backend = proc.stdout.split()
        peak[k] = int(peak_kb)
        assert backend == {"book": "-", "fast": "plain"}[k]
    assert peak["fast"] <= 1.1 * peak["book"], peak


LARGE_VOCAB_STEP = """
import resource, sys, torch
from torch import nn
from rnn_core.fast import FastRNN
from rnn_core.model import RNNModelScratch
V, H, B, T = 20_000, 512, 16, 20
torch.manual_seed(0)
net = RNNModelScratch(V, H)
X, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B * T,))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
forward = FastRNN(net) if sys.argv[1] == "fast" else net
for _ in range(2):
    Y, _ = forward(X, net.begin_state(B))
    nn.functional.cross_entropy(Y, y).backward()
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, getattr(forward, "backend", "-"))
"""


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'mkl'"):
        FastRNN(RNNModelScratch(5, 4), "mkl")


@pytest.mark.parametrize("use_random_iter", [False, True])
def test_training_with_the_fast_kernel_follows_the_book_run(data_path, use_random_iter):
    """Same seed, same minibatches: the fast kernel's epochs track the book kernel's."""
    corpus, vocab = load_corpus(read_text(data_path), "book", 3000)
    runs = {}
    for kernel in ("book", "fast"):
        random.seed(0)
        torch.manual_seed(0)
        net = RNNModelScratch(len(vocab), 64)
        history = fit(net, SeqDataLoader(corpus, 8, 12, use_random_iter), vocab, 1.0, 6,
                      "cpu", use_random_iter, log=lambda s: None,
                      forward=fast_forward(net) if kernel == "fast" else None)
        runs[kernel] = ([h.ppl for h in history], net)
    (ppl_book, net_book), (ppl_fast, net_fast) = runs["book"], runs["fast"]
    assert ppl_book[-1] < ppl_book[0]  # it learned something
    assert ppl_fast == pytest.approx(ppl_book, rel=1e-4)
    for a, b in zip(net_book.params, net_fast.params):
        assert torch.allclose(a, b, atol=1e-4)


def test_fast_forward_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'turbo'"):
        fast_forward(RNNModelScratch(5, 4), "turbo")
    with pytest.raises(ValueError, match="unknown backend 'batched'"):
        fast_forward(RNNModelScratch(5, 4, arch="lstm"), "batched")


def test_fast_kernel_with_adam_matches_book_kernel(data_path):
    corpus, vocab = load_corpus(read_text(data_path), "book", 2000)
    final = {}
    for kernel in ("book", "fast"):
        random.seed(1)
        torch.manual_seed(1)
        net = RNNModelScratch(len(vocab), 32)
        updater = make_updater(net, "adam", 0.01)
        history = fit(net, SeqDataLoader(corpus, 4, 10), vocab, 0.01, 3, "cpu",
                      updater=updater, log=lambda s: None,
                      forward=fast_forward(net) if kernel == "fast" else None)
        final[kernel] = history[-1].ppl
    assert final["fast"] == pytest.approx(final["book"], rel=1e-4)


@pytest.mark.slow
def test_book_run_with_the_fast_kernel_reaches_the_books_perplexity(data_path, tmp_path):
    """`python train.py --kernel fast`, the book's §8.5 run: perplexity ≤ 1.3 at the end."""
    proc = subprocess.run([sys.executable, "train.py", "--kernel", "fast", "--data", str(data_path),
                           "--device", "cpu", "--out", str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("perplexity "))
    ppl, speed = map(float, re.match(r"perplexity ([\d.]+), ([\d.]+) tokens/sec on cpu", line).groups())
    assert ppl <= 1.3, proc.stdout[-3000:]
    print(line)


# ---------------------------------------------------------------- generation

def test_generator_steps_are_bit_for_bit_the_books_forward(bundled_checkpoint):
    """Every logit and state of the fast generator equals the book's forward exactly, so
    greedy generation is the book's predict_ch8 whatever the text."""
    ckpt = load_checkpoint(bundled_checkpoint)
    net, vocab = ckpt.net, ckpt.vocab
    gen = TextStream(net, vocab)
    state, idx = net.begin_state(1), vocab["t"]
    gen.feed("t")
    for _ in range(120):
        y, state = net(torch.tensor([[idx]]), state)
        logits = gen._step(gen.pending)
        assert torch.equal(logits, y[0]) and torch.equal(gen.H, state[0])
        idx = gen.pending = int(y.argmax())
    for prefix in ("time traveller", "the medical man said", "q", "zzz xq"):
        gen.reset()
        gen.feed(prefix)
        assert prefix + "".join(gen.generate(200)) == predict_ch8(prefix, 200, net, vocab, "cpu")


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.5, 0), (1.3, 5), (0.8, 1)])
def test_sampling_draws_from_the_softmax_of_the_top_k(temperature, top_k):
    torch.manual_seed(0)
    logits = torch.randn(28) * 2
    # every token but '<unk>' (index 0), which is never drawn
    allowed = (torch.topk(logits[1:], top_k).indices + 1 if top_k else torch.arange(1, 28)).tolist()
    probs = torch.zeros(28)
    probs[allowed] = torch.softmax(logits[allowed] / temperature, 0)
    rng = torch.Generator().manual_seed(1)
    n = 20000
    counts = torch.bincount(torch.tensor([pick(logits, temperature, top_k, rng)
                                          for _ in range(n)]), minlength=28)
    assert set(counts.nonzero().flatten().tolist()) <= set(allowed)
    # each frequency within 5 standard errors of its probability
    assert torch.all((counts / n - probs).abs() <= 5 * (probs * (1 - probs) / n).sqrt() + 1e-9)


@pytest.mark.parametrize("backend,threads_in_step",
                         [("rows", 1), ("lstm", 1), ("plain", 2), (None, 2)])
def test_the_rest_of_a_rows_step_runs_on_one_thread(two_threads, backend, threads_in_step):
    """With the rows kernel (and FastCells, which splits the rows the same way) the loss,
    backward, clipping and update run on one torch thread (the kernel spreads the rows over
    the cores itself; torch's threads would meet per op); the other kernels and the book's
    forward keep torch's threads; after the epoch torch's count is back."""
    torch.manual_seed(0)
    net = RNNModelScratch(28, 32, arch="lstm" if backend == "lstm" else "rnn")
    seen = []

    def updater(batch_size):
        seen.append(torch.get_num_threads())
        sgd(net.params, 1.0, batch_size)
    batches = [(torch.randint(0, 28, (16, 5)), torch.randint(0, 28, (16, 5)))] * 2
    forward = (FastCells(net, "hand") if backend == "lstm" else FastRNN(net, backend) if backend
               else None)
    ppl, _ = train_epoch_ch8(net, batches, torch.nn.CrossEntropyLoss(), updater, "cpu", False,
                             forward)
    assert seen == [threads_in_step] * 2 and torch.get_num_threads() == 2
    assert 1 < ppl < 28 * 2


@pytest.mark.parametrize("backend", ["plain", "rows", pytest.param("onednn", marks=pytest.mark.skipif(
    not onednn_available(), reason="this torch build has no oneDNN linear op"))])
def test_the_rest_of_a_step_runs_on_one_thread_only_where_the_kernel_splits_the_rows(
        backend, two_threads):
    """`rows` runs each row group's pass on its own core, so the loss, backward and update
    around it run on one torch thread; every other kernel keeps torch's threads for them (the
    fused kernel's backward is most of its work)."""
    net = RNNModelScratch(28, 32)
    f = FastRNN(net, backend)
    Y, _ = f(torch.randint(0, 28, (16, 5)), net.begin_state(16))
    with f.rest_of_step():
        inside = torch.get_num_threads()
        Y.sum().backward()
    assert inside == (1 if backend == "rows" else 2) and torch.get_num_threads() == 2
