"""The generation thread: every session's model steps run here, off the event loop.

The server's event loop is one Python thread, and Gradio's per-visitor and per-update work
already fills most of its core under load. Steps sent here run on a second thread, one job
after another in arrival order: torch releases the GIL inside each operation, so the products
use the second core, and steps of many sessions taken back to back keep W_hh hot in cache
(interleaved with Gradio's work a step costs about twice as much). Each job is one session's
own batch-1 step sequence, so every session gets bit for bit what it would get alone
(greedy replies stay `predict_ch8`); the steps of different sessions are not batched into one
product, because a (B x H) product's rows differ from the batch-1 product's in the last bits.

Streams' updates come first: every waiting update runs before the next slice of reading a
long message, so however many long messages are queued, an update waits for one slice at
most (no visitor can stall the others' replies by sending long messages), and each round
reads one slice, so long messages always advance.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable


HAND_BACK = 0.002   # seconds of finished jobs' results gathered into one wake-up of a loop
TOGETHER = 16       # waiting jobs of one kind run in one call (`together`), at most this many


class Engine:
    """One daemon thread running jobs `fn(*args)` for coroutines on any event loop; `run`
    awaits a job's result. Urgent jobs (the default) all run before the next bulk one. A job
    is waited for even when its caller is cancelled (`_Outcome`), so a session's state is
    never touched by two at once. A result costs its loop two turns (the hand-back, then the
    caller's wake-up), each as long as everything else the loop has to do at that moment.

    Jobs given `together` (a function of a list of jobs' args returning their results in
    order, each exactly `fn(*args)`) run in groups: up to TOGETHER such jobs waiting one after
    the other make one call. A job that calls into torch gives the GIL up and must win it
    back from the busy event loop, up to a switch interval each time; a group waits once for
    all (the streams' updates of a round: `session.take_each`). A group that raises gives the
    error to each of its callers."""

    def __init__(self, name: str = "generation"):
        self.name = name
        self.urgent: deque = deque()
        self.bulk: deque = deque()
        self.ready = threading.Condition()
        self.thread: threading.Thread | None = None

    async def run(self, fn: Callable, *args, bulk: bool = False, together: Callable | None = None):
        loop = asyncio.get_running_loop()
        done = _Outcome(loop=loop)
        with self.ready:
            self._ensure_thread()
            (self.bulk if bulk else self.urgent).append((loop, done, fn, args, together))
            self.ready.notify()
        return await done

    def _ensure_thread(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self.thread.start()

    def _work(self) -> None:
        """Rounds: every waiting urgent job, then one bulk job (so bulk work always advances);
        results are handed back in batches (`_run`)."""
        while True:
            with self.ready:
                while not self.urgent and not self.bulk:
                    self.ready.wait()
                urgent = list(self.urgent)
                self.urgent.clear()
                bulk = [self.bulk.popleft()] if self.bulk else []
            for group in (urgent, bulk):
                _run(group)


class _Outcome(asyncio.Future):
    """A job's result. It cannot be cancelled: a task cancelled while awaiting it is woken when
    the job is done and raises CancelledError then (asyncio's Task does this when its
    future refuses to cancel), so a session's state is never touched by two at once."""

    def cancel(self, msg=None) -> bool:
        return False


def _run(jobs: list) -> None:
    """Run `jobs` in order (consecutive ones with the same `together` in groups), waking each
    loop once for all the results gathered every HAND_BACK seconds (one wake-up for many jobs
    keeps the loop's cost per update low; a bounded wait keeps a round of many jobs from
    holding back the first ones' results)."""
    settled: dict[asyncio.AbstractEventLoop, list] = {}
    handed = time.monotonic()
    i = 0
    while i < len(jobs):
        group = _group(jobs, i)
        try:
            together = group[0][4]
            if together is None:
                outcomes = [(True, group[0][2](*group[0][3]))]
            else:
                outcomes = [(True, result) for result in together([job[3] for job in group])]
        except BaseException as e:   # handed to the callers, raised there
            outcomes = [(False, e)] * len(group)
        for (loop, done, *_), outcome in zip(group, outcomes):
            settled.setdefault(loop, []).append((done, outcome))
        i += len(group)
        if time.monotonic() - handed > HAND_BACK:
            _hand_back(settled)
            settled, handed = {}, time.monotonic()
    _hand_back(settled)


def _group(jobs: list, i: int) -> list:
    """Job `i` and the jobs right after it that run together with it (TOGETHER at most)."""
    together, end = jobs[i][4], i + 1
    if together is not None:
        while end < len(jobs) and end - i < TOGETHER and jobs[end][4] is together:
            end += 1
    return jobs[i:end]


def _hand_back(settled: dict) -> None:
    for loop, results in settled.items():
        try:
            loop.call_soon_threadsafe(_settle, results)
        except RuntimeError:   # that loop has closed: nobody is waiting
            pass


def _settle(results: list) -> None:
    for done, (ok, value) in results:
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)


ENGINE = Engine()
