"""A trained model in three lines, for learners: load it, let it write, measure a text.

    from rnn_core import CharRNN
    rnn = CharRNN.load("you/timemachine-rnn", revision="main")   # or a checkpoint folder
    rnn.generate("time traveller", 50)                           # greedy: the book's predict_ch8
    rnn.perplexity("the time traveller smiled")                  # how surprised the model is

Loading goes through `load_model`: safetensors only, every file checked before use, Hub repos
pinned to one commit. (huggingface_hub's PyTorchModelHubMixin would give `from_pretrained`
for free, but its loader knows neither vocab.json nor these checks, so it is not used.)
"""
from __future__ import annotations

import os

from .cells import describe
from .checkpoint import Checkpoint
from .data import normalize_text
from .generation import generate_text
from .hub import load_model
from .training import evaluate_perplexity

PERPLEXITY_WINDOW = 1000  # characters read per forward pass; the state carries across windows


class CharRNN:
    """A loaded checkpoint with the three things a learner does with it. `net`, `vocab` and
    `config` are the book's model, its vocabulary and its CheckpointConfig (sizes, training record)."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.net, self.vocab, self.config = ckpt.net, ckpt.vocab, ckpt.config

    @classmethod
    def load(cls, ref: str | os.PathLike, revision: str | None = None) -> CharRNN:
        """A checkpoint folder, or a Hub repo id "user/name" at `revision` (branch, tag or
        commit sha; default main). Errors are one-line `CheckpointError`s saying what to do."""
        return cls(load_model(str(ref), revision))

    def __repr__(self) -> str:
        at = f"@{self.ckpt.commit[:8]}" if self.ckpt.commit else ""
        cell = describe(self.net.arch, self.net.num_layers, self.net.num_hiddens)
        return f"CharRNN({self.ckpt.source}{at}: {cell}, {len(self.vocab)} tokens)"

    def generate(self, prefix: str, num_preds: int = 50, temperature: float = 0.0,
                 top_k: int = 0, seed: int | None = None) -> str:
        """The prefix (normalised as the training text was) and `num_preds` more characters.
        temperature 0 is greedy, exactly the book's `predict_ch8`; above 0 it samples (from
        the `top_k` most likely characters when top_k > 0; `seed` makes it repeatable)."""
        return generate_text(self.net, self.vocab, prefix, num_preds, self.ckpt.normalization,
                             temperature, top_k, seed)

    def perplexity(self, text: str) -> float:
        """exp(mean cross-entropy) of each character of `text` given the ones before it, read
        from a zero state after normalising `text` as the training text was (§8.4's measure:
        1 is a perfect prediction, the vocabulary size is a uniform guess)."""
        chars = normalize_text(text, self.ckpt.normalization)
        if len(chars) < 2:
            raise ValueError("the text needs at least two characters after normalisation to "
                             "measure a prediction")
        return evaluate_perplexity(self.net, self.vocab[list(chars)], 1, PERPLEXITY_WINDOW,
                                   next(self.net.parameters()).device)
