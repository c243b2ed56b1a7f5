"""Time-paced streaming of replies: characters are generated as they fall due (on the
generation thread, engine.py) and sent in coalesced updates, one pacer (`PACE`) for the whole
server so its update rate stays bounded."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .session import UPDATE_WORK, ChatSession, Reply, Turn, take_each
from .validation import ChatError, Settings


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
    max_interval: float = 0.05
    updates_per_second: float = 1200.0
    burst_starts: int = 8
    burst_window: float = 0.1
    burst_interval: float = 0.08
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
            await session.read(turn.text_read)
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
    state consistent with what was shown. Each update's characters are drawn on the generation
    thread right before it is yielded (so nothing unshown is ever drawn), asked for early by
    that thread's last turnaround so updates keep the pace."""
    def first_character():   # on the generation thread, right after the message is read
        chars = session.reply(turn, settings)
        return chars, chars.take(1)

    asked = time.monotonic()
    async with session.lock:
        turn = session.start(message)
        try:
            chars, sent = await session.read(turn.text_read, then=first_character)
        except BaseException:   # cancelled while reading: as if the message was never sent
            session.undo()
            raise
    n = min(settings.length, turn.room)
    per_update = max(1, UPDATE_WORK // session.num_params)   # characters one update may compute

    pace.start()
    try:
        start = time.monotonic()
        while True:
            shown = time.monotonic()
            turnaround = shown - asked   # the generation thread's; the next update starts that early
            yield turn.reply
            if not turn.open or sent >= n:
                break
            await asyncio.sleep(max(0.0, shown + pace.interval() - turnaround - time.monotonic()))
            asked = time.monotonic()
            due = min(int((asked - start) * pace.chars_per_second) + 1, n)
            async with session.lock:   # bounded: a stream behind catches up over updates
                if not turn.open:
                    break
                sent += await session.run(Reply.take, chars, min(due - sent, per_update),
                                         together=take_each)
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
