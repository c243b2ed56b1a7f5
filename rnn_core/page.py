"""The chat page's browser side: what the conversation view is sent, and its CSS and script.

The conversation is sent as data, never as HTML: `conversation_view` turns a session's turns
into a JSON value, and CONVERSATION_JS (run once in the browser by Gradio's gr.HTML) draws it
with text nodes only, so nothing a visitor or a model writes can become markup. The script
also draws the "whole text" view (the transcript as one passage, exactly the text the state
read), follows the stream only while the reader is at the bottom ("New text ↓" otherwise),
swaps Send for Stop while a reply streams, announces a reply once when it ends, and makes the
copy and share-link buttons.
"""
from __future__ import annotations

from .session import Turn

# ---------------------------------------------------------------- the data the view draws


def turn_view(turn: Turn) -> dict:
    """One exchange as the page draws it: the message as typed and as read (separator and
    text), what normalisation changed, the reply so far, whether it was stopped, and the
    settings it was made with (for its share link)."""
    s = turn.settings
    return {"message": turn.message, "sep": turn.sep, "text": turn.text,
            "changes": turn.changes, "reply": turn.reply, "stopped": turn.stopped,
            "open": turn.open,
            "settings": None if s is None else {"length": s.length, "temperature": s.temperature,
                                                "top_k": s.top_k, "seed": s.seed}}


def conversation_view(turns: list[Turn], streaming: bool = False, model: dict | None = None,
                      past: list[dict] | None = None) -> dict:
    """The value of the conversation view: every turn, whether a reply is streaming, and
    the model as a share link names it ({"ref", "revision"}; None: the app's own model).
    `past`, if given, is the view of all turns but the last (made once per reply: only the
    last turn changes while it streams)."""
    if past is None:
        past = [turn_view(t) for t in turns[:-1]]
    return {"turns": past + [turn_view(t) for t in turns[-1:]], "streaming": streaming,
            "model": model}


# ---------------------------------------------------------------- the page's look

CSS = """
#intro p { margin: 0.25em 0; }
#intro summary { cursor: pointer; min-height: 44px; display: list-item; }
#model-card { font-size: var(--text-sm); }
#model-card a, #intro a { text-decoration: underline; }
.line-error p, .line-note p { margin: 0; font-size: var(--text-sm); }
.line-error p { color: #b42318; font-weight: 600; }
.dark .line-error p { color: #fda29b; }
#preview p { margin: 0; font-size: var(--text-sm); overflow-wrap: anywhere; }
/* Message lines take no room while empty. */
.line-error:not(:has(p)), #preview:not(:has(p)),
.line-note:not(:has(p:not([hidden]))) { display: none !important; }
.example-row { flex-wrap: wrap !important; align-items: center; gap: 8px !important; }
.example-row > * { flex: 0 0 auto !important; min-width: 0 !important; width: auto !important; }
.example-row button { white-space: nowrap; }
@media (min-width: 641px) { #settings-jump { display: none !important; } }
/* The message box: 16 px so phones do not zoom in. */
#message textarea { font-size: 16px; }
/* Send turns into Stop while a reply streams. */
body:not(.rnn-streaming) #stop { display: none !important; }
body.rnn-streaming #send { display: none !important; }
#send, #stop, #settings-jump { min-width: 88px; min-height: 44px; }
.example-row button, #chat-tools button { min-height: 44px; }
/* Sliders: a vertical swipe that starts on one scrolls the page. */
input[type="range"] { touch-action: pan-y; }
#plot img { max-height: 220px; object-fit: contain; }
/* Fingers: every control at least 44 px tall. */
@media (pointer: coarse), (max-width: 640px) {
  input[type="text"], textarea, #bundled input { min-height: 44px !important; }
  .tab-like-container:has(input[type="number"]) { height: 44px !important; }
  input[type="number"] { height: 44px !important; padding: 0 6px !important; line-height: 44px; }
  button.label-wrap { min-height: 44px !important; }
}
@media (max-width: 640px) {
  #input-row { flex-wrap: nowrap !important; gap: 6px; }
  #input-row > * { min-width: 0 !important; }
  #send, #stop, #settings-jump { min-width: 0 !important; padding: 0 12px !important;
    flex: 0 0 auto !important; }
  #intro { font-size: var(--text-sm); }
}
"""

