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

This module is the session (`ChatSession`, its `Turn`s, step mode); its generation runs on
the generation thread (engine.py), so the event loop stays free for other sessions.
"""
from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .checkpoint import Checkpoint
from .engine import ENGINE
from .generation import TextStream, draw_each, pick
from .validation import (MAX_LENGTH, ChatError, Settings, check_message, read_as)

MAX_TURNS = 200              # per conversation, so a session's memory stays bounded
MAX_TRANSCRIPT_CHARS = 100_000
# Generation work is measured in multiply-adds (characters x parameters) and runs on the
# generation thread (engine.py), one job at a time. A reply's update computes at most
# UPDATE_WORK (1–2 ms on a slow core), a stream that falls behind catching up over the next
# updates; a message is read in slices of at most SLICE_WORK (about 10 ms), so no one's
# update waits long behind a long message being read.
UPDATE_WORK = 8_000_000
SLICE_WORK = 40_000_000


def join_separator(transcript: str, message: str) -> str:
    """The joining rule: one space between turns when neither side supplies one."""
    if transcript and not transcript[-1].isspace() and message and not message[0].isspace():
        return " "
    return ""



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
    def text_read(self) -> str:
        """What the model read for the message: the separator, then the message."""
        return self.sep + self.text


class Reply:
    """A reply's characters as they are drawn: `take(k)` draws up to k more in one call (a
    stream's whole update, one TorchScript call for the RNN) and records them in the turn;
    iterating draws them one at a time. Nothing is drawn once the turn is closed or has all
    it wanted."""

    def __init__(self, turn: Turn, gen: TextStream, settings: Settings, rng: torch.Generator):
        self.turn, self.gen, self.settings, self.rng = turn, gen, settings, rng
        self.drawn = 0   # tokens drawn (a token may be longer than one character: "<unk>")

    def take(self, k: int) -> int:
        """Draw up to `k` tokens (characters); how many came (0: the reply is over)."""
        return take_each([(self, k)])[0]

    def __iter__(self) -> Iterator[str]:
        shown = len(self.turn.reply)
        while self.take(1):
            yield self.turn.reply[shown:]
            shown = len(self.turn.reply)


def take_each(takes: Sequence[tuple[Reply, int]]) -> list[int]:
    """`reply.take(k)` for each of several sessions' replies in one call (`draw_each`): a round
    of streams' updates on the generation thread (engine.py, `together`)."""
    counts = [max(0, min(k, r.turn.wanted - r.drawn)) if r.turn.open else 0 for r, k in takes]
    texts = draw_each([(r.gen, n, r.settings.temperature, r.settings.top_k, r.rng)
                       for (r, _), n in zip(takes, counts)])
    for (r, _), n, text in zip(takes, counts, texts):
        r.turn.reply += text
        r.drawn += n
    return counts


