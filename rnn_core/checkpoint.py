"""Checkpoint folders: write them atomically, read them back with validation.

A checkpoint is a folder:
    model.safetensors   float32, the cell's parameters by the book's names (cells.param_shapes):
                        W_xh (V,H), W_hh (H,H), b_h (H), W_hq (H,V), b_q (V) for the §8.5 RNN
    vocab.json          idx_to_token, `<unk>` at index 0
    config.json         sizes, cell (arch, num_layers, dropout), normalisation and the training
                        record (schema: config.py; no arch: the §8.5 RNN)
    README.md           the model card
    training_text.xz    optional: the normalised text the model trained on, xz-compressed
                        (what `inspector` checks replies against for memorisation)
plus whatever else training adds (a perplexity plot, resume state).

Only safetensors are read (never pickle), and shapes and sizes are checked from the
file header before any tensor is allocated.
"""
from __future__ import annotations

import glob
import hashlib
import json
import lzma
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .cells import param_shapes
from .config import (FORMAT, MAX_PARAMETERS, CheckpointConfig, CheckpointError,  # noqa: F401
                     check_model_size)   # MAX_PARAMETERS, check_model_size: re-exported
from .data import Vocab
from .model import RNNModelScratch
from .runlock import is_locked

WEIGHTS_NAME, VOCAB_NAME, CONFIG_NAME, CARD_NAME = (
    "model.safetensors", "vocab.json", "config.json", "README.md")
TRAINING_TEXT_NAME = "training_text.xz"
MODEL_FILES = (WEIGHTS_NAME, VOCAB_NAME, CONFIG_NAME)
PLOT_NAME, STATE_JSON, STATE_TENSORS = (
    "perplexity.png", "training_state.json", "training_state.safetensors")
CHECKPOINT_FILES = (*MODEL_FILES, CARD_NAME, PLOT_NAME, TRAINING_TEXT_NAME, STATE_JSON,
                    STATE_TENSORS)  # what a checkpoint folder may hold, and nothing else
