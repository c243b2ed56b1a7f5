"""The chat page in a real browser: Playwright driving Debian's chromium against `python app.py`.

Saves a screenshot of a conversation to artifacts/chat.png for a reviewer to look at.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from rnn_core.session import join_separator
from rnn_core.checkpoint import load_checkpoint
from rnn_core.data import normalize_prompt
from test_app import AppServer, continuation, other_model

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `bash tests/run.sh` (installs Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, server: AppServer) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 960})
    page.goto(server.url)
    page.wait_for_selector("#chat")
    return page


def bot_texts(page: Page) -> list[str]:
    """The replies as the page renders them (innerText: what a reader sees)."""
    return page.locator('#chat [data-testid="bot"]').all_inner_texts()


def user_texts(page: Page) -> list[str]:
    return page.locator('#chat [data-testid="user"]').all_inner_texts()


def send(page: Page, message: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(message)
    box.press("Enter")


def wait_reply(page: Page, count: int, length: int | None = None, text: str | None = None,
               timeout: float = 30) -> str:
    """Wait until reply number `count` has `length` characters (or reads `text`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = bot_texts(page)
        if len(texts) >= count and (texts[count - 1] == text if text is not None
                                    else len(texts[count - 1]) >= length):
            return texts[count - 1]
        time.sleep(0.05)
    raise AssertionError(f"reply {count} did not reach {text or length!r}: {bot_texts(page)}")


def move_slider(page: Page, label: str, value: float) -> None:
    page.locator(f'input[type="range"][aria-label="range slider for {label}"]').fill(str(value))


@pytest.fixture(scope="module")
def bundled_app(tmp_path_factory, bundled_checkpoint):
    server = AppServer(tmp_path_factory.mktemp("browser"), RNN_MODEL=None)
    yield server
    server.stop()


def test_chat_in_the_browser(browser, bundled_app, bundled_checkpoint):
    bundled = load_checkpoint(bundled_checkpoint)
    page = open_page(browser, bundled_app)
    assert "checkpoints/timemachine-rnn512 (bundled with the app)" in page.inner_text("#model-card")

    # An example is sent at once; the reply grows while it streams.
    page.get_by_role("button", name="time traveller", exact=True).click()
    wait_reply(page, 1, 1)                                           # streaming has begun
    samples = []
    for _ in range(8):
        time.sleep(0.2)
        samples.append((bot_texts(page) or [""])[-1])
    assert all(b.startswith(a) for a, b in zip(samples, samples[1:])), samples
    assert len({len(s) for s in samples if s}) >= 4, samples      # seen growing, not at once
    first = wait_reply(page, 1, 200)                                 # default length
    assert len(first) == 200 and user_texts(page) == ["time traveller"]

    # Length 40 and greedy: the next reply follows the slider and continues the transcript
    # exactly as shown on the page (so nothing shown was dropped, leading spaces included).
    move_slider(page, "Length", 40)
    move_slider(page, "Temperature", 0)
    send(page, "The Machine!")
    second = wait_reply(page, 2, 40)
    time.sleep(0.3)
    assert len(bot_texts(page)[1]) == 40
    transcript = "time traveller" + first
    m = normalize_prompt("The Machine!", "book")
    transcript += join_separator(transcript, m) + m
    assert second == continuation(bundled, transcript, 40)
    assert user_texts(page)[1] == "the machine "
    (ROOT / "artifacts").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "artifacts" / "chat.png"), full_page=True)

    # Stop: the reply stops growing and the state has read exactly what is shown.
    move_slider(page, "Length", 1000)
    send(page, "and then")
    wait_reply(page, 3, 20)
    page.get_by_role("button", name="Stop").click()
    time.sleep(0.5)
    stopped = bot_texts(page)[2]
    time.sleep(0.5)
    assert bot_texts(page)[2] == stopped and 20 <= len(stopped) < 1000
    move_slider(page, "Length", 30)
    send(page, "said he")
    fourth = wait_reply(page, 4, 30)
    shown = "time traveller" + first
    for message, reply in (("The Machine!", second), ("and then", stopped), ("said he", "")):
        m = normalize_prompt(message, "book")
        shown += join_separator(shown, m) + m + reply
    assert fourth == continuation(bundled, shown, 30)

    # Undo removes the last exchange, puts its message back and rewinds the state; retry
    # (greedy) then answers the same message the same way, from the same state.
    page.locator('#chat button[aria-label="Undo"]').click()
    expect(page.get_by_role("textbox", name="Message")).to_have_value("said he")
    page.wait_for_function("document.querySelectorAll('#chat [data-testid=\"bot\"]').length == 3")
    send(page, "said he")
    assert wait_reply(page, 4, 30) == fourth
    page.locator('#chat button[aria-label="Retry"]').click()
    page.wait_for_function("""() => { const b = document.querySelectorAll('#chat [data-testid="bot"]');
        return b.length < 4 || b[3].innerText.length < 30; }""", polling=20)   # it restarted
    assert wait_reply(page, 4, 30) == fourth and len(bot_texts(page)) == 4

    # New chat: an empty conversation, and the state forgets everything.
    page.get_by_role("button", name="New chat").click()
    page.wait_for_function("document.querySelectorAll('#chat [data-testid=\"bot\"]').length == 0")
    send(page, "time traveller")
    assert wait_reply(page, 1, 30) == continuation(bundled, "time traveller", 30)


def test_markup_is_shown_as_text_never_run(browser, tmp_path_factory):
    """A raw-normalisation model reads '<', '>', '&' and quotes: both the message and the
    reply must appear verbatim, with no element created and no script run."""
    folder = other_model(tmp_path_factory.mktemp("raw") / "raw")
    server = AppServer(tmp_path_factory.mktemp("raw-logs"), RNN_MODEL=str(folder))
    try:
        page = open_page(browser, server)
        message = '<b>bad</b> <img src=x onerror="window.pwned=1"> &amp; "a\'b"'
        move_slider(page, "Length", 60)
        move_slider(page, "Temperature", 0)
        send(page, message)
        wait_reply(page, 1, text=continuation(load_checkpoint(folder), message, 60))
        assert user_texts(page) == [message]
        assert page.locator("#chat .message-content b, #chat .message-content img").count() == 0
        assert page.evaluate("window.pwned") is None
    finally:
        server.stop()
