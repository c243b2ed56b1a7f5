"""The chat: the §8.5 RNN continues whatever you type, streaming from its carried hidden state.

    python app.py          # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

The model comes from RNN_MODEL (a Hub repo id or a local checkpoint folder) and optional
RNN_MODEL_REVISION, as a Hugging Face Space is configured; default and fallback: the bundled
checkpoint. Each browser tab or API client has its own conversation and model choice.
The conversation logic lives in rnn_core (validation, session, streaming, models_cache);
this file is the page and its API.
"""
from __future__ import annotations

import base64
import copy
import ctypes
import functools
import gc
import html
import inspect
import logging
import os
import re
import secrets
import sys
from contextlib import aclosing
from pathlib import Path

# Every model step here is one batch-1 product (1 x 512 by 512 x 512): split across threads it
# only adds a rendezvous, which on a busy 2-core machine costs 10x the product itself (the
# other core is not free when asked). One thread per product, set before torch loads, so it
# holds in every thread (torch.set_num_threads sets MKL's count for the calling thread only);
# the second core runs the generation thread instead (rnn_core/engine.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gradio as gr
from gradio import state_holder
from huggingface_hub import constants
from starlette.middleware import Middleware

from rnn_core import inspector, views
from rnn_core.card import BOOK_URL
from rnn_core.cells import describe
from rnn_core.validation import (MAX_LENGTH, MAX_MESSAGE_CHARS, MAX_SEED, MAX_TEMPERATURE,
                                 ChatError, Settings, check_message, check_settings,
                                 describe_vocab, read_as)
from rnn_core.session import ChatSession
from rnn_core.streaming import read_text, stream_reply, stream_together
from rnn_core.models_cache import LoadGate, ModelCache, load_for_visitor, load_served
from rnn_core.checkpoint import (Checkpoint, CheckpointError, Summary, checkpoint_folders,
                                 load_checkpoint)
from rnn_core.hub import load_model
from rnn_core.page import (CONVERSATION_CSS, CONVERSATION_HTML, CONVERSATION_JS, CSS,
                           conversation_view, turn_view)

ROOT = Path(__file__).resolve().parent
CHECKPOINTS = ROOT / "checkpoints"
BUNDLED = CHECKPOINTS / "timemachine-rnn512"
EXAMPLES = ["time traveller", "the medical man", "it was a strange thing", "the machine"]
CHAT_CONCURRENCY = 256   # streams are async and cheap; pacing keeps the update rate bounded
SESSION_TTL = 3600       # seconds a conversation is kept after its last message
SESSIONS_KEPT = 1000     # Gradio's per-visitor records (about 40 kB each), least recent dropped
# Which model is served and why, and every refused load, go to stderr (a Space's logs).
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("app")
# Visitors' model loads: every model in memory together within MODEL_MEMORY_MB of weights,
# Hub loads through LOAD_GATE (4 at once, one per visitor, never queued), each answered
# within LOAD_TIMEOUT seconds. Visitors are told apart by their address (behind a proxy, let
# uvicorn read it: FORWARDED_ALLOW_IPS).
MODEL_MEMORY_MB = int(os.environ.get("RNN_MODEL_MEMORY_MB", "64"))
LOAD_TIMEOUT = float(os.environ.get("RNN_LOAD_TIMEOUT", "60"))
LOAD_GATE = LoadGate(slots=4, per_visitor=1)
MODELS = ModelCache(load_served, capacity=16, max_bytes=MODEL_MEMORY_MB << 20)
# After every event Gradio rebuilds a pandas summary of up to 10,000 past events for its
# /monitoring page (on by default in launch()): ~10 ms of the server's one thread per reply once
# thousands have been served. Keep fewer records and summarise rarely (the environment can still override).
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")


def startup_model() -> tuple[Checkpoint, tuple, str, str | None]:
    """RNN_MODEL (and RNN_MODEL_REVISION) if set and loadable, else the bundled checkpoint
    with a notice saying why; also its key in MODELS and its card. Nothing a model repo holds can stop the
    app from starting: any failure falls back to the bundled model."""
    ref = os.environ.get("RNN_MODEL", "").strip()
    revision = os.environ.get("RNN_MODEL_REVISION", "").strip() or None
    notice = None
    if ref:
        try:
            ckpt = load_model(ref, revision)
            card = model_card(ckpt)
            log.info("serving RNN_MODEL=%r at revision %r (commit %s)", ref, revision or "main",
                     ckpt.commit or "local folder")
            return ckpt, (ref, revision), card, None
        except Exception as e:  # any failure: serve the bundled model and say why
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            notice = (f"Could not load RNN_MODEL={ref}{'@' + revision if revision else ''} "
                      f"({reason[:300]}). Serving the bundled model instead.")
            log.warning("refused RNN_MODEL=%r at revision %r: %s", ref, revision or "main", reason)
    log.info("serving the bundled model %s (%s)", BUNDLED.relative_to(ROOT),
             "RNN_MODEL could not be loaded" if ref else "RNN_MODEL is not set")
    try:
        ckpt = load_checkpoint(BUNDLED)
        return ckpt, (str(BUNDLED), None), model_card(ckpt), notice
    except CheckpointError as e:
        raise SystemExit(f"error: the bundled model cannot be loaded ({e}); restore "
                         f"{BUNDLED.relative_to(ROOT)} or set RNN_MODEL") from None


# ---------------------------------------------------------------- rendering

