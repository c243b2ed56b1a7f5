"""The conversation logic behind the app (rnn_core/validation.py, session.py, streaming.py,
models_cache.py), without a server.

The carried-state contract, stop/undo/new chat, refusals with their reasons, the rule for
which models a visitor may load, and property tests on arbitrary text and settings.
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from rnn_core.validation import (MAX_LENGTH, MAX_MESSAGE_CHARS, ChatError, Settings, check_message,
                                 check_settings, read_as)
from rnn_core.engine import Engine
from rnn_core.session import ChatSession, join_separator
from rnn_core.streaming import Pace, read_text, stream_reply
from rnn_core.models_cache import ModelCache, resolve_model_ref
from bench.conversations import continuation
from rnn_core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from rnn_core.config import CheckpointConfig
from rnn_core.data import load_corpus, normalize_prompt
from rnn_core.generation import (TextStream, candidates, draw_each, generate_text, pick,
                                  predict_ch8)
from rnn_core.model import RNNModelScratch

FAST = Pace(chars_per_second=1e9, min_interval=0.0, max_interval=0.0)
GREEDY = Settings(length=40, temperature=0.0, top_k=0)
ODD_TEXT = ("Time\x00Traveller\x07 \u202eRTL \u05e9\u05dc\u05d5\u05dd e\u0301 \U0001F600 "
            "<b>bold</b><script>alert(1)</script> \t\n\r\x1b[31m")


def memory_checkpoint(text: str, normalization: str, num_hiddens: int = 24,
                      seed: int = 0) -> Checkpoint:
    """A model with random (but not flat) weights and the vocabulary of `text`: enough to
    exercise the chat on any vocabulary without training."""
    torch.manual_seed(seed)
    _, vocab = load_corpus(text, normalization)
    net = RNNModelScratch(len(vocab), num_hiddens)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(60)
    config = CheckpointConfig(vocab_size=len(vocab), num_hiddens=num_hiddens,
                              normalization=normalization)
    return Checkpoint(net.eval().requires_grad_(False), vocab, config, source="memory")


BOOK_TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding; "
             "the quick brown fox jumps over the lazy dog")
RAW_TEXT = BOOK_TEXT + " 12,3! <b>&amp;</b> \n" + "é ü שלום 😀"
BOOK = memory_checkpoint(BOOK_TEXT, "book")
RAW = memory_checkpoint(RAW_TEXT, "raw")


async def _collect(session: ChatSession, message: str, s: Settings = GREEDY,
                   stop_after: int | None = None) -> list[str]:
    """The partial replies of one turn; `stop_after` closes the stream after that many."""
    parts = []
    stream = stream_reply(session, message, s, FAST)
    async for part in stream:
        parts.append(part)
        if stop_after is not None and len(parts) >= stop_after:
            await stream.aclose()
            break
    return parts


def turn(session: ChatSession, message: str, s: Settings = GREEDY, **kw) -> str:
    parts = asyncio.run(_collect(session, message, s, **kw))
    return parts[-1]


def greedy_continuation(ckpt: Checkpoint, text: str, n: int) -> str:
    """The book's predict_ch8 on the whole text, minus the text."""
    return predict_ch8(text, n, ckpt.net, ckpt.vocab, "cpu")[len(text):]


# ---------------------------------------------------------------- the carried-state contract

def test_joining_rule():
    assert join_separator("", "time") == ""
    assert join_separator("the time", "machine") == " "
    assert join_separator("the time ", "machine") == ""
    assert join_separator("the time", " machine") == ""


def test_three_turns_are_one_greedy_text(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    session = ChatSession(ckpt)
    m1 = "The Time Traveller!"
    first = turn(session, m1, Settings(50, 0.0, 0))
    m1n = normalize_prompt(m1, "book")
    assert first == greedy_continuation(ckpt, m1n, 50)   # predict_ch8(M', N)
    transcript = m1n + first
    for message, n in (("said the   psychologist", 30), ("  and he", 25)):
        reply = turn(session, message, Settings(n, 0.0, 0))
        m = normalize_prompt(message, "book")
        joined = transcript + join_separator(transcript, m) + m
        assert reply == greedy_continuation(ckpt, joined, n)
        transcript = joined + reply
    assert session.transcript == transcript


def test_partials_grow_and_end_whole():
    session = ChatSession(BOOK)
    slow = Pace(chars_per_second=400, min_interval=0.01, max_interval=0.01)
    parts = asyncio.run(_stream_all(session, "time", Settings(30, 0.0, 0), slow))
    assert len(parts) >= 3
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(parts, parts[1:]))
    assert len(parts[-1]) == 30


