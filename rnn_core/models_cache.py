"""Which models a visitor may load (`resolve_model_ref`, `load_served`), and the models in
memory: a cache shared by all sessions and bounded in bytes (`ModelCache`), a gate on
concurrent Hub loads (`LoadGate`), and the visitor's load through both within a deadline
(`load_for_visitor`), so no visitor's loads can crowd out the others."""
from __future__ import annotations

import logging
import re
import threading
import unicodedata
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path

import anyio

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .hub import hub_answers, load_from_hub
from .modelref import parse_model_ref
from .validation import ChatError

log = logging.getLogger(__name__)

# What a visitor may load, set for a 2-vCPU Space: a model's parameters are also its
# multiply-adds per character, and 2M cost 0.3–1 ms a character on one core, so one request
# (a 2,000-character message and a 1,000-character reply) costs at most a few core-seconds.
MAX_SERVED_PARAMETERS = 2_000_000
HUB_UNREACHABLE = "The Hugging Face Hub cannot be reached; the current model stays loaded"
HUB_PROBE_TIMEOUT = 3.0   # seconds: a visitor learns within ~5 s that the Hub is unreachable

LOCAL_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,99}$", re.ASCII)


def resolve_model_ref(ref, revision, checkpoints_dir: Path) -> tuple[str, str | None]:
    """What a visitor may load: a Hub repo id (with an optional revision), or a checkpoint
    folder under `checkpoints_dir` (as `checkpoints/NAME`), by the library's one rule
    (`modelref.parse_model_ref`) with rule 1 narrowed to that folder. The decision is made on
    the text alone, and every refusal of a path reads the same whatever exists outside that
    folder, so no answer tells a visitor which server paths exist."""
    if not isinstance(ref, str) or not ref.strip():
        raise ChatError("type a Hub repo id (owner/name) or a folder under checkpoints/")
    ref = ref.strip()
    if len(ref) > 200 or any(unicodedata.category(c)[0] == "C" for c in ref):
        raise ChatError("that model reference is too long or holds control characters; type a "
                        "Hub repo id (owner/name) or checkpoints/NAME")
    root = checkpoints_dir.resolve()

    def under_checkpoints(text: str) -> Path | None:
        """checkpoints/NAME names root/NAME, existing or not (checked below); nothing else
        names a folder a visitor may use, whatever exists."""
        if text != "checkpoints" and not text.startswith(("checkpoints/", "./checkpoints/")):
            return None
        name = text.removeprefix("./").removeprefix("checkpoints").removeprefix("/")
        return (root / name).resolve() if LOCAL_NAME.match(name) else root

    try:
        model = parse_model_ref(ref, revision, under_checkpoints)
    except CheckpointError as e:
        if e.setting == "ref":
            raise ChatError(f"{ref!r} is not a valid Hub repo id; use owner/name, e.g. "
                            "someone/timemachine-rnn") from None
        raise ChatError(str(e)) from None
    if model.folder is None:
        return model.repo_id, model.revision
    folder = under_checkpoints(ref)   # None for any other path
    if folder is None or folder.parent != root or not folder.is_dir():
        raise ChatError(f"{ref[:80]!r} is not a checkpoint folder under checkpoints/; local "
                        "models must be folders there (e.g. checkpoints/timemachine-rnn512)")
    return str(folder), None


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



def load_served(ref: str, revision: str | None) -> Checkpoint:
    """What a visitor may load (after resolve_model_ref): a folder under checkpoints/ (given
    as an absolute path) or a Hub repo, within MAX_SERVED_PARAMETERS."""
    if Path(ref).is_absolute():
        return load_checkpoint(ref, max_parameters=MAX_SERVED_PARAMETERS)
    return load_from_hub(ref, revision, MAX_SERVED_PARAMETERS)


async def load_for_visitor(ref, revision, who: str, models: ModelCache, gate: LoadGate,
                           checkpoints_dir: Path, timeout: float) -> Checkpoint:
    """A model visitor `who` asked for: a Hub repo id or a folder under `checkpoints_dir`.
    Hub loads pass `gate`, are refused within HUB_PROBE_TIMEOUT when the Hub does not answer,
    and are answered within `timeout` seconds; folders and models already in memory need no
    slot. Refusals are ChatError or CheckpointError."""
    ref, revision = resolve_model_ref(ref, revision, checkpoints_dir)
    ckpt = models.cached(ref, revision)
    if ckpt is not None:
        return ckpt
    if Path(ref).is_absolute():
        return await anyio.to_thread.run_sync(models.get, ref, revision)
    gate.enter(who)
    try:
        answers = await anyio.to_thread.run_sync(hub_answers, HUB_PROBE_TIMEOUT)
    except BaseException:
        gate.leave(who)
        raise
    if not answers:
        gate.leave(who)
        raise ChatError(HUB_UNREACHABLE)

    def load():
        try:
            return models.get(ref, revision)
        finally:
            gate.leave(who)
    try:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(load, abandon_on_cancel=True)
    except TimeoutError:
        log.warning("a model load timed out after %g s (%r at revision %r)", timeout, ref,
                    revision)
        raise ChatError(f"loading {ref} took longer than {timeout:g} s (the Hub is slow or "
                        "not answering): try again later") from None
