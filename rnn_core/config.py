"""The schema of a checkpoint's `config.json`: one dataclass that every writer and reader uses.

    format, format_version   which project wrote it, and the layout's version (checked on load)
    vocab_size, num_hiddens  the model's sizes (§8.5), within the loader's sanity limits
    arch, num_layers, dropout  the cell (cells.CELLS), its layers and char-rnn dropout (absent:
                             the §8.5 RNN, one layer, no dropout)
    normalization            how text was normalised before tokenising (data.NORMALIZATIONS)
    training                 the training record (settings, perplexities, speed, command);
                             free-form when read: `record()` gives its checked entries
    training_text            optional: file, chars and sha1 of the bundled training text

A config.json is untrusted input (it may come from any Hub repo): `from_json` checks types,
ranges and sizes before anything is allocated, and refuses a newer format version with one line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .cells import check_structure, num_params
from .data import NORMALIZATIONS
from .errors import SettingError

FORMAT = "d2l-char-rnn-scratch"
FORMAT_VERSION = 1   # raise when the layout changes incompatibly; files without it are version 1

# Sanity limits, checked before allocating: a hostile or mistaken config must not take the
# machine's memory. 8192 hidden units and a 65,536-token vocabulary are far beyond §8.5.
MAX_NUM_HIDDENS = 8192
MAX_VOCAB_SIZE = 65536
MAX_PARAMETERS = 100_000_000
MAX_METADATA_NUMBER = 1e15     # training metadata: counts, rates, perplexities
MAX_METADATA_TEXT = 10_000     # characters of one metadata string (e.g. the command)

# The training record's entries a card or the app may show, by kind.
RECORD_NUMBERS = ("num_epochs", "lr", "batch_size", "num_steps", "num_train_tokens", "final_ppl",
                  "final_val_ppl", "best_val_ppl", "tokens_per_sec")
RECORD_TEXTS = ("data_name", "data_sha1", "device", "optimizer", "command")


class CheckpointError(SettingError):
    """A checkpoint folder that cannot be loaded or written; the message names the file and
    the problem."""


def check_model_size(vocab_size, num_hiddens, arch="rnn", num_layers=1, dropout=0.0) -> None:
    """The sizes and cells a checkpoint may have: the loader refuses others, and train.py
    checks them before training so it never writes a checkpoint its own loader refuses."""
    V, H = vocab_size, num_hiddens
    for key, value, limit in (("vocab_size", V, MAX_VOCAB_SIZE), ("num_hiddens", H, MAX_NUM_HIDDENS)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            raise CheckpointError(f"{key} must be an integer from 1 to {limit}, got {value!r}")
    try:
        check_structure(arch, num_layers, dropout)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if num_params(V, H, arch, num_layers) > MAX_PARAMETERS:
        layers = f" and {num_layers} {arch} layers" if (arch, num_layers) != ("rnn", 1) else ""
        raise CheckpointError(f"vocab_size {V} and num_hiddens {H}{layers} make more than "
                              f"{MAX_PARAMETERS:,} parameters; refusing to allocate")


def check_metadata(key: str, value, depth: int = 0) -> None:
    """Training metadata is shown and formatted, never trusted: plain JSON of sane sizes."""
    if depth > 4:
        raise CheckpointError(f"{key} is nested too deeply")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):  # a float may be inf or NaN (a diverged run)
        if isinstance(value, int) and abs(value) > MAX_METADATA_NUMBER:
            raise CheckpointError(f"{key} must be a number of at most "
                                  f"{MAX_METADATA_NUMBER:.0e} in size, got {str(value)[:40]}...")
    elif isinstance(value, str):
        if len(value) > MAX_METADATA_TEXT:
            raise CheckpointError(f"{key} is longer than {MAX_METADATA_TEXT:,} characters")
    elif isinstance(value, list):
        if len(value) > MAX_METADATA_TEXT:
            raise CheckpointError(f"{key} has more than {MAX_METADATA_TEXT:,} entries")
        for i, v in enumerate(value):
            check_metadata(f"{key}[{i}]", v, depth + 1)
    elif isinstance(value, dict):
        if len(value) > 1000:
            raise CheckpointError(f"{key} has more than 1,000 entries")
        for k, v in value.items():
            check_metadata(f"{key}.{k}", v, depth + 1)


@dataclass
class CheckpointConfig:
    """What config.json holds (see the module docstring)."""
    vocab_size: int
    num_hiddens: int
    normalization: str
    training: dict = field(default_factory=dict)
    training_text: dict | None = None
    format_version: int = FORMAT_VERSION
    arch: str = "rnn"
    num_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self):
        check_model_size(self.vocab_size, self.num_hiddens, self.arch, self.num_layers,
                         self.dropout)
        if self.normalization not in NORMALIZATIONS:
            raise CheckpointError(f"normalization must be one of {NORMALIZATIONS}, "
                                  f"got {str(self.normalization)[:40]!r}")

    @classmethod
    def from_json(cls, obj, max_parameters: int = MAX_PARAMETERS) -> CheckpointConfig:
        """Check a parsed config.json: a JSON object of a format version this code reads (none
        written: version 1), sizes within the limits (and `max_parameters`), a known
        normalisation, and `training` metadata of sane types and sizes."""
        if not isinstance(obj, dict):
            raise CheckpointError("must hold a JSON object")
        version = obj.get("format_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CheckpointError(f"format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"format_version {version} is newer than this code reads "
                              f"({FORMAT_VERSION}); upgrade the rnn_core package to load it")
        arch, L = obj.get("arch", "rnn"), obj.get("num_layers", 1)
        dropout = obj.get("dropout", 0.0)
        check_model_size(obj.get("vocab_size"), obj.get("num_hiddens"), arch, L, dropout)
        V, H = obj["vocab_size"], obj["num_hiddens"]
        if num_params(V, H, arch, L) > max_parameters:
            raise CheckpointError(f"vocab_size {V} and num_hiddens {H} make "
                                  f"{num_params(V, H, arch, L):,} parameters, more than the "
                                  f"{max_parameters:,} allowed here; refusing to allocate")
        config = cls(vocab_size=V, num_hiddens=H, normalization=obj.get("normalization"),
                     training=obj.get("training", {}), training_text=obj.get("training_text"),
                     format_version=version, arch=arch, num_layers=L, dropout=float(dropout))
        if not isinstance(config.training, dict):
            raise CheckpointError("training must be a JSON object")
        for key, value in obj.items():
            check_metadata(key, value)
        return config

    def to_json(self) -> dict:
        """The object written to config.json."""
        out = {"format": FORMAT, "format_version": self.format_version,
               "vocab_size": self.vocab_size, "num_hiddens": self.num_hiddens,
               "arch": self.arch, "num_layers": self.num_layers, "dropout": self.dropout,
               "normalization": self.normalization, "training": self.training}
        if self.training_text is not None:
            out["training_text"] = self.training_text
        return out

    @property
    def num_params(self) -> int:
        """The model's parameters (cells.num_params): about the multiply-adds of one generated
        character."""
        return num_params(self.vocab_size, self.num_hiddens, self.arch, self.num_layers)

    def record(self) -> dict:
        """The training record's entries, each checked: numbers finite and sane, texts one
        short line; anything else (a list, "n/a", a 400-digit integer) is left out, as unknown."""
        t = self.training
        clean = {}
        for key in RECORD_NUMBERS:
            x = t.get(key)
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            if (isinstance(x, int) and abs(x) < 10 ** 15) or (isinstance(x, float) and math.isfinite(x)):
                clean[key] = x
        for key in RECORD_TEXTS:
            x = t.get(key)
            if isinstance(x, str) and x.strip():
                clean[key] = " ".join(x.replace("`", "'").split())[:300]
        clean["use_random_iter"] = t.get("use_random_iter") is True
        return clean
