"""What a visitor may give the model: generation settings and text, checked with one-line
reasons (`ChatError`), and how the model reads a message (`read_as`). The one rule for visitor
input, used by the app, the inspector and the CLI."""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

from .data import Vocab, normalize_prompt

MAX_LENGTH = 1000            # characters per reply (the length slider's maximum)
MAX_TEMPERATURE = 2.0
MIN_TEMPERATURE = 0.01       # positive temperatures below this are treated as greedy
MAX_MESSAGE_CHARS = 2000     # a message is read inline; longer ones are refused, not cut
MAX_TURNS = 200              # per conversation, so a session's memory stays bounded
MAX_TRANSCRIPT_CHARS = 100_000
MAX_SEED = 2**32 - 1         # sampling seeds: whole numbers a URL and a browser keep exactly


SURROGATE = re.compile("[\ud800-\udfff]")


class ChatError(ValueError):
    """A refused message, setting or model reference; the message says why and what to do."""



@dataclass(frozen=True)
class Settings:
    """Generation settings after validation: `length` characters, `temperature` (0 = greedy),
    `top_k` (0 = off), and `seed` (the sampling generator is seeded with it before the reply,
    so the same transcript, message, settings and seed give the same reply; None = go on
    with the session's generator)."""
    length: int
    temperature: float
    top_k: int
    seed: int | None = None


def _number(name: str, value, low: float, high: float, hint: str) -> float:
    """`value` as a finite float in [low, high], or a ChatError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ChatError(f"{name} must be a number from {low:g} to {high:g}{hint}, "
                        f"got {value!r:.40}")
    try:
        value = float(value)
    except OverflowError:   # an integer beyond float range, e.g. 10**400
        raise ChatError(f"{name} must be a number from {low:g} to {high:g}{hint}, got an "
                        "integer too large for a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ChatError(f"{name} must be a number from {low:g} to {high:g}{hint}, got {value!r}")
    return value


def check_settings(length, temperature, top_k, vocab_size: int, seed=None) -> Settings:
    """Validate the three sliders (and the seed) as they arrive from the page or an API call
    (floats, maybe anything). Out of range, NaN, infinite or non-numbers are refused; `top_k`
    above the vocabulary size means "all tokens" and is clamped to it; the seed must be a
    whole number from 0 to MAX_SEED (None: no seed)."""
    n = _number("length", length, 1, MAX_LENGTH, " characters")
    t = _number("temperature", temperature, 0, MAX_TEMPERATURE, " (0 = greedy)")
    if isinstance(top_k, (int, float)) and not isinstance(top_k, bool) and \
            math.isfinite(top_k) and top_k > vocab_size:
        top_k = vocab_size
    k = _number("top_k", top_k, 0, vocab_size, " (0 = off; at most the vocabulary size)")
    if seed is not None:
        s = _number("seed", seed, 0, MAX_SEED, " (a whole number; empty = random)")
        if s != int(s):
            raise ChatError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
        seed = int(s)
    return Settings(int(round(n)), 0.0 if t < MIN_TEMPERATURE else t, int(round(k)), seed)


def char_name(ch: str) -> str:
    """A character as people can read it in a list: `space` and `newline` named, other
    invisible characters (controls, separators, format marks) as U+XXXX."""
    if ch == " ":
        return "space"
    if ch == "\n":
        return "newline"
    if len(ch) == 1 and unicodedata.category(ch)[0] in "CZ":
        return f"U+{ord(ch):04X}"
    return ch


def describe_vocab(vocab: Vocab, limit: int = 60) -> str:
    """The characters a model can read, for people: `space` named, controls escaped."""
    shown = [char_name(token) for token in vocab.idx_to_token[1:limit + 1]]
    more = len(vocab) - 1 - len(shown)
    return " ".join(shown) + (f" (and {more} more)" if more > 0 else "")


@dataclass(frozen=True)
class Reading:
    """What the model reads of a message: `text`, normalised as its training text was, and
    what normalisation changed, each character once in order of appearance: `dropped` (not
    read at all), `lowercased` (read as its lowercase letter) and `unknown` (read, but the
    vocabulary lacks it: the model sees <unk>)."""
    text: str
    dropped: str = ""
    lowercased: str = ""
    unknown: str = ""

    def changes(self) -> str:
        """The changes in words ("" when the message is read as typed)."""
        parts = [(what, " ".join(char_name(c) for c in chars)) for what, chars in
                 (("dropped", self.dropped), ("lowercased", self.lowercased),
                  ("unknown to the model, read as <unk>", self.unknown)) if chars]
        return "; ".join(f"{what}: {chars}" for what, chars in parts)


def read_as(message: str, vocab: Vocab, normalization: str) -> Reading:
    """How the model reads `message` (the one rule behind the page's preview and the note
    under each message; `check_message` refuses what cannot be read at all)."""
    text = normalize_prompt(message, normalization)
    kept = set(text)
    seen = dict.fromkeys(message)
    dropped = "".join(c for c in seen if c not in kept and c.lower() not in kept
                      and not c.isspace())
    lowercased = "".join(c for c in seen if c not in kept and c != c.lower() and c.lower() in kept)
    unknown = "".join(c for c in dict.fromkeys(text) if c not in vocab.token_to_idx)
    return Reading(text, dropped, lowercased, unknown)



def check_message(message, vocab: Vocab, normalization: str, verbatim: bool = False,
                  noun: str = "message") -> str:
    """Normalise a message (or any visitor text: `noun` names it) as the training text was,
    refusing what the model cannot read: the one rule for text a visitor gives the model.
    `verbatim`: the text is read as it is (text the model read before, e.g. a share link's
    earlier conversation, which normalising again could change: runs of spaces)."""
    if not isinstance(message, str):
        raise ChatError(f"the {noun} must be text, got {type(message).__name__}")
    if len(message) > MAX_MESSAGE_CHARS:
        raise ChatError(f"the {noun} is {len(message):,} characters long; the limit is "
                        f"{MAX_MESSAGE_CHARS:,}: use a shorter passage")
    if not message.strip():
        raise ChatError(f"the {noun} is empty: give some text for the model to read")
    if SURROGATE.search(message):
        raise ChatError(f"the {noun} holds a lone UTF-16 surrogate, which is not text: "
                        "send plain Unicode text")
    text = message if verbatim else read_as(message, vocab, normalization).text
    if not any(ch in vocab.token_to_idx for ch in text if not ch.isspace()):
        raise ChatError(f"the model cannot read any character of this {noun}; it knows only: "
                        f"{describe_vocab(vocab)}")
    return text
