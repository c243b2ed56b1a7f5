"""The ch. 9 cells against the book: §9.1 GRU and §9.2 LSTM through the book's own library
(d2l 0.17.6's RNNModelScratch, train_epoch_ch8, predict_ch8) driven by the chapter's
get_params / init_*_state / gru / lstm; deep models (§9.3) layer by layer; dropout; refusals."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from d2l_book import BOOK_CELLS
from rnn_core.cells import ARCHS, CELLS, num_params, param_shapes
from rnn_core.data import SeqDataLoader
from rnn_core.generation import TextStream, generate_text, predict_ch8
from rnn_core.model import RNNModelScratch
from rnn_core.training import make_updater, train_epoch_ch8

BOOK_NAMES = {
    "rnn": ["W_xh", "W_hh", "b_h", "W_hq", "b_q"],
    "gru": ["W_xz", "W_hz", "b_z", "W_xr", "W_hr", "b_r", "W_xh", "W_hh", "b_h", "W_hq", "b_q"],
    "lstm": ["W_xi", "W_hi", "b_i", "W_xf", "W_hf", "b_f", "W_xo", "W_ho", "b_o",
             "W_xc", "W_hc", "b_c", "W_hq", "b_q"],
}


def book_model(d2l, arch, vocab_size, num_hiddens, net):
    """The book's d2l.RNNModelScratch with the chapter's functions, holding `net`'s weights."""
    get_params, init_state, fn = BOOK_CELLS[arch]
    book = d2l.RNNModelScratch(vocab_size, num_hiddens, "cpu", get_params, init_state, fn)
    with torch.no_grad():
        for p, q in zip(book.params, net.params):
            p.copy_(q)
    return book


# --- structure -------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_initial_weights_names_and_order_are_the_books(arch):
    get_params = BOOK_CELLS[arch][0]
    torch.manual_seed(11)
    book = get_params(28, 256, "cpu")
    torch.manual_seed(11)
    net = RNNModelScratch(28, 256, arch=arch)
    assert [name for name, _ in net.named_parameters()] == BOOK_NAMES[arch]
    for ours, theirs in zip(net.params, book, strict=True):
        assert torch.equal(ours.detach(), theirs.detach())
    expected = {"rnn": 80_156, "gru": 226_076, "lstm": 299_036}[arch]
    assert net.num_params() == num_params(28, 256, arch) == expected
    assert sum(p.numel() for p in net.parameters()) == expected


def test_deep_names_shapes_and_state():
    net = RNNModelScratch(28, 16, arch="lstm", num_layers=3)
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert shapes == param_shapes(28, 16, "lstm", 3)
    assert list(shapes)[:14] == BOOK_NAMES["lstm"][:12] + ["W_xi_l1", "W_hi_l1"]
    assert shapes["W_xi"] == (28, 16) and shapes["W_xi_l1"] == (16, 16)
    assert shapes["W_xc_l2"] == (16, 16) and list(shapes)[-2:] == ["W_hq", "b_q"]
    state = net.begin_state(5)
    assert len(state) == 6 and all(s.shape == (5, 16) and not s.any() for s in state)
    assert len(RNNModelScratch(28, 16, arch="gru", num_layers=2).begin_state(1)) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "transformer"}, "unknown arch 'transformer'; use one of rnn, gru, lstm"),
    ({"num_layers": 0}, "num_layers must be an integer from 1"),
    ({"dropout": 1.0}, "dropout must be a number in [0, 1)"),
    ({"dropout": -0.1}, "dropout must be a number in [0, 1)"),
])
def test_structure_refusals(kwargs, message):
    with pytest.raises(ValueError) as e:
        RNNModelScratch(5, 4, **kwargs)
    assert message in str(e.value)


# --- the book's forward, epoch and predictions -----------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_state_equal_the_books(arch, d2l):
    torch.manual_seed(0)
    net = RNNModelScratch(28, 64, arch=arch)
    book = book_model(d2l, arch, 28, 64, net)
    X = torch.randint(0, 28, (4, 7))
    state, book_state = net.begin_state(4), book.begin_state(4, "cpu")
    for _ in range(2):  # twice: the second call starts from a carried, non-zero state
        Y, state = net(X, state)
        bY, book_state = book(X, book_state)
        assert Y.shape == (28, 28) and torch.equal(Y, bY)
        assert len(state) == len(CELLS[arch].state)
        assert all(torch.equal(a, b) for a, b in zip(state, book_state, strict=True))


