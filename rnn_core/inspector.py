"""Reading a text through a model and reporting what it saw.

    score(ckpt, text)          each character's probability and surprisal, bits/char, perplexity
    trace(ckpt, text, unit)    one unit's value in the state after each character
    rank_units(ckpt, text)     units whose activation tracks simple properties of the text
    memorised(text, training)  spans that occur verbatim in the model's training text
    explain(ckpt, turn)        a chat reply: the distribution each character was drawn from

A text is read the way the book's loss reads it (§8.5, `train_epoch_ch8`): from a zero state,
character t+1 predicted after reading 1..t, so the first character is read but not scored.
Every number comes from the model's own `forward(X, state)`: the math lives in the model, and
whatever cell it has (RNN, GRU, LSTM, several layers) is read the same way (`explain` re-reads a
reply through the `TextStream` that drew it, for the very logits it was drawn from). Input text
follows the chat's rule (`validation.check_message`: normalised as the training text was, the same
length limit, the same refusals).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .validation import ChatError, check_message
from .session import Turn
from .checkpoint import Checkpoint, read_training_text
from .data import Vocab
from .generation import TextStream, candidates

TOP_K = 5                 # next-token candidates reported per scored character
MIN_SPAN = 20             # default shortest verbatim span counted as memorised
MAX_SPANS_SHOWN = 200
RANKING_CHARS = 2000      # characters of the training text the unit ranking reads
MIN_CLASS = 5             # a property needs this many positions on each side to rank units
MAX_RANKED = 20
PER_PROPERTY = 3          # units listed per property at most
QUOTES = {'"': None, "\u201c": True, "\u201d": False}   # toggling, opening, closing


class InspectError(ChatError):
    """A refused inspection request; the message says why and what to do."""


# ---------------------------------------------------------------- input

def prepare(ckpt: Checkpoint, text, min_chars: int = 1) -> str:
    """The text as the model reads it (the chat's normalisation, limits and refusals); at
    least `min_chars` characters after normalisation."""
    text = check_message(text, ckpt.vocab, ckpt.normalization, noun="text")
    if len(text) < min_chars:
        raise InspectError(f"the text has {len(text)} character(s) after normalisation; give at "
                           f"least {min_chars}: the first character is read, never scored")
    return text


# ---------------------------------------------------------------- reading

def state_layout(net) -> tuple[tuple[str, ...], int]:
    """The names of one layer's state tensors (`H`, or `H, C` for an LSTM) and the number of
    layers: the state tuple holds each layer's tensors in turn."""
    cell = getattr(net, "cell", None)
    names = tuple(getattr(cell, "state", ("H",)))
    return names, int(getattr(net, "num_layers", 1))


def _ids(vocab: Vocab, text: str, device) -> torch.Tensor:
    return torch.tensor([vocab[list(text)]], device=device)


@torch.no_grad()
def logits_of(net, vocab: Vocab, text: str) -> torch.Tensor:
    """The model's logits (len(text) - 1, V): row t predicts text[t + 1] after reading
    text[:t + 1] from a zero state. One call of the model's forward over the sequence, one
    batch row, time-major, as `train_epoch_ch8` computes its loss."""
    X = _ids(vocab, text[:-1], net.W_hq.device)
    y_hat, _ = net(X, net.begin_state(batch_size=1, device=X.device))
    return y_hat


@torch.no_grad()
def states_of(net, vocab: Vocab, text: str) -> torch.Tensor:
    """Every state tensor after each character: (len(text), S, num_hiddens), where S runs
    over the state tuple (each layer's H, and C for an LSTM). Read one character per forward
    call from a zero state, so row t is exactly the state `forward(text[:t + 1])` returns."""
    X = _ids(vocab, text, net.W_hq.device)
    state = net.begin_state(batch_size=1, device=X.device)
    out = torch.empty((X.shape[1], len(state), net.num_hiddens), device=X.device)
    for t in range(X.shape[1]):
        _, state = net(X[:, t:t + 1], state)
        torch.stack([s[0] for s in state], out=out[t])
    return out


# ---------------------------------------------------------------- surprisal

@dataclass
class Score:
    """A text as the model read it: per scored character (all but the first) the probability
    it was given, and the TOP_K most likely next tokens; totals in bits and nats."""
    text: str
    chars: list[dict]
    nats_per_char: float

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_char)

    def to_json(self) -> dict:
        return {"text": self.text, "chars": self.chars, "bits_per_char": self.bits_per_char,
                "perplexity": self.perplexity}