async def _stream_all(session, message, s, pace):
    return [p async for p in stream_reply(session, message, s, pace)]


def test_stop_keeps_state_equal_to_what_was_shown():
    session = ChatSession(BOOK)
    slow = Pace(chars_per_second=200, min_interval=0.01, max_interval=0.01)

    async def stopped():
        stream, shown = stream_reply(session, "time", Settings(500, 0.0, 0), slow), []
        async for part in stream:
            shown.append(part)
            if len(shown) == 3:
                break
        await stream.aclose()     # what Stop does to the handler
        return shown[-1]

    shown = asyncio.run(stopped())
    assert 0 < len(shown) < 500 and session.transcript == "time" + shown
    reply = turn(session, "machine")
    transcript = "time" + shown
    joined = transcript + join_separator(transcript, "machine") + "machine"
    assert reply == greedy_continuation(BOOK, joined, GREEDY.length)


def test_a_new_message_while_streaming_stops_the_old_reply():
    session = ChatSession(BOOK)
    slow = Pace(chars_per_second=100, min_interval=0.01, max_interval=0.01)

    async def overlap():
        old = stream_reply(session, "time", Settings(500, 0.0, 0), slow)
        first = await old.__anext__()
        new_parts = [p async for p in stream_reply(session, "machine", GREEDY, FAST)]
        rest = [p async for p in old]     # the old stream ends without growing
        return first, rest, new_parts[-1]

    first, rest, new = asyncio.run(overlap())
    assert all(p == first for p in rest)
    transcript = "time" + first
    joined = transcript + join_separator(transcript, "machine") + "machine"
    assert new == greedy_continuation(BOOK, joined, GREEDY.length)


def test_cancelling_waits_for_the_step_on_the_generation_thread():
    engine, events = Engine("test-generation"), []

    def step(name, seconds):
        events.append(f"{name} starts")
        time.sleep(seconds)
        events.append(f"{name} ends")
        return name

    async def cancel_midway():
        job = asyncio.ensure_future(engine.run(step, "a", 0.2))
        await asyncio.sleep(0.05)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        events.append("cancel returned")
        return await engine.run(step, "b", 0)

    assert asyncio.run(cancel_midway()) == "b"
    assert events == ["a starts", "a ends", "cancel returned", "b starts", "b ends"]


def test_a_failing_step_raises_in_its_caller_and_the_thread_goes_on():
    engine = Engine("test-generation")

    async def both():
        with pytest.raises(ZeroDivisionError):
            await engine.run(lambda: 1 / 0)
        return await engine.run(sum, [1, 2])

    assert asyncio.run(both()) == 3


def test_updates_wait_for_one_slice_of_long_reads_at_most():
    engine, order = Engine("test-generation"), []

    def work(name, seconds):
        order.append(name)
        time.sleep(seconds)

    async def flood():
        blocker = asyncio.ensure_future(engine.run(work, "first", 0.1))
        await asyncio.sleep(0.02)   # the thread is busy: everything below queues behind it
        reads = [asyncio.ensure_future(engine.run(work, f"read {i}", 0.01, bulk=True))
                 for i in range(10)]
        await asyncio.sleep(0)
        updates = [asyncio.ensure_future(engine.run(work, f"update {i}", 0)) for i in range(3)]
        await asyncio.gather(blocker, *reads, *updates)

    asyncio.run(flood())
    assert order[:5] == ["first", "update 0", "update 1", "update 2", "read 0"]
    assert order[5:] == [f"read {i}" for i in range(1, 10)]   # bulk work in order, never dropped


def test_waiting_jobs_of_one_kind_run_together_each_caller_getting_its_result():
    engine, calls = Engine("test-generation"), []

    def alone(x):
        calls.append(x)
        return -x

    def together(args):
        calls.append([x for (x,) in args])
        if 13 in calls[-1]:
            raise ZeroDivisionError
        return [-x for (x,) in args]

    async def flood():
        blocker = asyncio.ensure_future(engine.run(time.sleep, 0.1))
        await asyncio.sleep(0.02)   # the thread is busy: everything below waits in one round
        jobs = [engine.run(alone, x, together=together) for x in range(20)]
        jobs += [engine.run(alone, 99), engine.run(alone, 100, together=together)]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await blocker
        return results

    results = asyncio.run(flood())
    assert calls == [list(range(16)), list(range(16, 20)), 99, [100]]
    assert [type(r) for r in results[:16]] == [ZeroDivisionError] * 16   # a group's error: each
    assert results[16:] == [-16, -17, -18, -19, -99, -100]