CONVERSATION_HTML = """
<div class="rnn-chat">
  <div class="tools" id="chat-tools">
    <button type="button" class="tool view-toggle" aria-pressed="false">Whole text</button>
    <button type="button" class="tool copy-all">Copy whole text</button>
    <span class="tool-note" aria-live="polite"></span>
  </div>
  <div class="scroller" tabindex="0" role="region" aria-label="Conversation">
    <div class="log" role="log" aria-live="off" aria-busy="false"
         aria-label="Conversation, message by message"></div>
    <p class="legend" hidden>Underlined: your messages, as the model read them. The rest: its replies.</p>
    <p class="whole" hidden aria-label="Conversation as one text"></p>
    <p class="empty">Replies stream here. The whole conversation is one text the model keeps reading.</p>
  </div>
  <button type="button" class="new-text" hidden>New text ↓</button>
  <div class="sr-only" role="status" aria-live="polite"></div>
</div>
"""

CONVERSATION_CSS = """
.rnn-chat { position: relative; }
.rnn-chat .tools { display: flex; gap: 8px; align-items: center; margin-bottom: 6px; flex-wrap: wrap; }
.rnn-chat .tool { border: 1px solid var(--border-color-primary); border-radius: 8px;
  padding: 6px 12px; min-height: 44px; background: var(--button-secondary-background-fill);
  color: var(--body-text-color); font-size: var(--text-sm); cursor: pointer; }
.rnn-chat .tool[aria-pressed="true"] { background: var(--color-accent-soft); font-weight: 600; }
.rnn-chat .tool-note { font-size: var(--text-sm); color: var(--body-text-color); }
.rnn-chat .scroller { height: clamp(220px, 48vh, 520px); overflow-y: auto; overscroll-behavior: contain;
  border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 10px;
  background: var(--background-fill-secondary); }
.rnn-chat .scroller:focus-visible { outline: 2px solid var(--color-accent); }
.rnn-chat .empty { color: var(--body-text-color); margin: 0; font-size: var(--text-sm); }
.rnn-chat .turn { margin-bottom: 12px; }
.rnn-chat .msg { white-space: pre-wrap; overflow-wrap: anywhere; padding: 8px 12px;
  border-radius: 12px; max-width: 92%; width: fit-content; line-height: 1.5; }
.rnn-chat .msg.user { margin-left: auto; background: var(--color-accent-soft);
  color: var(--body-text-color); }
.rnn-chat .msg.bot { background: var(--background-fill-primary); color: var(--body-text-color);
  border: 1px solid var(--border-color-primary); }
.rnn-chat .note, .rnn-chat .meta { font-size: var(--text-sm); color: var(--body-text-color);
  margin: 2px 4px; }
.rnn-chat .note { text-align: right; }
.rnn-chat .meta { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
.rnn-chat .meta button { border: 1px solid var(--border-color-primary); border-radius: 8px;
  background: var(--button-secondary-background-fill); color: var(--body-text-color);
  min-height: 44px; min-width: 44px; padding: 4px 10px; cursor: pointer; font-size: var(--text-sm); }
.rnn-chat .stopped { font-weight: 600; }
.rnn-chat .legend { font-size: var(--text-sm); margin: 0 0 6px; color: var(--body-text-color); }
.rnn-chat .whole { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; line-height: 1.6; }
.rnn-chat .whole .you { background: var(--color-accent-soft); text-decoration: underline; }
.rnn-chat .streaming-turn .msg.bot .text::after { content: "▍"; animation: rnn-blink 1s steps(1) infinite; }
.rnn-chat .whole.streaming::after { content: "▍"; animation: rnn-blink 1s steps(1) infinite; }
@keyframes rnn-blink { 50% { opacity: 0; } }
@media (prefers-reduced-motion: reduce) { .rnn-chat .streaming-turn .msg.bot .text::after,
  .rnn-chat .whole.streaming::after { animation: none; } }
.rnn-chat .new-text { position: absolute; right: 16px; bottom: 12px; min-height: 44px;
  padding: 6px 14px; border-radius: 22px; border: none; cursor: pointer;
  background: var(--button-primary-background-fill); color: var(--button-primary-text-color); }
.rnn-chat .sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; }
@media (max-width: 640px) { .rnn-chat .scroller { height: 45vh; } }
.rnn-chat .scroller:has(.empty:not([hidden])) { height: auto; min-height: 96px; }
"""

