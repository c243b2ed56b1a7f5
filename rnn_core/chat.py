"""A conversation with the RNN: one continuous text, read by one carried hidden state.

The joining rule. A user message is normalised the way the model's training text was
(`normalize_prompt`: for `book` models, runs of anything but letters become one space and
letters are lowercased). It is appended to the transcript, preceded by a single space when the
transcript is not empty and neither the transcript's end nor the message's start is whitespace.
The reply then continues the text directly (the model decides whether it starts with a space),
and the next message is joined by the same rule.

The hidden state that produces a reply has read exactly the transcript so far, in order, and
nothing else: every message as joined and every character of every earlier reply (a stopped
reply counts only what was streamed). So with temperature 0 the first reply to M is the book's
`predict_ch8(M', N)` continuation, and every later one is the greedy continuation of the whole
transcript.

This module is the app's library side: validation with one-line reasons (`ChatError`), the
session (`ChatSession`), time-paced streaming (`stream_reply`), the bounded model cache and the
rule for which model references a visitor may load (`resolve_model_ref`).
"""
from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import AsyncIterator, Callable, Iterator

import torch

from .checkpoint import Checkpoint
from .data import Vocab, normalize_prompt
from .generation import Generator

MAX_LENGTH = 1000            # characters per reply (the length slider's maximum)
MAX_TEMPERATURE = 2.0
MIN_TEMPERATURE = 0.01       # positive temperatures below this are treated as greedy
MAX_MESSAGE_CHARS = 2000     # a message is read inline; longer ones are refused, not cut
MAX_TURNS = 200              # per conversation, so a session's memory stays bounded
MAX_TRANSCRIPT_CHARS = 100_000


class ChatError(ValueError):
    """A refused message, setting or model reference; the message says why and what to do."""


# ---------------------------------------------------------------- settings and messages

@dataclass(frozen=True)
class Settings:
    """Generation settings after validation: `length` characters, `temperature` (0 = greedy),
    `top_k` (0 = off)."""
    length: int
    temperature: float
    top_k: int


