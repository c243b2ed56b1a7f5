"""Faithfulness: the project against the book's own library (d2l 0.17.6) and small hand-checked cases."""
from __future__ import annotations

import inspect
import math
import random

import pytest
import torch
from torch import nn

from d2l_book import get_params, init_rnn_state, rnn
from rnn_core.data import (SeqDataLoader, Vocab, load_corpus, normalize_prompt, normalize_text,
                           read_text, seq_data_iter_random, seq_data_iter_sequential)
from rnn_core.generation import TextStream, generate_text, predict_ch8
from rnn_core.model import RNNModelScratch
from rnn_core.training import (clip_and_sgd, grad_clipping, make_updater, sgd, train_ch8,
                               train_epoch_ch8)

BOOK_ORDER = ["<unk>", " ", "e", "t", "a", "i", "n", "o", "s", "h", "r", "d", "l", "m", "u",
              "c", "f", "w", "g", "y", "p", "b", "v", "k", "x", "z", "j", "q"]


# --- text and vocabulary -------------------------------------------------------------------

def test_book_text_and_vocab_order(data_path, d2l):
    chars = normalize_text(read_text(data_path), "book")
    assert len(chars) == 170_580
    corpus, vocab = load_corpus(read_text(data_path), "book", max_tokens=-1)
    assert vocab.idx_to_token == BOOK_ORDER
    book_corpus, book_vocab = d2l.load_corpus_time_machine()
    assert corpus == book_corpus and vocab.idx_to_token == book_vocab.idx_to_token
    short, _ = load_corpus(read_text(data_path), "book", max_tokens=10000)
    assert short == d2l.load_corpus_time_machine(10000)[0]


def test_normalisation_small_cases():
    assert normalize_text("The Time-Machine,\nby H. G. Wells\n\n  him\nwas", "book") == \
        "the time machineby h g wellshimwas"  # lines joined with no separator, as the book
    assert normalize_text("Ça va?\nOui.", "raw") == "Ça va?\nOui."
    assert normalize_prompt("  Time, Traveller! ", "book") == " time traveller "


def test_vocab_ties_keep_first_seen_order_and_unknowns_map_to_zero():
    vocab = Vocab(list("abba c"))  # a:2 b:2 ' ':1 c:1
    assert vocab.idx_to_token == ["<unk>", "a", "b", " ", "c"]
    assert vocab["z"] == 0 and vocab[["c", "a"]] == [4, 1]


# --- minibatches -----------------------------------------------------------------------------

@pytest.mark.parametrize("use_random_iter", [False, True])
def test_minibatches_equal_the_books_for_the_same_seed(book_corpus, d2l, use_random_iter):
    corpus, _ = book_corpus
    for seed in (0, 1, 42):
        random.seed(seed)
        ours = list(SeqDataLoader(corpus, 32, 35, use_random_iter))
        random.seed(seed)
        fn = d2l.seq_data_iter_random if use_random_iter else d2l.seq_data_iter_sequential
        theirs = list(fn(corpus, 32, 35))
        assert len(ours) == len(theirs) == 8  # the book's settings give 8 minibatches
        for (X, Y), (bX, bY) in zip(ours, theirs):
            assert torch.equal(X, bX) and torch.equal(Y, bY)


def test_sequential_iterator_small_case():
    random.seed(0)
    offset = random.randint(0, 5)  # what the iterator will draw first
    random.seed(0)
    batches = list(seq_data_iter_sequential(list(range(35)), batch_size=2, num_steps=5))
    n = (35 - offset - 1) // 2  # tokens per row
    assert offset == 3 and n == 15 and len(batches) == 3
    X, Y = batches[0]
    assert X.tolist() == [[3, 4, 5, 6, 7], [18, 19, 20, 21, 22]]
    assert Y.tolist() == [[4, 5, 6, 7, 8], [19, 20, 21, 22, 23]]


def test_random_iterator_small_case():
    random.seed(0)
    batches = list(seq_data_iter_random(list(range(35)), batch_size=2, num_steps=5))
    # drop 3 (randint(0, 4) with seed 0), 6 subsequences, 3 batches; each Y is X shifted by one
    assert len(batches) == 3
    starts = sorted(int(x[0]) for X, _ in batches for x in X)
    assert starts == [3, 8, 13, 18, 23, 28]
    for X, Y in batches:
        assert torch.equal(Y, X + 1)


# --- model -------------------------------------------------------------------------------------