def _draw_alone(ckpt, prefix, n, temperature, top_k, seed):
    return generate_text(ckpt.net, ckpt.vocab, prefix, n, ckpt.normalization, temperature, top_k,
                         seed)[len(prefix):]


def test_many_streams_drawn_in_one_call_get_what_each_gets_alone(bundled):
    """A round of updates (draw_each: one TorchScript call for the RNN streams) gives every
    stream exactly its own reply: greedy the book's predict_ch8, sampled the seeded reply."""
    gru = memory_checkpoint(BOOK_TEXT, "book")
    torch.manual_seed(5)
    gru.net = RNNModelScratch(len(gru.vocab), 16, arch="gru").eval().requires_grad_(False)
    runs = [(ckpt, prefix, temperature, top_k, seed)
            for ckpt in (bundled, BOOK, gru)
            for prefix, temperature, top_k, seed in (("the time", 0.0, 0, 0), ("we", 0.9, 0, 11),
                                                     ("machine", 1.6, 5, 12), ("he said", 1.0, 1, 13))]
    n, rng = 90, random.Random(0)
    streams, drawn, left = [], [""] * len(runs), [n] * len(runs)
    for ckpt, prefix, *_ in runs:
        streams.append(TextStream(ckpt.net, ckpt.vocab, ckpt.normalization))
        streams[-1].feed(prefix)
    rngs = [torch.Generator().manual_seed(seed) for *_, seed in runs]
    while any(left):   # rounds of uneven updates, some streams idle
        ks = [min(rng.randint(0, 6), k) for k in left]
        left = [k - d for k, d in zip(left, ks)]
        texts = draw_each([(s, k, t, top_k, g) for s, k, (_, _, t, top_k, _), g
                           in zip(streams, ks, runs, rngs)])
        drawn = [d + text for d, text in zip(drawn, texts)]
    assert drawn == [_draw_alone(ckpt, prefix, n, t, k, seed) for ckpt, prefix, t, k, seed in runs]
    assert drawn[0] == greedy_continuation(bundled, "the time", n)


def test_a_greedy_reply_of_unk_tokens_still_ends_after_its_length():
    """A greedy model may choose <unk> (5 characters as text): the reply ends after `length`
    tokens, however long its text."""
    unk = memory_checkpoint(BOOK_TEXT, "book")
    with torch.no_grad():
        unk.net.b_q[0] = 1e6   # argmax is always <unk>
    session = ChatSession(unk)
    reply = turn(session, "time", Settings(7, 0.0, 0))
    assert reply == "<unk>" * 7
    assert session.transcript == "time" + reply


def test_the_sampler_is_the_rule_written_in_python():
    """`candidates` and `pick` (TorchScript, run inside the generation thread's calls) equal
    the rule stated in plain Python: every id but <unk>, or the top_k largest logits (ties in
    vocabulary order), weights exp((z - max) / T) summed left to right, one uniform number."""
    def rule(logits, temperature, top_k, u):
        z = logits.tolist()
        ids = range(1, len(z))
        if 0 < top_k < len(ids):
            ids = sorted(ids, key=z.__getitem__, reverse=True)[:top_k]
        top = max(z[i] for i in ids)
        cumulative = list(itertools.accumulate(math.exp((z[i] - top) / temperature) for i in ids))
        return list(ids), cumulative, ids[bisect.bisect_right(cumulative, u * cumulative[-1])]

    rng = random.Random(1)
    for _ in range(400):
        size = rng.choice([2, 3, 28, 65])
        logits = torch.randn(size) * rng.choice([0.1, 1.0, 8.0])
        logits[rng.randrange(size)] = logits[rng.randrange(size)]   # ties
        temperature, top_k = rng.choice([0.05, 0.7, 1.0, 2.0]), rng.choice([0, 1, 2, 5, size - 1, 99])
        seed = rng.randrange(1 << 30)
        u = float(torch.rand((), generator=torch.Generator().manual_seed(seed)))
        ids, cumulative, chosen = rule(logits, temperature, top_k, u)
        assert candidates(logits, temperature, top_k) == (ids, cumulative)
        assert pick(logits, temperature, top_k, torch.Generator().manual_seed(seed)) == chosen


