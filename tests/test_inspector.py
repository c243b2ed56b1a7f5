"""Looking inside the model (rnn_core/inspector.py): surprisal against the book's own loss,
activations against a direct forward pass, the unit ranking, memorisation against the book's
text, the training text a checkpoint carries, and `python -m rnn_core score` as users run it."""
from __future__ import annotations

import asyncio
import bisect
import html.parser
import itertools
import json
import lzma
import math
import random
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from d2l_book import get_params, init_rnn_state, load_d2l, rnn
from rnn_core import inspector, views
from rnn_core.validation import MAX_MESSAGE_CHARS
from rnn_core.checkpoint import (TRAINING_TEXT_NAME, Checkpoint, CheckpointError,
                                 load_checkpoint, read_training_text)
from rnn_core.config import CheckpointConfig
from rnn_core.data import Vocab, normalize_text, read_text
from rnn_core.generation import generate_text
from rnn_core.model import RNNModelScratch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def book(data_path) -> str:
    """The book's text as the models read it (§8.2's normalisation)."""
    return normalize_text(read_text(data_path), "book")


def book_cross_entropy(d2l, ckpt: Checkpoint, text: str) -> float:
    """The loss `train_epoch_ch8` computes for one batch row holding `text`: the book's own
    RNNModelScratch (d2l 0.17.6) with the checkpoint's weights, from a zero state."""
    net = d2l.RNNModelScratch(len(ckpt.vocab), ckpt.net.num_hiddens, "cpu", get_params,
                              init_rnn_state, rnn)
    net.params = [p.detach().clone().requires_grad_(True) for p in ckpt.net.params]
    ids = ckpt.vocab[list(text)]
    X, Y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    state = net.begin_state(batch_size=1, device="cpu")
    y = Y.T.reshape(-1)
    y_hat, state = net(X, state)
    return float(nn.CrossEntropyLoss()(y_hat, y.long()).mean().detach())


# ---------------------------------------------------------------- surprisal

@pytest.mark.parametrize("model", ["bundled", "tiny"])
def test_mean_surprisal_is_the_books_cross_entropy(model, bundled, tiny_checkpoint, data_path,
                                                   book):
    ckpt = bundled if model == "bundled" else load_checkpoint(tiny_checkpoint)
    d2l = load_d2l(data_path)
    text = book[40_000:40_000 + MAX_MESSAGE_CHARS]
    result = inspector.score(ckpt, text)
    assert result.text == text and len(result.chars) == len(text) - 1
    nats = [-math.log(c["prob"]) for c in result.chars]
    expected = book_cross_entropy(d2l, ckpt, text)
    assert abs(sum(nats) / len(nats) - expected) < 1e-6
    assert abs(result.perplexity - math.exp(expected)) < 1e-5
    assert abs(result.bits_per_char - expected / math.log(2)) < 1e-6
    for c in result.chars:
        assert c["bits"] == pytest.approx(-math.log2(c["prob"]), rel=1e-9)


def test_each_character_gets_its_probability_and_the_top_five(bundled):
    text = "the time traveller smiled"
    result = inspector.score(bundled, text).to_json()
    assert set(result) == {"text", "chars", "bits_per_char", "perplexity"}
    with torch.no_grad():
        ids = bundled.vocab[list(text)]
        y_hat, _ = bundled.net(torch.tensor([ids[:-1]]), bundled.net.begin_state(1))
        probs = torch.softmax(y_hat, dim=1)
    assert [c["char"] for c in result["chars"]] == list(text[1:])
    for t, c in enumerate(result["chars"]):
        assert c["prob"] == pytest.approx(float(probs[t, ids[t + 1]]), abs=1e-6)
        tokens = [tok for tok, _ in c["top"]]
        values = [p for _, p in c["top"]]
        assert len(c["top"]) == 5 and values == sorted(values, reverse=True)
        best = probs[t].topk(5)
        assert tokens == [bundled.vocab.idx_to_token[i] for i in best.indices.tolist()]
        assert values == pytest.approx(best.values.tolist(), abs=6e-7)
    json.dumps(result)  # plain JSON types only