def test_initial_parameters_match_get_params_for_the_same_seed():
    torch.manual_seed(7)
    book = get_params(28, 512, "cpu")
    torch.manual_seed(7)
    net = RNNModelScratch(28, 512)
    for ours, theirs in zip(net.params, book):
        assert torch.equal(ours.detach(), theirs.detach())
    assert sum(p.numel() for p in net.parameters()) == 291_356
    assert net.b_h.abs().sum() == 0 and abs(float(net.W_hh.detach().std()) - 0.01) < 5e-4


def test_logits_and_state_match_the_books_rnn():
    torch.manual_seed(0)
    net = RNNModelScratch(28, 64)
    X = torch.randint(0, 28, (4, 7))
    state = net.begin_state(4)
    Y, (H,) = net(X, state)
    bY, (bH,) = rnn(torch.nn.functional.one_hot(X.T, 28).float(), init_rnn_state(4, 64, "cpu"),
                    net.params)
    assert Y.shape == (28, 28) and torch.equal(Y, bY) and torch.equal(H, bH)


def test_two_step_recurrence_by_hand():
    net = RNNModelScratch(2, 1)
    with torch.no_grad():
        net.W_xh.copy_(torch.tensor([[1.0], [2.0]]))
        net.W_hh.copy_(torch.tensor([[0.5]]))
        net.W_hq.copy_(torch.tensor([[1.0, -1.0]]))
        net.b_q.copy_(torch.tensor([0.0, 0.5]))
    Y, (H,) = net(torch.tensor([[0, 1]]), net.begin_state(1))
    h1 = math.tanh(1.0)
    h2 = math.tanh(2.0 + 0.5 * h1)
    assert Y.flatten().tolist() == pytest.approx([h1, -h1 + 0.5, h2, -h2 + 0.5], rel=1e-6)
    assert float(H.detach()) == pytest.approx(h2, rel=1e-6)


# --- training step -------------------------------------------------------------------------

def test_grad_clipping_scales_to_theta_and_leaves_small_gradients():
    net = RNNModelScratch(2, 1)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    net.W_xh.grad[:] = torch.tensor([[3.0], [4.0]])  # global norm 5
    grad_clipping(net, 1)
    assert net.W_xh.grad.flatten().tolist() == pytest.approx([0.6, 0.8])
    grad_clipping(net, 1)  # norm now 1: not > theta, untouched
    assert net.W_xh.grad.flatten().tolist() == pytest.approx([0.6, 0.8])


@pytest.mark.parametrize("scale", [10.0, 0.01])  # clipped, and left alone
def test_clip_and_sgd_is_grad_clipping_then_sgd(scale):
    """The fast kernels' update: the book's clipping and sgd (to rounding), grads dropped."""
    torch.manual_seed(0)
    nets = [RNNModelScratch(5, 4), RNNModelScratch(5, 4)]
    nets[1].load_state_dict(nets[0].state_dict())
    for p, q in zip(nets[0].params, nets[1].params):
        p.grad = torch.randn_like(p) * scale
        q.grad = p.grad.clone()
    before = nets[1].W_xh.detach().clone()
    grad_clipping(nets[0], 1)
    sgd(nets[0].params, lr=0.5, batch_size=1)
    clip_and_sgd(nets[1].params, 1, 0.5)
    for p, q in zip(nets[0].params, nets[1].params):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-6, atol=1e-7)
        assert q.grad is None
    assert not torch.equal(nets[1].W_xh.detach(), before)


def test_sgd_update_is_the_books(d2l):
    a, b = torch.tensor([1.0, -2.0], requires_grad=True), torch.tensor([1.0, -2.0], requires_grad=True)
    a.grad, b.grad = torch.tensor([0.5, 0.25]), torch.tensor([0.5, 0.25])
    sgd([a], lr=1.0, batch_size=1)
    d2l.sgd([b], lr=1.0, batch_size=1)
    assert a.tolist() == b.tolist() == [0.5, -2.25] and a.grad.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("use_random_iter", [False, True])