# The script Gradio runs once when the view is mounted: `element` is the view's root, `props`
# its value, `watch` calls back after each new value, `trigger` fires the view's events.
CONVERSATION_JS = r"""
const root = element.querySelector('.rnn-chat');
const scroller = root.querySelector('.scroller');
const log = root.querySelector('.log');
const whole = root.querySelector('.whole');
const empty = root.querySelector('.empty');
const status = root.querySelector('[role=status]');
const newText = root.querySelector('.new-text');
const toggle = root.querySelector('.view-toggle');
const toolNote = root.querySelector('.tool-note');
let drawn = [];            // per turn: {user, note, bot, text, meta, key}
let wasStreaming = false;
let wholeDrawn = '';       // the key of what the whole-text view shows

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function atBottom() { return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 32; }
function toBottom() { scroller.scrollTop = scroller.scrollHeight; newText.hidden = true; }
function turns() { return (props.value && props.value.turns) || []; }
function streaming() { return !!(props.value && props.value.streaming); }
function transcript(ts, upto) {   // what the state read: each message as joined, each reply
  let s = '';
  for (let i = 0; i < (upto === undefined ? ts.length : upto); i++) s += ts[i].sep + ts[i].text + ts[i].reply;
  return s;
}
async function copy(text, what) {
  try { await navigator.clipboard.writeText(text); }
  catch (e) {
    const area = el('textarea'); area.value = text; document.body.appendChild(area);
    area.select(); document.execCommand('copy'); area.remove();
  }
  toolNote.textContent = what + ' copied.';
  setTimeout(() => { if (toolNote.textContent === what + ' copied.') toolNote.textContent = ''; }, 4000);
}
function shareLink(i) {
  const ts = turns(), t = ts[i], s = t.settings, model = props.value.model;
  const q = new URLSearchParams();
  if (model && model.ref) {
    q.set('model', model.ref);
    if (model.revision) q.set('revision', model.revision);
  }
  const before = transcript(ts, i);
  if (before) q.set('before', before);
  q.set('message', t.message);
  q.set('length', String(t.reply.length));
  q.set('temperature', String(s.temperature)); q.set('top_k', String(s.top_k));
  if (s.seed !== null) q.set('seed', String(s.seed));
  return location.origin + location.pathname + '?' + q.toString();
}
function metaText(t) {
  const s = t.settings;
  if (!s) return '';
  const sampled = s.temperature > 0 ? ` · seed ${s.seed}` : '';
  const topk = s.top_k ? ` · top-k ${s.top_k}` : '';
  return `${t.reply.length} characters · temperature ${s.temperature}${topk}${sampled}`;
}
function drawMeta(d, t, i, last) {
  const key = JSON.stringify([t.stopped, t.open, t.settings, t.reply.length, last, streaming()]);
  if (d.metaKey === key) return;
  d.metaKey = key;
  d.meta.replaceChildren();
  if (t.open || !t.settings) return;   // streaming, or read with no reply: nothing to act on
  if (t.stopped) d.meta.appendChild(el('span', 'stopped', '■ stopped'));
  d.meta.appendChild(el('span', 'settings', metaText(t)));
  const n = i + 1;
  const cp = el('button', 'copy', 'Copy'); cp.type = 'button';
  cp.setAttribute('aria-label', `Copy reply ${n}`);
  cp.onclick = () => copy(turns()[i].reply, `Reply ${n}`);
  d.meta.appendChild(cp);
  const link = el('button', 'link', 'Link'); link.type = 'button';
  link.setAttribute('aria-label', `Copy a link that reproduces reply ${n}`);
  if (transcript(turns(), i).length > 2000) {
    link.disabled = true;
    link.title = 'The conversation before this reply is too long for a link (2,000 characters at most).';
  }
  link.onclick = () => copy(shareLink(i), `Link to reply ${n}`);
  d.meta.appendChild(link);
  if (last && !streaming()) {
    for (const [label, ev] of [['Retry', 'retry'], ['Undo', 'undo']]) {
      const b = el('button', ev, label); b.type = 'button';
      b.setAttribute('aria-label', label);
      b.title = label === 'Retry' ? 'Answer the last message again with the current settings'
                                  : 'Remove the last exchange and put its message back in the box';
      b.onclick = () => trigger(ev);
      d.meta.appendChild(b);
    }
  }
}
function drawBubbles(ts) {
  while (drawn.length > ts.length) { drawn.pop().turn.remove(); }
  ts.forEach((t, i) => {
    let d = drawn[i];
    if (d && d.message !== t.message + '\u0000' + t.text) {   // an undone turn's place reused
      while (drawn.length > i) drawn.pop().turn.remove();
      d = undefined;
    }
    if (!d) {
      d = {turn: el('div', 'turn'), message: t.message + '\u0000' + t.text};
      const user = el('div', 'msg user'); user.dataset.testid = 'user';
      user.appendChild(el('span', 'text', t.text));
      d.turn.appendChild(user);
      if (t.changes) {
        d.turn.appendChild(el('div', 'note', `The model read “${t.text.trim()}” — ${t.changes}.`));
      }
      d.text = el('span', 'text', '');
      if (t.settings) {   // a turn read with no reply (a share link's earlier text) has none
        const bot = el('div', 'msg bot'); bot.dataset.testid = 'bot';
        bot.appendChild(d.text);
        d.turn.appendChild(bot);
      } else {
        user.title = 'the conversation before the shared reply';
      }
      d.meta = el('div', 'meta');
      d.turn.appendChild(d.meta);
      log.appendChild(d.turn);
      drawn.push(d);
    }
    if (d.text.textContent !== t.reply) d.text.textContent = t.reply;
    d.turn.classList.toggle('streaming-turn', t.open && streaming());
    drawMeta(d, t, i, i === ts.length - 1);
  });
}
function drawWhole(ts) {
  const key = transcript(ts) + '\u0000' + ts.length;
  if (key === wholeDrawn) return;
  wholeDrawn = key;
  const parts = [];
  for (const t of ts) {
    const you = el('span', 'you', t.sep + t.text); you.title = 'your message, as the model read it';
    parts.push(you);
    if (t.reply) parts.push(el('span', 'model', t.reply));
  }
  whole.replaceChildren(...parts);
}
function render() {
  const ts = turns(), live = streaming();
  const follow = atBottom();
  const before = scroller.scrollHeight;
  drawBubbles(ts);
  if (!whole.hidden) drawWhole(ts);
  whole.classList.toggle('streaming', live);
  empty.hidden = ts.length > 0;
  document.body.classList.toggle('rnn-streaming', live);
  log.setAttribute('aria-busy', String(live));
  if (follow) toBottom(); else if (scroller.scrollHeight > before) newText.hidden = false;
  if (live && !wasStreaming) status.textContent = 'The model is writing a reply…';
  if (!live && wasStreaming && ts.length) {
    const t = ts[ts.length - 1];
    status.textContent = (t.stopped ? 'Reply stopped: ' : 'Reply: ') + t.reply;
  }
  wasStreaming = live;
}
scroller.addEventListener('scroll', () => { if (atBottom()) newText.hidden = true; });
newText.addEventListener('click', toBottom);
toggle.addEventListener('click', () => {
  const on = toggle.getAttribute('aria-pressed') !== 'true';
  toggle.setAttribute('aria-pressed', String(on));
  whole.hidden = !on; log.hidden = on; root.querySelector('.legend').hidden = !on;
  if (on) { wholeDrawn = ''; drawWhole(turns()); }
  toBottom();
});
root.querySelector('.copy-all').addEventListener('click', () => copy(transcript(turns()), 'Whole text'));

// The message box: Enter while a reply streams says what to do (the message is kept);
// Escape stops the reply. (Listeners on the document: the box may mount after this view.)
document.addEventListener('keydown', (e) => {
  if (!e.target.closest || !e.target.closest('#message') || !streaming()) return;
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault(); e.stopPropagation();
    const note = document.querySelector('#busy-note');
    if (note) { note.hidden = false; setTimeout(() => { note.hidden = true; }, 5000); }
  } else if (e.key === 'Escape') {
    const stop = document.querySelector('#stop'); if (stop) stop.click();
  }
}, true);
const keyboard = matchMedia('(pointer: fine)').matches && !matchMedia('(hover: none)').matches;
document.addEventListener('click', (e) => {   // an example is sent: typing goes on in the box
  if (keyboard && e.target.closest && e.target.closest('.example-row button')) {
    const box = document.querySelector('#message textarea'); if (box) box.focus({preventScroll: true});
  }
}, true);
document.addEventListener('click', (e) => {
  if (!e.target.closest || !e.target.closest('#settings-jump')) return;
  const s = document.querySelector('#settings');
  if (!s) return;
  s.scrollIntoView({block: 'start'});
  const r = s.querySelector('input');
  if (r) r.focus({preventScroll: true});
}, true);
// Focus the box once it exists, only where there is a real keyboard (no autofocus on touch:
// it would scroll the title away and open the on-screen keyboard).
if (keyboard) {
  let tries = 0;
  const focusBox = () => {
    const box = document.querySelector('#message textarea');
    if (box) box.focus({preventScroll: true}); else if (tries++ < 50) setTimeout(focusBox, 100);
  };
  focusBox();
}
watch('value', render);
render();
"""