@pytest.mark.parametrize("use_random_iter", [False, True])
@pytest.mark.parametrize("arch", ["gru", "lstm"])
def test_one_epoch_is_bit_identical_to_the_books(book_corpus, d2l, arch, use_random_iter):
    corpus, vocab = book_corpus
    torch.manual_seed(3)
    net = RNNModelScratch(len(vocab), 32, arch=arch)
    book = book_model(d2l, arch, len(vocab), 32, net)
    random.seed(5)
    ppl, _ = train_epoch_ch8(net, SeqDataLoader(corpus, 32, 35, use_random_iter),
                             nn.CrossEntropyLoss(), make_updater(net, "sgd", 1.0), "cpu",
                             use_random_iter)
    random.seed(5)
    book_ppl, _ = d2l.train_epoch_ch8(book, d2l.SeqDataLoader(32, 35, use_random_iter, 10000),
                                      nn.CrossEntropyLoss(),
                                      lambda batch_size: d2l.sgd(book.params, 1.0, batch_size),
                                      "cpu", use_random_iter)
    assert ppl == pytest.approx(book_ppl, rel=1e-6)  # the book sums float32 products
    for ours, theirs in zip(net.params, book.params, strict=True):
        assert torch.equal(ours.detach(), theirs.detach())


def _trained(arch, corpus, vocab, epochs=6, **kwargs):
    torch.manual_seed(1)
    random.seed(1)
    net = RNNModelScratch(len(vocab), 48, arch=arch, **kwargs)
    updater = make_updater(net, "sgd", 1.0)
    for _ in range(epochs):
        train_epoch_ch8(net, SeqDataLoader(corpus, 32, 35), nn.CrossEntropyLoss(), updater,
                        "cpu", False)
    return net.eval()


@pytest.mark.parametrize("arch", ["gru", "lstm"])
def test_greedy_predictions_equal_the_books_predict_ch8(book_corpus, d2l, arch):
    corpus, vocab = book_corpus
    net = _trained(arch, corpus, vocab)
    book = book_model(d2l, arch, len(vocab), 48, net)
    for prefix in ("time traveller", "traveller", "t", "the time machine "):
        expected = d2l.predict_ch8(prefix, 50, book, vocab, "cpu")
        assert predict_ch8(prefix, 50, net, vocab, "cpu") == expected
        assert generate_text(net, vocab, prefix, 50) == expected
    assert len(expected) == len("the time machine ") + 50


@pytest.mark.parametrize("arch", ARCHS)
def test_generator_steps_equal_the_forward_for_deep_models(book_corpus, arch):
    """The generator's state and logits, step by step, equal the model's own forward (so
    predict_ch8's greedy text) for a 2-layer model trained with dropout."""
    corpus, vocab = book_corpus
    net = _trained(arch, corpus, vocab, epochs=2, num_layers=2, dropout=0.3)
    gen = TextStream(net, vocab)
    state = net.begin_state(1)
    tokens = corpus[:40]
    for idx in tokens:
        logits = gen._step(idx)
        y, state = net(torch.tensor([[idx]]), state)
        assert torch.equal(logits, y[0])
        assert all(torch.equal(a, b) for a, b in zip(gen.state, state, strict=True))
    text = predict_ch8("time traveller", 40, net, vocab, "cpu")
    assert generate_text(net, vocab, "time traveller", 40) == text


# --- deep models (§9.3) ---------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_each_layer_of_a_deep_model_is_the_books_single_layer_cell(arch):
    """Layer 0 is the book's cell on the one-hot input; layer 1 is the book's cell on layer
    0's hidden states; only the top layer feeds W_hq. Run through the chapter's function with
    an identity output layer, which hands back each step's H exactly."""
    V, H, B, T = 11, 8, 3, 6
    torch.manual_seed(2)
    net = RNNModelScratch(V, H, arch=arch, num_layers=2)
    fn = BOOK_CELLS[arch][2]
    X = torch.randint(0, V, (B, T))
    state = tuple(torch.randn(B, H) for _ in net.begin_state(B))
    Y, new_state = net(X, state)
    S = len(CELLS[arch].state)
    p = dict(net.named_parameters())
    identity = [torch.eye(H), torch.zeros(H)]
    layer0 = [p[n] for n in BOOK_NAMES[arch][:-2]] + identity
    H0s, state0 = fn(F.one_hot(X.T, V).float(), state[:S], layer0)
    layer1 = [p[n + "_l1"] for n in BOOK_NAMES[arch][:-2]] + [p["W_hq"], p["b_q"]]
    book_Y, state1 = fn(H0s.reshape(T, B, H), state[S:], layer1)
    assert torch.equal(Y, book_Y)
    assert all(torch.equal(a, b) for a, b in zip(new_state, state0 + state1, strict=True))


# --- dropout ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_only_in_training_and_reproducible(arch):
    torch.manual_seed(0)
    net = RNNModelScratch(9, 12, arch=arch, num_layers=2, dropout=0.5)
    plain = RNNModelScratch.from_weights(dict(net.named_parameters()), arch, 2, 0.0)
    X = torch.randint(0, 9, (4, 5))
    state = net.begin_state(4)
    net.eval()
    assert torch.equal(net(X, state)[0], plain(X, state)[0])  # off at evaluation
    net.train()
    torch.manual_seed(1)
    a = net(X, state)[0]
    torch.manual_seed(1)
    b = net(X, state)[0]
    assert torch.equal(a, b) and not torch.equal(a, plain(X, state)[0])
