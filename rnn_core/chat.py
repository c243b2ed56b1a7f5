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
session (`ChatSession`), time-paced streaming (`stream_reply`, generation off the event loop
when it costs more than a moment), the model cache bounded in bytes (`ModelCache`), the gate
on Hub loads (`LoadGate`) and the rule for which model references a visitor may load
(`resolve_model_ref`).
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
import weakref
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import torch

from .checkpoint import Checkpoint
from .data import Vocab, normalize_prompt
from .generation import Generator, pick

MAX_LENGTH = 1000            # characters per reply (the length slider's maximum)
MAX_TEMPERATURE = 2.0
MIN_TEMPERATURE = 0.01       # positive temperatures below this are treated as greedy
MAX_MESSAGE_CHARS = 2000     # a message is read inline; longer ones are refused, not cut
MAX_TURNS = 200              # per conversation, so a session's memory stays bounded
MAX_TRANSCRIPT_CHARS = 100_000
MAX_SEED = 2**32 - 1         # sampling seeds: whole numbers a URL and a browser keep exactly
# What a visitor may load, set for a 2-vCPU Space: a model's parameters are also its
# multiply-adds per character, and 2M cost 0.3–1 ms a character on one core, so one request
# (a 2,000-character message and a 1,000-character reply) costs at most a few core-seconds.
MAX_SERVED_PARAMETERS = 2_000_000
# Generation work is measured in multiply-adds (characters x parameters). A reply's update
# computes at most INLINE_WORK (1–2 ms on a slow core) on the event loop, a stream that falls
# behind catching up over the next updates; reading a message that costs more runs in worker
# threads, at most WORKERS at once (one per core), in slices of at most SLICE_WORK (about
# 10 ms) taken in turn, so nothing waits behind a long message being read.
INLINE_WORK = 8_000_000
SLICE_WORK = 40_000_000
WORKERS = 2


SURROGATE = re.compile("[\ud800-\udfff]")


class ChatError(ValueError):
    """A refused message, setting or model reference; the message says why and what to do."""


# ---------------------------------------------------------------- settings and messages

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


def join_separator(transcript: str, message: str) -> str:
    """The joining rule: one space between turns when neither side supplies one."""
    if transcript and not transcript[-1].isspace() and message and not message[0].isspace():
        return " "
    return ""


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
    room: int = MAX_TRANSCRIPT_CHARS   # characters the reply may add within the transcript limit
    changes: str = ""        # what normalisation changed in the message, in words (Reading)
    settings: Settings | None = None   # what the reply was made with (set when it starts)
    wanted: int = 0          # characters the reply was to have (within the transcript limit)
    stepped: bool = False    # advanced one character at a time (step mode)

    @property
    def stopped(self) -> bool:
        """Closed before it had all its characters (Stop, a newer message, New chat)."""
        return not self.open and len(self.reply) < self.wanted

    @property
    def read(self) -> str:
        """What the model read for the message: the separator, then the message."""
        return self.sep + self.text