def score(ckpt: Checkpoint, text) -> Score:
    """Read `text` (normalised, checked) and report what the model predicted at each step
    (the candidates' probabilities to 6 decimals; the character's own at full precision)."""
    text = prepare(ckpt, text, min_chars=2)
    vocab = ckpt.vocab
    log_probs = torch.log_softmax(logits_of(ckpt.net, vocab, text), dim=1)
    targets = torch.tensor(vocab[list(text[1:])], device=log_probs.device)
    lp = log_probs.gather(1, targets[:, None])[:, 0].double()
    top_lp, top_ids = log_probs.topk(min(TOP_K, len(vocab)), dim=1)
    probs, bits = lp.exp().tolist(), (-lp / math.log(2)).tolist()
    top_p = (top_lp.double().exp() * 1e6).round().div(1e6).tolist()   # 6 decimals: short JSON
    top_ids = top_ids.tolist()
    names = vocab.idx_to_token
    chars = [{"char": ch, "prob": p, "bits": b,
              "top": [[names[i], q] for i, q in zip(ids, ps)]}
             for ch, p, b, ids, ps in zip(text[1:], probs, bits, top_ids, top_p)]
    return Score(text, chars, float(-lp.mean()))


# ---------------------------------------------------------------- units

@dataclass
class Unit:
    """One unit: index `unit` in [0, num_layers * num_hiddens) (layer = unit // num_hiddens),
    `kind` "hidden" (H) or "cell" (an LSTM's C)."""
    unit: int
    layer: int
    kind: str = "hidden"


def _unit_rows(net, unit) -> tuple[int, dict[str, int]]:
    """Which rows of `states_of` hold `unit`: {"hidden": row, "cell": row (LSTM)}."""
    names, layers = state_layout(net)
    total = layers * net.num_hiddens
    if isinstance(unit, bool) or not isinstance(unit, (int, float)) or \
            not float(unit).is_integer() or not 0 <= unit < total:
        raise InspectError(f"unit must be a whole number from 0 to {total - 1} "
                           f"({layers} layer(s) of {net.num_hiddens} units), got {unit!r:.40}")
    unit = int(unit)
    layer = unit // net.num_hiddens
    rows = {"hidden": layer * len(names) + names.index("H")}
    if "C" in names:
        rows["cell"] = layer * len(names) + names.index("C")
    return unit % net.num_hiddens, rows


def trace(ckpt: Checkpoint, text, unit, states: torch.Tensor | None = None) -> dict:
    """`{"text", "unit", "activations"}` (and `"cell"` for an LSTM): the unit's value in the
    state right after reading each character. `states` may pass `states_of` for this text."""
    text = prepare(ckpt, text)
    index, rows = _unit_rows(ckpt.net, unit)
    if states is None:
        states = states_of(ckpt.net, ckpt.vocab, text)
    out = {"text": text, "unit": int(unit), "activations": states[:, rows["hidden"], index].tolist()}
    if "cell" in rows:
        out["cell"] = states[:, rows["cell"], index].tolist()
    return out


def text_properties(text: str) -> list[tuple[str, list[float], list[bool] | None]]:
    """Simple properties of each position (the character just read): (name, values, where
    the property is defined, None: everywhere). Binary ones are 0/1; positions are counts."""
    word_pos, line_pos, quoted = [], [], []
    w = ln = 0
    inside = False
    for ch in text:
        w = 0 if ch.isspace() else w + 1
        ln = 0 if ch == "\n" else ln + 1
        if ch in QUOTES:
            inside = (not inside) if QUOTES[ch] is None else QUOTES[ch]
        word_pos.append(w)
        line_pos.append(ln)
        quoted.append(inside)
    space = [ch.isspace() for ch in text]
    props = [("at a space (vs inside a word)", space, None),
             ("position in the word", word_pos, [not s for s in space])]
    if text.count("\n") >= 2:
        props.append(("position in the line", line_pos, None))
    if sum(ch in QUOTES for ch in text) >= 2:
        props.append(("inside quotes", quoted, None))
    for ch in sorted(set(text)):
        if not ch.isspace():
            props.append((f"just read {ch!r}", [c == ch for c in text], None))
    return props