def test_unknown_characters_score_as_unk_and_unk_is_named():
    """A raw model whose vocabulary lacks a character reads it as <unk>; `<unk>` appears by
    name among the candidates (a tiny vocabulary: every token is in the top 5)."""
    vocab = Vocab(idx_to_token=["<unk>", "a", "b", " "])
    torch.manual_seed(0)
    net = RNNModelScratch(len(vocab), 8).eval().requires_grad_(False)
    ckpt = Checkpoint(net, vocab, CheckpointConfig(len(vocab), 8, "raw"))
    result = inspector.score(ckpt, "ab c")
    assert [c["char"] for c in result.chars] == ["b", " ", "c"]
    assert all(len(c["top"]) == 4 for c in result.chars)
    assert "<unk>" in [t for t, _ in result.chars[2]["top"]]
    unk_p = dict(result.chars[2]["top"])["<unk>"]
    assert result.chars[2]["prob"] == pytest.approx(unk_p, abs=6e-7)


def test_a_training_passage_is_less_surprising_than_its_letters_shuffled(bundled, book):
    passage = book[60_000:61_500]
    letters = list(passage)
    random.Random(0).shuffle(letters)
    shuffled = "".join(letters)
    ours, theirs = inspector.score(bundled, passage), inspector.score(bundled, shuffled)
    assert ours.bits_per_char < 2.5 < 3.5 < theirs.bits_per_char, (ours.bits_per_char,
                                                                  theirs.bits_per_char)


@pytest.mark.parametrize("text, reason", [
    ("", "empty"), ("   ", "empty"), (None, "must be text"), ("1234 !!", "cannot read any"),
    ("x", "at least 2"), ("a" * (MAX_MESSAGE_CHARS + 1), "the limit is 2,000"),
])
def test_refusals_name_the_problem(bundled, text, reason):
    with pytest.raises(inspector.InspectError if reason == "at least 2" else ValueError,
                       match=reason):
        inspector.score(bundled, text)


# ---------------------------------------------------------------- activations

def test_activations_are_the_hidden_state_of_a_direct_forward_pass(bundled):
    text = "the time machine was a strange thing"
    states = inspector.states_of(bundled.net, bundled.vocab, text)
    ids = bundled.vocab[list(text)]
    for t in range(len(text)):
        with torch.no_grad():
            _, (H,) = bundled.net(torch.tensor([ids[:t + 1]]), bundled.net.begin_state(1))
        assert torch.equal(states[t, 0], H[0])              # bit for bit
    for unit in (0, 137, 511):
        traced = inspector.trace(bundled, text, unit)
        assert traced["text"] == text and traced["unit"] == unit and "cell" not in traced
        assert traced["activations"] == states[:, 0, unit].tolist()


class TwoLayerLSTMLike(torch.nn.Module):
    """A stand-in with the LSTM state layout (each layer's H then C), to check which state
    row a unit reads; its forward is arbitrary but deterministic."""
    cell = type("Cell", (), {"state": ("H", "C")})

    def __init__(self, vocab_size=4, num_hiddens=3):
        super().__init__()
        self.vocab_size, self.num_hiddens, self.num_layers = vocab_size, num_hiddens, 2
        self.W_hq = torch.nn.Parameter(torch.zeros(num_hiddens, vocab_size))

    def begin_state(self, batch_size, device=None):
        return tuple(torch.zeros(batch_size, self.num_hiddens) for _ in range(4))

    def forward(self, X, state):
        x = X.float().sum()
        new = tuple(s + (k + 1) * 10 + x + torch.arange(self.num_hiddens) / 10
                    for k, s in enumerate(state))
        return torch.zeros(X.numel(), self.vocab_size), new


def test_lstm_layout_reports_the_cell_and_units_span_the_layers():
    vocab = Vocab(idx_to_token=["<unk>", "a", "b", "c"])
    ckpt = Checkpoint(TwoLayerLSTMLike(), vocab, CheckpointConfig(len(vocab), 3, "raw"))
    out = inspector.trace(ckpt, "ab", 4)     # layer 1, unit 1: state rows 2 (H) and 3 (C)
    # Each step adds 10 * (row + 1) + the id read + unit / 10 to every state row.
    assert out["activations"] == pytest.approx([31.1, 63.2])
    assert out["cell"] == pytest.approx([41.1, 83.2])
    with pytest.raises(inspector.InspectError, match="from 0 to 5"):
        inspector.trace(ckpt, "ab", 6)


@pytest.mark.parametrize("unit", [-1, 512, 1.5, "3", True, float("nan")])
def test_unit_out_of_range_is_refused(bundled, unit):
    with pytest.raises(inspector.InspectError, match="from 0 to 511"):
        inspector.trace(bundled, "the time", unit)