MAX_JSON_BYTES = 2 << 20       # a 65,536-token vocabulary takes under 1 MB
MAX_TRAINING_TEXT_BYTES = 64 << 20      # compressed, and again once decompressed (UTF-8)
MAX_ABS_WEIGHT = 1e6           # keeps every logit finite (|logit| <= H * 1e6 + 1e6)
UNK = "<unk>"
MAX_PLOT_BYTES = 1 << 20       # the training curve (perplexity.png), shown on the app's page


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its vocabulary and its config, and where
    it came from (`source`: a folder or a Hub repo id; `commit`: the Hub commit sha, if any)."""
    net: RNNModelScratch
    vocab: Vocab
    config: CheckpointConfig
    source: str = ""
    commit: str | None = None
    folder: Path | None = None   # where its files are (a Hub model: its cached snapshot)

    def plot(self) -> bytes | None:
        """The training curve (perplexity.png) saved with the model, if its folder holds a
        PNG of at most MAX_PLOT_BYTES; else None."""
        path = self.folder / PLOT_NAME if self.folder else None
        try:
            if path is None or not path.is_file() or path.stat().st_size > MAX_PLOT_BYTES:
                return None
            data = path.read_bytes()
        except OSError:
            return None
        return data if data.startswith(b"\x89PNG\r\n\x1a\n") else None

    @property
    def normalization(self) -> str:
        return self.config.normalization


def save_checkpoint(out_dir: str | os.PathLike, weights: dict[str, torch.Tensor], vocab: Vocab,
                    config: dict, files: dict[str, bytes] | None = None,
                    log: Callable[[str], None] | None = None) -> Path:
    """Write a checkpoint folder atomically: the `weights` of the cell `config["arch"]` (default
    the §8.5 RNN) with `num_layers` layers, the vocabulary, the config (`config`:
    CheckpointConfig's fields other than the sizes, which come from the weights) and any extra
    `files` (name → bytes: the card, a plot, resume state).

    Only an absent or empty folder, or a checkpoint of this project, is ever replaced
    (`check_out_folder`). Everything is written into a fresh sibling folder first and synced;
    then the old folder (if any) is renamed aside, the new one renamed into place and the old
    one deleted. A crash at any point leaves the previous checkpoint or the new one;
    `recover_interrupted_save` (run first) tidies what an interrupted save left and reports
    each step to `log` (default: stderr). One writer per folder: train.py holds a lock.
    """
    out = Path(out_dir)
    unknown = set(files or ()) - set(CHECKPOINT_FILES)
    if unknown:
        raise ValueError(f"not checkpoint files: {sorted(unknown)}")
    check_out_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for note in recover_interrupted_save(out):
        (log or _to_stderr)(note)
    tmp = _make_temp_folder(out)
    try:
        H = weights["W_hq"].shape[0]
        names = param_shapes(len(vocab), H, config.get("arch", "rnn"), config.get("num_layers", 1))
        tensors = {name: weights[name].detach().to("cpu", torch.float32).contiguous()
                   for name in names}
        _save_weights(tensors, tmp / WEIGHTS_NAME)
        _write_json(tmp / VOCAB_NAME, vocab.idx_to_token)
        _write_json(tmp / CONFIG_NAME, CheckpointConfig(
            vocab_size=len(vocab), num_hiddens=H, **config).to_json())
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        for f in [*tmp.iterdir(), tmp]:
            _fsync(f)
        old = _previous(out)
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
        _fsync(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_out_folder(out: str | os.PathLike) -> None:
    """Refuse (CheckpointError about `out_dir`, save_checkpoint's parameter, with the reason)
    any `out` a save must not replace: only an absent or empty folder, or a checkpoint of this
    project holding nothing but checkpoint files, may be written. Never `.`, a file, or a
    symbolic link."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise CheckpointError(f"out_dir {out} does not name a checkpoint folder (saving replaces "
                              "the whole folder); name a new one, e.g. runs/rnn", "out_dir")
    if out.is_symlink():
        raise CheckpointError(f"out_dir {out} is a symbolic link (to {os.readlink(out)}); saving "
                              "would replace the link, not write into its target: pass the "
                              "target folder itself or a new folder", "out_dir")
    if not out.exists():
        return
    if not out.is_dir():
        raise CheckpointError(f"out_dir {out} is a file, not a folder; choose another path",
                              "out_dir")
    entries = sorted(os.listdir(out))
    if not entries:
        return
    foreign = [e for e in entries if e not in CHECKPOINT_FILES or (out / e).is_symlink()
               or not (out / e).is_file()]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise CheckpointError(f"out_dir {out} holds files that are not part of a checkpoint "
                              f"({shown}); saving replaces the whole folder and would delete "
                              "them: choose a new folder", "out_dir")
    try:
        config = _read_json(out / CONFIG_NAME)
        if not (isinstance(config, dict) and config.get("format") == FORMAT):  # who wrote it
            raise CheckpointError(f"its {CONFIG_NAME} does not say format {FORMAT!r}")
    except CheckpointError as e:
        raise CheckpointError(f"out_dir {out} is not a checkpoint of this project ({e}); saving "
                              "would replace it: choose a new folder", "out_dir") from None


def recover_interrupted_save(out: str | os.PathLike) -> list[str]:
    """Tidy whatever an interrupted save of `out` left, returning what was done (one line each):
    the previous checkpoint set aside (`.NAME.previous`) is put back if `out` is missing, or
    deleted if the new one is in place; unfinished temporary folders (`.NAME.tmp-*`) are
    deleted. Only folders holding nothing but checkpoint files are ever deleted or moved."""
    out = Path(out)
    notes = []
    old = _previous(out)
    if old.is_symlink() or old.exists():
        _check_leftover(old, out)
        if not out.exists() and not out.is_symlink():
            os.rename(old, out)
            notes.append(f"note: restored {out} from {old.name}, the previous checkpoint that an "
                         "interrupted save had set aside")
        else:
            shutil.rmtree(old)
            notes.append(f"note: deleted {old.name}, an old copy of {out.name} that an "
                         "interrupted save had not finished deleting")
    for tmp in sorted(out.parent.glob(f".{glob.escape(out.name)}.tmp-*")):
        _check_leftover(tmp, out)
        shutil.rmtree(tmp)
        notes.append(f"note: deleted {tmp.name}, an unfinished save of {out.name} left by an "
                     "interrupted run")
    return notes


def recover_checkpoint(out: str | os.PathLike) -> None:
    """Undo a save interrupted between its two renames (the old folder is set aside); not
    while a run holds the folder's lock, as its save may be between them right now."""
    out = Path(out)
    old = _previous(out)
    if old.is_dir() and not old.is_symlink() and not out.exists() and not is_locked(out):
        os.rename(old, out)


def _check_leftover(folder: Path, out: Path) -> None:
    """A leftover may only be moved or deleted if it holds nothing but checkpoint files."""
    if folder.is_symlink() or not folder.is_dir() or any(
            e not in CHECKPOINT_FILES or (folder / e).is_symlink() or not (folder / e).is_file()
            for e in os.listdir(folder)):
        raise CheckpointError(f"{folder} is in the way of saving {out} but is not a leftover of "
                              "this project's saves (it holds other files); move it away")


def _make_temp_folder(out: Path) -> Path:
    """A fresh sibling folder `.NAME.tmp-XXXXXXXX`, created with the umask's mode (tempfile's
    0700 would hide the checkpoint from other users, such as a server's)."""
    while True:
        tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


def _save_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The safetensors file, written by Python: the umask's mode (safetensors' own writer
    makes it 0600, unreadable to a server running as another user) and a plain OSError
    when the disk is full."""
    path.write_bytes(save(tensors, metadata={"format": "pt"}))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _to_stderr(note: str) -> None:
    print(note, file=sys.stderr)


def _previous(out: Path) -> Path:
    return out.with_name(f".{out.name}.previous")


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path):
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; a checkpoint folder needs {', '.join(MODEL_FILES)}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MB; not a checkpoint file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, >4300-digit integers
        raise CheckpointError(f"{path} is not valid JSON ({str(e)[:120]})") from None


def read_config(folder: str | os.PathLike, max_parameters: int = MAX_PARAMETERS) -> CheckpointConfig:
    """Read and check `config.json` (CheckpointConfig.from_json: format version, sizes within
    the sanity limits and `max_parameters`, a known normalisation, sane training metadata)."""
    path = Path(folder) / CONFIG_NAME
    obj = _read_json(path)
    try:
        return CheckpointConfig.from_json(obj, max_parameters)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_vocab(folder: str | os.PathLike, vocab_size: int) -> Vocab:
    """Read `vocab.json` and check it is a list of `vocab_size` distinct strings, `<unk>` first."""
    path = Path(folder) / VOCAB_NAME
    tokens = _read_json(path)
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"{path} must hold a JSON list of token strings")
    if len(tokens) != vocab_size:
        raise CheckpointError(f"{path} has {len(tokens)} tokens but config.json says "
                              f"vocab_size {vocab_size}; the files do not belong together")
    if not tokens or tokens[0] != UNK or len(set(tokens)) != len(tokens):
        raise CheckpointError(f"{path} must start with '<unk>' and hold distinct tokens")
    for i, t in enumerate(tokens[1:], 1):  # a character model: one character per token
        if len(t) != 1 or 0xD800 <= ord(t) <= 0xDFFF:
            shown = ascii(t[:20]) + ("..." if len(t) > 20 else "")
            raise CheckpointError(f"{path}: token {i} is {shown}; every token after '<unk>' must "
                                  "be a single Unicode character (not a lone surrogate)")
    return Vocab(idx_to_token=tokens)


def read_weights(folder: str | os.PathLike, vocab_size: int, num_hiddens: int,
                 arch: str = "rnn", num_layers: int = 1) -> dict[str, torch.Tensor]:
    """Read the cell's float32 tensors, checking the exact set of names, dtypes and shapes
    from the header first."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; a checkpoint folder needs {', '.join(MODEL_FILES)}")
    expected = param_shapes(vocab_size, num_hiddens, arch, num_layers)
    kind = f"{num_layers}-layer {arch}" if num_layers > 1 else arch
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            names = set(f.keys())
            if names != set(expected):
                raise CheckpointError(f"{path} holds tensors {sorted(names)}; expected exactly "
                                      f"{list(expected)}, the parameters of config.json's {kind}")
            for name in expected:
                sl = f.get_slice(name)
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                if dtype != "F32":
                    raise CheckpointError(f"{path}: {name} is {dtype}, expected float32 (F32)")
                if shape != expected[name]:
                    raise CheckpointError(f"{path}: {name} has shape {shape}, expected "
                                          f"{expected[name]} for vocab_size {vocab_size} and "
                                          f"num_hiddens {num_hiddens}")
            return {name: f.get_tensor(name) for name in expected}
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e}); "
                              "it may be truncated or corrupt — download or train it again") from None
    except (OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path} could not be read ({e})") from None