def md_escape(text: str) -> str:
    """Text for Markdown, shown literally: every ASCII punctuation mark backslash-escaped."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def model_source(ckpt: Checkpoint) -> str:
    """Where a model came from, for people: the repo and commit (with a link to its Hub page),
    or the folder (relative to the app, so no server paths are shown)."""
    if ckpt.commit:
        return (f"Hub repo {md_escape(ckpt.source)} at commit {ckpt.commit[:12]} "
                f"([its Hub page]({constants.ENDPOINT}/{ckpt.source}))")
    path = Path(ckpt.source).resolve()
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    where = " (bundled with the app)" if path.parent == CHECKPOINTS else " (local folder)"
    return f"{md_escape(name)}{where}"


def model_card(ckpt: Checkpoint) -> str:
    """The loaded model in a few lines of Markdown, with why its validation perplexity is
    not the book's."""
    ppl = ckpt.config.record().get("final_val_ppl")
    ppl = f"{ppl:.2f}" if ppl is not None else "not measured"
    why = ("  \nValidation perplexity is measured on held-out text the model never trained on, "
           f"so {ppl} is not the book's 1.0, which is measured on the 10,000 training characters "
           "the book's model memorises." if ppl != "not measured" else "")
    return (f"**Model:** {model_source(ckpt)}  \n"
            f"{describe(ckpt.net.arch, ckpt.net.num_layers, ckpt.net.num_hiddens)}"
            f" · {ckpt.net.num_params():,} parameters · "
            f"validation perplexity {ppl}  \n"
            f"**Vocabulary** ({len(ckpt.vocab)} tokens, `{ckpt.normalization}` normalisation): "
            f"{md_escape(describe_vocab(ckpt.vocab))}{why}")


def plot_html(ckpt: Checkpoint) -> str:
    """The training curve saved with the model (perplexity.png), inline; CLEAR if none."""
    png = ckpt.plot()
    if png is None:
        return CLEAR
    return ('<figure style="margin:0"><img alt="Training curve: perplexity per epoch on the '
            f'training text and on held-out text" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}"><figcaption>Training curve (perplexity.png)'
            '</figcaption></figure>')


def bundled_models() -> list[dict]:
    """Every model bundled under checkpoints/ with its cell, size and validation figures
    (unreadable folders left out)."""
    models = []
    for folder in checkpoint_folders(CHECKPOINTS):
        try:
            summary = Summary.of(folder)
        except CheckpointError:
            continue
        models.append({"ref": f"checkpoints/{folder.name}", **vars(summary)})
    return models


def bundled_label(m: dict) -> str:
    """One line for the list: name, cell and size, parameters, training text, validation figure."""
    figure = f"validation perplexity {m['val_perplexity']:.2f}" if m["val_perplexity"] else \
        "no validation figure"
    return (f"{m['name']} · {describe(m['arch'], m['num_layers'], m['num_hiddens'])} · "
            f"{m['num_params']:,} parameters · {m['data']}, {figure}")


BUNDLED_MODELS = bundled_models()



CLEAR = "<span></span>"   # an empty line (the page does not apply an empty string)


def line(text: str = "", alert: bool = True) -> str:
    """A one-line message under a control (escaped; CLEAR removes it)."""
    if not text:
        return CLEAR
    return f'<p{" role=alert" if alert else ""}>{html.escape(public(text), quote=False)}</p>'


def link_model(session: ChatSession) -> dict | None:
    """The session's model as a share link names it: None for the app's own model, a Hub
    repo at its commit, or checkpoints/NAME."""
    ckpt = session.model()
    if ckpt is None or ckpt is DEFAULT:
        return None
    if ckpt.commit:
        return {"ref": ckpt.source, "revision": ckpt.commit}
    return {"ref": f"checkpoints/{Path(ckpt.source).name}", "revision": None}


def view(session: ChatSession, streaming: bool = False, past: list | None = None) -> dict:
    return conversation_view(session.turns, streaming, link_model(session), past)


def session_of(session: ChatSession | None) -> ChatSession:
    """This visitor's conversation, created on first use with the app's model."""
    return session if session is not None else ChatSession(DEFAULT)


DEFAULT, DEFAULT_KEY, DEFAULT_CARD, NOTICE = startup_model()
MODELS.models[DEFAULT_KEY] = MODELS.alive[DEFAULT_KEY] = DEFAULT   # shared, never dropped
MODELS.keep.add(DEFAULT_KEY)


# ---------------------------------------------------------------- loading models