def _number(name: str, value, low: float, high: float, hint: str) -> float:
    """`value` as a finite float in [low, high], or a ChatError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ChatError(f"{name} must be a number from {low:g} to {high:g}{hint}, "
                        f"got {value!r:.40}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ChatError(f"{name} must be a number from {low:g} to {high:g}{hint}, got {value!r}")
    return value


def check_settings(length, temperature, top_k, vocab_size: int) -> Settings:
    """Validate the three sliders as they arrive from the page or an API call (floats, maybe
    anything). Out of range, NaN, infinite or non-numbers are refused; `top_k` above the
    vocabulary size means "all tokens" and is clamped to it."""
    n = _number("length", length, 1, MAX_LENGTH, " characters")
    t = _number("temperature", temperature, 0, MAX_TEMPERATURE, " (0 = greedy)")
    if isinstance(top_k, (int, float)) and not isinstance(top_k, bool) and \
            math.isfinite(top_k) and top_k > vocab_size:
        top_k = vocab_size
    k = _number("top_k", top_k, 0, vocab_size, " (0 = off; at most the vocabulary size)")
    return Settings(int(round(n)), 0.0 if t < MIN_TEMPERATURE else t, int(round(k)))


def describe_vocab(vocab: Vocab, limit: int = 60) -> str:
    """The characters a model can read, for people: `space` named, controls escaped."""
    shown = []
    for token in vocab.idx_to_token[1:limit + 1]:
        if token == " ":
            shown.append("space")
        elif token == "\n":
            shown.append("newline")
        elif len(token) == 1 and unicodedata.category(token)[0] in "CZ":
            shown.append(f"U+{ord(token):04X}")
        else:
            shown.append(token)
    more = len(vocab) - 1 - len(shown)
    return " ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def join_separator(transcript: str, message: str) -> str:
    """The joining rule: one space between turns when neither side supplies one."""
    if transcript and not transcript[-1].isspace() and message and not message[0].isspace():
        return " "
    return ""


def check_message(message, vocab: Vocab, normalization: str) -> str:
    """Normalise a message as the training text was, refusing what the model cannot read."""
    if not isinstance(message, str):
        raise ChatError(f"the message must be text, got {type(message).__name__}")
    if len(message) > MAX_MESSAGE_CHARS:
        raise ChatError(f"the message is {len(message):,} characters long; the limit is "
                        f"{MAX_MESSAGE_CHARS:,}: send a shorter passage")
    if not message.strip():
        raise ChatError("the message is empty: type some text for the model to continue")
    text = normalize_prompt(message, normalization)
    if not any(ch in vocab.token_to_idx for ch in text if not ch.isspace()):
        raise ChatError("the model cannot read any character of this message; it knows only: "
                        f"{describe_vocab(vocab)}")
    return text


# ---------------------------------------------------------------- the conversation

@dataclass
class Turn:
    """One exchange: the message as typed, the joining separator and the normalised message
    the model read for it, the reply so far, and the stream position before the turn."""
    message: str
    sep: str
    text: str
    before: tuple = field(repr=False)
    reply: str = ""
    open: bool = True        # still streaming; closed turns never grow again

    @property
    def read(self) -> str:
        """What the model read for the message: the separator, then the message."""
        return self.sep + self.text


class ChatSession:
    """One visitor's conversation: a model, the hidden state that has read the transcript,
    and the turns (kept for undo and retry). Not thread-safe: use it from one event loop."""

    def __init__(self, ckpt: Checkpoint, seed: int | None = None):
        self.rng = torch.Generator().manual_seed(
            seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        self.turns: list[Turn] = []
        self.use(ckpt)

    def use(self, ckpt: Checkpoint) -> None:
        """Switch to another model; the conversation starts afresh."""
        self.close()
        self.ckpt = ckpt
        self.gen = Generator(ckpt.net, ckpt.vocab, ckpt.normalization)
        self.turns = []

    def reset(self) -> None:
        """New chat: zero state, empty transcript."""
        self.close()
        self.gen.reset()
        self.turns = []

    @property
    def transcript(self) -> str:
        """The whole conversation as the model read it (messages joined, replies verbatim)."""
        return "".join(t.read + t.reply for t in self.turns)

    def close(self) -> None:
        """Stop the streaming turn, if any, at what has been streamed so far."""
        if self.turns:
            self.turns[-1].open = False

    def start(self, message: str) -> Turn:
        """Validate and read a new message; the previous reply, if still streaming, stops."""
        text = check_message(message, self.ckpt.vocab, self.ckpt.normalization)
        self.close()
        transcript = self.transcript
        if len(self.turns) >= MAX_TURNS or len(transcript) + len(text) > MAX_TRANSCRIPT_CHARS:
            raise ChatError(f"this conversation has reached its limit ({MAX_TURNS} turns or "
                            f"{MAX_TRANSCRIPT_CHARS:,} characters): press New chat to start again")
        sep = join_separator(transcript, text)
        turn = Turn(message, sep, text, before=self.gen.snapshot())
        self.gen.feed(turn.read)
        self.turns.append(turn)
        return turn

    def reply(self, turn: Turn, settings: Settings) -> Iterator[str]:
        """Generate up to `settings.length` characters into `turn`, one at a time, each
        recorded in the transcript as it is produced; nothing more once the turn is closed."""
        chars = self.gen.generate(settings.length, settings.temperature, settings.top_k, self.rng)
        while turn.open:
            ch = next(chars, None)
            if ch is None:
                return
            turn.reply += ch
            yield ch

    def undo(self) -> Turn | None:
        """Remove the last turn and rewind the state to before it; returns the removed turn."""
        if not self.turns:
            return None
        self.close()
        turn = self.turns.pop()
        self.gen.restore(turn.before)
        return turn


# ---------------------------------------------------------------- paced streaming

@dataclass
class Pace:
    """How replies reach the page: characters are generated as they fall due at
    `chars_per_second` and sent in coalesced updates. The pause between updates grows with
    the number of streams in flight (so the server's update rate stays near
    `updates_per_second`) but stays within [min_interval, max_interval].

    A stream's first update goes out at once. While sessions arrive in a burst, streams
    already running pause `burst_interval` between updates instead: admitting a session costs
    the server's one thread several milliseconds of Gradio's work, and each update of a running
    stream about half a millisecond, so the newcomers' first characters go first. A burst
    begins when `burst_starts` streams start within `burst_window` seconds and lasts while
    streams keep starting less than `burst_window` apart (admissions slow down as the server
    fills up, so a burst is not left on rate alone). Characters keep falling due during the
    pause, so a stream's characters per second do not change."""
    chars_per_second: float = 60.0
    min_interval: float = 0.04
    max_interval: float = 0.07
    updates_per_second: float = 1200.0
    burst_starts: int = 8
    burst_window: float = 0.1
    burst_interval: float = 0.25
    active: int = 0
    starts: deque = field(default_factory=deque, repr=False)   # start times within the window
    burst_until: float = 0.0

    def start(self) -> None:
        """A stream begins."""
        now = time.monotonic()
        self.active += 1
        self.starts.append(now)
        while self.starts[0] < now - self.burst_window:
            self.starts.popleft()
        if len(self.starts) >= self.burst_starts or now < self.burst_until:
            self.burst_until = now + self.burst_window

    def stop(self) -> None:
        """A stream ends."""
        self.active -= 1

    def interval(self) -> float:
        """Seconds until a running stream's next update."""
        if time.monotonic() < self.burst_until:
            return self.burst_interval
        return min(self.max_interval, max(self.min_interval, self.active / self.updates_per_second))