def test_ranked_units_are_scored_by_their_correlation(bundled, book):
    text = book[:inspector.RANKING_CHARS]
    states = inspector.states_of(bundled.net, bundled.vocab, text)
    ranked = inspector.rank_units(bundled, text, states)
    assert 10 <= len(ranked) <= inspector.MAX_RANKED
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert len({r["unit"] for r in ranked}) == len(ranked)
    props = {name: (values, where) for name, values, where in inspector.text_properties(text)}
    assert {r["property"] for r in ranked} >= {"at a space (vs inside a word)",
                                                "position in the word"}
    for r in ranked:
        values, where = props[r["property"]]
        keep = torch.ones(len(text), dtype=torch.bool) if where is None else torch.tensor(where)
        x = torch.tensor(values, dtype=torch.float64)[keep]
        y = states[:, 0, r["unit"]].double()[keep]
        expected = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
        assert r["correlation"] == pytest.approx(expected, abs=1e-9)
        assert r["score"] == abs(r["correlation"]) and r["kind"] == "hidden"
    assert ranked[0]["score"] > 0.4


def test_text_properties_of_raw_text():
    text = 'He said "go now"\nand went.\nOk'
    props = {name: (values, where) for name, values, where in inspector.text_properties(text)}
    quoted = props["inside quotes"][0]
    assert "".join(ch for ch, q in zip(text, quoted) if q) == '"go now'
    assert props["position in the line"][0][text.index("and"):text.index("and") + 3] == [1, 2, 3]
    word, where = props["position in the word"]
    assert [w for w, k in zip(word, where) if k][:6] == [1, 2, 1, 2, 3, 4]
    assert "just read 'H'" in props and "just read ' '" not in props


# ---------------------------------------------------------------- memorisation

def naive_memorised(text: str, training: str, start: int, min_len: int) -> set[int]:
    """Positions of text[start:] inside some substring of length ≥ min_len found in training."""
    covered = set()
    for i in range(len(text)):
        for j in range(i + min_len, len(text) + 1):
            if text[i:j] in training:
                covered.update(range(max(i, start), j))
    return covered


def test_memorised_spans_match_a_brute_force_search():
    rng = random.Random(1)
    for _ in range(200):
        training = "".join(rng.choice("ab ") for _ in range(rng.randint(0, 60)))
        text = "".join(rng.choice("ab ") for _ in range(rng.randint(0, 30)))
        start, min_len = rng.randint(0, len(text)), rng.randint(1, 6)
        result = inspector.memorised(text, training, start, min_len)
        got = {k for s in result.spans for k in range(max(s["start"], start), s["end"])}
        assert got == naive_memorised(text, training, start, min_len), (text, training)
        for s in result.spans:
            assert s["end"] - s["start"] >= min_len and s["text"] == text[s["start"]:s["end"]]
            assert training[s["position"]:s["position"] + len(s["text"])] == s["text"]
            assert training.find(s["text"]) == s["position"] and s["occurrences"] >= 1
        if len(text) > start:
            assert result.novel_share == pytest.approx(1 - len(got) / (len(text) - start))


def test_a_pasted_book_passage_is_found_at_its_place(book):
    rng = random.Random(2)
    noise = "".join(rng.choice(string.ascii_lowercase) for _ in range(40))
    where = 123_456
    passage = book[where:where + 60]
    assert book.count(passage) == 1
    result = inspector.memorised(noise + passage + noise, book, start=0)
    assert [(s["start"], s["end"], s["position"]) for s in result.spans] == \
        [(40, 100, where)]
    assert result.novel_share == pytest.approx(80 / 140)
    assert result.spans[0]["context"] == [book[where - 40:where], book[where + 60:where + 100]]


def test_the_bundled_models_greedy_reply_against_the_book(bundled, book, data_path):
    """The bundled model generalises: its greedy reply to "time traveller" holds no span of
    20 characters from the book. Its longest verbatim span, 19 characters, runs from the
    prompt into the reply and is found where the book has it."""
    training = inspector.notes_for(bundled).training_text
    assert training == book[:len(training)]
    prompt = "time traveller"
    text = generate_text(bundled.net, bundled.vocab, prompt, 200, "book")
    assert inspector.memorised(text, training, len(prompt)).spans == []
    result = inspector.memorised(text, training, len(prompt), min_len=19)
    first = result.spans[0]
    assert (first["start"], first["end"], first["text"]) == (0, 19, "time traveller and ")
    assert first["occurrences"] == 2
    # The first place in the book, found independently in the original text.
    raw = read_text(data_path)
    m = re.search(r"Time\s+Traveller\s+and\s", raw)
    line_start = raw.rfind("\n", 0, m.start()) + 1          # "the Time Traveller and the fire..."
    within = re.sub("[^A-Za-z]+", " ", raw[line_start:m.start()]).lower().lstrip()
    assert first["position"] == len(normalize_text(raw[:line_start], "book")) + len(within)
    assert result.novel_share < 1.0


