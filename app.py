"""The chat: the §8.5 RNN continues whatever you type, streaming from its carried hidden state.

    python app.py          # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

The model comes from RNN_MODEL (a Hub repo id or a local checkpoint folder) and optional
RNN_MODEL_REVISION, as a Hugging Face Space is configured; default and fallback: the bundled
checkpoint. Each browser tab or API client has its own conversation and model choice.
The conversation logic lives in rnn_core/chat.py; this file is the page and its API.
"""
from __future__ import annotations

import ctypes
import gc
import html
import logging
import os
import re
from contextlib import aclosing
from pathlib import Path

import anyio
import gradio as gr
import torch
from huggingface_hub import constants
from starlette.middleware import Middleware

from rnn_core.chat import (MAX_LENGTH, MAX_SERVED_PARAMETERS, MAX_TEMPERATURE, ChatError,
                           ChatSession, LoadGate, ModelCache, check_settings, describe_vocab,
                           num_params, resolve_model_ref, stream_reply)
from rnn_core.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from rnn_core.hub import load_from_hub, load_model

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


def load_served(ref: str, revision: str | None) -> Checkpoint:
    """What a visitor may load (after resolve_model_ref): a folder under checkpoints/ (given
    as an absolute path) or a Hub repo, within the app's size limit."""
    if Path(ref).is_absolute():
        return load_checkpoint(ref, max_parameters=MAX_SERVED_PARAMETERS)
    return load_from_hub(ref, revision, MAX_SERVED_PARAMETERS)


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
    """Where a model came from, for people: the repo and commit, or the folder (relative to
    the app, so no server paths are shown)."""
    if ckpt.commit:
        return f"Hub repo {md_escape(ckpt.source)} at commit {ckpt.commit[:12]}"
    path = Path(ckpt.source).resolve()
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    return f"{md_escape(name)}{' (bundled with the app)' if path == BUNDLED else ' (local folder)'}"


def model_card(ckpt: Checkpoint) -> str:
    """The loaded model in a few lines of Markdown."""
    ppl = ckpt.config.record().get("final_val_ppl")
    ppl = f"{ppl:.2f}" if ppl is not None else "not measured"
    return (f"**Model:** {model_source(ckpt)}  \n"
            f"{ckpt.config.num_hiddens} hidden units · {num_params(ckpt):,} parameters · "
            f"validation perplexity {ppl}  \n"
            f"**Vocabulary** ({len(ckpt.vocab)} tokens, `{ckpt.normalization}` normalisation): "
            f"{md_escape(describe_vocab(ckpt.vocab))}")


def bubble(role: str, text: str) -> dict:
    """A chat message shown verbatim: HTML-escaped (the page renders no Markdown or HTML),
    and as a text part so Gradio does not strip its leading spaces."""
    return {"role": role, "content": [{"type": "text", "text": html.escape(text, quote=False)}]}


def history(turns) -> list[dict]:
    return [m for t in turns for m in (bubble("user", t.text), bubble("assistant", t.reply))]


def session_of(session: ChatSession | None) -> ChatSession:
    """This visitor's conversation, created on first use with the app's model."""
    return session if session is not None else ChatSession(DEFAULT)


DEFAULT, DEFAULT_KEY, DEFAULT_CARD, NOTICE = startup_model()
MODELS.models[DEFAULT_KEY] = MODELS.alive[DEFAULT_KEY] = DEFAULT   # shared, never dropped
MODELS.keep.add(DEFAULT_KEY)


# ---------------------------------------------------------------- event handlers

def public(text: str) -> str:
    """A reason as visitors may read it: no server paths, Hub endpoint or cache location."""
    for secret, shown in ((str(ROOT) + os.sep, ""), (constants.HF_HUB_CACHE, "the model cache"),
                          (f" at {constants.ENDPOINT}", ""), (constants.ENDPOINT, "the Hub")):
        text = text.replace(secret, shown)
    return text


def refused(e: Exception, prefix: str = "") -> gr.Error:
    """An error event carrying the reason (escaped: the page renders error text as HTML)."""
    return gr.Error(html.escape(public(prefix + str(e)), quote=False), print_exception=False)


def failed(e: Exception, what: str) -> gr.Error:
    """An unexpected failure: logged for the operator, one line for the visitor, whose
    session stays as it was before the event."""
    log.exception("%s failed", what)
    return gr.Error(f"{what} failed ({type(e).__name__}); the conversation is unchanged: try "
                    "again, or press New chat", print_exception=False)


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