PACE = Pace()


async def stream_reply(session: ChatSession, message: str, settings: Settings,
                       pace: Pace = PACE) -> AsyncIterator[str]:
    """Read `message` into the session and stream the reply: yields the reply so far (each a
    prefix of the next), the last one whole. Everything yielded is in the transcript and
    nothing else is: stopping (closing the generator, cancelling, a newer message) leaves the
    state consistent with what was shown."""
    turn = session.start(message)
    chars = session.reply(turn, settings)
    pace.start()
    try:
        start, sent = time.monotonic(), 0
        while turn.open and sent < settings.length:
            due = int((time.monotonic() - start) * pace.chars_per_second) + 1
            for _ in itertools.islice(chars, min(due, settings.length) - sent):
                sent += 1
            yield turn.reply
            if sent < settings.length:
                await asyncio.sleep(pace.interval())
    finally:
        pace.stop()
        turn.open = False


# ---------------------------------------------------------------- models

HUB_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)
REVISION = re.compile(r"^\w[\w./-]{0,99}$", re.ASCII)


def resolve_model_ref(ref, revision, checkpoints_dir: Path) -> tuple[str, str | None]:
    """What a visitor may load: a Hub repo id (with an optional revision), or a checkpoint
    folder under `checkpoints_dir` (as `checkpoints/NAME`). Anything else, including paths
    that leave that folder, is refused before any file is touched."""
    if not isinstance(ref, str) or not ref.strip():
        raise ChatError("type a Hub repo id (owner/name) or a folder under checkpoints/")
    ref = ref.strip()
    revision = revision.strip() if isinstance(revision, str) and revision.strip() else None
    if len(ref) > 200 or any(unicodedata.category(c)[0] == "C" for c in ref):
        raise ChatError("that model reference is too long or holds control characters; type a "
                        "Hub repo id (owner/name) or checkpoints/NAME")
    root = checkpoints_dir.resolve()
    local = Path(ref).expanduser()
    candidates = [local] if local.is_absolute() else [
        Path.cwd() / local, root.parent / local]
    if ref.startswith(("checkpoints/", "./checkpoints/", "/", "~", ".")) or \
            any(p.exists() for p in candidates):
        for p in candidates:
            p = p.resolve()
            if p.is_relative_to(root) and p != root and p.is_dir():
                if revision:
                    raise ChatError("a revision applies only to Hub repos; leave it empty "
                                    "for a local folder")
                return str(p), None
        raise ChatError(f"{ref!r} is not a checkpoint folder under checkpoints/; local models "
                        "must be folders there (e.g. checkpoints/timemachine-rnn512)")
    if not HUB_REPO_ID.match(ref) or ".." in ref or "--" in ref:
        raise ChatError(f"{ref!r} is not a valid Hub repo id; use owner/name, e.g. "
                        "someone/timemachine-rnn")
    if revision is not None and (not REVISION.match(revision) or ".." in revision):
        raise ChatError(f"{revision!r} is not a valid revision; use a branch, tag or commit sha")
    return ref, revision


class ModelCache:
    """The last few loaded models, shared by all sessions (least recently used dropped).
    Failures are not cached, so a fixed repo loads on the next try."""

    def __init__(self, load: Callable[[str, str | None], Checkpoint], capacity: int = 4):
        self.load, self.capacity = load, capacity
        self.models: OrderedDict[tuple[str, str | None], Checkpoint] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, ref: str, revision: str | None = None) -> Checkpoint:
        key = (ref, revision)
        with self.lock:
            if key in self.models:
                self.models.move_to_end(key)
                return self.models[key]
        ckpt = self.load(ref, revision)
        with self.lock:
            self.models[key] = ckpt
            self.models.move_to_end(key)
            while len(self.models) > self.capacity:
                self.models.popitem(last=False)
        return ckpt


def num_params(ckpt: Checkpoint) -> int:
    """Number of model parameters."""
    return sum(p.numel() for p in ckpt.net.parameters())