def visitor(request: gr.Request | None) -> str:
    """Who is asking, for per-visitor limits: the client's address (else the session)."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or getattr(request, "session_hash", None) or "?"


load_for = functools.partial(load_for_visitor, models=MODELS, gate=LOAD_GATE,
                             checkpoints_dir=CHECKPOINTS, timeout=LOAD_TIMEOUT)


# ---------------------------------------------------------------- event handlers: the API

# What each public API endpoint does, for the people calling it (Gradio's API page shows
# these instead of the functions' docstrings, which are written for this file's readers).
API_DESCRIPTIONS = {
    "chat": f"Send a message to this session's conversation; the model's reply streams back as "
            f"plain text, each update the reply so far. length: characters to write (1 to "
            f"{MAX_LENGTH}); temperature: 0 is greedy, the book's predict_ch8, higher samples "
            f"more freely (at most {MAX_TEMPERATURE:g}); top_k: sample only from the k most "
            "likely characters (0: all).",
    "load_model": "Switch this session to another model: a Hub repo id (owner/name, with an "
                  "optional revision: a branch, tag or commit sha) or a bundled model "
                  "(checkpoints/NAME, see /bundled_models). Returns the model's card and an empty "
                  "conversation; a refusal says why and changes nothing.",
    "new_chat": "Start this session's conversation afresh: empty transcript, zero hidden state.",
    "bundled_models": "The models bundled with the app: for each, ref (what /load_model takes), "
                      "name, arch, num_layers, num_hiddens, num_params, the training text and "
                      "its validation perplexity and loss (null where not measured).",
    "score": "How surprised the session's model is by a text: each character's probability, "
             "surprisal in bits and the five likeliest next characters, as JSON.",
    "trace": "One hidden unit's value after each character of a text (and, for an LSTM, its "
             "cell's), as JSON.",
    "why": "The session's last reply, each character with the distribution the sampler drew it "
           "from and its rank there, as JSON.",
}



def refused(e: Exception, prefix: str = "") -> gr.Error:
    """An error event carrying the reason (escaped: the page renders error text as HTML)."""
    return gr.Error(html.escape(public(prefix + str(e)), quote=False), print_exception=False)


def failed(e: Exception, what: str) -> gr.Error:
    """An unexpected failure: logged for the operator, one line for the visitor, whose
    session stays as it was before the event."""
    log.exception("%s failed", what)
    return gr.Error(failure(e, what), print_exception=False)


def failure(e: Exception, what: str) -> str:
    return (f"{what} failed ({type(e).__name__}); the conversation is unchanged: try again, or "
            "press New chat")


def public(text: str) -> str:
    """A reason as visitors may read it: no server paths, Hub endpoint or cache location."""
    for secret, shown in ((str(ROOT) + os.sep, ""), (constants.HF_HUB_CACHE, "the model cache"),
                          (f" at {constants.ENDPOINT}", ""), (constants.ENDPOINT, "the Hub")):
        text = text.replace(secret, shown)
    return text


async def _stream(session: ChatSession, message, length, temperature, top_k):
    """stream_reply with refusals turned into error events that carry the reason."""
    try:
        settings = check_settings(length, temperature, top_k, len(session.ckpt.vocab))
        async with aclosing(stream_reply(session, message, settings)) as replies:
            async for reply in replies:
                yield reply
    except ChatError as e:
        raise refused(e) from None
    except Exception as e:  # a bug, not the visitor's doing: the turn is closed, say so
        raise failed(e, "the reply") from None


async def chat(message: str = None, length: float = None, temperature: float = None,
               top_k: float = None, session: ChatSession | None = None):
    """Continue this session's conversation with `message`; streams the reply so far (each
    partial a prefix of the next, the last one whole), as plain text. The session is stored
    with the first update only (it changes in place; storing it costs Gradio work per update)."""
    session = session_of(session)
    stored = session
    async with aclosing(_stream(session, message, length, temperature, top_k)) as replies:
        async for reply in replies:
            yield reply, stored
            stored = gr.skip()


async def new_chat(session):
    """Forget the conversation: zero hidden state, empty transcript (on the app's model if
    this session's model was unloaded meanwhile)."""
    session = session_of(session)
    async with session.lock:
        if session.model() is None:
            session.use(DEFAULT)
        session.reset()
    return [], session


def list_bundled_models() -> list[dict]:
    """The models bundled with the app: for each, `ref` (what /load_model takes), `name`,
    `arch` (rnn, gru or lstm), `num_layers`, `num_hiddens`, `num_params`, the training text
    (`data`) and its validation figures (`val_perplexity`, `val_loss` in nats per character;
    null where not measured)."""
    return BUNDLED_MODELS



async def switch_model(ref, revision, session: ChatSession, who: str) -> tuple[Checkpoint, str]:
    """Switch this session (only) to a Hub repo id or a folder under checkpoints/ (load_for);
    returns the model and its card. Both are made before anything changes, so a failed load
    changes nothing; refusals are logged and raised."""
    try:
        ckpt = await load_for(ref, revision, who)
        card = model_card(ckpt)
    except (ChatError, CheckpointError) as e:
        log.warning("refused a model load for one session (%r at revision %r): %s", ref,
                    revision, e)
        raise
    async with session.lock:
        session.use(ckpt)
    return ckpt, card


async def load_other_model(ref, revision, session, request: gr.Request = None):
    """/load_model: (card, empty conversation, top-k slider, session); refusals are errors."""
    session = session_of(session)
    try:
        ckpt, card = await switch_model(ref, revision, session, visitor(request))
    except (ChatError, CheckpointError) as e:
        raise refused(e, "Model not loaded: ") from None
    except Exception as e:
        raise failed(e, "loading the model") from None
    return card, [], gr.Slider(maximum=len(ckpt.vocab)), session


# ---------------------------------------------------------------- event handlers: the page
# A refusal never raises here (an error event marks every output component): it is a line
# under the control that caused it, and every other component is skipped, so stays as it was.

def page_settings(session: ChatSession, length, temperature, top_k, seed) -> Settings:
    """The sliders and the seed box; a blank seed is drawn now, so the reply can be shared."""
    if seed is None or isinstance(seed, str) and not seed.strip():
        seed = secrets.randbelow(MAX_SEED + 1)
    elif isinstance(seed, str):
        try:
            seed = int(seed.strip())
        except ValueError:
            raise ChatError(f"the seed must be a whole number from 0 to {MAX_SEED}, or empty for "
                            f"a random one; got {seed.strip()[:40]!r}") from None
    return check_settings(length, temperature, top_k, len(session.ckpt.vocab), seed)


async def respond(message, length, temperature, top_k, seed, session):
    """The page's send: (conversation view, message box, error line, preview, session) as
    the reply grows. The box is cleared with the first update; a refused message stays in
    the box with the reason under it. (The lines are sent unchanged, never skipped, while
    streaming: Gradio's diff of a skipped gr.HTML value restores its previous value.)"""
    session = session_of(session)
    past, first = None, True
    try:
        settings = page_settings(session, length, temperature, top_k, seed)
        async with aclosing(stream_reply(session, message, settings)) as replies:
            async for _ in replies:
                if past is None:
                    past = [turn_view(t) for t in session.turns[:-1]]
                if first:
                    yield view(session, True, past), "", CLEAR, CLEAR, session
                    first = False
                else:
                    yield view(session, True, past), gr.skip(), CLEAR, CLEAR, gr.skip()
    except ChatError as e:
        error = str(e)
    except Exception as e:  # a bug, not the visitor's doing: the turn is closed, say so
        log.exception("the reply failed")
        error = failure(e, "the reply")
    else:
        error = None
    shown = view(session, False, past) if past is not None else gr.skip()
    yield shown, gr.skip(), line(error), CLEAR, session if first else gr.skip()


async def retry(length, temperature, top_k, seed, session):
    """Rewind the last turn and answer its message again with the current settings."""
    session = session_of(session)
    async with session.lock:
        turn = session.undo()
    if turn is None:
        yield view(session), gr.skip(), CLEAR, gr.skip(), session
        return
    async with aclosing(respond(turn.message, length, temperature, top_k, seed, session)) as updates:
        async for update in updates:
            yield update[0], gr.skip(), *update[2:]


async def undo(session):
    """Rewind the last turn and put its message back in the box."""
    session = session_of(session)
    async with session.lock:
        turn = session.undo()
    return view(session), (turn.message if turn else gr.skip()), CLEAR, session


async def show(session):
    """Redraw the conversation from the session (after Stop: exactly what the state read)."""
    return view(session_of(session))


async def new_page_chat(session):
    """New chat on the page: an empty conversation view, the error line cleared."""
    _, session = await new_chat(session)
    return view(session), CLEAR, session


async def preview(message, session):
    """The line under the box while typing: what the model will read of it."""
    if not isinstance(message, str) or not message.strip():
        return CLEAR
    try:
        ckpt = session_of(session).ckpt
        check_message(message, ckpt.vocab, ckpt.normalization)
    except ChatError as e:
        return line(str(e), alert=False)
    reading = read_as(message, ckpt.vocab, ckpt.normalization)
    changes = reading.changes()
    return line(f"The model will read “{reading.text}”" + (f" — {changes}." if changes else
                                                         ", as typed."), alert=False)


async def load_on_page(ref, revision, session, request: gr.Request = None):
    """The page's Load button: (card, plot, conversation view, top-k slider, load error
    line, session). A refusal is the error line; everything else stays as it was."""
    session = session_of(session)
    try:
        ckpt, card = await switch_model(ref, revision, session, visitor(request))
    except (ChatError, CheckpointError) as e:
        return *[gr.skip()] * 4, line(f"Model not loaded: {e}"), gr.skip()
    except Exception as e:
        log.exception("loading the model failed")
        return *[gr.skip()] * 4, line(failure(e, "loading the model")), gr.skip()
    return (card, plot_html(ckpt), view(session), gr.Slider(maximum=len(ckpt.vocab)), CLEAR,
            session)


LINK_FIELDS = ("model", "revision", "before", "message", "length", "temperature", "top_k", "seed")


async def open_link(session, request: gr.Request = None):
    """A share link (?model=&revision=&before=&message=&length=&temperature=&top_k=&seed=):
    its model loaded, its earlier text read, its settings and message filled in, ready for
    `send_link` to answer. Outputs: (card, plot, conversation view, message, length,
    temperature, top-k, seed, error line, session, linked)."""
    query = dict(getattr(request, "query_params", None) or {})
    if not any(k in query for k in LINK_FIELDS):
        return *[gr.skip()] * 10, False
    session = session_of(session)
    try:
        ckpt = session.ckpt
        if query.get("model"):
            ckpt, _ = await switch_model(query["model"], query.get("revision"), session,
                                         visitor(request))
        numbers = {}
        for name in ("length", "temperature", "top_k", "seed"):
            if query.get(name, "") != "":
                try:
                    numbers[name] = float(query[name])
                except ValueError:
                    raise ChatError(f"the link's {name} is not a number: "
                                    f"{query[name][:40]!r}") from None
        settings = check_settings(numbers.get("length", 200), numbers.get("temperature", 0.7),
                                  numbers.get("top_k", 0), len(ckpt.vocab), numbers.get("seed"))
        if query.get("before"):
            await read_text(session, query["before"])
    except (ChatError, CheckpointError) as e:
        return (*[gr.skip()] * 8, line(f"This link cannot be opened: {e}"), session, False)
    message = query.get("message", "")
    return (model_card(ckpt), plot_html(ckpt), view(session), message, settings.length,
            settings.temperature, gr.Slider(maximum=len(ckpt.vocab), value=settings.top_k),
            "" if settings.seed is None else str(settings.seed), CLEAR, session, bool(message))


async def send_link(linked, message, length, temperature, top_k, seed, session):
    """Answer a share link's message (nothing when the page was opened without one)."""
    if not linked:
        yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    async with aclosing(respond(message, length, temperature, top_k, seed, session)) as updates:
        async for update in updates:
            yield update


COMPARE_PANES = 3


def model_name(ckpt: Checkpoint) -> str:
    """A model's short name for a pane's label: repo@commit or the folder's name."""
    return f"{ckpt.source}@{ckpt.commit[:8]}" if ckpt.commit else Path(ckpt.source).name


async def compare(message, length, top_k, seed, third, *panes, request: gr.Request = None):
    """The same message to two or three panes, each a fresh conversation with its own
    temperature and model (empty: this tab's), one seed for all, streaming side by side.
    `panes` is the temperatures, then the model references, then the session. Outputs: the
    panes, then the error line."""
    session = session_of(panes[-1])
    temperatures, refs = panes[:COMPARE_PANES], panes[COMPARE_PANES:2 * COMPARE_PANES]
    count = COMPARE_PANES if third else COMPARE_PANES - 1
    runs, labels = [], []
    try:
        drawn = page_settings(session, length, 0, top_k, seed).seed
        loaded: dict = {}
        for i in range(count):
            ref = refs[i].strip() if isinstance(refs[i], str) else ""
            if ref and ref not in loaded:
                loaded[ref] = await load_for(ref, None, visitor(request))
            ckpt = loaded[ref] if ref else session.ckpt
            settings = check_settings(length, temperatures[i], top_k, len(ckpt.vocab), drawn)
            runs.append((ChatSession(ckpt), settings))
            labels.append(f"Pane {i + 1}: {model_name(ckpt)} · temperature {settings.temperature:g}"
                          + (f" · seed {drawn}" if settings.temperature > 0 else ""))
    except (ChatError, CheckpointError) as e:
        yield *[gr.skip()] * COMPARE_PANES, line(f"Not compared: {e}")
        return
    idle = [gr.Textbox(value="", label=f"Pane {COMPARE_PANES}: off")] * (COMPARE_PANES - count)
    first = True
    streams = [stream_reply(run, message, settings) for run, settings in runs]
    async with aclosing(stream_together(streams)) as updates:
        async for replies in updates:
            texts = [r if isinstance(r, str) else f"(not answered: {public(str(r))})"
                     for r in replies]
            if first:
                yield *[gr.Textbox(value=t, label=l) for t, l in zip(texts, labels)], *idle, CLEAR
                first = False
            else:
                yield *texts, *[gr.skip()] * len(idle), CLEAR


# ---------------------------------------------------------------- inside the model
# The views of rnn_core/inspector.py, drawn by rnn_core/views.py. Reading a text runs in a
# worker thread (a few hundred ms for 2,000 characters); step mode touches the session's
# state and runs on the event loop (microseconds a step).

INSPECT_CONCURRENCY = 1   # one visitor's reading at a time: the chat's streams keep the cores


def _passage(text, session: ChatSession) -> tuple[str, str]:
    """The visitor's text, or (empty box) this conversation as the state read it."""
    if isinstance(text, str) and text.strip():
        return text, ""
    passage, note = inspector.conversation_passage(session.turns, MAX_MESSAGE_CHARS)
    if not passage.strip():
        raise ChatError("nothing to read yet: paste a text, or chat first and read the conversation")
    return passage, note or "this conversation, as the model read it"


def reading(what: str):
    """A reading handler (run in a worker thread): refusals, such as a model the server
    unloaded, become one-line error events; anything unexpected is `failed`."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args):
            try:
                return fn(*args)
            except ChatError as e:
                raise refused(e) from None
            except gr.Error:
                raise
            except Exception as e:
                raise failed(e, what) from None
        return run
    return wrap


@reading("scoring the text")
def score_api(text, session):
    """/score(text): each character's probability, surprisal and the top 5, as JSON."""
    session = session_of(session)
    return inspector.score(session.ckpt, text).to_json(), session


@reading("tracing the unit")
def trace_api(text, unit, session):
    """/trace(text, unit): the unit's value after each character (and the LSTM cell's)."""
    session = session_of(session)
    return inspector.trace(session.ckpt, text, unit), session


@reading("reading the text")
def read_along(text, session):
    """The read-along view of the pasted text or the conversation."""
    session = session_of(session)
    passage, note = _passage(text, session)
    return views.surprisal_html(inspector.score(session.ckpt, passage).to_json(), note), session


@reading("ranking the units")
def unit_choices(text, session):
    """The ranked units, as dropdown choices (label, "kind:unit")."""
    session = session_of(session)
    ckpt = session.ckpt
    try:
        passage = _passage(text, session)[0] if (text or session.turns) else ""
        fallback = inspector.prepare(ckpt, passage) if passage else ""
    except ChatError:
        fallback = ""
    notes = inspector.notes_for(ckpt)
    if notes.training_text is None and not fallback:
        return gr.Dropdown(choices=[], info="paste a text first: units are ranked on it"), session
    ranked, on = notes.ranking(fallback)
    choices = [(f"{r['kind']} unit {r['unit']} · {r['property']} · r = {r['correlation']:+.2f}",
                f"{r['kind']}:{r['unit']}") for r in ranked]
    return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None,
                       info=f"ranked on {on}"), session