async def respond(message, length, temperature, top_k, session):
    """The page's send: the conversation so far plus the growing reply; clears the box."""
    session = session_of(session)
    past, cleared, stored = None, "", session
    async with aclosing(_stream(session, message, length, temperature, top_k)) as replies:
        async for _ in replies:
            if past is None:
                past = history(session.turns[:-1])
            yield past + history(session.turns[-1:]), cleared, stored
            cleared = stored = gr.skip()


async def retry(length, temperature, top_k, session):
    """Rewind the last turn and answer its message again with the current settings."""
    session = session_of(session)
    async with session.lock:
        turn = session.undo()
    if turn is None:
        yield [], gr.skip(), session
        return
    async with aclosing(respond(turn.message, length, temperature, top_k, session)) as updates:
        async for update in updates:
            yield update[0], gr.skip(), update[2]


async def undo(session):
    """Rewind the last turn and put its message back in the box."""
    session = session_of(session)
    async with session.lock:
        turn = session.undo()
    return history(session.turns), (turn.message if turn else gr.skip()), session


async def show(session):
    """Redraw the conversation from the session (after Stop: exactly what the state read)."""
    return history(session_of(session).turns)


async def new_chat(session):
    """Forget the conversation: zero hidden state, empty transcript (on the app's model if
    this session's model was unloaded meanwhile)."""
    session = session_of(session)
    async with session.lock:
        if session.model() is None:
            session.use(DEFAULT)
        session.reset()
    return [], session