def test_random_letters_are_flagged_nowhere(bundled):
    rng = random.Random(3)
    letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(1000))
    training = inspector.notes_for(bundled).training_text
    result = inspector.memorised(letters, training)
    assert result.spans == [] and result.novel_share == 1.0


@pytest.mark.parametrize("min_len", [0, -3, 2.5, True, 10_001, float("nan"), "20"])
def test_min_span_is_checked(min_len):
    with pytest.raises(inspector.InspectError, match="shortest span"):
        inspector.memorised("abc", "abc", min_len=min_len)


# ---------------------------------------------------------------- the training text

def test_train_py_writes_the_training_text(tiny_checkpoint, book):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    entry = config["training_text"]
    text = read_training_text(tiny_checkpoint, config)
    assert text == book[:config["training"]["num_train_tokens"]] and entry["chars"] == len(text)
    size = (tiny_checkpoint / TRAINING_TEXT_NAME).stat().st_size
    assert size < len(text) // 2          # xz: the 9,000 characters in a few kB


def test_bundled_checkpoint_carries_its_training_text(bundled_checkpoint, book):
    size = (bundled_checkpoint / TRAINING_TEXT_NAME).stat().st_size
    assert size < 64 * 1024               # 162,051 characters in about 54 kB
    config = json.loads((bundled_checkpoint / "config.json").read_text())
    assert read_training_text(bundled_checkpoint, config) == \
        book[:config["training"]["num_train_tokens"]]


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_models_without_or_with_a_broken_training_text_say_so(tiny_checkpoint, tmp_path):
    bare = copy_checkpoint(tiny_checkpoint, tmp_path / "bare")
    (bare / TRAINING_TEXT_NAME).unlink()
    config = json.loads((bare / "config.json").read_text())
    del config["training_text"]
    (bare / "config.json").write_text(json.dumps(config))
    notes = inspector.notes_for(load_checkpoint(bare))
    assert notes.training_text is None and "does not carry its training text" in \
        notes.why_no_training_text

    listed = copy_checkpoint(tiny_checkpoint, tmp_path / "listed")
    (listed / TRAINING_TEXT_NAME).unlink()
    notes = inspector.notes_for(load_checkpoint(listed))
    assert notes.training_text is None and "missing though config.json lists it" in \
        notes.why_no_training_text

    broken = copy_checkpoint(tiny_checkpoint, tmp_path / "broken")
    (broken / TRAINING_TEXT_NAME).write_bytes(lzma.compress(b"something else"))
    notes = inspector.notes_for(load_checkpoint(broken))
    assert notes.training_text is None and "sha1" in notes.why_no_training_text
    with pytest.raises(CheckpointError, match="sha1"):
        read_training_text(broken, json.loads((broken / "config.json").read_text()))
    (broken / TRAINING_TEXT_NAME).write_bytes(b"not xz at all")
    with pytest.raises(CheckpointError, match="not a valid xz file"):
        read_training_text(broken, json.loads((broken / "config.json").read_text()))


# ---------------------------------------------------------------- the CLI

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnn_core", "score", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_score_cli_prints_totals_and_the_table(bundled_checkpoint, bundled, tmp_path):
    text = "The Time Traveller (for so it will be convenient to speak of him)"
    expected = inspector.score(bundled, text)
    r = cli("--model", str(bundled_checkpoint), "--text", text)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == (f"read {len(expected.text)} characters, scored {len(expected.chars)} (the "
                        f"first is only read): {expected.bits_per_char:.4f} bits/char, "
                        f"perplexity {expected.perplexity:.4f}\n")
    f = tmp_path / "passage.txt"
    f.write_text(text, encoding="utf-8")
    r = cli("--model", str(bundled_checkpoint), "--file", str(f), "--per-char")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 1 + len(expected.chars) + 1
    assert lines[-1].endswith(f"perplexity {expected.perplexity:.4f}")
    first = lines[1].split()
    assert first[:4] == ["1", "h", f"{expected.chars[0]['prob']:.4f}",
                         f"{expected.chars[0]['bits']:.3f}"]
    assert lines[3].split()[1] == "␣"                   # the space after "the", made visible