def pick_unit(choice):
    """A ranked unit was chosen: put it in the unit box and the state choice."""
    if not isinstance(choice, str) or ":" not in choice:
        return gr.skip(), gr.skip()
    kind, unit = choice.split(":", 1)
    return int(unit), kind


@reading("tracing the unit")
def trace_view(text, unit, kind, session):
    """The text coloured by one unit of the hidden state (or of an LSTM's memory cell)."""
    session = session_of(session)
    traced = inspector.trace(session.ckpt, _passage(text, session)[0], unit)
    if kind == "cell" and "cell" not in traced:
        raise ChatError("this model has no memory cell (an LSTM has); trace a hidden unit")
    return views.trace_html(traced, "cell" if kind == "cell" else "hidden"), session


@reading("explaining the reply")
def why_view(session):
    """The last reply with the distribution each character was drawn from."""
    session = session_of(session)
    if not session.turns:
        return views.why_html({"chars": []}), session
    return views.why_html(inspector.explain(session.ckpt, session.turns[-1])), session


@reading("explaining the reply")
def why_api(session):
    """/why(): the last reply, each character with its sampler distribution and rank."""
    session = session_of(session)
    if not session.turns:
        raise ChatError("no reply yet: send a message first")
    return inspector.explain(session.ckpt, session.turns[-1]), session


