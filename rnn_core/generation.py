"""Prediction: the book's greedy `predict_ch8`, and a fast streaming generator with sampling.

`TextStream` carries one state across calls (the chat app's conversation: every layer's H, and
C for an LSTM) and produces one character per step. Its greedy path reproduces `predict_ch8`
exactly for every cell: the same operations in the same order, with the one-hot product
replaced by the row of W_x it selects (exact: the other terms are zeros).
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from .cells import layer_param_names
from .data import Vocab, normalize_prompt
from .errors import SettingError
from .model import RNNModelScratch


def predict_ch8(prefix: str, num_preds: int, net: RNNModelScratch, vocab: Vocab,
                device: torch.device | str) -> str:
    """§8.5: Generate new characters following the `prefix` (the book's function, unchanged)."""
    state = net.begin_state(batch_size=1, device=device)
    outputs = [vocab[prefix[0]]]

    def get_input():
        return torch.tensor([outputs[-1]], device=device).reshape((1, 1))

    for y in prefix[1:]:  # Warm-up period
        _, state = net(get_input(), state)
        outputs.append(vocab[y])
    for _ in range(num_preds):  # Predict `num_preds` steps
        y, state = net(get_input(), state)
        outputs.append(int(y.argmax(dim=1).reshape(1)))
    return "".join([vocab.idx_to_token[i] for i in outputs])


def _scripted(fn):
    """`fn` compiled by torch.jit.script at its first call (not at import: start-up stays as
    it was). torch 2.13 marks TorchScript deprecated, but torch.compile and torch.export offer
    no call that runs a step's operations with the GIL given up once; the script runs the
    same ATen kernels in the same order, so the results are bit for bit the eager ones. Where
    TorchScript is gone or cannot compile `fn`, `fn` itself runs: the same results, slower."""
    @functools.cache
    def compiled():
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*torch.jit.script", DeprecationWarning)
                return torch.jit.script(fn)
        except Exception:  # noqa: BLE001 (any failure: no attribute, a frontend or compile error)
            return fn

    @functools.wraps(fn)
    def call(*args):
        return compiled()(*args)
    call.compiled = compiled  # the function that runs, compiled at the first call
    return call


def _rnn_steps(H: Tensor, nxt: Tensor, W_hh: Tensor, W_xh: Tensor, b_h: Tensor, ids: list[int],
               W_hq: Tensor | None, b_q: Tensor | None, Y: Tensor | None) -> tuple[Tensor, Tensor]:
    """The book's `rnn` step (§8.5) for each token of `ids`, then (given W_hq) the logits into
    `Y`; returns the new state and the spare buffer. The same operations in the same order as
    the book's, so bit for bit the same numbers: tanh((onehot W_xh + H W_hh) + b_h), then
    H W_hq + b_q; the one-hot product is the row W_xh[idx] exactly (and addition commutes
    exactly); every result goes into a preallocated buffer (H and `nxt` take turns).

    One TorchScript call for all the steps, because a Python thread running torch operations
    gives up the GIL in each and must win it back from the server's busy event loop (up to a
    switch interval each time): one call hands it over twice, not six times per character."""
    for i in ids:
        torch.mm(H, W_hh, out=nxt)
        nxt.add_(W_xh[i]).add_(b_h).tanh_()
        H, nxt = nxt, H
    if W_hq is not None and b_q is not None and Y is not None:
        torch.mm(H, W_hq, out=Y).add_(b_q)
    return H, nxt


def _sampling_weights(logits: Tensor, temperature: float, top_k: int
                      ) -> tuple[list[int], list[float]]:
    """The sampler's distribution over the next token: candidate ids (the `top_k` largest
    logits, most likely first, ties in vocabulary order, or every id in vocabulary order) and
    their cumulative weights exp((z - max) / temperature), i.e. softmax(z / temperature)
    unnormalised, summed left to right in double precision.

    `<unk>` (index 0) stands for no character and is never a candidate, so sampled text reads
    back as the tokens that were read (at temperature 2 the bundled model would otherwise draw
    it about once in 8,000 characters). Scalar arithmetic on a few dozen logits (C's `exp`,
    as Python's math.exp), so the weights are the same wherever they are computed."""
    z: list[float] = logits.tolist()
    if 0 < top_k < len(z) - 1:
        ids: list[int] = (torch.sort(logits[1:], descending=True, stable=True)[1][:top_k]
                          + 1).tolist()
    else:
        ids = list(range(1, len(z)))
    top = z[ids[0]]
    for i in ids:
        top = max(top, z[i])
    cumulative: list[float] = []
    total = 0.0
    for i in ids:
        total = total + math.exp((z[i] - top) / temperature)
        cumulative.append(total)
    return ids, cumulative


def _draw(logits: Tensor, u: float, temperature: float, top_k: int) -> int:
    """The token whose cumulative weight first exceeds u × the total (u uniform in [0, 1))."""
    ids, cumulative = _sampling_weights(logits, temperature, top_k)
    x = u * cumulative[-1]
    lo, hi = 0, len(cumulative)
    while lo < hi:   # bisect_right
        mid = (lo + hi) // 2
        if x < cumulative[mid]:
            hi = mid
        else:
            lo = mid + 1
    return ids[lo]


def _rnn_draw(H: Tensor, nxt: Tensor, W_hh: Tensor, W_xh: Tensor, b_h: Tensor, W_hq: Tensor,
              b_q: Tensor, Y: Tensor, idx: int, n: int, temperature: float, top_k: int,
              rng: torch.Generator | None) -> tuple[Tensor, Tensor, list[int]]:
    """`n` characters after reading token `idx`, each read before the next is drawn, as `pick`
    draws them (argmax, or one uniform number from `rng` per character, the n drawn at
    once: the same numbers in the same order); returns the state, the spare buffer and the
    drawn ids (the last not yet read). Run inside TorchScript (`rnn_draw_each`), so the
    generation thread's work per character (the steps, the sampler, the bookkeeping) neither
    holds the GIL nor waits to win it back from the event loop after every operation."""
    uniforms: list[float] = torch.rand([n], generator=rng).tolist() if temperature > 0 else []
    drawn: list[int] = []
    for j in range(n):
        H, nxt = _rnn_steps(H, nxt, W_hh, W_xh, b_h, [idx], W_hq, b_q, Y)
        logits = Y.view(-1)
        idx = int(logits.argmax()) if temperature <= 0 else _draw(logits, uniforms[j],
                                                                  temperature, top_k)
        drawn.append(idx)
    return H, nxt, drawn


def _rnn_draw_each(Hs: list[Tensor], nxts: list[Tensor], W_hhs: list[Tensor],
                   W_xhs: list[Tensor], b_hs: list[Tensor], W_hqs: list[Tensor],
                   b_qs: list[Tensor], Ys: list[Tensor], idxs: list[int], ns: list[int],
                   temperatures: list[float], top_ks: list[int],
                   rngs: list[torch.Generator | None]) -> list[tuple[Tensor, Tensor, list[int]]]:
    """`_rnn_draw` for several streams, one after the other (each its own batch-1 steps, so
    each exactly as alone), in one TorchScript call: one GIL hand-over for a whole round of
    streams' updates on the generation thread."""
    drawn: list[tuple[Tensor, Tensor, list[int]]] = []
    for j in range(len(Hs)):
        drawn.append(_rnn_draw(Hs[j], nxts[j], W_hhs[j], W_xhs[j], b_hs[j], W_hqs[j], b_qs[j],
                               Ys[j], idxs[j], ns[j], temperatures[j], top_ks[j], rngs[j]))
    return drawn


rnn_steps = _scripted(_rnn_steps)
rnn_draw_each = _scripted(_rnn_draw_each)
draw = _scripted(_draw)
sampling_weights = _scripted(_sampling_weights)


class TextStream:
    """One stream of text through the model: `feed` text, then `generate` characters (named
    apart from torch.Generator, the random stream that sampling draws from).

    The state after `feed(a)`, `feed(b)` equals the state after `feed(a + b)`: it has read
    exactly the characters given, in order. `state` is the model's state tuple (every
    layer's H, and C for an LSTM); `pending` is the token id waiting to be read next (the
    book feeds a character only when the next one is asked for).
    """

    def __init__(self, net: RNNModelScratch, vocab: Vocab, normalization: str = "book"):
        self.net, self.vocab, self.normalization = net, vocab, normalization
        p = {name: t.detach() for name, t in net.named_parameters()}  # no autograd recording
        self.W_hq, self.b_q = p["W_hq"], p["b_q"]
        layers = [[p[name] for name in layer_param_names(net.cell, k)]
                  for k in range(net.num_layers)]
        self.layers = [(w[0::3], w[1::3], w[2::3]) for w in layers]  # (W_x, W_h, b) per layer
        self.rows = [list(W.unbind(0)) for W in self.layers[0][0]]  # W_x{g}[idx], sliced once
        self._step = self._step_cells
        if net.arch == "rnn" and net.num_layers == 1:
            self._step = self._step_rnn
            self.W_hh, self.b_h = self.layers[0][1][0], self.layers[0][2][0]
        new = functools.partial(torch.empty, dtype=self.W_hq.dtype, device=self.W_hq.device)
        self._next = new((1, net.num_hiddens))  # the next state, computed in place
        self._Y = new((1, net.vocab_size))
        self._logits = self._Y.view(-1)
        self.reset()

    @property
    def H(self) -> torch.Tensor:
        """The first layer's hidden state."""
        return self.state[0]

    def reset(self) -> None:
        """Forget everything read: zero state, nothing pending."""
        self.state = self.net.begin_state(1, self.W_hq.device)
        self.pending: int | None = None

    def snapshot(self) -> tuple[tuple[torch.Tensor, ...], int | None]:
        """A copy of the stream position (the whole state tuple and the pending token), for
        rewinding (undo, retry, stop)."""
        return tuple(s.clone() for s in self.state), self.pending

    def restore(self, snap: tuple[tuple[torch.Tensor, ...], int | None]) -> None:
        self.state, self.pending = tuple(s.clone() for s in snap[0]), snap[1]

    def _step_rnn(self, idx: int, logits: bool = True) -> torch.Tensor | None:
        """Read token `idx`; return the 1-D logits for the next one (a reused buffer).

        The book's `rnn` step (§8.5), one TorchScript call (`rnn_steps`)."""
        if not logits:
            self._read_rnn([idx])
            return None
        H, self._next = rnn_steps(self.state[0], self._next, self.W_hh, self.layers[0][0][0],
                                  self.b_h, [idx], self.W_hq, self.b_q, self._Y)
        self.state = (H,)
        return self._logits

    def _read_rnn(self, ids: list[int]) -> None:
        """Read tokens `ids` in one TorchScript call (no logits)."""
        if ids:
            H, self._next = rnn_steps(self.state[0], self._next, self.W_hh, self.layers[0][0][0],
                                      self.b_h, ids, None, None, None)
            self.state = (H,)

    def _step_cells(self, idx: int, logits: bool = True) -> torch.Tensor | None:
        """The same for any cell and depth: the cell's own step (cells.py), layer by layer,
        the first layer's input terms being rows of W_x; no dropout (generation)."""
        cell, S = self.net.cell, len(self.net.cell.state)
        state = list(self.state)
        H = None
        for k, (W_x, W_h, b) in enumerate(self.layers):
            xs = [rows[idx] for rows in self.rows] if k == 0 else [torch.mm(H, W) for W in W_x]
            state[k * S:(k + 1) * S] = cell.step(xs, state[k * S:(k + 1) * S], W_h, b)
            H = state[k * S]
        self.state = tuple(state)
        if not logits:
            return None
        torch.mm(H, self.W_hq, out=self._Y).add_(self.b_q)
        return self._logits

    def peek(self) -> torch.Tensor:
        """The logits for the next character (a copy), the stream left exactly as it was."""
        if self.pending is None:
            raise ValueError("feed some text first; the model needs a character to read")
        snap = self.snapshot()
        logits = self._step(self.pending).clone()
        self.restore(snap)
        return logits

    def feed(self, text: str) -> str:
        """Normalise `text` as the training text was and read it; returns what was read."""
        text = normalize_prompt(text, self.normalization)
        self.read(text)
        return text

    def read(self, text: str) -> None:
        """Read `text` as it is (already normalised), one character after the other."""
        if self._step == self._step_rnn and text:
            ids = [self.vocab[ch] for ch in text]
            self._read_rnn(([self.pending] if self.pending is not None else []) + ids[:-1])
            self.pending = ids[-1]
            return
        for ch in text:
            if self.pending is not None:
                self._step(self.pending, logits=False)
            self.pending = self.vocab[ch]

    def generate(self, num_preds: int, temperature: float = 0.0, top_k: int = 0,
                 rng: torch.Generator | None = None) -> Iterator[str]:
        """Yield `num_preds` characters, each read into the state before the next is drawn.

        temperature 0 is greedy (the book's argmax); otherwise softmax(logits / temperature),
        restricted to the `top_k` most likely tokens when top_k > 0.
        """
        check_generation_settings(num_preds, temperature, top_k)
        if self.pending is None:
            raise ValueError("feed some text before generating; the model needs a first character")
        for _ in range(num_preds):   # one step and `pick` a character: `draw(1)` costs more
            self.pending = pick(self._step(self.pending), temperature, top_k, rng)
            yield self.vocab.idx_to_token[self.pending]

    def draw(self, n: int, temperature: float = 0.0, top_k: int = 0,
             rng: torch.Generator | None = None) -> str:
        """The next `n` characters at once, exactly as `generate` yields them (settings checked
        by the caller); see `draw_each`."""
        return draw_each([(self, n, temperature, top_k, rng)])[0]

    def _text(self, ids: list[int]) -> str:
        return "".join(self.vocab.idx_to_token[i] for i in ids)


def draw_each(draws: Sequence[tuple[TextStream, int, float, int, torch.Generator | None]]
              ) -> list[str]:
    """`draw(n, temperature, top_k, rng)` for each of several different streams, each exactly
    as alone: the one-layer RNN streams' in one TorchScript call (`rnn_draw_each`: their
    steps, the sampler and their uniform numbers, with the GIL handed over once), the
    others' a step and `pick` per character."""
    if any(gen.pending is None for gen, *_ in draws):
        raise ValueError("feed some text before generating; the model needs a first character")
    if len({id(gen) for gen, *_ in draws}) < len(draws):   # one stream twice: in turn
        return [text for d in draws for text in draw_each([d])]
    texts = [""] * len(draws)
    scripted = []
    for j, (gen, n, temperature, top_k, rng) in enumerate(draws):
        if n > 0 and gen._step == gen._step_rnn:
            scripted.append(j)
        elif n > 0:
            ids = []
            for _ in range(n):
                gen.pending = pick(gen._step(gen.pending), temperature, top_k, rng)
                ids.append(gen.pending)
            texts[j] = gen._text(ids)
    if scripted:
        args = [(gen.state[0], gen._next, gen.W_hh, gen.layers[0][0][0], gen.b_h, gen.W_hq,
                 gen.b_q, gen._Y, gen.pending, n, float(temperature), int(top_k), rng)
                for gen, n, temperature, top_k, rng in (draws[j] for j in scripted)]
        for j, (H, nxt, ids) in zip(scripted, rnn_draw_each(*map(list, zip(*args)))):
            gen = draws[j][0]
            gen.state, gen._next, gen.pending = (H,), nxt, ids[-1]
            texts[j] = gen._text(ids)
    return texts


class SettingsError(SettingError):
    """A generation setting out of range; `setting` names it (callers add their own flag name)."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting} {problem}", setting)
        self.problem = problem


def check_generation_settings(num_preds, temperature, top_k) -> None:
    """The rule every caller of generation shares (CLI, CharRNN, the chat's sliders on top of
    theirs): `num_preds` and `top_k` whole numbers >= 0 (top_k 0 = off), `temperature` a finite
    number >= 0 (0 = greedy)."""
    for name, value in (("num_preds", num_preds), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SettingsError(name, f"must be a whole number >= 0, got {value!r:.40}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
            not math.isfinite(temperature) or temperature < 0:
        raise SettingsError("temperature", f"must be a finite number >= 0 (0 = greedy), got "
                                           f"{temperature!r:.40}")


def candidates(logits: torch.Tensor, temperature: float, top_k: int
               ) -> tuple[Sequence[int], list[float]]:
    """The sampler's distribution over the next token, as `pick` draws from it: candidate ids
    and their cumulative weights (`_sampling_weights`, the one rule, also run inside
    `rnn_draw_each`)."""
    return sampling_weights(logits, float(temperature), int(top_k))


def pick(logits: torch.Tensor, temperature: float, top_k: int,
         rng: torch.Generator | None = None) -> int:
    """Choose the next token id from 1-D logits: argmax (temperature 0), or one uniform number
    from `rng` found among the cumulative weights of `candidates` (`_draw`)."""
    if temperature <= 0:
        return int(logits.argmax())
    return draw(logits, float(torch.rand((), generator=rng)), float(temperature), int(top_k))


def generate_text(net: RNNModelScratch, vocab: Vocab, prefix: str, num_preds: int,
                  normalization: str = "book", temperature: float = 0.0, top_k: int = 0,
                  seed: int | None = None) -> str:
    """Prefix (normalised) plus `num_preds` generated characters; greedy equals `predict_ch8`."""
    check_generation_settings(num_preds, temperature, top_k)
    gen = TextStream(net, vocab, normalization)
    prefix = gen.feed(prefix)
    if not prefix:
        raise ValueError("the prefix is empty after normalisation; give at least one character "
                         "the model knows")
    rng = torch.Generator(device=gen.W_hq.device).manual_seed(seed) if seed is not None else None
    return prefix + "".join(gen.generate(num_preds, temperature, top_k, rng))
