"""Random conversations, and their offline check against the book's `predict_ch8`.

Shared by the long soak (bench/soak.py) and the short one in tests/test_app.py. The check is
the chat's contract (rnn_core/session.py): the state that answers has read exactly the transcript
so far, so every greedy reply is `predict_ch8`'s continuation of the whole transcript before it,
whatever came earlier. Sampled replies are read as they were received, so the greedy turns after
them check that the carried state read exactly those characters, and nothing from any other
session.
"""
from __future__ import annotations

import random

from rnn_core.session import join_separator
from rnn_core.checkpoint import Checkpoint
from rnn_core.data import normalize_prompt
from rnn_core.generation import predict_ch8

WORDS = ("time traveller machine psychologist medical man weena morlocks sphinx filby the of and "
         "it was a strange thing dimension future").split()
ODDITIES = ("", "!", " ", "  ", ",", "😀", "\u202e", "e\u0301", "\x00", "<b>", "\t")

# One turn as received: (message, reply, greedy). A None message marks a new chat.
Turn = tuple[str | None, str, bool]


def random_message(rng: random.Random) -> str:
    """One to four of the book's words, some capitalised, between odd characters (emoji,
    controls, markup, right-to-left marks) that normalisation must cope with."""
    words = [rng.choice(WORDS).capitalize() if rng.random() < 0.2 else rng.choice(WORDS)
             for _ in range(rng.randint(1, 4))]
    return rng.choice(ODDITIES) + " ".join(words) + rng.choice(ODDITIES)


def random_settings(rng: random.Random, vocab_size: int, max_length: int = 200,
                    greedy_share: float = 0.4) -> tuple[int, float, int]:
    """(length, temperature, top_k) as the sliders send them: greedy (temperature 0) with
    probability `greedy_share`, else a temperature in [0.1, 2]; top-k off half the time."""
    length = rng.randint(1, max_length)
    temperature = 0.0 if rng.random() < greedy_share else round(rng.uniform(0.1, 2.0), 2)
    top_k = 0 if rng.random() < 0.5 else rng.randint(1, vocab_size)
    return length, temperature, top_k


def continuation(ckpt: Checkpoint, text: str, n: int) -> str:
    """The book's greedy predict_ch8 after `text`: what a carried state must reproduce.
    (predict_ch8 returns the prefix as tokens, so an unknown character comes back '<unk>'.)"""
    prefix = "".join(ckpt.vocab.to_tokens(ckpt.vocab[list(text)]))
    return predict_ch8(text, n, ckpt.net, ckpt.vocab, "cpu")[len(prefix):]


def replay(ckpt: Checkpoint, turns: list[Turn] | list[tuple[str | None, str]]) -> tuple[int, int]:
    """Check a conversation offline: returns (greedy replies checked, how many of them came
    after a sampled reply in the same chat).

    `turns` are (message, reply) pairs (all greedy) or (message, reply, greedy) triples, in
    order; a None message marks a new chat. Each greedy reply must equal the book's
    continuation of the whole joined transcript; every reply must be made of characters the
    model knows. Raises AssertionError naming the first turn that differs."""
    transcript, checked, after_sampled, sampled = "", 0, 0, False
    for message, reply, *greedy in turns:
        if message is None:
            transcript, sampled = "", False
            continue
        m = normalize_prompt(message, ckpt.normalization)
        transcript += join_separator(transcript, m) + m
        unknown = {ch for ch in reply if ch not in ckpt.vocab.token_to_idx}
        assert not unknown, f"reply to {message!r} holds characters the model lacks: {unknown}"
        if not greedy or greedy[0]:
            expected = continuation(ckpt, transcript, len(reply))
            assert reply == expected, (f"greedy reply to {message!r} after "
                                       f"...{transcript[-60:]!r}: got {reply!r}, the book "
                                       f"gives {expected!r}")
            checked += 1
            after_sampled += sampled
        else:
            sampled = True
        transcript += reply
    return checked, after_sampled
