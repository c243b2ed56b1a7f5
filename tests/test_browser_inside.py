"""The "Inside the model" views in a real browser (Playwright driving Debian's chromium against
`python app.py`): read-along colours and top-5 tooltips, why-this-character, step mode, the
neuron tracer, the memorisation overlay, in light and dark themes, and markup in a text shown
as text. Screenshots go to artifacts/inside-*.png for a reviewer."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from rnn_core import inspector
from rnn_core.session import join_separator
from rnn_core.data import normalize_prompt, normalize_text, read_text
from test_app import AppServer, continuation, other_model
from test_browser import browser, move_slider, open_page, send, wait_reply  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    server = AppServer(tmp_path_factory.mktemp("inside"), RNN_MODEL=None)
    yield server
    server.stop()


def open_inside(page: Page, tab: str) -> None:
    if not page.locator("#inside-text").is_visible():
        page.get_by_text("Inside the model").click()
    page.get_by_role("tab", name=tab).click()


def tip(page: Page, selector: str) -> str:
    """Hover an element and return its tooltip as shown (the ::after content)."""
    el = page.locator(selector)
    el.hover()
    content = el.evaluate("e => getComputedStyle(e, '::after').content")   # a CSS string
    assert content.startswith('"'), content
    return re.sub(r"\\(.)", r"\1", re.sub(r"\\a ?", "\n", content[1:-1]))


def backgrounds(page: Page, selector: str) -> set[str]:
    return set(page.locator(selector).evaluate_all(
        "els => els.map(e => getComputedStyle(e).backgroundColor)"))


def rgb(css: str) -> tuple[float, ...]:
    return tuple(float(x) for x in re.findall(r"[\d.]+", css))


def luminance(c: tuple[float, ...]) -> float:
    def lin(v):
        v /= 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
    return 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])


def worst_contrast(page: Page, selector: str) -> float:
    """The lowest text/background contrast ratio among the coloured characters, each
    translucent background composited over the page's own background."""
    pairs = page.locator(selector).evaluate_all("""els => els.map(e => {
        let p = e.parentElement, bg = 'rgba(0, 0, 0, 0)';
        while (p) { bg = getComputedStyle(p).backgroundColor;
                    if (!bg.endsWith(', 0)') && bg !== 'transparent') break; p = p.parentElement; }
        if (!p) bg = getComputedStyle(document.body).backgroundColor;
        return [getComputedStyle(e).color, getComputedStyle(e).backgroundColor, bg]; })""")
    worst = 99.0
    for fg, bg, page_bg in pairs:
        f, b, base = rgb(fg)[:3], rgb(bg), rgb(page_bg)[:3]
        a = b[3] if len(b) == 4 else 1.0
        mixed = tuple(b[k] * a + base[k] * (1 - a) for k in range(3))
        l1, l2 = sorted((luminance(f), luminance(mixed)), reverse=True)
        worst = min(worst, (l1 + 0.05) / (l2 + 0.05))
    return worst


def bot_last(page: Page) -> str:
    return (page.locator('#chat [data-testid="bot"]').all_inner_texts() or [""])[-1]


def test_read_along_colours_and_top_five(browser, app, bundled, data_path):  # noqa: F811
    for theme in ("light", "dark"):
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(app.url + f"/?__theme={theme}")
        page.wait_for_selector("#chat")
        move_slider(page, "Length", 40)
        move_slider(page, "Temperature", 0)
        send(page, "Time traveller")
        reply = wait_reply(page, 1, 40)
        transcript = "time traveller" + reply
        open_inside(page, "Read-along")
        page.locator("#read-btn").click()
        page.wait_for_selector("#readalong-view span.s")
        expected = inspector.score(bundled, transcript)
        assert page.locator("#readalong-view .text").inner_text() == transcript
        assert page.locator("#readalong-view span.s").count() == len(transcript) - 1
        assert len(backgrounds(page, "#readalong-view span.s")) >= 3       # colours present
        assert f"{expected.bits_per_char:.3f} bits per character" in \
            page.locator("#readalong-view .note").first.inner_text()
        shown = tip(page, "#readalong-view span.s >> nth=4")
        c = expected.chars[4]
        assert "top 5 guesses" in shown and f"p = {c['prob']:.4f}" in shown
        assert len(re.findall(r"\n\d\. ", shown)) == 5
        best = c["top"][0][0]
        assert f"1. {'␣ (space)' if best == ' ' else best}" in shown
        assert worst_contrast(page, "#readalong-view span.s") >= 4.5, theme
        page.screenshot(path=str(ROOT / "artifacts" / f"inside-readalong-{theme}.png"),
                        full_page=True)
        page.close()