def test_score_cli_refuses_in_one_line(bundled_checkpoint, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin1"))
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"abc\x00def")
    long = tmp_path / "long.txt"
    long.write_text("a" * (MAX_MESSAGE_CHARS + 1))
    cases = [(["--text", ""], "empty"), (["--text", "?!"], "cannot read any character"),
             (["--file", str(tmp_path / "missing.txt")], "cannot read --file"),
             (["--file", str(latin1)], "not valid UTF-8"), (["--file", str(binary)], "binary"),
             (["--file", str(long)], "2,001 characters long; the limit is 2,000"),
             (["--file", str(tmp_path)], "cannot read --file")]
    for args, reason in cases:
        r = cli("--model", str(bundled_checkpoint), *args)
        assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and reason in r.stderr, (args, r.stderr)
    r = cli("--model", str(bundled_checkpoint), "--text", "a", "--file", str(long))
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


# ---------------------------------------------------------------- why this character, step mode

from rnn_core.validation import ChatError, Settings   # noqa: E402
from rnn_core.session import ChatSession, Turn   # noqa: E402
from bench.conversations import continuation                       # noqa: E402


def said(session: ChatSession, message: str, settings: Settings) -> tuple[Turn, str]:
    """A turn as the app makes it: the message read into the state, then the reply drawn."""
    turn = session.start(message)
    asyncio.run(session.read(turn.text_read))
    return turn, "".join(session.reply(turn, settings))


@pytest.mark.parametrize("temperature, top_k", [(0.9, 0), (1.3, 5), (0.4, 1)])
def test_why_shows_the_distribution_the_sampler_drew_from(bundled, temperature, top_k):
    """Replaying the shown distributions with the same uniform draws reproduces the reply."""
    session = ChatSession(bundled, seed=7)
    turn, reply = said(session, "the time traveller said", Settings(120, temperature, top_k))
    explained = inspector.explain(bundled, turn)
    assert explained["reply"] == reply and len(explained["chars"]) == 120
    rng = torch.Generator().manual_seed(7)
    replayed = ""
    for c in explained["chars"]:
        probs = [p for _, p in c["distribution"]]
        assert sum(probs) == pytest.approx(1.0) and all(p > 0 for p in probs)
        assert "<unk>" not in [t for t, _ in c["distribution"]]
        assert len(probs) == (top_k or len(bundled.vocab) - 1)
        cumulative = list(itertools.accumulate(probs))
        u = float(torch.rand((), generator=rng)) * cumulative[-1]
        replayed += c["distribution"][bisect.bisect_right(cumulative, u)][0]
        assert c["rank"] == 1 + sum(p > c["prob"] for p in probs)
    assert replayed == reply
    assert f"temperature {temperature:g}" in explained["sampler"]


def test_why_for_a_greedy_reply_is_the_models_softmax_and_rank_one(bundled):
    session = ChatSession(bundled)
    turn, reply = said(session, "time traveller", Settings(30, 0.0, 0))
    explained = inspector.explain(bundled, turn)
    assert explained["sampler"].startswith("greedy")
    assert [c["char"] for c in explained["chars"]] == list(reply)
    assert all(c["rank"] == 1 and len(c["distribution"]) == 28 for c in explained["chars"])


def test_why_follows_the_whole_conversation(bundled):
    """The second reply's distributions come from the state that read everything before it."""
    session = ChatSession(bundled, seed=3)
    said(session, "the machine", Settings(25, 1.0, 0))
    second, reply = said(session, "and then", Settings(25, 0.0, 0))
    assert [c["char"] for c in inspector.explain(bundled, second)["chars"]] == list(reply)
    transcript = session.transcript[:-len(reply)]
    assert reply == continuation(bundled, transcript, 25)


def test_greedy_steps_are_a_greedy_reply(bundled):
    stepper, streamer = ChatSession(bundled), ChatSession(bundled)
    turn = asyncio.run(stepper.step_start("the psychologist"))
    for _ in range(30):
        stepper.step_auto(Settings(1, 0.0, 0))
    _, expected = said(streamer, "the psychologist", Settings(30, 0.0, 0))
    assert turn.reply == expected
    ours, theirs = stepper.stream(), streamer.stream()
    assert torch.equal(ours.H, theirs.H) and ours.pending == theirs.pending