class ChatSession:
    """One visitor's conversation: a model, the hidden state that has read the transcript,
    and the turns (kept for undo and retry). Use it from one event loop; `lock` orders the
    work on its state (replies' generation steps may run in a worker thread).

    Between replies the session keeps only its stream position and a weak reference to the
    model, so the app's ModelCache alone decides which models stay in memory; while a reply
    streams, its generator holds the model. A session whose model was dropped says so."""

    def __init__(self, ckpt: Checkpoint, seed: int | None = None):
        self.rng = torch.Generator().manual_seed(
            seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        self.lock = asyncio.Lock()
        self.turns: list[Turn] = []
        self.use(ckpt)

    def use(self, ckpt: Checkpoint) -> None:
        """Switch to another model; the conversation starts afresh."""
        self.close()
        self.model = weakref.ref(ckpt)
        self.model_name = ckpt.source + (f"@{ckpt.commit[:12]}" if ckpt.commit else "")
        self.num_params = sum(p.numel() for p in ckpt.net.parameters())
        self.gen: Generator | None = None          # while a reply streams
        self.position: tuple = (None, None)        # (state tuple, pending token) otherwise
        self.turns = []

    @property
    def ckpt(self) -> Checkpoint:
        """The model, or a ChatError if the server dropped it to make room for others."""
        ckpt = self.model()
        if ckpt is None:
            raise ChatError(f"this conversation's model ({self.model_name}) was unloaded to make "
                            "room for other visitors' models: load it again, or press New chat "
                            "to continue with the app's model")
        return ckpt

    def generator(self) -> Generator:
        """The live generator (made from the model and the stream position when needed)."""
        if self.gen is None:
            ckpt = self.ckpt
            gen = Generator(ckpt.net, ckpt.vocab, ckpt.normalization)
            if self.position[0] is not None:
                gen.state, gen.last = self.position
            self.gen = gen
        return self.gen

    def park(self) -> None:
        """Between replies: keep the stream position, let go of the model."""
        if self.gen is not None:
            self.position = (self.gen.state, self.gen.last)
            self.gen = None

    def reset(self) -> None:
        """New chat: zero state, empty transcript."""
        self.close()
        self.gen, self.position = None, (None, None)
        self.turns = []

    @property
    def transcript(self) -> str:
        """The whole conversation as the model read it (messages joined, replies verbatim)."""
        return "".join(t.read + t.reply for t in self.turns)

    def close(self) -> None:
        """Stop the streaming turn, if any, at what has been streamed so far."""
        if self.turns:
            self.turns[-1].open = False

    def start(self, message: str, verbatim: bool = False) -> Turn:
        """Validate a new message and open its turn; the previous reply, if still streaming,
        stops. The caller reads `turn.read` into the state next (`feed` or `read`).
        `verbatim`: see check_message."""
        ckpt = self.ckpt
        text = check_message(message, ckpt.vocab, ckpt.normalization, verbatim)
        changes = "" if verbatim else read_as(message, ckpt.vocab, ckpt.normalization).changes()
        self.close()
        transcript = self.transcript
        if len(self.turns) >= MAX_TURNS or len(transcript) + len(text) + 1 >= MAX_TRANSCRIPT_CHARS:
            raise ChatError(f"this conversation has reached its limit ({MAX_TURNS} turns or "
                            f"{MAX_TRANSCRIPT_CHARS:,} characters): press New chat to start again")
        sep = join_separator(transcript, text)
        turn = Turn(message, sep, text, before=self.generator().snapshot(), changes=changes)
        turn.room = MAX_TRANSCRIPT_CHARS - len(transcript) - len(turn.read)
        self.turns.append(turn)
        return turn

    def reply(self, turn: Turn, settings: Settings) -> Iterator[str]:
        """Generate up to `settings.length` characters into `turn` (fewer if the transcript
        would pass its limit), one at a time, each recorded in the transcript as it is
        produced; nothing more once the turn is closed. The turn records its settings and
        the seeded generator is set up now, before the first character is asked for."""
        n = min(settings.length, turn.room)
        turn.settings, turn.wanted = settings, n
        if settings.seed is not None:
            self.rng.manual_seed(settings.seed)
        chars = self.generator().generate(n, settings.temperature, settings.top_k, self.rng)

        def recorded():
            while turn.open:
                ch = next(chars, None)
                if ch is None:
                    return
                turn.reply += ch
                yield ch
        return recorded()

    # ------------------------------------------------------------ step mode

    async def step_start(self, message: str, settings: Settings | None = None) -> Turn:
        """Begin a turn whose reply is advanced one character at a time (`step`): the
        message is read as for a reply; `settings`: the sliders when stepping began."""
        turn = self.start(message)
        turn.settings = settings
        try:
            await self.read(turn.read)
        except BaseException:   # cancelled while reading: as if the message was never sent
            self.undo()
            raise
        turn.stepped = True
        return turn

    def stepping(self) -> Turn:
        """The turn being stepped, or a ChatError saying how to begin one."""
        turn = self.turns[-1] if self.turns else None
        if turn is None or not turn.stepped or not turn.open:
            raise ChatError("step mode is not on: type a message and press Step to begin")
        return turn

    def next_logits(self) -> torch.Tensor:
        """The logits for the stepped reply's next character; the state is left as it was."""
        self.stepping()
        return self.generator().peek()

    def step(self, token: str) -> str:
        """Append `token` (a character of the vocabulary) to the stepped reply and read it."""
        turn = self.stepping()
        if token not in self.ckpt.vocab.token_to_idx or token == "<unk>":
            raise ChatError(f"{token!r:.20} is not a character this model can write")
        if len(turn.reply) >= min(MAX_LENGTH, turn.room):
            raise ChatError(f"this reply has reached its limit ({len(turn.reply):,} characters): "
                            "send a new message")
        self.generator().read(token)
        turn.reply += token
        return token

    def step_auto(self, settings: Settings) -> str:
        """Let the model choose the next character as a reply would (greedy or sampled)."""
        idx = pick(self.next_logits(), settings.temperature, settings.top_k, self.rng)
        return self.step(self.ckpt.vocab.idx_to_token[idx])

    async def step_back(self) -> str:
        """Remove the stepped reply's last character; the state is re-read to exactly what it
        was before that character (from the turn's start, so nothing is kept per step)."""
        turn = self.stepping()
        if not turn.reply:
            raise ChatError("nothing to step back: the reply is empty")
        removed, turn.reply = turn.reply[-1], turn.reply[:-1]
        state, last = turn.before   # a copy: the generator reuses the tensors it starts from
        self.gen, self.position = None, (tuple(s.clone() for s in state), last)
        await self.read(turn.read + turn.reply)
        return removed

    def undo(self) -> Turn | None:
        """Remove the last turn and rewind the state to before it; returns the removed turn."""
        if not self.turns:
            return None
        self.close()
        turn = self.turns.pop()
        self.gen, self.position = None, turn.before
        return turn

    async def run(self, work: int, fn: Callable, *args):
        """fn(*args) on this session's state: inline when it is `work` multiply-adds of at most
        INLINE_WORK, else in a worker thread (one slice; see SLICE_WORK), so no session's step
        ever holds up the event loop the others stream through. Cancelling waits for the
        thread, so the state is never touched by two at once."""
        if work <= INLINE_WORK:
            return fn(*args)
        async with _workers():
            return await anyio.to_thread.run_sync(fn, *args)

    async def read(self, text: str) -> None:
        """Read `text` (normalised) into the state, in slices of at most SLICE_WORK."""
        step = max(1, SLICE_WORK // self.num_params)
        gen = self.generator()
        for i in range(0, len(text), step):
            piece = text[i:i + step]
            await self.run(len(piece) * self.num_params, gen.read, piece)


_WORKER_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _workers() -> asyncio.Semaphore:
    """The event loop's WORKERS slots for generation threads (asyncio queues them in turn)."""
    loop = asyncio.get_running_loop()
    if loop not in _WORKER_SLOTS:
        _WORKER_SLOTS[loop] = asyncio.Semaphore(WORKERS)
    return _WORKER_SLOTS[loop]


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


_PARKING: set[asyncio.Task] = set()


async def _park_when_idle(session: ChatSession, turn: Turn) -> None:
    async with session.lock:
        if session.turns and session.turns[-1] is turn and not turn.open:
            session.park()


async def read_text(session: ChatSession, text: str) -> Turn:
    """Read `text` verbatim into the session as a turn with no reply: the conversation
    before a shared reply, so that the reply is made from the state that made it first."""
    async with session.lock:
        turn = session.start(text, verbatim=True)
        try:
            await session.read(turn.read)
        except BaseException:   # cancelled or refused while reading: as if never sent
            session.undo()
            raise
        turn.open = False
        session.park()
    return turn


async def stream_reply(session: ChatSession, message: str, settings: Settings,
                       pace: Pace = PACE) -> AsyncIterator[str]:
    """Read `message` into the session and stream the reply: yields the reply so far (each a
    prefix of the next), the last one whole. Everything yielded is in the transcript and
    nothing else is: stopping (closing the generator, cancelling, a newer message) leaves the
    state consistent with what was shown."""
    async with session.lock:
        turn = session.start(message)
        try:
            await session.read(turn.read)
        except BaseException:   # cancelled while reading: as if the message was never sent
            session.undo()
            raise
        chars = session.reply(turn, settings)
    n = min(settings.length, turn.room)
    per_update = max(1, INLINE_WORK // session.num_params)   # characters one update may compute

    pace.start()
    try:
        start, sent = time.monotonic(), 0
        while turn.open and sent < n:
            due = min(int((time.monotonic() - start) * pace.chars_per_second) + 1, n)
            async with session.lock:   # inline and bounded: a stream behind catches up over updates
                if not turn.open:
                    break
                sent += sum(1 for _ in itertools.islice(chars, min(due - sent, per_update)))
            yield turn.reply
            if sent < n:
                await asyncio.sleep(pace.interval())
    finally:
        pace.stop()
        turn.open = False
        try:  # let go of the model once no step is running (the lock says when)
            task = asyncio.get_running_loop().create_task(_park_when_idle(session, turn))
            _PARKING.add(task)
            task.add_done_callback(_PARKING.discard)
        except RuntimeError:  # closed outside an event loop: parked by the next event
            pass


async def stream_together(streams: list[AsyncIterator[str]], interval: float = 0.05
                          ) -> AsyncIterator[list[str | ChatError]]:
    """Several reply streams at once (the page's compare): yields every stream's reply so far,
    about every `interval` seconds, the last time when all have ended. A stream refused or
    failing with a ChatError shows that error in its place; the others go on."""
    latest: list[str | ChatError] = [""] * len(streams)

    async def drain(i: int, stream: AsyncIterator[str]) -> None:
        try:
            async for reply in stream:
                latest[i] = reply
        except ChatError as e:
            latest[i] = e
        finally:
            await stream.aclose()

    tasks = [asyncio.ensure_future(drain(i, s)) for i, s in enumerate(streams)]
    try:
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=interval)
            yield list(latest)
        for t in tasks:
            t.result()   # a bug in a stream is raised, not hidden
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- models

HUB_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)
REVISION = re.compile(r"^\w[\w./-]{0,99}$", re.ASCII)


LOCAL_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,99}$", re.ASCII)