def test_read_along_renders_two_thousand_characters_without_freezing(browser, app, data_path):  # noqa: F811
    page = open_page(browser, app)
    passage = normalize_text(read_text(data_path), "book")[70_000:72_000]
    open_inside(page, "Read-along")
    page.locator("#inside-text textarea").fill(passage)
    page.evaluate("""() => { window.longest = 0; new PerformanceObserver(l => l.getEntries()
        .forEach(e => { window.longest = Math.max(window.longest, e.duration); }))
        .observe({type: 'longtask', buffered: false}); }""")
    start = time.monotonic()
    page.locator("#read-btn").click()
    page.wait_for_function("document.querySelectorAll('#readalong-view span.s').length === 1999",
                           timeout=60_000)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    elapsed = time.monotonic() - start
    longest = page.evaluate("window.longest")
    print(f"2,000 coloured characters: shown {elapsed:.2f} s after the click, longest main-thread "
          f"task {longest:.0f} ms")
    assert elapsed < 10 and longest < 1500
    assert "top 5 guesses" in tip(page, "#readalong-view span.s >> nth=1500")   # still responsive
    page.close()


def test_why_step_tracer_and_memorisation(browser, app, bundled):  # noqa: F811
    page = open_page(browser, app)
    move_slider(page, "Length", 40)
    move_slider(page, "Temperature", 0)
    send(page, "time traveller")
    reply = wait_reply(page, 1, 40)

    # Why this character: every character of the last reply, greedy: rank 1 of 28.
    open_inside(page, "Why this character")
    page.locator("#why-btn").click()
    page.wait_for_selector("#why-view span.w")
    assert page.locator("#why-view span.w").count() == 40
    shown = tip(page, "#why-view span.w >> nth=3")
    assert f"{reply[3] if reply[3] != ' ' else '␣ (space)'}: rank 1 of 28" in shown
    assert "greedy" in shown and len(re.findall(r"\n\d+\. ", shown)) == 10

    # Memorisation: no span of 20 characters; at 19, "time traveller and " from the book.
    open_inside(page, "Memorisation")
    page.locator("#mem-btn").click()
    expect(page.locator("#memorised-view")).to_contain_text("100% of the reply is novel")
    page.locator('input[type="range"][aria-label="range slider for Shortest span counted '
                 '(characters)"]').fill("19")
    page.locator("#mem-btn").click()
    expect(page.locator("#memorised-view")).to_contain_text("1 span(s) of at least 19")
    marked = page.locator("#memorised-view span.mem")
    assert "".join(marked.all_inner_texts()) == "time traveller and "
    assert "at character 10,073" in tip(page, "#memorised-view span.mem >> nth=1")
    page.screenshot(path=str(ROOT / "artifacts" / "inside-memorisation.png"), full_page=True)

    # Neuron tracer: rank, pick the best unit, the text is coloured by it.
    open_inside(page, "Neuron tracer")
    page.locator("#rank-btn").click()
    expect(page.locator("#unit-list")).to_contain_text("ranked on the first 2,000 characters")
    page.locator("#unit-list input").click()
    page.get_by_role("option").first.click()                 # the best-ranked unit, traced
    page.wait_for_selector("#trace-view span.a")
    best = inspector.notes_for(bundled).ranking("")[0][0]
    expect(page.locator("#unit-number input")).to_have_value(str(best["unit"]))
    assert page.locator("#trace-view span.a").count() == len("time traveller" + reply)
    traced = inspector.trace(bundled, "time traveller" + reply, best["unit"])
    assert f"hidden unit {best['unit']} = {traced['activations'][2]:+.4f}" in \
        tip(page, "#trace-view span.a >> nth=2")
    assert len(backgrounds(page, "#trace-view span.a")) > 10
    page.screenshot(path=str(ROOT / "artifacts" / "inside-tracer.png"), full_page=True)

    # Step mode: pick the third bar, let the model choose, step back, and chat on.
    open_inside(page, "Step mode")
    page.get_by_role("textbox", name="Message").fill("The Machine")
    page.locator("#step-btn").click()
    page.wait_for_selector("#step-view button[data-choice]")
    bars = page.locator("#step-view button[data-choice]")
    assert bars.count() == 10
    third = bars.nth(2).get_attribute("data-choice")

    def redrawn(action) -> None:
        """Do `action`, then wait until the bars show the next step's distribution."""
        before = page.locator("#step-view").inner_html()
        action()
        page.wait_for_function("b => document.querySelector('#step-view').innerHTML !== b",
                               arg=before, timeout=60_000)

    redrawn(lambda: bars.nth(2).click())
    expect(page.locator('#chat [data-testid="bot"]').nth(1)).to_have_text(third)
    after_third = page.locator("#step-view").inner_html()
    top = page.locator("#step-view button[data-choice]").first.get_attribute("data-choice")
    redrawn(lambda: page.locator("#step-model").click())    # temperature 0: the top bar
    expect(page.locator('#chat [data-testid="bot"]').nth(1)).to_have_text(third + top)
    redrawn(lambda: page.locator("#step-back").click())
    expect(page.locator('#chat [data-testid="bot"]').nth(1)).to_have_text(third)
    assert page.locator("#step-view").inner_html() == after_third   # the same distribution
    page.screenshot(path=str(ROOT / "artifacts" / "inside-step.png"), full_page=True)
    send(page, "said he")
    next_reply = wait_reply(page, 3, 40)
    shown = "time traveller" + reply
    for message, chosen in (("The Machine", third), ("said he", "")):
        m = normalize_prompt(message, "book")
        shown += join_separator(shown, m) + m + chosen
    assert next_reply == continuation(bundled, shown, 40)
    page.close()