def checkpoint_folders(folder: str | os.PathLike) -> list[Path]:
    """The checkpoint folders directly under `folder` (e.g. the app's bundled `checkpoints/`),
    by name; hidden ones (a save's temporary or previous copy) are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass
class Summary:
    """A checkpoint for people choosing one: its cell, size and validation figures."""
    name: str
    arch: str
    num_layers: int
    num_hiddens: int
    num_params: int
    data: str
    val_perplexity: float | None
    val_loss: float | None

    @classmethod
    def of(cls, folder: str | os.PathLike) -> Summary:
        """Read from `config.json` alone (checked as for loading); no weights are read."""
        config = read_config(folder)
        t = config.training
        figures = [t.get(k) for k in ("final_val_ppl", "final_val_loss")]
        ppl, loss = (float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None
                     for x in figures)
        H, arch, L = config.num_hiddens, config.arch, config.num_layers
        data = t.get("data_name") if isinstance(t.get("data_name"), str) else "?"
        return cls(Path(folder).name, arch, L, H, config.num_params, data, ppl, loss)


def load_checkpoint(folder: str | os.PathLike, device: torch.device | str = "cpu",
                    max_parameters: int = MAX_PARAMETERS) -> Checkpoint:
    """Load and validate a checkpoint folder; a GPU-trained checkpoint loads on the CPU.

    Weights must be finite and at most MAX_ABS_WEIGHT in size, so every logit is finite and
    greedy and sampled generation always pick a real character."""
    folder = Path(folder)
    recover_checkpoint(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    config = read_config(folder, max_parameters)
    V, H = config.vocab_size, config.num_hiddens
    vocab = read_vocab(folder, V)
    tensors = read_weights(folder, V, H, config.arch, config.num_layers)
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{folder / WEIGHTS_NAME}: {name} holds NaN or infinite values")
        if t.numel() and float(t.abs().max()) > MAX_ABS_WEIGHT:
            raise CheckpointError(f"{folder / WEIGHTS_NAME}: {name} holds values beyond "
                                  f"±{MAX_ABS_WEIGHT:.0e}, which overflow the logits; not a "
                                  "usable model (retrain with a smaller learning rate)")
    # Built on the CPU (a few ms), not on the "meta" device: any op there first imports
    # torch._dynamo (~1 s of start-up, bench/startup.py).
    net = RNNModelScratch.from_weights(tensors, config.arch, config.num_layers, config.dropout)
    net.to(device).requires_grad_(False)
    return Checkpoint(net, vocab, config, source=str(folder), folder=folder)


# ---------------------------------------------------------------- the training text

def pack_training_text(text: str) -> tuple[bytes, dict]:
    """The training text as `training_text.xz` bytes, and the config entry that describes it
    (`training_text`: file, characters, sha1 of the UTF-8 text)."""
    data = text.encode("utf-8")
    entry = {"file": TRAINING_TEXT_NAME, "chars": len(text),
             "sha1": hashlib.sha1(data).hexdigest()}
    return lzma.compress(data, preset=6), entry


def read_training_text(folder: str | os.PathLike, config: CheckpointConfig | dict) -> str | None:
    """The training text a checkpoint carries, checked against its config entry (size, sha1);
    None when the checkpoint carries none. A corrupt or oversized file is a CheckpointError."""
    entry = config.training_text if isinstance(config, CheckpointConfig) else config.get("training_text")
    if entry is None:
        return None
    path = Path(folder) / TRAINING_TEXT_NAME
    if not isinstance(entry, dict) or entry.get("file") != TRAINING_TEXT_NAME or \
            not isinstance(entry.get("chars"), int) or not isinstance(entry.get("sha1"), str):
        raise CheckpointError(f"{Path(folder) / CONFIG_NAME}: training_text must be "
                              f'{{"file": "{TRAINING_TEXT_NAME}", "chars": N, "sha1": HEX}}')
    if not path.is_file():
        raise CheckpointError(f"{path} is missing though config.json lists it; download or "
                              "train the checkpoint again")
    if path.stat().st_size > MAX_TRAINING_TEXT_BYTES:
        raise CheckpointError(f"{path} is larger than {MAX_TRAINING_TEXT_BYTES >> 20} MB")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        data = decompressor.decompress(path.read_bytes(), max_length=MAX_TRAINING_TEXT_BYTES + 1)
    except lzma.LZMAError as e:
        raise CheckpointError(f"{path} is not a valid xz file ({e})") from None
    if not decompressor.eof or len(data) > MAX_TRAINING_TEXT_BYTES:
        raise CheckpointError(f"{path} is truncated or holds more than "
                              f"{MAX_TRAINING_TEXT_BYTES >> 20} MB of text")
    if hashlib.sha1(data).hexdigest() != entry["sha1"]:
        raise CheckpointError(f"{path} does not match the sha1 in config.json; the files do not "
                              "belong together")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {e.start})") from None
    if len(text) != entry["chars"]:
        raise CheckpointError(f"{path} holds {len(text):,} characters, config.json says "
                              f"{entry['chars']:,}")
    return text
