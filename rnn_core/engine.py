"""The generation thread: every session's model steps run here, off the event loop.

The server's event loop is one Python thread, and Gradio's per-visitor and per-update work
already fills most of its core under load. Steps sent here run on a second thread, one job
after another in arrival order: torch releases the GIL inside each operation, so the products
use the second core, and steps of many sessions taken back to back keep W_hh hot in cache
(interleaved with Gradio's work a step costs about twice as much). Each job is one session's
own batch-1 step sequence, so every session gets bit for bit what it would get alone
(greedy replies stay `predict_ch8`); the steps of different sessions are not batched into one
product, because a (B x H) product's rows differ from the batch-1 product's in the last bits.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable


class Engine:
    """One daemon thread running jobs `fn(*args)` for coroutines on any event loop; `run`
    awaits a job's result. A job already started is waited for even when its caller is
    cancelled, so a session's state is never touched by two at once."""

    def __init__(self, name: str = "generation"):
        self.name = name
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.start_lock = threading.Lock()

    async def run(self, fn: Callable, *args):
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._ensure_thread()
        self.jobs.put((loop, done, fn, args))
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            while not done.done():   # the job may be running: let it finish first
                try:
                    await asyncio.shield(done)
                except asyncio.CancelledError:
                    pass
            raise

    def _ensure_thread(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            with self.start_lock:
                if self.thread is None or not self.thread.is_alive():
                    self.thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                    self.thread.start()

    def _work(self) -> None:
        """Take every waiting job, run them in order, then wake each loop once for all of its
        results (one wake-up per batch, not per job, keeps the loop's cost per update low)."""
        while True:
            batch = [self.jobs.get()]
            while True:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            settled: dict[asyncio.AbstractEventLoop, list] = {}
            for loop, done, fn, args in batch:
                try:
                    outcome = (True, fn(*args))
                except BaseException as e:   # handed to the caller, raised there
                    outcome = (False, e)
                settled.setdefault(loop, []).append((done, outcome))
            for loop, results in settled.items():
                try:
                    loop.call_soon_threadsafe(_settle, results)
                except RuntimeError:   # that loop has closed: nobody is waiting
                    pass


def _settle(results: list) -> None:
    for done, (ok, value) in results:
        if done.done():
            continue
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)


ENGINE = Engine()