@reading("checking for memorisation")
def memorised_view(min_len, session):
    """The last reply with its verbatim spans from the training text."""
    session = session_of(session)
    notes = inspector.notes_for(session.ckpt)
    if notes.training_text is None:
        return views.memorised_html(None, notes.why_no_training_text), session
    if not session.turns:
        return views.memorised_html(None, "No reply yet: send a message first."), session
    mem = inspector.memorised_turn(notes.training_text, session.turns[-1], min_len)
    return views.memorised_html(mem.to_json()), session


def _step_view(session: ChatSession, settings) -> str:
    options, caption = inspector.step_options(session.ckpt, session.next_logits(), settings)
    return views.bars_html(options, caption)


async def step_begin(message, length, temperature, top_k, session):
    """Step mode: read the message (as Send would) and show the next-character bars; the
    message box empties."""
    chat, bars, session = await _step(session, length, temperature, top_k,
                                      lambda s, settings: s.step_start(message, settings))
    return chat, "", bars, session


async def _step(session, length, temperature, top_k, action):
    """Run one step-mode action on the session, then redraw the chat and the bars."""
    session = session_of(session)
    async with session.lock:
        try:
            settings = check_settings(length, temperature, top_k, len(session.ckpt.vocab))
            done = action(session, settings)
            if inspect.isawaitable(done):
                await done
            bars = _step_view(session, settings)
        except ChatError as e:
            raise refused(e) from None
        except Exception as e:
            raise failed(e, "the step") from None
        finally:
            session.park()
    return view(session), bars, session


async def step_choose(length, temperature, top_k, session, evt: gr.EventData):
    """A bar was clicked: append that character."""
    data = getattr(evt, "_data", None)
    choice = data.get("choice") if isinstance(data, dict) else None
    if not isinstance(choice, str):
        return gr.skip(), gr.skip(), session_of(session)
    return await _step(session, length, temperature, top_k, lambda s, _: s.step(choice))


async def step_model(length, temperature, top_k, session):
    """Let the model choose the next character (greedy or sampled by the sliders)."""
    return await _step(session, length, temperature, top_k, ChatSession.step_auto)


async def step_back(length, temperature, top_k, session):
    """Remove the last stepped character; the state returns to exactly before it."""
    return await _step(session, length, temperature, top_k, lambda s, _: s.step_back())


BARS_JS = """element.addEventListener('click', (e) => {
  const b = e.target.closest('button[data-choice]');
  if (b) trigger('click', {choice: b.dataset.choice});
});"""