def test_stepping_back_and_forward_gives_bit_identical_logits(bundled):
    session = ChatSession(bundled, seed=1)
    asyncio.run(session.step_start("it was a strange thing"))
    for ch in "to":
        session.step(ch)
    before = session.next_logits()
    session.step("n")
    after = session.next_logits()
    assert asyncio.run(session.step_back()) == "n"
    assert torch.equal(session.next_logits(), before)
    session.step("n")
    assert torch.equal(session.next_logits(), after)
    # Back twice and forward again: the turn's starting state is never overwritten.
    asyncio.run(session.step_back())
    asyncio.run(session.step_back())
    for ch in "on":
        session.step(ch)
    assert torch.equal(session.next_logits(), after)
    # The chat continues from exactly what was chosen.
    turn, reply = said(session, "said he", Settings(30, 0.0, 0))
    assert session.transcript.startswith("it was a strange thington said he")
    assert reply == continuation(bundled, "it was a strange thington said he", 30)


def test_step_mode_refusals(bundled):
    session = ChatSession(bundled)
    with pytest.raises(ChatError, match="step mode is not on"):
        session.step("a")
    asyncio.run(session.step_start("time"))
    with pytest.raises(ChatError, match="nothing to step back"):
        asyncio.run(session.step_back())
    for bad in ("<unk>", "A", "ab", ""):
        with pytest.raises(ChatError, match="not a character this model can write"):
            session.step(bad)
    turn = session.start("traveller")          # a message ends step mode
    assert not session.turns[0].open and turn.text == "traveller"
    with pytest.raises(ChatError, match="step mode is not on"):
        session.step("a")


def test_step_options_are_the_samplers_distribution(bundled):
    session = ChatSession(bundled)
    asyncio.run(session.step_start("the time"))
    logits = session.next_logits()
    greedy, caption = inspector.step_options(bundled, logits, Settings(1, 0.0, 0))
    probs = torch.softmax(logits.double(), 0)
    assert greedy[0][0] == bundled.vocab.idx_to_token[int(logits.argmax())]
    assert len(greedy) == 27 and "<unk>" not in dict(greedy)
    assert dict(greedy)["e"] == pytest.approx(float(probs[bundled.vocab["e"]]))
    sampled, caption = inspector.step_options(bundled, logits, Settings(1, 0.5, 3))
    assert len(sampled) == 3 and sum(p for _, p in sampled) == pytest.approx(1.0)
    assert [t for t, _ in sampled] == [t for t, _ in greedy[:3]] and "top-k 3" in caption


def test_conversation_passage_keeps_the_latest_turns_that_fit(bundled):
    session = ChatSession(bundled)
    for _ in range(8):
        said(session, "the machine " * 20, Settings(100, 0.0, 0))
    whole = session.transcript
    text, note = inspector.conversation_passage(session.turns, 2000)
    assert whole.endswith(text) and 1000 < len(text) <= 2000 and "read from a fresh state" in note
    assert inspector.conversation_passage(session.turns[:2], 2000) == (
        "".join(t.text_read + t.reply for t in session.turns[:2]), "")


# ---------------------------------------------------------------- the views

class TextOf(html.parser.HTMLParser):
    """The text an HTML fragment shows, and the tags it creates."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text, self.tags = "", []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text += data


def test_views_escape_every_character_and_attribute():
    vocab = Vocab(idx_to_token=["<unk>", *"<>&\"' ab=/"])
    torch.manual_seed(0)
    ckpt = Checkpoint(RNNModelScratch(len(vocab), 8).eval().requires_grad_(False), vocab,
                      CheckpointConfig(len(vocab), 8, "raw"))
    text = '<b a="x">&amp;</b> \'"/>'
    page = views.surprisal_html(inspector.score(ckpt, text).to_json())
    body = page.split('<div class="text">', 1)[1]
    parsed = TextOf()
    parsed.feed(body)
    assert parsed.text == text and set(parsed.tags) == {"span"}
    for html_ in (views.trace_html(inspector.trace(ckpt, text, 3), "hidden"),
                  views.memorised_html(inspector.memorised(text, text + "!", 2, 3).to_json()),
                  views.bars_html([(t, 0.1) for t in text[:10]], text)):
        parsed = TextOf()
        parsed.feed(html_)
        assert set(parsed.tags) <= {"div", "span", "b", "button"} and "<b a=" not in html_
