"""HTML for the app's "Inside the model" views, from `inspector` results.

Every character of visitor or model text is HTML-escaped (attributes too), so markup in a
text is shown as text and never run. A character's details (its probability, the top
candidates, an activation) sit in `data-tip` and show on hover or tap (focus) through CSS
(`CSS` below), no script. Colours are translucent, so the theme's own text colour stays
readable on them in light and dark themes alike.
"""
from __future__ import annotations

import html
import math

# Surprisal bins in bits (upper bounds) and their background alphas; the last bin is open.
BITS_BINS = (1, 2, 3, 4, 6, math.inf)
BITS_ALPHAS = (0.0, 0.12, 0.24, 0.36, 0.48, 0.62)
HOT, COLD = (220, 38, 38), (37, 99, 235)     # red (surprising / positive), blue (negative)
STEP_BARS = 10

CSS = """
.rnn-inside { line-height: 1.9; }
.rnn-inside .text { white-space: pre-wrap; word-break: break-word; font-family: var(--font-mono);
  font-size: var(--text-md); padding: 8px 0 11em; }
.rnn-inside .text span { position: relative; border-radius: 2px; }
.rnn-inside .text span[data-tip] { cursor: help; }
.rnn-inside .text span[data-tip]:hover::after, .rnn-inside .text span[data-tip]:focus::after {
  content: attr(data-tip); position: absolute; left: 0; top: 1.6em; z-index: 20;
  white-space: pre; font-size: var(--text-sm); line-height: 1.35; padding: 6px 8px;
  background: var(--background-fill-primary); color: var(--body-text-color);
  border: 1px solid var(--border-color-primary); border-radius: 6px;
  box-shadow: 0 2px 8px rgba(0, 0, 0, 0.25); pointer-events: none; }
.rnn-inside .text span:focus { outline: 2px solid var(--color-accent); }
.rnn-inside .first { text-decoration: underline dotted; }
.rnn-inside .legend span { display: inline-block; padding: 0 6px; margin: 0 2px;
  border-radius: 3px; font-family: var(--font-mono); }
.rnn-inside .mem { box-shadow: inset 0 -3px 0 rgba(217, 119, 6, 0.9);
  background: rgba(217, 119, 6, 0.22); }
.rnn-inside .prompt { opacity: 0.65; }
.rnn-inside .note { font-size: var(--text-sm); opacity: 0.85; }
.rnn-bars { display: flex; flex-direction: column; gap: 3px; }
.rnn-bars button { position: relative; display: flex; justify-content: space-between;
  align-items: center; width: 100%; padding: 3px 8px; font-family: var(--font-mono);
  border: 1px solid var(--border-color-primary); border-radius: 4px; cursor: pointer;
  background: var(--background-fill-secondary); color: var(--body-text-color); }
.rnn-bars button .fill { position: absolute; left: 0; top: 0; bottom: 0; z-index: 0;
  background: rgba(37, 99, 235, 0.35); border-radius: 4px; }
.rnn-bars button span { position: relative; z-index: 1; }
.rnn-bars button.top { border-color: var(--color-accent); }
"""


def esc(text: str) -> str:
    """Text for HTML content or a quoted attribute value: &, <, >, " and ' escaped."""
    return html.escape(text, quote=True)


def token_label(token: str) -> str:
    """A token as people read it in a list: space and newline named, `<unk>` as is."""
    return {" ": "␣ (space)", "\n": "⏎ (newline)", "\t": "⇥ (tab)"}.get(token, token)


def bits_bin(bits: float) -> int:
    return next(i for i, upper in enumerate(BITS_BINS) if bits < upper)


def rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.3f})"


def span(ch: str, tip: str | None = None, cls: str | None = None, style: str | None = None) -> str:
    """One character as a span: escaped, with its tooltip (focusable, so a tap shows it)."""
    attrs = ""
    if cls:
        attrs += f' class="{cls}"'
    if style:
        attrs += f' style="{style}"'
    if tip is not None:
        attrs += f' tabindex="0" data-tip="{esc(tip)}"'
    return f"<span{attrs}>{esc(ch)}</span>"


def top_lines(pairs, limit: int) -> str:
    return "\n".join(f"{k}. {token_label(t)}  {p:.3f}" for k, (t, p) in enumerate(pairs[:limit], 1))


def legend() -> str:
    """The surprisal colours with their ranges in bits."""
    cells, lower = [], 0
    for upper, alpha in zip(BITS_BINS, BITS_ALPHAS):
        label = f"{lower}–{upper}" if upper != math.inf else f"≥ {lower}"
        cells.append(f'<span class="sb" style="background: {rgba(HOT, alpha)}">{label}</span>')
        lower = upper
    return f'<div class="legend note">surprisal in bits: {"".join(cells)}</div>'