def test_new_chat_and_undo_rewind_the_state():
    session = ChatSession(BOOK)
    a = turn(session, "time")
    turn(session, "machine")
    session.undo()
    assert session.transcript == "time" + a
    assert turn(session, "machine") == greedy_continuation(
        BOOK, "time" + a + join_separator(a, "machine") + "machine", GREEDY.length)
    session.reset()
    assert session.transcript == "" and turn(session, "time") == a


def test_switching_model_starts_afresh():
    session = ChatSession(BOOK)
    turn(session, "time")
    session.use(RAW)
    assert session.turns == []
    assert turn(session, "Tim") == greedy_continuation(RAW, "Tim", GREEDY.length)


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("length,temperature,top_k,word", [
    (0, 0.5, 0, "length"), (MAX_LENGTH + 1, 0.5, 0, "length"), (-5, 0.5, 0, "length"),
    (math.nan, 0.5, 0, "length"), (math.inf, 0.5, 0, "length"), ("100", 0.5, 0, "length"),
    (None, 0.5, 0, "length"), (True, 0.5, 0, "length"), ([1], 0.5, 0, "length"),
    (10, -0.1, 0, "temperature"), (10, 2.5, 0, "temperature"), (10, math.nan, 0, "temperature"),
    (10, -math.inf, 0, "temperature"), (10, "hot", 0, "temperature"),
    (10, 0.5, -1, "top_k"), (10, 0.5, math.nan, "top_k"), (10, 0.5, math.inf, "top_k"),
    (10, 0.5, "3", "top_k"),
])
def test_bad_settings_are_refused_naming_the_parameter(length, temperature, top_k, word):
    with pytest.raises(ChatError) as e:
        check_settings(length, temperature, top_k, vocab_size=28)
    message = str(e.value)
    assert message.startswith(word) and "\n" not in message and "from" in message


def test_settings_are_rounded_and_top_k_clamped():
    assert check_settings(10.4, 0.001, 1000, vocab_size=28) == Settings(10, 0.0, 28)
    assert check_settings(1000.0, 2, 0.0, vocab_size=28) == Settings(1000, 2.0, 0)


@pytest.mark.parametrize("message,reason", [
    ("", "empty"), ("   \n\t ", "empty"), (None, "must be text"), (123, "must be text"),
    ("x" * (100 * 1024), "limit"), ("😀🎉", "cannot read"), ("1234 !!", "cannot read"),
    ("\x00\x01", "cannot read"), ("\u200f\u202e", "cannot read"),
])
def test_messages_the_model_cannot_read_are_refused(message, reason):
    with pytest.raises(ChatError, match=reason) as e:
        check_message(message, BOOK.vocab, "book")
    assert "\n" not in str(e.value)


def test_odd_messages_are_read_as_the_training_text_was():
    assert check_message("<b>Hi</b>", BOOK.vocab, "book") == " b hi b "
    assert check_message(ODD_TEXT, BOOK.vocab, "book") == normalize_prompt(ODD_TEXT, "book")
    assert check_message("e\u0301", RAW.vocab, "raw") == "é"       # NFC, as training text
    assert len(check_message("x" * MAX_MESSAGE_CHARS, BOOK.vocab, "book")) == MAX_MESSAGE_CHARS


def test_a_refused_message_leaves_the_conversation_untouched():
    session = ChatSession(BOOK)
    a = turn(session, "time")
    with pytest.raises(ChatError):
        turn(session, "   ")
    assert session.transcript == "time" + a


# ---------------------------------------------------------------- property tests

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(min_size=0, max_size=300), length=st.integers(1, 60),
       temperature=st.floats(0, 2), top_k=st.integers(0, 40), raw=st.booleans())
def test_any_text_and_settings_never_crash_and_stay_in_the_vocabulary(text, length, temperature,
                                                                      top_k, raw):
    ckpt = RAW if raw else BOOK
    session = ChatSession(ckpt, seed=0)
    s = check_settings(length, temperature, top_k, len(ckpt.vocab))
    try:
        reply = turn(session, text, s)
    except ChatError as e:
        assert str(e) and "\n" not in str(e)
        assert session.transcript == ""
        return
    unk = reply.count("<unk>")                 # a sampled <unk> is a 5-character token
    assert len(reply) == s.length + 4 * unk
    assert set(reply.replace("<unk>", "")) <= set(ckpt.vocab.idx_to_token)
    assert session.transcript.endswith(reply)


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=200))
def test_normalised_messages_hold_only_what_the_model_reads(text):
    try:
        read = check_message(text, BOOK.vocab, "book")
    except ChatError:
        return
    assert set(read) <= set(BOOK.vocab.idx_to_token) and read.strip()