def visitor(request: gr.Request | None) -> str:
    """Who is asking, for per-visitor limits: the client's address (else the session)."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or getattr(request, "session_hash", None) or "?"


async def load_other_model(ref, revision, session, request: gr.Request = None):
    """Switch this session (only) to a Hub repo id or a folder under checkpoints/. The model
    is loaded and its card made before anything changes, so a failed load changes nothing.
    Hub loads pass LOAD_GATE and are answered within LOAD_TIMEOUT; folders and models already
    in memory need no slot."""
    session = session_of(session)
    who = visitor(request)
    try:
        ref, revision = resolve_model_ref(ref, revision, CHECKPOINTS)
        ckpt = MODELS.cached(ref, revision)
        if ckpt is None and Path(ref).is_absolute():
            ckpt = await anyio.to_thread.run_sync(MODELS.get, ref, revision)
        elif ckpt is None:
            LOAD_GATE.enter(who)

            def load():
                try:
                    return MODELS.get(ref, revision)
                finally:
                    LOAD_GATE.leave(who)
            with anyio.fail_after(LOAD_TIMEOUT):
                ckpt = await anyio.to_thread.run_sync(load, abandon_on_cancel=True)
        card = model_card(ckpt)
    except TimeoutError:
        log.warning("a model load timed out after %g s (%r at revision %r)", LOAD_TIMEOUT, ref,
                    revision)
        raise refused(ChatError(f"loading {ref} took longer than {LOAD_TIMEOUT:g} s (the Hub is "
                                "slow or not answering): try again later"),
                      "Model not loaded: ") from None
    except (ChatError, CheckpointError) as e:
        log.warning("refused a model load for one session (%r at revision %r): %s", ref,
                    revision, e)
        raise refused(e, "Model not loaded: ") from None
    except Exception as e:
        raise failed(e, "loading the model") from None
    async with session.lock:
        session.use(ckpt)
    return card, [], gr.Slider(maximum=len(ckpt.vocab)), session


# ---------------------------------------------------------------- the page

CSS = """
.verbatim .message-content, .verbatim .message-content * { white-space: pre-wrap; }
#model-card { font-size: var(--text-sm); }
"""

INTRO = """# Time Machine char-RNN
The character-level RNN of *Dive into Deep Learning* §8.5, written from scratch and trained on
H. G. Wells' *The Time Machine*. Type the start of a sentence: it continues your text one
character at a time. The whole conversation is one continuous text that the model keeps reading,
so each reply follows everything said before. It reads only the characters its training text had
(the bundled model: lowercase letters and spaces), so your message is shown as the model read it."""


def build() -> gr.Blocks:
    vocab_size = len(DEFAULT.vocab)
    with gr.Blocks(title="Time Machine char-RNN", delete_cache=(600, 600)) as demo:
        session = gr.State(None, time_to_live=SESSION_TTL)
        gr.Markdown(INTRO)
        if NOTICE:
            gr.Markdown(f"⚠️ {md_escape(NOTICE)}", elem_id="notice")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="Conversation", height=440, elem_id="chat", elem_classes="verbatim",
                    render_markdown=False, sanitize_html=True, allow_tags=False,
                    latex_delimiters=[], buttons=[], feedback_options=None,
                    placeholder="The model's replies stream here.")
                with gr.Row(equal_height=True):
                    message = gr.Textbox(label="Message", show_label=False, scale=6, autofocus=True, lines=1,
                                         placeholder="Type the start of a sentence and press Enter")
                    send = gr.Button("Send", variant="primary", size="md", scale=0, min_width=90)
                    stop = gr.Button("Stop", size="md", scale=0, min_width=90)
                    clear = gr.Button("New chat", size="md", scale=0, min_width=120)
                gr.Examples(EXAMPLES, inputs=[message], cache_examples=False,
                            label="Examples (click one, then Send)")
            with gr.Column(scale=2):
                length = gr.Slider(1, MAX_LENGTH, value=200, step=1, label="Length",
                                   info="characters per reply")
                temperature = gr.Slider(0, MAX_TEMPERATURE, value=0.7, step=0.05,
                                        label="Temperature",
                                        info="0 = greedy, the book's predict_ch8; higher = bolder")
                top_k = gr.Slider(0, vocab_size, value=0, step=1, label="Top-k",
                                  info="sample from the k most likely characters; 0 = all")
                card = gr.Markdown(DEFAULT_CARD, elem_id="model-card", label="model")
                with gr.Accordion("Load another model (for this tab only)", open=False):
                    ref = gr.Textbox(label="Hub repo id or local folder",
                                     placeholder="owner/name or checkpoints/NAME")
                    revision = gr.Textbox(label="Revision (optional)",
                                          placeholder="branch, tag or commit; default main")
                    load = gr.Button("Load model")

        settings = [length, temperature, top_k, session]
        chatting = gr.on([message.submit, send.click], respond, [message, *settings],
                         [chatbot, message, session], api_visibility="private",
                         concurrency_limit=CHAT_CONCURRENCY, concurrency_id="chat",
                         show_progress="hidden", trigger_mode="once", preprocess=False)
        retrying = chatbot.retry(retry, settings, [chatbot, message, session],
                                 api_visibility="private", concurrency_id="chat",
                                 concurrency_limit=CHAT_CONCURRENCY, show_progress="hidden",
                                 preprocess=False)
        chatbot.undo(undo, [session], [chatbot, message, session], api_visibility="private")
        stop.click(None, cancels=[chatting, retrying]).then(
            show, [session], [chatbot], api_visibility="private")
        clear.click(new_chat, [session], [chatbot, session], api_name="new_chat",
                    cancels=[chatting, retrying])
        chatbot.clear(new_chat, [session], [chatbot, session], api_visibility="private",
                      cancels=[chatting, retrying])
        load.click(load_other_model, [ref, revision, session], [card, chatbot, top_k, session],
                   api_name="load_model", concurrency_limit=16, concurrency_id="load",
                   cancels=[chatting, retrying])   # LOAD_GATE answers at once when busy

        # The API: /chat(message, length, temperature, top_k) streams the reply as plain text.
        reply = gr.Textbox(visible=False, label="reply")
        api_button = gr.Button(visible=False)
        api_button.click(chat, [message, *settings], [reply, session], api_name="chat",
                         concurrency_limit=CHAT_CONCURRENCY, concurrency_id="chat",
                         preprocess=False, postprocess=False)  # the reply is plain text
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
    torch.set_num_threads(1)  # one batch-1 step is far too small to split across threads
    return_freed_memory_to_the_system()
    # The ~350k objects of Gradio, torch and the model live as long as the server: keep them
    # out of the garbage collector's full passes (~200 ms each, stalling every stream).
    gc.freeze()
    # Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT. Gradio runs at most
    # max_threads events at once whatever their concurrency limits, so it is raised to match.
    # Uploads: closed by NoUploads; max_file_size and the cache cleanup stand behind it.
    demo.launch(css=CSS, theme=gr.themes.Soft(), max_threads=CHAT_CONCURRENCY + 16,
                state_session_capacity=SESSIONS_KEPT, max_file_size=0,
                app_kwargs={"middleware": [Middleware(NoUploads)]})