def resolve_model_ref(ref, revision, checkpoints_dir: Path) -> tuple[str, str | None]:
    """What a visitor may load: a Hub repo id (with an optional revision), or a checkpoint
    folder under `checkpoints_dir` (as `checkpoints/NAME`). The decision is made on the text
    alone, and every refusal of a path reads the same whatever exists outside that folder, so
    no answer tells a visitor which server paths exist."""
    if not isinstance(ref, str) or not ref.strip():
        raise ChatError("type a Hub repo id (owner/name) or a folder under checkpoints/")
    ref = ref.strip()
    revision = revision.strip() if isinstance(revision, str) and revision.strip() else None
    if len(ref) > 200 or any(unicodedata.category(c)[0] == "C" for c in ref):
        raise ChatError("that model reference is too long or holds control characters; type a "
                        "Hub repo id (owner/name) or checkpoints/NAME")
    name = ref.removeprefix("./").removeprefix("checkpoints/") \
        if ref.startswith(("checkpoints/", "./checkpoints/")) else None
    if name is not None or ref.startswith(("/", "~", ".")) or "\\" in ref or ref == "checkpoints":
        root = checkpoints_dir.resolve()
        folder = (root / name).resolve() if name and LOCAL_NAME.match(name) else None
        if folder is None or folder.parent != root or not folder.is_dir():
            raise ChatError(f"{ref[:80]!r} is not a checkpoint folder under checkpoints/; local "
                            "models must be folders there (e.g. checkpoints/timemachine-rnn512)")
        if revision:
            raise ChatError("a revision applies only to Hub repos; leave it empty for a local folder")
        return str(folder), None
    if not HUB_REPO_ID.match(ref) or ".." in ref or "--" in ref:
        raise ChatError(f"{ref!r} is not a valid Hub repo id; use owner/name, e.g. "
                        "someone/timemachine-rnn")
    if revision is not None and (not REVISION.match(revision) or ".." in revision):
        raise ChatError(f"{revision[:100]!r} is not a valid revision; use a branch, tag or commit sha")
    return ref, revision