def test_one_epoch_equals_the_books_train_epoch(book_corpus, d2l, use_random_iter):
    corpus, vocab = book_corpus
    torch.manual_seed(3)
    net = RNNModelScratch(len(vocab), 64)
    book_net = d2l.RNNModelScratch(len(vocab), 64, "cpu", get_params, init_rnn_state, rnn)
    with torch.no_grad():
        for p, q in zip(book_net.params, net.params):
            p.copy_(q)
    random.seed(5)
    ppl, _ = train_epoch_ch8(net, SeqDataLoader(corpus, 32, 35, use_random_iter), nn.CrossEntropyLoss(),
                             make_updater(net, "sgd", 1.0), "cpu", use_random_iter)
    random.seed(5)
    book_it = d2l.SeqDataLoader(32, 35, use_random_iter, 10000)
    book_ppl, _ = d2l.train_epoch_ch8(book_net, book_it, nn.CrossEntropyLoss(),
                                      lambda batch_size: d2l.sgd(book_net.params, 1.0, batch_size),
                                      "cpu", use_random_iter)
    assert ppl == pytest.approx(book_ppl, rel=1e-6)
    for ours, theirs in zip(net.params, book_net.params):
        assert torch.equal(ours.detach(), theirs.detach())


def test_train_ch8_is_the_books_loop_with_the_books_signature(book_corpus, d2l, capsys):
    """The book's signature; its SGD over `train_epoch_ch8` epoch after epoch; what it prints."""
    ours, book = inspect.signature(train_ch8), inspect.signature(d2l.train_ch8)
    assert [(p.name, p.default) for p in ours.parameters.values()] == \
        [(p.name, p.default) for p in book.parameters.values()]
    corpus, vocab = book_corpus
    nets = []
    for run in ("train_ch8", "by hand"):
        torch.manual_seed(2)
        random.seed(2)
        net = RNNModelScratch(len(vocab), 32)
        if run == "train_ch8":
            history = train_ch8(net, SeqDataLoader(corpus, 32, 35), vocab, 1.0, 10, "cpu")
        else:
            updater = make_updater(net, "sgd", 1.0)
            for _ in range(10):
                train_epoch_ch8(net, SeqDataLoader(corpus, 32, 35), nn.CrossEntropyLoss(),
                                updater, "cpu", False)
        nets.append(net)
    for a, b in zip(*(net.params for net in nets)):
        assert torch.equal(a, b)
    lines = capsys.readouterr().out.splitlines()
    assert len(history) == 10 and history[-1].ppl < history[0].ppl
    assert lines[0] == predict_ch8("time traveller", 50, nets[0], vocab, "cpu")   # epoch 10
    assert lines[1] == f"perplexity {history[-1].ppl:.1f}, {history[-1].speed:.1f} tokens/sec on cpu"
    assert lines[2:] == [predict_ch8(p, 50, nets[0], vocab, "cpu") for p in ("time traveller", "traveller")]


# --- prediction ----------------------------------------------------------------------------

def _trained(corpus, vocab, epochs=15):
    torch.manual_seed(1)
    random.seed(1)
    net = RNNModelScratch(len(vocab), 64)
    updater = make_updater(net, "sgd", 1.0)
    for _ in range(epochs):
        train_epoch_ch8(net, SeqDataLoader(corpus, 32, 35), nn.CrossEntropyLoss(), updater, "cpu", False)
    return net


def test_greedy_predictions_equal_the_books_predict_ch8(book_corpus, d2l):
    corpus, vocab = book_corpus
    net = _trained(corpus, vocab)
    book_net = d2l.RNNModelScratch(len(vocab), 64, "cpu", get_params, init_rnn_state, rnn)
    book_net.params = [p.detach() for p in net.params]
    for prefix in ("time traveller", "traveller", "t", "the time machine "):
        book = d2l.predict_ch8(prefix, 50, book_net, vocab, "cpu")
        assert predict_ch8(prefix, 50, net, vocab, "cpu") == book
        assert generate_text(net, vocab, prefix, 50) == book
    assert len(book) == len("the time machine ") + 50


def test_generator_carries_state_across_feeds(book_corpus):
    corpus, vocab = book_corpus
    net = _trained(corpus, vocab, epochs=3)
    gen = TextStream(net, vocab)
    gen.feed("time ")
    gen.feed("traveller")
    split = "".join(gen.generate(30))
    assert "time traveller" + split == predict_ch8("time traveller", 30, net, vocab, "cpu")


def test_sampling_is_seeded_and_top_k_one_is_greedy(book_corpus):
    corpus, vocab = book_corpus
    net = _trained(corpus, vocab, epochs=3)
    a = generate_text(net, vocab, "time", 40, temperature=1.0, seed=3)
    assert a == generate_text(net, vocab, "time", 40, temperature=1.0, seed=3)
    assert a != generate_text(net, vocab, "time", 40, temperature=1.0, seed=4)
    assert generate_text(net, vocab, "time", 40, temperature=1.0, top_k=1, seed=9) == \
        predict_ch8("time", 40, net, vocab, "cpu")
