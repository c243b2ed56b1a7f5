"""The chat with an LSTM (2 layers): the carried state is every layer's H and C, and the
conversation contract holds as for the §8.5 RNN — three turns are one greedy text; stop, undo,
retry and new chat rewind all of the state. In the library, then through `python app.py`."""
from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

from bench.conversations import continuation, replay
from rnn_core.validation import Settings
from rnn_core.session import ChatSession, join_separator
from rnn_core.streaming import Pace, stream_reply
from rnn_core.checkpoint import load_checkpoint
from rnn_core.data import normalize_prompt
from test_app import AppServer, chat
from test_train_cli import SMALL, train

GREEDY = Settings(40, 0.0, 0)


@pytest.fixture(scope="module")
def lstm_folder(tmp_path_factory, data_path):
    out = tmp_path_factory.mktemp("lstm") / "lstm"
    train("--data", data_path, *SMALL, "--arch", "lstm", "--num-layers", "2", "--dropout", "0.1",
          "--num-epochs", "6", "--out", out)
    return out


@pytest.fixture(scope="module")
def lstm(lstm_folder):
    return load_checkpoint(lstm_folder)


def turn(session: ChatSession, message: str, s: Settings = GREEDY) -> str:
    async def collect():
        return [p async for p in stream_reply(session, message, s, Pace(chars_per_second=1e6))]
    return asyncio.run(collect())[-1]


def joined(transcript: str, message: str) -> str:
    return transcript + join_separator(transcript, message) + message


def states_equal(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_three_turns_are_one_greedy_text(lstm):
    session = ChatSession(lstm)
    assert len(session.stream().state) == 4  # H, C of layer 0, H, C of layer 1
    transcript = ""
    for message, n in (("The Time Traveller!", 50), ("said the   psychologist", 30), ("  and he", 25)):
        text = joined(transcript, normalize_prompt(message, "book"))
        reply = turn(session, message, Settings(n, 0.0, 0))
        assert reply == continuation(lstm, text, n)
        transcript = text + reply
    assert session.transcript == transcript


def test_undo_retry_stop_and_new_chat_restore_the_whole_state(lstm):
    session = ChatSession(lstm)
    zero = session.stream().snapshot()
    a = turn(session, "time")
    after_a = session.stream().snapshot()
    turn(session, "machine")
    session.undo()                                    # back to after the first turn
    assert states_equal(session.stream().state, after_a[0]) and session.stream().pending == after_a[1]
    retried = turn(session, "machine")                # retry: the same message again
    transcript = joined("time" + a, "machine")
    assert retried == continuation(lstm, transcript, GREEDY.length)

    async def stopped():                              # stop after a few updates
        stream = stream_reply(session, "the", Settings(500, 0.0, 0),
                              Pace(chars_per_second=200, min_interval=0.01, max_interval=0.01))
        shown = []
        async for part in stream:
            shown.append(part)
            if len(shown) == 3:
                break
        await stream.aclose()
        return shown[-1]
    shown = asyncio.run(stopped())
    transcript = joined(transcript + retried, "the") + shown
    assert 0 < len(shown) < 500 and session.transcript == transcript
    assert turn(session, "said") == continuation(lstm, joined(transcript, "said"), GREEDY.length)
    session.reset()                                   # new chat: every layer's H and C zero
    assert states_equal(session.stream().state, zero[0]) and session.stream().pending is None
    assert turn(session, "time") == a


def test_the_app_carries_an_lstms_state_over_three_turns(lstm_folder, lstm, tmp_path):
    app = AppServer(tmp_path, RNN_MODEL=str(lstm_folder))
    try:
        assert "2-layer LSTM, 16 hidden units (§9.2)" in app.page_text()
        client = app.client()
        turns = [("Time Traveller", 60), ("said the  Psychologist!", 45), ("and", 30)]
        replies = [chat(client, m, n) for m, n in turns]
        m1 = normalize_prompt(turns[0][0], "book")
        assert replies[0] == continuation(lstm, m1, 60)
        replay(lstm, [(m, r) for (m, _), r in zip(turns, replies)])
        assert client.predict(api_name="/new_chat") == []
        assert chat(client, "Time Traveller", 60) == replies[0]
    finally:
        app.stop()


def test_bundled_models_are_listed_and_load_by_name(tmp_path):
    """The API lists every bundled model with its cell, size and validation figure, each
    loads by its `ref`, and the page's list offers the same models."""
    app = AppServer(tmp_path)
    try:
        client = app.client()
        models = client.predict(api_name="/bundled_models")
        assert models and {m["name"] for m in models} >= {"timemachine-rnn512"}
        for m in models:
            assert m["ref"] == f"checkpoints/{m['name']}" and m["arch"] in ("rnn", "gru", "lstm")
            assert m["num_params"] > 0 and m["val_perplexity"] > 1
            card, _, _ = client.predict(m["ref"], "", api_name="/load_model")
            assert f"{m['ref']} (bundled with the app)" in card.replace("\\", "")
            assert f"{m['num_params']:,} parameters" in card
        rnn = next(m for m in models if m["name"] == "timemachine-rnn512")
        assert (rnn["arch"], rnn["num_layers"], rnn["num_hiddens"]) == ("rnn", 1, 512)
        assert round(rnn["val_perplexity"], 2) == 5.75
        config = httpx.get(app.url + "/config", timeout=10).json()
        dropdown = next(c for c in config["components"] if c["props"].get("elem_id") == "bundled")
        assert [value for _, value in dropdown["props"]["choices"]] == [m["ref"] for m in models]
    finally:
        app.stop()