def model_bytes(ckpt: Checkpoint) -> int:
    return sum(p.numel() * p.element_size() for p in ckpt.net.parameters())


class ModelCache:
    """The loaded models, shared by all sessions, bounded together: at most `capacity` kept
    and `max_bytes` of weights in memory, counting every model still alive anywhere (sessions
    hold theirs weakly between replies; a streaming reply pins its model). The least recently
    used go first; `keep` (the app's model) never goes. A load that would pass `max_bytes`
    while streaming replies pin the rest is refused. Failures are not cached, so a fixed repo
    loads on the next try."""

    def __init__(self, load: Callable[[str, str | None], Checkpoint], capacity: int = 4,
                 max_bytes: int | None = None):
        self.load, self.capacity, self.max_bytes = load, capacity, max_bytes
        self.models: OrderedDict[tuple[str, str | None], Checkpoint] = OrderedDict()
        self.alive: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.keep: set[tuple[str, str | None]] = set()
        self.lock = threading.Lock()

    def cached(self, ref: str, revision: str | None = None) -> Checkpoint | None:
        """The model if it is in memory (no loading)."""
        key = (ref, revision)
        with self.lock:
            ckpt = self.models.get(key) or self.alive.get(key)
            if ckpt is not None:
                self.models[key] = ckpt
                self.models.move_to_end(key)
                self._evict(key)
            return ckpt

    def get(self, ref: str, revision: str | None = None) -> Checkpoint:
        ckpt = self.cached(ref, revision)
        if ckpt is not None:
            return ckpt
        key = (ref, revision)
        ckpt = self.load(ref, revision)
        with self.lock:
            self.models[key] = self.alive[key] = ckpt
            self.models.move_to_end(key)
            if not self._evict(key):
                del self.models[key]
                raise ChatError(f"the server holds as many models as it can "
                                f"({self.max_bytes >> 20} MB, in use by replies streaming now): "
                                "try again in a minute")
        return ckpt

    def _evict(self, new) -> bool:
        """Drop least recently used models until within bounds; False if that cannot be done."""
        def used() -> int:
            return sum(model_bytes(c) for c in list(self.alive.values()))
        for key in list(self.models):
            if len(self.models) <= self.capacity and (self.max_bytes is None
                                                      or used() <= self.max_bytes):
                return True
            if key != new and key not in self.keep:
                del self.models[key]
        return self.max_bytes is None or used() <= self.max_bytes


class LoadGate:
    """Who may load from the Hub now: at most `slots` loads at once and `per_visitor` for one
    visitor; a full gate answers at once rather than queueing, so a flood of loads (or
    downloads that hang) cannot hold anyone else's load or chat behind it. A slot is held
    until the download really ends, after the visitor's own deadline has answered them."""

    def __init__(self, slots: int = 4, per_visitor: int = 1):
        self.slots, self.per_visitor = slots, per_visitor
        self.busy: Counter = Counter()
        self.lock = threading.Lock()

    def enter(self, visitor: str) -> None:
        with self.lock:
            if sum(self.busy.values()) >= self.slots:
                raise ChatError(f"the server is loading {self.slots} other models right now: try "
                                "again in a few seconds")
            if self.busy[visitor] >= self.per_visitor:
                raise ChatError("you are already loading a model: wait for it to finish")
            self.busy[visitor] += 1

    def leave(self, visitor: str) -> None:
        with self.lock:
            self.busy[visitor] -= 1
            if self.busy[visitor] <= 0:
                del self.busy[visitor]


def num_params(ckpt: Checkpoint) -> int:
    """Number of model parameters."""
    return sum(p.numel() for p in ckpt.net.parameters())