class ChatSession:
    """One visitor's conversation: a model, the hidden state that has read the transcript,
    and the turns (kept for undo and retry). Use it from one event loop; `lock` orders the
    work on its state (replies' generation steps may run in a worker thread).

    Between replies the session keeps only its stream position and a weak reference to the
    model, so the app's ModelCache alone decides which models stay in memory; while a reply
    streams, its TextStream holds the model. A session whose model was dropped says so."""

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
        self.num_params = ckpt.net.num_params()
        self._stream: TextStream | None = None     # while a reply streams
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

    def stream(self) -> TextStream:
        """The live TextStream (made from the model and the stream position when needed)."""
        if self._stream is None:
            ckpt = self.ckpt
            gen = TextStream(ckpt.net, ckpt.vocab, ckpt.normalization)
            if self.position[0] is not None:
                gen.state, gen.pending = self.position
            self._stream = gen
        return self._stream

    def park(self) -> None:
        """Between replies: keep the stream position, let go of the model."""
        if self._stream is not None:
            self.position = (self._stream.state, self._stream.pending)
            self._stream = None

    def reset(self) -> None:
        """New chat: zero state, empty transcript."""
        self.close()
        self._stream, self.position = None, (None, None)
        self.turns = []

    @property
    def transcript(self) -> str:
        """The whole conversation as the model read it (messages joined, replies verbatim)."""
        return "".join(t.text_read + t.reply for t in self.turns)

    def close(self) -> None:
        """Stop the streaming turn, if any, at what has been streamed so far."""
        if self.turns:
            self.turns[-1].open = False

    def start(self, message: str, verbatim: bool = False) -> Turn:
        """Validate a new message and open its turn; the previous reply, if still streaming,
        stops. The caller reads `turn.text_read` into the state next (`feed` or `read`).
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
        turn = Turn(message, sep, text, before=self.stream().snapshot(), changes=changes)
        turn.room = MAX_TRANSCRIPT_CHARS - len(transcript) - len(turn.text_read)
        self.turns.append(turn)
        return turn

    def reply(self, turn: Turn, settings: Settings) -> Reply:
        """Start drawing up to `settings.length` characters into `turn` (fewer if the
        transcript would pass its limit), each recorded in the transcript as it is drawn;
        nothing more once the turn is closed. The turn records its settings and the seeded
        character generator is set up now, before the first character is asked for."""
        n = min(settings.length, turn.room)
        turn.settings, turn.wanted = settings, n
        if settings.seed is not None:
            self.rng.manual_seed(settings.seed)
        return Reply(turn, self.stream(), settings, self.rng)

    # ------------------------------------------------------------ step mode

    async def step_start(self, message: str, settings: Settings | None = None) -> Turn:
        """Begin a turn whose reply is advanced one character at a time (`step`): the
        message is read as for a reply; `settings`: the sliders when stepping began."""
        turn = self.start(message)
        turn.settings = settings
        try:
            await self.read(turn.text_read)
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
        return self.stream().peek()

    def step(self, token: str) -> str:
        """Append `token` (a character of the vocabulary) to the stepped reply and read it."""
        turn = self.stepping()
        if token not in self.ckpt.vocab.token_to_idx or token == "<unk>":
            raise ChatError(f"{token!r:.20} is not a character this model can write")
        if len(turn.reply) >= min(MAX_LENGTH, turn.room):
            raise ChatError(f"this reply has reached its limit ({len(turn.reply):,} characters): "
                            "send a new message")
        self.stream().read(token)
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
        state, pending = turn.before   # a copy: the stream reuses the tensors it starts from
        self._stream, self.position = None, (tuple(s.clone() for s in state), pending)
        await self.read(turn.text_read + turn.reply)
        return removed

    def undo(self) -> Turn | None:
        """Remove the last turn and rewind the state to before it; returns the removed turn."""
        if not self.turns:
            return None
        self.close()
        turn = self.turns.pop()
        self._stream, self.position = None, turn.before
        return turn

    async def run(self, fn: Callable, *args, bulk: bool = False, together: Callable | None = None):
        """fn(*args) on this session's state, on the generation thread, so no session's step
        ever holds up the event loop the others stream through (`bulk`: after every waiting
        update; `together`: see Engine). Cancelling waits for the step, so the state is never
        touched by two at once."""
        return await ENGINE.run(fn, *args, bulk=bulk, together=together)

    async def read(self, text: str, then: Callable | None = None):
        """Read `text` (normalised) into the state, in slices of at most SLICE_WORK; a text
        longer than one update's work waits behind the streams' updates (bulk). Then `then()`,
        if given, and its result: in the same job as a short text, so a reply's first
        characters cost one hand-over (each costs a turn of the busy event loop)."""
        step = max(1, SLICE_WORK // self.num_params)
        bulk = len(text) * self.num_params > UPDATE_WORK
        gen = self.stream()
        if not bulk and then is not None:
            return await self.run(_read_then, gen, text, then)
        for i in range(0, len(text), step):
            await self.run(gen.read, text[i:i + step], bulk=bulk)
        return await self.run(then) if then is not None else None


def _read_then(gen: TextStream, text: str, then: Callable):
    gen.read(text)
    return then()