# ---------------------------------------------------------------- which models may be loaded

@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root with checkpoints/good (a real folder) and checkpoints/escape (a link
    pointing outside), as the current directory."""
    (tmp_path / "checkpoints" / "good").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (tmp_path / "checkpoints" / "escape").symlink_to(outside)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_local_folders_only_under_checkpoints(project):
    ckpts = project / "checkpoints"
    assert resolve_model_ref("checkpoints/good", "", ckpts) == (str(ckpts / "good"), None)
    assert resolve_model_ref(" ./checkpoints/good ", None, ckpts)[0] == str(ckpts / "good")
    for ref in ("checkpoints/escape", "checkpoints/../secret", "../secret", "/etc",
                "/etc/passwd", "~", "~/.ssh", "checkpoints", "checkpoints/", ".", "..",
                "checkpoints/missing", str(project / "secret"), "checkpoints/good/../../secret"):
        with pytest.raises(ChatError, match="checkpoints/"):
            resolve_model_ref(ref, None, ckpts)
    with pytest.raises(ChatError, match="revision"):
        resolve_model_ref("checkpoints/good", "main", ckpts)
    # a bare name is a Hub repo id, whatever exists beside the app (no path oracle)
    assert resolve_model_ref("secret", None, ckpts) == ("secret", None)


def test_refusals_do_not_depend_on_what_exists_outside_checkpoints(project):
    """Issue 9 item 17: a visitor cannot probe which server paths exist."""
    ckpts = project / "checkpoints"
    pairs = [("/etc/passwd", "/etc/no-such-file"), ("checkpoints/../secret", "checkpoints/../nope"),
             ("../secret", "../nope"), ("checkpoints/escape", "checkpoints/nope"),
             ("secret", "nope"), ("secret/../secret", "nope/../nope"), ("~/", "~/no-such-folder")]

    def outcome(ref):
        try:
            return resolve_model_ref(ref, None, ckpts)[0].replace(ref, "REF")
        except ChatError as e:
            return str(e).replace(ref[:80], "REF")

    for existing, missing in pairs:
        assert outcome(existing) == outcome(missing), (existing, missing)


def test_hub_ids_and_revisions_are_checked(project):
    ckpts = project / "checkpoints"
    assert resolve_model_ref("someone/timemachine-rnn", " v1.0 ", ckpts) == \
        ("someone/timemachine-rnn", "v1.0")
    assert resolve_model_ref("gpt2", None, ckpts) == ("gpt2", None)
    for ref in ("", "  ", None, 42, "a/b/c", "a b/c", "owner/na me", "owner/--x", "own..er/x",
                "x" * 300, "owner/name\x00", "owner/<script>", "ünï/code", "-lead/x"):
        with pytest.raises(ChatError):
            resolve_model_ref(ref, None, ckpts)
    for revision in ("../../etc", "a b", "\x00", "x" * 200, "-rf"):
        with pytest.raises(ChatError, match="revision"):
            resolve_model_ref("someone/model", revision, ckpts)


def test_model_cache_is_bounded_and_does_not_keep_failures():
    calls = []

    def load(ref, revision):
        calls.append(ref)
        if ref == "bad":
            raise CheckpointError("no such model")
        return BOOK

    cache = ModelCache(load, capacity=2)
    for ref in ("a", "b", "a", "c", "a"):
        cache.get(ref)
    assert calls == ["a", "b", "c"] and list(cache.models) == [("c", None), ("a", None)]
    for _ in range(2):
        with pytest.raises(CheckpointError):
            cache.get("bad")
    assert calls.count("bad") == 2


def test_pace_interval_grows_with_load_within_bounds():
    pace = Pace(min_interval=0.04, max_interval=0.07, updates_per_second=1000)
    assert pace.interval() == 0.04
    pace.active = 60
    assert pace.interval() == pytest.approx(0.06)
    pace.active = 10_000
    assert pace.interval() == 0.07


def test_pace_holds_running_streams_while_a_burst_arrives():
    pace = Pace(min_interval=0.04, max_interval=0.07, burst_starts=4, burst_window=0.5,
                burst_interval=0.25)
    for _ in range(3):
        pace.start()
    assert pace.interval() == 0.04            # three starts are not a burst
    pace.start()
    assert pace.interval() == 0.25            # the fourth within the window is
    time.sleep(0.3)
    pace.start()                              # a later start extends the burst
    time.sleep(0.3)
    assert pace.interval() == 0.25
    time.sleep(0.3)
    assert pace.interval() == 0.04            # no start for a whole window: over
    assert pace.active == 5
    for _ in range(5):
        pace.stop()
    assert pace.active == 0


def test_first_update_is_immediate_even_during_a_burst():
    pace = Pace(chars_per_second=1000, burst_starts=1, burst_interval=5.0)
    session = ChatSession(BOOK)

    async def first_update():
        start = time.monotonic()
        stream = stream_reply(session, "time", Settings(50, 0.0, 0), pace)
        first = await stream.__anext__()
        elapsed = time.monotonic() - start
        await stream.aclose()
        return first, elapsed

    first, elapsed = asyncio.run(first_update())
    assert first and elapsed < 0.5 and pace.active == 0


# ---------------------------------------------------------------- what the page shows (issue 15)

def test_read_as_says_what_normalisation_dropped_and_lowercased():
    r = read_as("Hello, World! 123", BOOK.vocab, "book")
    assert r.text == normalize_prompt("Hello, World! 123", "book") == "hello world "
    assert (r.dropped, r.lowercased, r.unknown) == (",!123", "HW", "")
    assert r.changes() == "dropped: , ! 1 2 3; lowercased: H W"
    assert read_as("the time", BOOK.vocab, "book").changes() == ""
    raw = read_as("abc\tß", RAW.vocab, "raw")          # raw keeps everything; ß is not in its text
    assert raw.text == "abc\tß" and raw.dropped == "" and raw.unknown == "\tß"
    assert raw.changes() == "unknown to the model, read as <unk>: U+0009 ß"


def test_a_turn_records_its_settings_and_whether_it_was_stopped():
    session = ChatSession(BOOK, seed=0)
    turn(session, "the time", Settings(30, 0.0, 0))
    first = session.turns[-1]
    assert first.settings == Settings(30, 0.0, 0) and not first.stopped
    assert first.changes == ""
    async def stopped_early():
        stream = stream_reply(session, "The Machine!", Settings(500, 0.0, 0),
                              Pace(chars_per_second=200, min_interval=0.01, max_interval=0.01))
        await anext(stream)
        await stream.aclose()
    asyncio.run(stopped_early())
    second = session.turns[-1]
    assert second.stopped and 0 < len(second.reply) < 500
    assert second.changes == "dropped: !; lowercased: T M"


def test_a_seed_repeats_a_sampled_reply_whatever_came_before():
    sampled = Settings(60, 1.0, 0, seed=1234)
    a = ChatSession(BOOK)
    b = ChatSession(BOOK)
    turn(b, "said", Settings(20, 1.5, 0))             # b's generator has moved on...
    b.reset()
    assert turn(a, "the time", sampled) == turn(b, "the time", sampled)   # ...the seed decides
    assert check_settings(10, 1.0, 0, 28, seed=7.0).seed == 7
    for bad in (-1, 1.5, 2**32, "7", math.nan):
        with pytest.raises(ChatError, match="seed must be"):
            check_settings(10, 1.0, 0, 28, seed=bad)


def test_text_read_verbatim_gives_the_state_of_the_conversation_it_came_from():
    """A share link's earlier text is read as it is (runs of spaces kept), so the next reply
    is the one the original conversation gave."""
    original = ChatSession(BOOK)
    turn(original, "the time", Settings(40, 0.0, 0))
    original.turns[-1].reply += "  "                   # replies may hold runs of spaces
    before = original.transcript
    linked = ChatSession(BOOK)
    asyncio.run(read_text(linked, before))
    assert linked.transcript == before and linked.turns[-1].reply == ""
    assert turn(linked, "was", GREEDY) == continuation(
        BOOK, before + join_separator(before, "was") + "was", 40)
    with pytest.raises(ChatError, match="cannot read any character"):
        asyncio.run(read_text(ChatSession(BOOK), "123 !!"))