def test_markup_in_a_pasted_text_is_shown_as_text(browser, tmp_path_factory):  # noqa: F811
    folder = other_model(tmp_path_factory.mktemp("raw-inside") / "raw")
    server = AppServer(tmp_path_factory.mktemp("raw-inside-logs"), RNN_MODEL=str(folder))
    try:
        page = open_page(browser, server)
        text = '<img src=x onerror="window.pwned=1"><b>bold</b> ${window.pwned=2} {{value}} &amp;'
        open_inside(page, "Read-along")
        page.locator("#inside-text textarea").fill(text)
        page.locator("#read-btn").click()
        page.wait_for_selector("#readalong-view span.s")
        assert page.locator("#readalong-view .text").inner_text() == text
        assert page.locator("#readalong img, #readalong .text b").count() == 0
        open_inside(page, "Neuron tracer")
        page.locator("#trace-btn").click()
        page.wait_for_selector("#trace-view span.a")
        assert page.locator("#trace-view .text").inner_text() == text
        assert page.locator("#tracer img, #tracer .text b").count() == 0
        assert page.evaluate("window.pwned") is None
        # This model carries no training text: the overlay says so instead.
        open_inside(page, "Memorisation")
        page.locator("#mem-btn").click()
        expect(page.locator("#memorised-view")).to_contain_text(
            "this model does not carry its training text")
    finally:
        server.stop()
