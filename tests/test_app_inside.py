"""The app's "Inside the model" API as clients meet it: `python app.py` on 127.0.0.1 driven by
`gradio_client` — /score, /trace and /why return the JSON the library computes, and refuse bad
input in one line."""
from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError

from rnn_core import inspector
from rnn_core.validation import MAX_MESSAGE_CHARS
from test_app import AppServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = AppServer(tmp_path_factory.mktemp("inside-api"), RNN_MODEL=None)
    yield s
    s.stop()


def test_score_returns_the_libraries_json(server, bundled):
    text = "The Time Traveller (for so it will be convenient to speak of him)"
    got = server.client().predict(text, api_name="/score")
    expected = inspector.score(bundled, text).to_json()
    assert set(got) == {"text", "chars", "bits_per_char", "perplexity"}
    assert got["text"] == "the time traveller for so it will be convenient to speak of him "
    assert got == expected
    first = got["chars"][0]
    assert set(first) == {"char", "prob", "bits", "top"} and first["char"] == "h"
    assert len(first["top"]) == 5 and all(isinstance(t, str) and isinstance(p, float)
                                          for t, p in first["top"])


def test_trace_returns_one_value_per_character(server, bundled):
    got = server.client().predict("time traveller", 137, api_name="/trace")
    assert got == inspector.trace(bundled, "time traveller", 137)
    assert set(got) == {"text", "unit", "activations"} and len(got["activations"]) == 14


def test_why_explains_the_sessions_last_reply(server, bundled):
    client = server.client()
    reply = client.predict("the machine", 40, 0.8, 5, api_name="/chat")
    got = client.predict(api_name="/why")
    assert got["reply"] == reply and [c["char"] for c in got["chars"]] == list(reply)
    assert got["sampler"] == "sampled at temperature 0.8, top-k 5"
    assert all(len(c["distribution"]) == 5 and 1 <= c["rank"] <= 5 for c in got["chars"])


@pytest.mark.parametrize("endpoint, args, reason", [
    ("/score", ("",), "the text is empty"),
    ("/score", ("?!",), "cannot read any character"),
    ("/score", ("x",), "at least 2"),
    ("/score", ("a" * (MAX_MESSAGE_CHARS + 1),), "the limit is 2,000"),
    ("/trace", ("the time", 512), "from 0 to 511"),
    ("/trace", ("the time", -1), "from 0 to 511"),
    ("/trace", ("", 3), "the text is empty"),
    ("/why", (), "no reply yet"),
])
def test_refusals_are_one_line(server, endpoint, args, reason):
    with pytest.raises(AppError) as e:
        server.client().predict(*args, api_name=endpoint)
    assert reason in str(e.value) and "Traceback" not in str(e.value)
    assert len(str(e.value).strip().splitlines()) == 1