def build_inside(session, chatbot, message, length, temperature, top_k) -> None:
    """The "Inside the model" part of the page and its API (/score, /trace, /why)."""
    limits = {"concurrency_limit": INSPECT_CONCURRENCY, "concurrency_id": "inspect"}
    with gr.Accordion("Inside the model", open=False, elem_id="inside"):
        text = gr.Textbox(label="Text to look at", lines=3, max_length=MAX_MESSAGE_CHARS,
                          placeholder="Paste a text, or leave empty to read this conversation",
                          elem_id="inside-text")
        with gr.Tabs():
            with gr.Tab("Read-along", id="readalong"):
                gr.Markdown("How surprised the model is by each character: read from a fresh "
                            "state as the book's loss reads it, each character predicted from "
                            "the ones before. Point at (or tap) a character for the model's top 5.")
                read_btn = gr.Button("Read", elem_id="read-btn")
                read_out = gr.HTML(js_on_load=None, elem_id="readalong")
            with gr.Tab("Why this character", id="why"):
                why_btn = gr.Button("Explain the last reply", elem_id="why-btn")
                why_out = gr.HTML(js_on_load=None, elem_id="why")
            with gr.Tab("Step mode", id="step"):
                gr.Markdown("Advance the reply one character at a time: type a message above, "
                            "press **Step**, then click a bar or let the model choose. The "
                            "conversation continues from exactly what was chosen.")
                with gr.Row():
                    step_btn = gr.Button("Step (from my message)", elem_id="step-btn")
                    model_btn = gr.Button("Let the model choose", elem_id="step-model")
                    back_btn = gr.Button("Step back", elem_id="step-back")
                bars = gr.HTML(js_on_load=BARS_JS, elem_id="bars")
            with gr.Tab("Neuron tracer", id="tracer"):
                with gr.Row():
                    ranked = gr.Dropdown(label="Units worth looking at", choices=[],
                                         elem_id="unit-list", scale=3)
                    unit = gr.Number(label="Unit", value=0, precision=0, minimum=0,
                                     elem_id="unit-number", scale=1)
                    kind = gr.Radio(["hidden", "cell"], value="hidden", label="State",
                                    info="cell: an LSTM's memory", elem_id="unit-kind", scale=1)
                with gr.Row():
                    rank_btn = gr.Button("Rank units", elem_id="rank-btn")
                    trace_btn = gr.Button("Trace", elem_id="trace-btn")
                trace_out = gr.HTML(js_on_load=None, elem_id="tracer")
            with gr.Tab("Memorisation", id="memorisation"):
                min_len = gr.Slider(5, 100, value=inspector.MIN_SPAN, step=1,
                                    label="Shortest span counted (characters)", elem_id="min-span")
                mem_btn = gr.Button("Check the last reply", elem_id="mem-btn")
                mem_out = gr.HTML(js_on_load=None, elem_id="memorisation")
    sliders = [length, temperature, top_k, session]
    read_btn.click(read_along, [text, session], [read_out, session], api_visibility="private", **limits)
    why_btn.click(why_view, [session], [why_out, session], api_visibility="private", **limits)
    mem_btn.click(memorised_view, [min_len, session], [mem_out, session],
                  api_visibility="private", **limits)
    rank_btn.click(unit_choices, [text, session], [ranked, session], api_visibility="private",
                   **limits)
    trace_btn.click(trace_view, [text, unit, kind, session], [trace_out, session],
                    api_visibility="private", **limits)
    ranked.input(pick_unit, [ranked], [unit, kind], api_visibility="private").then(
        trace_view, [text, unit, kind, session], [trace_out, session], api_visibility="private",
        **limits)
    stepping = {"api_visibility": "private", "show_progress": "hidden", "preprocess": False,
                "postprocess": False}
    step_btn.click(step_begin, [message, *sliders], [chatbot, message, bars, session], **stepping)
    bars.click(step_choose, sliders, [chatbot, bars, session], **stepping)
    model_btn.click(step_model, sliders, [chatbot, bars, session], **stepping)
    back_btn.click(step_back, sliders, [chatbot, bars, session], **stepping)

    # The API: /score(text), /trace(text, unit), /why() return JSON.
    result = gr.JSON(visible=False)
    api_unit = gr.Number(visible=False, precision=0)
    gr.Button(visible=False).click(score_api, [text, session], [result, session],
                                   api_name="score",
                                   api_description=API_DESCRIPTIONS["score"], **limits)
    gr.Button(visible=False).click(trace_api, [text, api_unit, session], [result, session],
                                   api_name="trace",
                                   api_description=API_DESCRIPTIONS["trace"], **limits)
    gr.Button(visible=False).click(why_api, [session], [result, session], api_name="why",
                                   api_description=API_DESCRIPTIONS["why"], **limits)


# ---------------------------------------------------------------- the page

INTRO = f"""# Time Machine char-RNN
The character-level RNN of [*Dive into Deep Learning* §8.5]({BOOK_URL}), trained on H. G. Wells'
*The Time Machine*, continues whatever you type, one character at a time. The whole conversation
is **one continuous text** that the model keeps reading (press *Whole text* to see it).

<details><summary>More about what it reads</summary>

Each reply follows everything said before: the model's hidden state has read every message and
every reply, in order. It reads only the characters its training text had (the bundled model:
lowercase letters and spaces); the line under your message says what it read and what it dropped.
Temperature 0 gives the book's own greedy `predict_ch8` continuation; a seed makes a sampled reply
repeatable, and each reply's *Link* button reproduces it.
</details>"""


THEME = gr.themes.Soft().set(   # WCAG AA contrast (4.5:1) for small text, both themes
    body_text_color_subdued="*neutral_600", body_text_color_subdued_dark="*neutral_300",
    block_title_text_color="*primary_700", block_label_text_color="*primary_700",
    input_placeholder_color="*neutral_500", input_placeholder_color_dark="*neutral_400",
    link_text_color="*primary_700", link_text_color_dark="*primary_300",
    link_text_color_visited="*primary_800", link_text_color_visited_dark="*primary_200",
    button_primary_background_fill="*primary_700", button_primary_background_fill_hover="*primary_800",
    button_primary_background_fill_dark="*primary_600",
    button_primary_background_fill_hover_dark="*primary_700")