def surprisal_html(result: dict, note: str = "") -> str:
    """The read-along: the text coloured by each character's surprisal, the top 5 on hover or
    tap, the totals. `result`: `inspector.Score.to_json()`."""
    text = result["text"]
    parts = [span(text[0], "the first character is read, not scored", "first")]
    for c in result["chars"]:
        alpha = BITS_ALPHAS[bits_bin(c["bits"])]
        tip = (f"{token_label(c['char'])}: p = {c['prob']:.4f}, {c['bits']:.2f} bits\n"
               f"top 5 guesses:\n{top_lines(c['top'], 5)}")
        parts.append(span(c["char"], tip, "s", f"background: {rgba(HOT, alpha)}"))
    totals = (f"{len(text):,} characters read, {len(result['chars']):,} scored: "
              f"<b>{result['bits_per_char']:.3f} bits per character</b>, perplexity "
              f"{result['perplexity']:.2f}")
    return (f'<div class="rnn-inside" id="readalong-view"><div class="note">{totals}'
            f'{" · " + esc(note) if note else ""}</div>{legend()}'
            f'<div class="text">{"".join(parts)}</div></div>')


def trace_html(traced: dict, kind: str) -> str:
    """The text coloured by one unit's value after each character (red positive, blue
    negative, strength by |value| relative to the largest in the text)."""
    values = traced["cell" if kind == "cell" else "activations"]
    scale = max((abs(v) for v in values), default=0) or 1.0
    name = f"{'cell' if kind == 'cell' else 'hidden'} unit {traced['unit']}"
    parts = []
    for ch, v in zip(traced["text"], values):
        colour = rgba(HOT if v >= 0 else COLD, 0.75 * abs(v) / scale)
        parts.append(span(ch, f"{token_label(ch)}: {name} = {v:+.4f}", "a", f"background: {colour}"))
    key = (f'<div class="legend note">{esc(name)}: '
           f'<span style="background: {rgba(COLD, 0.75)}">−{scale:.3f}</span>'
           f'<span>0</span><span style="background: {rgba(HOT, 0.75)}">+{scale:.3f}</span></div>')
    return f'<div class="rnn-inside" id="trace-view">{key}<div class="text">{"".join(parts)}</div></div>'


def why_html(explained: dict) -> str:
    """The last reply, each character coloured by how surprising it was in the distribution
    it was drawn from; its rank and the top 10 of that distribution on hover or tap."""
    if not explained["chars"]:
        return '<div class="rnn-inside note" id="why-view">No reply yet: send a message first.</div>'
    parts = [span(explained["message"], None, "prompt")]
    for c in explained["chars"]:
        ordered = sorted(c["distribution"], key=lambda tp: -tp[1])
        bits = -math.log2(c["prob"]) if c["prob"] > 0 else math.inf
        tip = (f"{token_label(c['char'])}: rank {c['rank']} of {len(ordered)}, p = {c['prob']:.4f}\n"
               f"{explained['sampler']}; top 10:\n{top_lines(ordered, 10)}")
        parts.append(span(c["char"], tip, "w", f"background: {rgba(HOT, BITS_ALPHAS[bits_bin(bits)])}"))
    head = (f'<div class="note">The last reply, {esc(explained["sampler"])}: point at a character '
            f'for the distribution it was drawn from and its rank in it.</div>')
    return (f'<div class="rnn-inside" id="why-view">{head}{legend()}'
            f'<div class="text">{"".join(parts)}</div></div>')


def memorised_html(mem: dict | None, why_not: str | None = None) -> str:
    """A reply after its message with every verbatim span from the training text marked;
    where each occurs on hover or tap; the novel share."""
    if mem is None:
        return f'<div class="rnn-inside note" id="memorised-view">{esc(why_not or "")}</div>'
    text, start = mem["text"], mem["start"]
    marked = [None] * len(text)
    for s in mem["spans"]:
        for k in range(max(s["start"], 0), s["end"]):
            marked[k] = marked[k] or s
    parts, k = [], 0
    while k < len(text):
        s = marked[k]
        j = k
        while j < len(text) and marked[j] is s and (j < start) == (k < start):
            j += 1
        cls = " ".join(c for c in ("prompt" if k < start else "", "mem" if s else "") if c) or None
        if s is None:
            parts.append(span(text[k:j], None, cls))
        else:
            before, after = s["context"]
            tip = (f"{s['end'] - s['start']} characters verbatim from the training text, at "
                   f"character {s['position']:,} (seen {s['occurrences']}×):\n"
                   f"…{before}[{s['text']}]{after}…")
            parts.append(span(text[k:j], tip, cls))
        k = j
    share = mem["novel_share"]
    head = (f'<div class="note"><b>{share:.0%} of the reply is novel</b>: '
            f'{len(mem["spans"])} span(s) of at least {mem["min_len"]} characters occur verbatim in '
            f'the training text (underlined; the message is dimmed).</div>')
    return f'<div class="rnn-inside" id="memorised-view">{head}<div class="text">{"".join(parts)}</div></div>'


def bars_html(options: list[tuple[str, float]], caption: str) -> str:
    """Step mode: the next-character candidates as bars, most likely first; each a button
    carrying its character in `data-choice`."""
    rows = []
    for k, (token, p) in enumerate(options[:STEP_BARS]):
        rows.append(f'<button class="{"top" if k == 0 else ""}" data-choice="{esc(token)}" '
                    f'title="choose {esc(token_label(token))}">'
                    f'<span class="fill" style="width: {100 * p:.1f}%"></span>'
                    f'<span>{esc(token_label(token))}</span><span>{100 * p:.1f}%</span></button>')
    return (f'<div class="rnn-inside" id="step-view"><div class="note">{esc(caption)}</div>'
            f'<div class="rnn-bars">{"".join(rows)}</div></div>')
