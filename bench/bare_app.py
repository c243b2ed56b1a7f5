"""The framework's floor: a bare Gradio app with the chat app's `/chat` API and no model.

Same signature (message, length, temperature, top_k, and the session State), same Gradio
settings (queue, concurrency, status updates, session capacity, analytics, gc.freeze), and
the same pace: characters fall due at 60 a second and go out in updates every 50 ms (the
first at once). What it streams is the message repeated, so no model, no sampling and no
conversation logic cost anything: whatever the server spends is Gradio's.

    python -m bench.bare_app            # GRADIO_SERVER_PORT, as app.py
    python -m bench.serve_load          # measures app.py and this side by side
"""
from __future__ import annotations

import asyncio
import gc
import itertools
import os
import time

os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")

import gradio as gr  # noqa: E402  (after the environment it reads)

CHAT_CONCURRENCY = 256
CHARS_PER_SECOND = 60.0
UPDATE_INTERVAL = 0.05
SESSIONS_KEPT = 1000


async def chat(message, length, temperature, top_k, session):
    """Stream `length` characters of `message`, repeated, at the chat app's pace."""
    n = int(length)
    text = "".join(itertools.islice(itertools.cycle(str(message) or " "), n))
    stored, start, sent = session if session is not None else {}, time.monotonic(), 0
    while sent < n:
        sent = min(n, int((time.monotonic() - start) * CHARS_PER_SECOND) + 1)
        yield text[:sent], stored
        stored = gr.skip()
        if sent < n:
            await asyncio.sleep(UPDATE_INTERVAL)


def build() -> gr.Blocks:
    with gr.Blocks(title="bare") as demo:
        session = gr.State(None, time_to_live=3600)
        message = gr.Textbox(label="Message")
        length = gr.Slider(1, 1000, value=200, step=1, label="Length")
        temperature = gr.Slider(0, 2, value=0.7, label="Temperature")
        top_k = gr.Slider(0, 28, value=0, step=1, label="Top-k")
        reply = gr.Textbox(visible=False, label="reply")
        button = gr.Button(visible=False)
        button.click(chat, [message, length, temperature, top_k, session], [reply, session],
                     api_name="chat", concurrency_limit=CHAT_CONCURRENCY, concurrency_id="chat",
                     preprocess=False, postprocess=False)
    demo.queue(max_size=2048, status_update_rate=1)
    return demo


demo = build()

if __name__ == "__main__":
    gc.freeze()
    demo.launch(max_threads=CHAT_CONCURRENCY + 16, state_session_capacity=SESSIONS_KEPT)