def build() -> gr.Blocks:
    vocab_size = len(DEFAULT.vocab)
    with gr.Blocks(title="Time Machine char-RNN", delete_cache=(600, 600)) as demo:
        session = gr.State(None, time_to_live=SESSION_TTL)
        linked = gr.State(False)
        gr.Markdown(INTRO, elem_id="intro")
        if NOTICE:
            gr.Markdown(f"⚠️ {md_escape(NOTICE)}", elem_id="notice")
        with gr.Row():
            with gr.Column(scale=3, min_width=300):
                conversation = gr.HTML(
                    conversation_view([]), html_template=CONVERSATION_HTML,
                    css_template=CONVERSATION_CSS, js_on_load=CONVERSATION_JS, elem_id="chat",
                    label="Conversation")
                with gr.Row(equal_height=True, elem_id="input-row"):
                    message = gr.Textbox(label="Message", show_label=False, scale=6, lines=1,
                                         container=False,
                                         max_lines=6, elem_id="message", autofocus=False,
                                         placeholder="Start a sentence…")
                    send = gr.Button("Send", variant="primary", scale=0, elem_id="send", size="md")
                    stop = gr.Button("Stop", variant="stop", scale=0, elem_id="stop", size="md")
                    gr.Button("Settings", scale=0, elem_id="settings-jump", size="md",
                                     elem_classes="phone-only")
                chat_error = gr.HTML("", elem_id="chat-error", elem_classes="line-error")
                gr.HTML('<p id="busy-note" role="status" hidden>A reply is streaming: wait '
                        'for it, or press Stop (Esc). Your message stays in the box.</p>',
                        elem_classes="line-note")
                typed = gr.HTML("", elem_id="preview", elem_classes="line-note")
                with gr.Row(elem_classes="example-row"):
                    gr.HTML("<p>Examples (sent at once):</p>", elem_classes="line-note")
                    examples = [gr.Button(e, size="sm", scale=0) for e in EXAMPLES]
                    clear = gr.Button("New chat", size="sm", scale=0, elem_id="new-chat")
            with gr.Column(scale=2, min_width=300, elem_id="settings"):
                gr.Markdown("**Settings** (changes apply to the next reply)", elem_id="settings-title")
                length = gr.Slider(1, MAX_LENGTH, value=200, step=1, label="Length",
                                   info="characters per reply", buttons=[])
                temperature = gr.Slider(0, MAX_TEMPERATURE, value=0.7, step=0.05,
                                        label="Temperature", buttons=[],
                                        info="0 = greedy, the book's predict_ch8; higher = bolder")
                top_k = gr.Slider(0, vocab_size, value=0, step=1, label="Top-k", buttons=[],
                                  info="sample from the k most likely characters; 0 = all")
                seed = gr.Textbox("", label="Seed", placeholder="random", max_lines=1,
                                  elem_id="seed", info="empty = a new random seed for each reply "
                                  "(shown under it); the same seed repeats a sampled reply")
                card = gr.Markdown(DEFAULT_CARD, elem_id="model-card", label="model")
                plot = gr.HTML(plot_html(DEFAULT), elem_id="plot")
                bundled = gr.Dropdown([(bundled_label(m), m["ref"]) for m in BUNDLED_MODELS],
                                      value=None, label="Bundled models", elem_id="bundled",
                                      info="pick one for this tab: its cell, size and "
                                           "validation figure")
                with gr.Accordion("Load another model (for this tab only)", open=False):
                    ref = gr.Textbox(label="Hub repo id or local folder",
                                     placeholder="owner/name or checkpoints/NAME")
                    revision = gr.Textbox(label="Revision (optional)",
                                          placeholder="branch, tag or commit; default main")
                    load = gr.Button("Load model", elem_id="load")
                    load_error = gr.HTML("", elem_id="load-error", elem_classes="line-error")

        with gr.Accordion("Compare: one message, two or three settings or models, side by side",
                          open=False, elem_id="compare"):
            gr.Markdown("Each pane is a fresh conversation; Length, Top-k and Seed come from "
                        "the settings above, one seed for all panes.")
            with gr.Row(equal_height=True):
                compare_message = gr.Textbox(label="Message to compare", scale=4, max_lines=3,
                                             placeholder="e.g. the time traveller")
                third = gr.Checkbox(True, label="Use pane 3", scale=1)
                compare_button = gr.Button("Compare", variant="primary", scale=1)
            compare_error = gr.HTML("", elem_id="compare-error", elem_classes="line-error")
            pane_temperatures, pane_models, pane_texts = [], [], []
            with gr.Row():
                for i, t in enumerate((0.0, 0.5, 1.0)):
                    with gr.Column(min_width=220):
                        pane_temperatures.append(gr.Slider(
                            0, MAX_TEMPERATURE, value=t, step=0.05, buttons=[],
                            label=f"Temperature, pane {i + 1}"))
                        pane_models.append(gr.Textbox(
                            label=f"Model, pane {i + 1}", max_lines=1,
                            placeholder="empty: this tab's; or owner/name, checkpoints/NAME"))
                        pane_texts.append(gr.Textbox(
                            label=f"Pane {i + 1}", lines=6, max_lines=12, interactive=False,
                            buttons=["copy"], elem_classes="pane"))

        settings = [length, temperature, top_k, seed, session]
        sent = [conversation, message, chat_error, typed, session]
        chatting = gr.on([message.submit, send.click], respond, [message, *settings], sent,
                         api_visibility="private", concurrency_limit=CHAT_CONCURRENCY,
                         concurrency_id="chat", show_progress="hidden", trigger_mode="once",
                         preprocess=False, postprocess=False)
        for example in examples:   # an example is sent at once
            example.click(respond, [example, *settings], sent, api_visibility="private",
                          concurrency_limit=CHAT_CONCURRENCY, concurrency_id="chat",
                          show_progress="hidden", trigger_mode="once", preprocess=False,
                          postprocess=False)
        retrying = conversation.retry(retry, settings, sent, api_visibility="private",
                                      concurrency_id="chat", concurrency_limit=CHAT_CONCURRENCY,
                                      show_progress="hidden", preprocess=False, postprocess=False)
        conversation.undo(undo, [session], [conversation, message, chat_error, session],
                          api_visibility="private", show_progress="hidden", preprocess=False,
                          postprocess=False)
        stop.click(None, cancels=[chatting, retrying]).then(
            show, [session], [conversation], api_visibility="private", show_progress="hidden",
            preprocess=False, postprocess=False)
        clear.click(new_page_chat, [session], [conversation, chat_error, session],
                    api_visibility="private", cancels=[chatting, retrying],
                    show_progress="hidden", preprocess=False, postprocess=False)
        message.input(preview, [message, session], [typed], api_visibility="private",
                      trigger_mode="always_last", show_progress="hidden", preprocess=False,
                      concurrency_limit=None)
        load.click(load_on_page, [ref, revision, session],
                   [card, plot, conversation, top_k, load_error, session],
                   api_visibility="private", concurrency_limit=16, concurrency_id="load",
                   cancels=[chatting, retrying], show_progress_on=[load], preprocess=False)
        demo.load(open_link, [session],
                  [card, plot, conversation, message, length, temperature, top_k, seed,
                   chat_error, session, linked], api_visibility="private",
                  show_progress="hidden", preprocess=False, concurrency_limit=16).then(
            send_link, [linked, message, *settings], sent, api_visibility="private",
            concurrency_limit=CHAT_CONCURRENCY, concurrency_id="chat", show_progress="hidden",
            preprocess=False, postprocess=False)
        no_revision = gr.State("")
        bundled.input(load_on_page, [bundled, no_revision, session],
                      [card, plot, conversation, top_k, load_error, session],
                      api_visibility="private", concurrency_limit=16, concurrency_id="load",
                      cancels=[chatting, retrying], preprocess=False)
        gr.api(list_bundled_models, api_name="bundled_models",
               api_description=API_DESCRIPTIONS["bundled_models"])

        gr.on([compare_button.click, compare_message.submit], compare,
              [compare_message, length, top_k, seed, third, *pane_temperatures, *pane_models,
               session], [*pane_texts, compare_error], api_visibility="private",
              concurrency_limit=CHAT_CONCURRENCY // COMPARE_PANES, concurrency_id="compare",
              show_progress="hidden", trigger_mode="once", preprocess=False)

        build_inside(session, conversation, message, length, temperature, top_k)

        # The API: /chat(message, length, temperature, top_k) streams the reply as plain
        # text; /load_model(ref, revision) and /new_chat as before the page had its own.
        with gr.Column(visible=False):
            reply = gr.Textbox(label="reply")
            api_conversation = gr.JSON(label="conversation")
            api_chat, api_load, api_new = gr.Button(), gr.Button(), gr.Button()
        api_chat.click(chat, [message, length, temperature, top_k, session], [reply, session],
                       api_name="chat", api_description=API_DESCRIPTIONS["chat"],
                       concurrency_limit=CHAT_CONCURRENCY,
                       concurrency_id="chat", preprocess=False,
                       postprocess=False)  # the reply is plain text
        api_load.click(load_other_model, [ref, revision, session],
                       [card, api_conversation, top_k, session], api_name="load_model",
                       api_description=API_DESCRIPTIONS["load_model"],
                       concurrency_limit=16, concurrency_id="load")   # LOAD_GATE answers at once when busy
        api_new.click(new_chat, [session], [api_conversation, session], api_name="new_chat",
                      api_description=API_DESCRIPTIONS["new_chat"])
    # Queue positions are sent once a second, not to every waiting visitor whenever any event
    # starts ("auto"): that is N² messages when N sessions arrive together.
    demo.queue(max_size=2048, status_update_rate=1)
    demo.validate_inputs = too_few_inputs
    return demo