def _usable(values: torch.Tensor) -> bool:
    """Enough positions to rank on: a count that varies, or MIN_CLASS on each side of a 0/1."""
    distinct = values.unique()
    if distinct.numel() < 2:
        return False
    if distinct.numel() == 2:
        ones = int((values == distinct[1]).sum())
        return min(ones, values.numel() - ones) >= MIN_CLASS
    return values.numel() >= 2 * MIN_CLASS


def _correlations(values: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each column of `values` (n, K) with each column of `acts`
    (n, U): (K, U), 0 where either is constant."""
    v = values - values.mean(dim=0)
    a = acts - acts.mean(dim=0)
    denom = v.norm(dim=0)[:, None] * a.norm(dim=0)[None, :]
    r = (v.T @ a) / denom
    return torch.where(denom > 0, r, torch.zeros_like(r))


def rank_units(ckpt: Checkpoint, text: str, states: torch.Tensor | None = None,
               limit: int = MAX_RANKED) -> list[dict]:
    """Units worth looking at in `text` (already normalised): for each property, the
    PER_PROPERTY units whose activation correlates best with it (|Pearson r| over the text),
    each unit listed once, highest first.

    A property counts only where it is defined (position in the word: inside words) and when
    at least MIN_CLASS positions fall on each side (binary) or it varies (counts)."""
    net = ckpt.net
    if states is None:
        states = states_of(net, ckpt.vocab, text)
    names, _ = state_layout(net)
    H = net.num_hiddens
    acts = states.double().reshape(len(text), -1)          # (n, S * H): column s * H + i
    props = [(name, torch.tensor(values, dtype=torch.float64),
              None if where is None else torch.tensor(where))
             for name, values, where in text_properties(text)]
    rows, r_rows = [], []
    everywhere = [k for k, (_, v, where) in enumerate(props) if where is None and _usable(v)]
    if everywhere:
        rows += everywhere
        r_rows.append(_correlations(torch.stack([props[k][1] for k in everywhere], 1), acts))
    for k, (_, v, where) in enumerate(props):
        if where is not None and _usable(v[where]):
            rows.append(k)
            r_rows.append(_correlations(v[where][:, None], acts[where]))
    if not rows:
        return []
    r = torch.cat(r_rows)                                   # (properties, S * H)
    candidates = []                                         # (|r|, property row, column)
    for p, row in enumerate(r.abs()):
        top = row.topk(min(PER_PROPERTY, row.numel()))
        candidates += [(float(v), p, int(c)) for v, c in zip(top.values, top.indices)]
    ranked, seen = [], set()
    for _, p, col in sorted(candidates, reverse=True):
        if col in seen:
            continue
        seen.add(col)
        s, i = divmod(col, H)
        layer, kind = divmod(s, len(names))
        value = float(r[p, col])
        ranked.append({"unit": layer * H + i, "layer": layer,
                       "kind": "cell" if names[kind] == "C" else "hidden",
                       "property": props[rows[p]][0], "score": abs(value),
                       "correlation": value})
    return ranked[:limit]


# ---------------------------------------------------------------- memorisation

@dataclass
class Memorisation:
    """Spans of `text[start:]` that are part of a verbatim match (≥ min_len characters) with
    the training text. Each span: its place in `text`, the first place it occurs in the
    training text and how often; `novel_share`: the share of `text[start:]` in no span."""
    text: str
    start: int
    min_len: int
    spans: list[dict] = field(default_factory=list)
    novel_share: float = 1.0

    def to_json(self) -> dict:
        return {"text": self.text, "start": self.start, "min_len": self.min_len,
                "spans": self.spans, "novel_share": self.novel_share}


def memorised(text: str, training: str, start: int = 0, min_len: int = MIN_SPAN,
              context: int = 40) -> Memorisation:
    """Every maximal span of `text` of at least `min_len` characters that occurs verbatim in
    `training`, reported where it overlaps `text[start:]` (a reply after its prompt: a span
    may begin in the prompt, as a continued quotation does).

    Matching statistics: the longest match starting at i+1 is at least the one at i minus
    one, so each position costs one failed search plus the extensions (str.find, in C)."""
    if isinstance(min_len, bool) or not isinstance(min_len, (int, float)) or \
            not float(min_len).is_integer() or not 1 <= min_len <= 10_000:
        raise InspectError(f"the shortest span must be a whole number from 1 to 10000, "
                           f"got {min_len!r:.40}")
    min_len = int(min_len)
    n, length, reach = len(text), 0, start
    spans = []
    for i in range(n - min_len + 1):
        length = max(length - 1, 0)
        if length < min_len:
            if text[i:i + min_len] not in training:
                length = 0
                continue
            length = min_len
        while i + length < n and text[i:i + length + 1] in training:
            length += 1
        if i + length > reach:       # reaches past what earlier spans covered in the reply
            span = text[i:i + length]
            where = training.find(span)
            spans.append({"start": i, "end": i + length, "text": span, "position": where,
                          "occurrences": training.count(span),
                          "context": [training[max(0, where - context):where],
                                      training[where + length:where + length + context]]})
            reach = i + length
    covered = _covered(spans, start, n)
    novel = 1.0 - covered / (n - start) if n > start else 1.0
    return Memorisation(text, start, min_len, spans[:MAX_SPANS_SHOWN], novel)


def _covered(spans: list[dict], start: int, end: int) -> int:
    """How many characters of [start, end) lie in at least one span."""
    total, reach = 0, start
    for s in spans:
        lo, hi = max(s["start"], reach), min(s["end"], end)
        if hi > lo:
            total += hi - lo
            reach = hi
    return total


# ---------------------------------------------------------------- why this character

def explain(ckpt: Checkpoint, turn: Turn) -> dict:
    """A chat turn's reply, character by character, with the distribution it was drawn from.

    The state is re-read from the turn's start (its snapshot, its message), so the logits are
    bit for bit those the reply was drawn from, and `generation.candidates` gives the
    sampler's exact distribution after temperature and top-k: `distribution` lists
    [token, probability] in the order the sampler lays them out (replaying its uniform draws
    on their cumulative sum reproduces the reply), `rank` is the character's place by
    probability (1 = most likely). A greedy reply takes the most likely of softmax(logits),
    shown as the distribution; so does a reply chosen step by step."""
    gen = TextStream(ckpt.net, ckpt.vocab, ckpt.normalization)
    gen.restore(turn.before)
    gen.read(turn.text_read)
    settings = turn.settings
    sampled = not turn.stepped and settings is not None and settings.temperature > 0
    names, chars = ckpt.vocab.idx_to_token, []
    for ch in turn.reply:
        logits = gen.peek()
        if sampled:
            ids, cumulative = candidates(logits, settings.temperature, settings.top_k)
            weights = [b - a for a, b in zip([0.0, *cumulative], cumulative)]
            probs = [w / cumulative[-1] for w in weights]
        else:
            ids, probs = range(len(names)), torch.softmax(logits.double(), 0).tolist()
        distribution = [[names[i], p] for i, p in zip(ids, probs)]
        p_ch = next((p for tok, p in distribution if tok == ch), 0.0)
        rank = 1 + sum(p > p_ch for _, p in distribution)
        chars.append({"char": ch, "rank": rank, "prob": p_ch, "distribution": distribution})
        gen.read(ch)
    if turn.stepped:
        how = "chosen step by step"
    elif sampled:
        how = f"sampled at temperature {settings.temperature:g}" + \
            (f", top-k {settings.top_k}" if 0 < settings.top_k < len(names) - 1 else "")
    else:
        how = "greedy (the most likely character each time)"
    return {"message": turn.text, "reply": turn.reply, "sampler": how, "chars": chars}


def conversation_passage(turns, limit: int) -> tuple[str, str]:
    """What the read-along reads by default: the conversation's transcript exactly as the
    state read it, or, when longer than `limit`, its latest turns that fit (the last `limit`
    characters if one turn alone is longer), with a note saying what was left out."""
    texts = [t.text_read + t.reply for t in turns]
    whole = "".join(texts)
    if len(whole) <= limit:
        return whole, ""
    kept = ""
    for text in reversed(texts):
        if len(kept) + len(text) > limit:
            break
        kept = text + kept
    kept = (kept or whole[-limit:]).lstrip()
    return kept, (f"the conversation's last {len(kept):,} of {len(whole):,} characters, "
                  "read from a fresh state")


def step_options(ckpt: Checkpoint, logits: torch.Tensor, settings) -> tuple[list, str]:
    """Step mode's next-character candidates, most likely first, as [token, probability]:
    the sampler's distribution when sampling, else the model's softmax (greedy takes the
    first). `<unk>` is left out: it stands for no character and cannot be chosen."""
    names = ckpt.vocab.idx_to_token
    if settings.temperature > 0:
        ids, cumulative = candidates(logits, settings.temperature, settings.top_k)
        weights = [b - a for a, b in zip([0.0, *cumulative], cumulative)]
        pairs = [(names[i], w / cumulative[-1]) for i, w in zip(ids, weights)]
        caption = (f"the sampler's distribution (temperature {settings.temperature:g}"
                   f"{f', top-k {settings.top_k}' if settings.top_k else ''}): click a bar, or let "
                   "the model draw")
    else:
        probs = torch.softmax(logits.double(), 0).tolist()
        pairs = [(names[i], probs[i]) for i in range(1, len(names))]
        caption = "the model's probabilities (temperature 0: the model takes the top one): click a bar"
    return sorted(pairs, key=lambda tp: -tp[1]), caption


def memorised_turn(training: str, turn: Turn, min_len: int = MIN_SPAN) -> Memorisation:
    """`memorised` for a chat reply, read after its message (a span may begin there)."""
    return memorised(turn.text_read + turn.reply, training, start=len(turn.text_read), min_len=min_len)


# ---------------------------------------------------------------- per-model caches

class ModelNotes:
    """What is worth keeping per loaded model: its training text (read once) and its unit
    ranking (computed once, on the first RANKING_CHARS characters of that text)."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self._training: str | None = None
        self._why_not: str | None = None
        self._ranking: list[dict] | None = None

    @property
    def training_text(self) -> str | None:
        """The text the model trained on, or None (then `why_no_training_text` says why)."""
        if self._training is None and self._why_not is None:
            try:
                folder = self.ckpt.folder
                text = read_training_text(folder, self.ckpt.config) if folder else None
            except ValueError as e:
                text, self._why_not = None, f"its training text cannot be read ({e})"
            if text is None and self._why_not is None:
                self._why_not = ("this model does not carry its training text (checkpoints "
                                 "written by train.py since it does, and `train.py "
                                 "--push-to-hub` pushes it), so memorisation cannot be checked")
            self._training = text
        return self._training

    @property
    def why_no_training_text(self) -> str | None:
        return None if self.training_text is not None else self._why_not

    def ranking(self, fallback_text: str) -> tuple[list[dict], str]:
        """The ranked units and what they were ranked on: the training text's start when the
        model carries it (cached), else `fallback_text`."""
        if self.training_text is not None:
            if self._ranking is None:
                self._ranking = rank_units(self.ckpt, self.training_text[:RANKING_CHARS])
            return self._ranking, f"the first {RANKING_CHARS:,} characters of the training text"
        return rank_units(self.ckpt, fallback_text), "this text"


_NOTES: OrderedDict[int, ModelNotes] = OrderedDict()
_NOTES_LOCK = threading.Lock()


def notes_for(ckpt: Checkpoint, capacity: int = 8) -> ModelNotes:
    """The ModelNotes of a loaded model (the last `capacity` models kept; thread-safe)."""
    key = id(ckpt)
    with _NOTES_LOCK:
        notes = _NOTES.get(key)
        if notes is None or notes.ckpt is not ckpt:
            notes = _NOTES[key] = ModelNotes(ckpt)
        _NOTES.move_to_end(key)
        while len(_NOTES) > capacity:
            _NOTES.popitem(last=False)
    return notes
