"""The page as people meet it: Playwright driving Debian's chromium against `python app.py`, at
desktop (1366×768) and phone (390×844, touch) sizes, in the light and dark themes.

Every state a test reaches is saved as a screenshot under artifacts/page/ for review. The app
under test has HF_ENDPOINT pointed at a server that accepts connections and never answers (an
unreachable Hub); it serves the bundled model, so everything else works offline.
"""
from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from rnn_core.card import BOOK_URL
from rnn_core.session import join_separator
from rnn_core.checkpoint import load_checkpoint
from rnn_core.data import normalize_prompt
from rnn_core.generation import generate_text
import test_browser
from test_app import AppServer, continuation

browser = test_browser.browser   # Debian's chromium, headless (the same fixture)
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "page"
UNREACHABLE = "The Hugging Face Hub cannot be reached; the current model stays loaded"
LOOKS = {  # name: (viewport, phone?, theme)
    "desktop-light": ({"width": 1366, "height": 768}, False, "light"),
    "desktop-dark": ({"width": 1366, "height": 768}, False, "dark"),
    "phone-light": ({"width": 390, "height": 844}, True, "light"),
    "phone-dark": ({"width": 390, "height": 844}, True, "dark"),
}


@pytest.fixture(scope="module")
def silent_hub():
    """An address that accepts connections and never answers: a Hub that cannot be reached."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def site(tmp_path_factory, silent_hub):
    server = AppServer(tmp_path_factory.mktemp("page"), RNN_MODEL=None, HF_ENDPOINT=silent_hub,
                       HF_HOME=str(tmp_path_factory.mktemp("hf")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bundled(bundled_checkpoint):
    return load_checkpoint(bundled_checkpoint)


def open_page(browser, site: AppServer, look: str = "desktop-light", query: str = "") -> Page:
    viewport, phone, theme = LOOKS[look]
    context = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone,
                                  device_scale_factor=1)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.url)
    page = context.new_page()
    sep = "&" if query else "?"
    page.goto(f"{site.url}/{query}{sep}__theme={theme}")
    page.wait_for_selector("#chat .scroller")
    page.wait_for_function("document.querySelector('#send') !== null")
    return page


def shot(page: Page, state: str, look: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{state}-{look}.png"))


def box(page: Page):
    return page.get_by_role("textbox", name="Message")


def send(page: Page, message: str) -> None:
    box(page).fill(message)
    box(page).press("Enter")


def replies(page: Page) -> list[str]:
    return page.locator('#chat [data-testid="bot"]').all_inner_texts()


def wait_idle(page: Page, count: int, timeout: float = 60) -> str:
    """Wait until reply `count` has finished streaming; returns it."""
    page.wait_for_function(
        f"""() => document.querySelectorAll('#chat [data-testid="bot"]').length >= {count}
                  && !document.body.classList.contains('rnn-streaming')""",
        timeout=timeout * 1000, polling=50)
    return replies(page)[count - 1]


def set_slider(page: Page, label: str, value: float) -> None:
    page.locator(f'input[type="range"][aria-label="range slider for {label}"]').fill(str(value))


def set_seed(page: Page, value: str) -> None:
    page.get_by_role("textbox", name="Seed").fill(value)


def transcript_of(messages_and_replies, normalization="book") -> str:
    text = ""
    for message, reply in messages_and_replies:
        m = normalize_prompt(message, normalization)
        text += join_separator(text, m) + m + reply
    return text


def one_reply(page: Page, message: str, length: int = 30) -> str:
    set_slider(page, "Length", length)
    send(page, message)
    return wait_idle(page, 1)


def state(page: Page) -> dict:
    """What a visitor sees of the conversation, the settings and the model card."""
    return {"conversation": page.locator("#chat .msg").all_inner_texts(),
            "sliders": [page.locator(f'input[type="number"][aria-label="number input for {n}"]')
                        .input_value() for n in ("Length", "Temperature", "Top-k")],
            "sliders_visible": [page.get_by_label(f"range slider for {n}").is_visible()
                                for n in ("Length", "Temperature", "Top-k")],
            "card": page.inner_text("#model-card"),
            "error_pills": page.locator('[data-testid="status-tracker"].error:visible').count()}


# ---------------------------------------------------------------- 1. errors without wreckage

@pytest.mark.parametrize("look", LOOKS)
def test_errors_are_a_line_and_leave_the_page_as_it_was(browser, site, look):
    page = open_page(browser, site, look)
    one_reply(page, "time traveller")
    before = state(page)
    assert before["error_pills"] == 0 and all(before["sliders_visible"])

    # A message the model cannot read: the reason under the box, the message kept.
    send(page, "123 !!!")
    error = page.locator("#chat-error")
    expect(error).to_contain_text("the model cannot read any character of this message")
    expect(box(page)).to_have_value("123 !!!")
    assert state(page) == before
    shot(page, "error-message", look)

    # A model that cannot be fetched: a Hub that never answers fails the load within 5 s.
    page.get_by_text("Load another model").click()
    page.get_by_label("Hub repo id or local folder").fill("nope/nope")
    start = time.monotonic()
    page.get_by_role("button", name="Load model").click()
    load_error = page.locator("#load-error")
    expect(load_error).to_contain_text(UNREACHABLE, timeout=5000)
    assert time.monotonic() - start <= 5.0
    assert state(page) == before
    shot(page, "error-load", look)

    # The next good message is answered and clears the message line; nothing else changed.
    send(page, "the machine")
    wait_idle(page, 2)
    expect(error).to_have_text("")
    after = state(page)
    assert after["card"] == before["card"] and after["sliders"] == before["sliders"]
    assert after["conversation"][:2] == before["conversation"] and after["error_pills"] == 0


def test_a_refused_local_folder_is_a_line_too(browser, site):
    page = open_page(browser, site)
    page.get_by_text("Load another model").click()
    page.get_by_label("Hub repo id or local folder").fill("../../etc")
    page.get_by_role("button", name="Load model").click()
    expect(page.locator("#load-error")).to_contain_text("is not a checkpoint folder under checkpoints/")
    assert state(page)["error_pills"] == 0


# ---------------------------------------------------------------- 2. what the model read

@pytest.mark.parametrize("look", ["desktop-light", "phone-dark"])
def test_the_read_as_line_and_the_live_preview(browser, site, look):
    page = open_page(browser, site, look)
    box(page).press_sequentially("Hello, World! 123", delay=20)
    expect(page.locator("#preview")).to_have_text(
        "The model will read “hello world ” — dropped: , ! 1 2 3; lowercased: H W.")
    shot(page, "preview", look)
    box(page).press("Enter")
    expect(page.locator("#chat .note")).to_have_text(
        "The model read “hello world” — dropped: , ! 1 2 3; lowercased: H W.")
    expect(page.locator("#preview")).to_have_text("")
    wait_idle(page, 1)
    assert page.locator('#chat [data-testid="user"]').all_inner_texts() == ["hello world "]
    shot(page, "read-as", look)


# ---------------------------------------------------------------- 3. the whole text

@pytest.mark.parametrize("look", ["desktop-dark", "phone-light"])
def test_the_whole_text_view_is_the_transcript(browser, site, bundled, look):
    page = open_page(browser, site, look)
    set_slider(page, "Temperature", 0)
    set_slider(page, "Length", 40)
    turns = []
    for message in ("Time Traveller", "said the  Psychologist!"):
        send(page, message)
        turns.append((message, wait_idle(page, len(turns) + 1)))
    transcript = transcript_of(turns)
    assert turns[0][1] == continuation(bundled, "time traveller", 40)
    page.get_by_role("button", name="Whole text", exact=True).click()
    whole = page.locator("#chat .whole")
    expect(whole).to_be_visible()
    assert whole.inner_text() == transcript
    first, second = (normalize_prompt(m, "book") for m, _ in turns)
    assert page.locator("#chat .whole .you").all_text_contents() == \
        [first, join_separator(first + turns[0][1], second) + second]
    shot(page, "whole-text", look)
    page.get_by_role("button", name="Copy whole text").click()
    expect(page.locator("#chat .tool-note")).to_have_text("Whole text copied.")
    assert page.evaluate("navigator.clipboard.readText()") == transcript
    page.get_by_role("button", name="Whole text", exact=True).click()     # back to bubbles
    expect(page.locator("#chat .log")).to_be_visible()
    page.get_by_role("button", name="Copy reply 2").click()
    assert page.evaluate("navigator.clipboard.readText()") == turns[1][1]


# ---------------------------------------------------------------- 4. signs of generating

@pytest.mark.parametrize("look", ["desktop-light", "phone-dark"])
def test_send_becomes_stop_while_a_reply_streams(browser, site, look):
    page = open_page(browser, site, look)
    send_button = page.get_by_role("button", name="Send", exact=True)
    stop_button = page.get_by_role("button", name="Stop", exact=True)
    expect(send_button).to_be_visible()
    expect(stop_button).to_be_hidden()
    set_slider(page, "Length", 1000)
    send(page, "the time machine")
    expect(stop_button).to_be_visible()
    expect(send_button).to_be_hidden()
    page.wait_for_function("document.querySelector('#chat .msg.bot .text')?.textContent.length > 10")
    cursor = page.evaluate("""getComputedStyle(document.querySelector(
        '#chat .streaming-turn .msg.bot .text'), '::after').content""")
    assert cursor == '"▍"'
    assert page.get_attribute("#chat .log", "aria-busy") == "true"
    expect(page.locator("#chat [role=status]")).to_have_text("The model is writing a reply…")
    # Enter while streaming: a note says what to do, the message stays in the box.
    box(page).fill("and then")
    box(page).press("Enter")
    expect(page.locator("#busy-note")).to_be_visible()
    expect(box(page)).to_have_value("and then")
    expect(page.locator("#settings-title")).to_contain_text("changes apply to the next reply")
    shot(page, "streaming", look)
    stop_button.click()
    expect(send_button).to_be_visible()
    expect(page.locator("#chat .stopped")).to_have_text("■ stopped")
    stopped = replies(page)[0]
    assert 10 < len(stopped) < 1000
    expect(page.locator("#chat [role=status]")).to_have_text(f"Reply stopped: {stopped}")
    assert page.get_attribute("#chat .log", "aria-busy") == "false"
    assert page.locator("#chat .streaming-turn").count() == 0
    shot(page, "stopped", look)


# ---------------------------------------------------------------- 5. reading back mid-stream

@pytest.mark.parametrize("look", ["desktop-light", "phone-light"])
def test_scrolling_back_while_a_reply_streams_stays_put(browser, site, look):
    earlier = "the time traveller said the psychologist " * 40   # fills the view at once
    page = open_page(browser, site, look, query=f"?before={earlier.replace(' ', '+')}")
    expect(page.locator('#chat [data-testid="user"]')).to_have_count(1)
    set_slider(page, "Length", 1000)
    send(page, "the time traveller")
    scroller = page.locator("#chat .scroller")
    page.wait_for_function("""() => { const s = document.querySelector('#chat .scroller');
        return s.scrollHeight > s.clientHeight + 100
               && document.body.classList.contains('rnn-streaming'); }""",
        timeout=60000)
    assert scroller.evaluate("s => s.scrollHeight - s.scrollTop - s.clientHeight") < 40  # followed
    scroller.evaluate("s => s.scrollTop = 0")
    grown = scroller.evaluate("s => s.scrollHeight")
    page.wait_for_function(f"document.querySelector('#chat .scroller').scrollHeight > {grown} + 40",
                           timeout=60000)
    assert scroller.evaluate("s => s.scrollTop") == 0
    new_text = page.get_by_role("button", name="New text ↓")
    expect(new_text).to_be_visible()
    shot(page, "scrolled-back", look)
    new_text.click()
    expect(new_text).to_be_hidden()
    assert scroller.evaluate("s => s.scrollHeight - s.scrollTop - s.clientHeight") < 40
    grown = scroller.evaluate("s => s.scrollHeight")
    page.wait_for_function(f"document.querySelector('#chat .scroller').scrollHeight > {grown} + 40",
                           timeout=60000)
    assert scroller.evaluate("s => s.scrollHeight - s.scrollTop - s.clientHeight") < 40  # follows
    page.get_by_role("button", name="Stop", exact=True).click()


# ---------------------------------------------------------------- 6. a phone

@pytest.mark.parametrize("look", ["phone-light", "phone-dark"])
def test_a_phone_is_comfortable(browser, site, look):
    page = open_page(browser, site, look)
    time.sleep(0.5)
    assert page.evaluate("document.activeElement === document.body")     # no autofocus on touch
    assert page.evaluate("window.scrollY") == 0
    expect(page.get_by_role("heading", name="Time Machine char-RNN")).to_be_in_viewport()
    expect(box(page)).to_be_in_viewport()      # an empty conversation leaves the box in view
    assert page.evaluate("getComputedStyle(document.querySelector('#message textarea')).fontSize") == "16px"
    # Send, Stop and Settings sit on the input's line; Settings brings the sliders.
    row = box(page).bounding_box()
    for name in ("Send", "Settings"):
        b = page.get_by_role("button", name=name, exact=True).bounding_box()
        assert abs((b["y"] + b["height"] / 2) - (row["y"] + row["height"] / 2)) < 30, name
        assert b["x"] + b["width"] <= 390
    placeholder = box(page).get_attribute("placeholder")      # shown whole, on one line
    assert box(page).evaluate("t => t.scrollWidth <= t.clientWidth && t.clientHeight < 60")
    assert page.evaluate(f"""(() => {{ const c = document.createElement('canvas').getContext('2d');
        const t = document.querySelector('#message textarea'); c.font = getComputedStyle(t).font;
        return c.measureText({placeholder!r}).width < t.clientWidth; }})()""")
    shot(page, "phone-start", look)
    one_reply(page, "time traveller", 20)
    chat = page.locator("#chat .scroller").bounding_box()
    assert 0.3 * 844 <= chat["height"] <= 0.5 * 844      # then about half the screen
    shot(page, "phone-reply", look)
    page.get_by_role("button", name="Settings", exact=True).click()
    expect(page.get_by_label("range slider for Length")).to_be_in_viewport()
    assert page.locator("input[type=range]").first.evaluate("r => getComputedStyle(r).touchAction") \
        == "pan-y"
    shot(page, "phone-settings", look)
    # Every control a finger uses is at least 44 px tall.
    small = page.evaluate("""[...document.querySelectorAll(
            '.gradio-container button, .gradio-container textarea,'
            + ' .gradio-container input:not([type=range])')]
        .filter(e => e.offsetParent !== null && !e.closest('footer') && !e.closest('.hidden-api'))
        .map(e => [e.getAttribute('aria-label') || e.innerText || e.tagName,
                   e.getBoundingClientRect().height])
        .filter(([n, h]) => h < 44)""")
    assert small == [], small


# ---------------------------------------------------------------- 7. accessibility

@pytest.mark.parametrize("look", LOOKS)
def test_axe_finds_no_serious_or_critical_violation(browser, site, look):
    page = open_page(browser, site, look)
    one_reply(page, "Hello, World!")
    page.get_by_text("Load another model").click()
    results = Axe().run(page)
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:5])
           for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    shot(page, "axe", look)
    assert bad == []
    # Every control is named for what it does; no two buttons share a vague name.
    names = page.evaluate("""[...document.querySelectorAll('button, textarea, input')]
        .filter(e => e.offsetParent !== null && !e.closest('footer'))
        .map(e => e.getAttribute('aria-label') || e.labels?.[0]?.innerText || e.innerText)""")
    assert all(n and n.strip() for n in names), names
    assert not any("Reset to default" in n for n in names)
    expect(page.get_by_role("textbox", name="Message")).to_be_visible()


# ---------------------------------------------------------------- 8. examples

def test_an_example_is_sent_on_click(browser, site):
    page = open_page(browser, site)
    page.get_by_role("button", name="the medical man", exact=True).click()
    expect(page.locator('#chat [data-testid="user"]')).to_have_text(["the medical man"])
    expect(box(page)).to_be_focused()          # typing goes on in the box, not on the example
    wait_idle(page, 1)


# ---------------------------------------------------------------- 9. context for a learner

def test_the_page_links_the_book_and_shows_the_training_curve(browser, site):
    page = open_page(browser, site)
    assert page.get_by_role("link", name=re.compile("§8.5")).get_attribute("href") == BOOK_URL
    card = page.inner_text("#model-card")
    assert "validation perplexity 5.75" in card
    assert "so 5.75 is not the book's 1.0, which is measured on the 10,000 training characters" in card
    img = page.get_by_role("img", name=re.compile("Training curve"))
    expect(img).to_be_visible()
    assert img.evaluate("i => i.naturalWidth") > 100
    page.locator("#plot").scroll_into_view_if_needed()
    shot(page, "model-panel", "desktop-light")


# ---------------------------------------------------------------- 10. copy and share

def test_a_share_link_reproduces_a_sampled_reply(browser, site, bundled):
    page = open_page(browser, site)
    set_slider(page, "Temperature", 1)
    set_slider(page, "Length", 60)
    send(page, "The Time Machine")
    first = wait_idle(page, 1)
    seed = int(re.search(r"seed (\d+)", page.inner_text("#chat .meta")).group(1))
    # the reply is the book model's sampled continuation with that seed
    prefix = normalize_prompt("The Time Machine", "book")
    assert first == generate_text(bundled.net, bundled.vocab, "The Time Machine", 60, "book",
                                  1.0, 0, seed)[len(prefix):]
    send(page, "and then")
    second = wait_idle(page, 2)
    page.get_by_role("button", name="Copy a link that reproduces reply 2").click()
    link = page.evaluate("navigator.clipboard.readText()")
    query = parse_qs(urlsplit(link).query)
    assert query["message"] == ["and then"] and query["length"] == ["60"]
    assert query["before"] == [transcript_of([("The Time Machine", first)])]
    shot(page, "share", "desktop-light")

    other = open_page(browser, site, query="?" + urlsplit(link).query)
    assert wait_idle(other, 1) == second
    assert other.locator('#chat [data-testid="user"]').all_inner_texts() == \
        [query["before"][0], "and then"]       # the earlier text was read, not answered
    assert other.get_by_role("textbox", name="Seed").input_value() == query["seed"][0]
    expect(other.locator("#chat .meta").last).to_contain_text(f"seed {query['seed'][0]}")
    shot(other, "shared", "desktop-light")

    # A fixed seed repeats a sampled reply in a fresh conversation.
    page.get_by_role("button", name="New chat").click()
    set_seed(page, str(seed))
    send(page, "The Time Machine")
    assert wait_idle(page, 1) == first


def test_a_bad_share_link_says_why(browser, site):
    page = open_page(browser, site, query="?message=time&temperature=hot")
    expect(page.locator("#chat-error")).to_contain_text("This link cannot be opened: the link's "
                                                        "temperature is not a number")
    assert replies(page) == []


# ---------------------------------------------------------------- 11. compare

@pytest.mark.parametrize("look", ["desktop-light", "phone-dark"])
def test_compare_streams_every_pane_side_by_side(browser, site, bundled, look):
    page = open_page(browser, site, look)
    set_slider(page, "Length", 120)
    page.get_by_text("Compare: one message").click()
    page.get_by_label("Model, pane 2").fill("checkpoints/timemachine-rnn512")   # by name
    page.get_by_label("Message to compare").fill("The Time Traveller")
    page.get_by_role("button", name="Compare", exact=True).click()
    panes = page.locator("#compare .pane textarea")
    samples = []
    for _ in range(6):
        time.sleep(0.25)
        samples.append(panes.evaluate_all("ts => ts.map(t => t.value.length)"))
    assert any(0 < min(s) and max(s) < 120 for s in samples), samples     # all three mid-stream
    page.wait_for_function("""[...document.querySelectorAll('#compare .pane textarea')]
        .every(t => t.value.length === 120)""", timeout=60000)
    texts = panes.evaluate_all("ts => ts.map(t => t.value)")
    labels = page.locator("#compare .pane [data-testid=block-info]").all_inner_texts()
    assert labels[0] == "Pane 1: timemachine-rnn512 · temperature 0"
    seed = int(re.search(r"seed (\d+)$", labels[2]).group(1))
    assert labels[1] == f"Pane 2: timemachine-rnn512 · temperature 0.5 · seed {seed}"
    read = normalize_prompt("The Time Traveller", "book")
    assert texts[0] == continuation(bundled, read, 120)
    for text, t in zip(texts[1:], (0.5, 1.0)):
        assert text == generate_text(bundled.net, bundled.vocab, read, 120, "book", t, 0,
                                     seed)[len(read):]
    assert len(set(texts)) == 3
    page.locator("#compare").scroll_into_view_if_needed()
    shot(page, "compare", look)

    # A model that cannot be loaded: a line under Compare, the panes as they were.
    page.get_by_label("Model, pane 2").fill("nobody/nothing")
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.locator("#compare-error")).to_contain_text(f"Not compared: {UNREACHABLE}",
                                                           timeout=5000)
    assert panes.evaluate_all("ts => ts.map(t => t.value)") == texts