def too_few_inputs(block_fn, inputs: list) -> None:
    """A call with missing values is refused with the reason (Gradio's own check raises an
    error whose text visitors never see)."""
    if len(inputs) < len(block_fn.inputs):
        names = ", ".join(getattr(b, "label", None) or type(b).__name__ for b in block_fn.inputs)
        raise gr.Error(f"{block_fn.api_name or block_fn.name} takes {len(block_fn.inputs)} values "
                       f"({names}) but got {len(inputs)}; gradio_client fills in the state",
                       print_exception=False)


class SessionRecord(state_holder.SessionState):
    """Gradio's per-visitor record (one per browser tab or API client) without its eager copy
    of every block's config: Gradio makes one at each new session for deep links, which this
    app does not offer, and for this page's ~70 blocks that was the largest cost of admitting
    a session (64 arriving at once waited ~2x as long for their first character). Configs are
    made when an event updates a block, as Gradio does for blocks it did not copy."""

    def __init__(self, blocks):
        self.blocks_config = copy.copy(blocks.default_config)
        self.config_values = {}
        self.state_data = {}
        self._state_ttl = {}
        self.is_closed = False
        self.STATE_TTL_WHEN_CLOSED = 1 if os.getenv("GRADIO_IS_E2E_TEST") else 3600


state_holder.SessionState = SessionRecord


class NoUploads:
    """The app takes no files: Gradio's upload route is closed (403) before it reads a byte,
    so nobody can store files on the server or learn its temporary paths."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith("/upload"):
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"this app takes no uploads"})
            return
        await self.app(scope, receive, send)


demo = build()

def return_freed_memory_to_the_system() -> None:
    """Let glibc give a dropped model's memory back: by default it raises its mmap threshold
    past the first freed large block, and later weights land in heaps that never shrink, so
    the process would stay as large as every model it ever loaded (Linux/glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)   # M_MMAP_THRESHOLD: 1 MB, fixed
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    return_freed_memory_to_the_system()
    # The ~350k objects of Gradio, torch and the model live as long as the server: keep them
    # out of the garbage collector's full passes (~200 ms each, stalling every stream).
    gc.freeze()
    # The generation thread gives up the GIL inside every torch operation and must win it
    # back after each; with Python's default 5 ms switch interval a busy event loop keeps it
    # waiting that long per operation (replies' steps then took 30-100 ms to come back at 64
    # sessions). 1 ms bounds the wait; the loop's extra switches cost little.
    sys.setswitchinterval(0.001)
    # Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT. Gradio runs at most
    # max_threads events at once whatever their concurrency limits, so it is raised to match.
    # Uploads: closed by NoUploads; max_file_size and the cache cleanup stand behind it.
    demo.launch(css=CSS + views.CSS, theme=THEME, max_threads=CHAT_CONCURRENCY + 16,
                state_session_capacity=SESSIONS_KEPT, max_file_size=0,
                app_kwargs={"middleware": [Middleware(NoUploads)]})
