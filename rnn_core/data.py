"""Text → vocabulary → minibatches, exactly as the book's library (D2L 0.17, §8.2–8.3).

The two iterators draw from Python's `random` module, like the book, so the same
`random.seed` gives the same minibatches.
"""
from __future__ import annotations

import collections
import hashlib
import os
import random
import re
import unicodedata
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence

import torch

from .errors import SettingError

TIME_MACHINE_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
TIME_MACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")
SHAKESPEARE_SHA1 = "04486597058d11dcc2c556b1d0433891eb639d2e"
NORMALIZATIONS = ("book", "raw")


class DataError(SettingError):
    """A training text that cannot be used, with the reason and the fix."""


def sha1_of(path: str | os.PathLike) -> str:
    """Hex sha1 of a file's bytes."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where downloaded data lives (`RNN_CORE_CACHE`, default ~/.cache/rnn_core)."""
    folder = os.environ.get("RNN_CORE_CACHE")
    return Path(folder) if folder else Path.home() / ".cache" / "rnn_core"


def download(url: str, sha1: str, filename: str) -> Path:
    """Download `url` once into the cache as `filename`, check its sha1, return the path."""
    path = cache_dir() / filename
    if path.exists() and sha1_of(path) == sha1:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")  # processes of one run may race here
    try:
        urllib.request.urlretrieve(url, partial)
    except OSError as e:
        raise DataError(f"could not download {url} ({e}); try again later, or train on a "
                        "local copy of the text") from None
    if sha1_of(partial) != sha1:
        partial.unlink()
        raise DataError(f"{url} did not match its sha1 {sha1}; try again later, or train on a "
                        "local copy of the text")
    os.replace(partial, path)
    return path


def download_time_machine() -> Path:
    """The book's `timemachine.txt` (§8.2), downloaded once and sha1-checked."""
    return download(TIME_MACHINE_URL, TIME_MACHINE_SHA1, "timemachine.txt")


def download_shakespeare() -> Path:
    """char-rnn's tiny-shakespeare (the corpus of nanoGPT's `shakespeare_char`), downloaded
    once and sha1-checked."""
    return download(SHAKESPEARE_URL, SHAKESPEARE_SHA1, "tinyshakespeare.txt")


@dataclass(frozen=True)
class Dataset:
    """A named training text (`--data NAME`) and how it is read by default."""
    download: Callable[[], Path]
    normalization: str
    max_tokens: int          # ≤ 0: the whole text
    prefix: str              # what predictions during training continue


DATASETS = {
    "timemachine": Dataset(lambda: download_time_machine(), "book", 10000, "time traveller"),
    "shakespeare": Dataset(lambda: download_shakespeare(), "raw", 0, "ROMEO:"),
}


def split_corpus(corpus: Sequence[int], val_fraction: float) -> tuple[Sequence[int], Sequence[int]]:
    """nanoGPT's split: training = the first int((1 − F)·n) tokens, validation = the rest
    (for tiny-shakespeare at F = 0.1: 1,003,854 and 111,540)."""
    n_train = int((1 - val_fraction) * len(corpus))
    return corpus[:n_train], corpus[n_train:]


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file, refusing missing, empty, binary or non-UTF-8 files clearly."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist (or is not a file)", "path")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise DataError(f"data file {path} looks binary (it contains NUL bytes); pass a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not valid UTF-8 (byte {e.start}); "
                        "convert it, e.g. iconv -f latin1 -t utf-8") from None
    if not text.strip():
        raise DataError(f"data file {path} is empty; pass a file with text in it")
    return text


def normalize_line(line: str) -> str:
    """§8.2: The book's `read_time_machine` rule for one line: letters only, lowercase."""
    return re.sub("[^A-Za-z]+", " ", line).strip().lower()


def normalize_text(text: str, normalization: str) -> str:
    """Normalise a training text: `book` joins normalised lines with no separator (as the
    book does: "him" + "was" → "himwas"); `raw` keeps every character (Unicode NFC)."""
    if normalization == "book":
        # Universal newlines, as the book's open() in text mode; split on "\n" only, as readlines().
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        return "".join(normalize_line(line) for line in lines)
    if normalization == "raw":
        return unicodedata.normalize("NFC", text)
    raise ValueError(f"unknown normalization {normalization!r}; use one of {NORMALIZATIONS}")


def normalize_prompt(text: str, normalization: str) -> str:
    """Normalise user text the way the training text was, keeping its edge spaces
    (a prompt is a fragment of a line, not a whole line, so it is not stripped)."""
    if normalization == "book":
        return re.sub("[^A-Za-z]+", " ", text).lower()
    return normalize_text(text, normalization)


class Vocab:
    """§8.2: The book's character vocabulary: `<unk>` at 0, then tokens by descending frequency
    (ties in first-seen order). Unknown tokens map to index 0."""

    def __init__(self, tokens: Sequence[str] = (), reserved_tokens: Sequence[str] = (),
                 idx_to_token: Sequence[str] | None = None):
        if idx_to_token is None:
            counter = collections.Counter(tokens)
            token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
            idx_to_token = ["<unk>", *reserved_tokens]
            idx_to_token += [t for t, _ in token_freqs if t not in idx_to_token]
        self.idx_to_token = list(idx_to_token)
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self[t] for t in tokens]

    def to_tokens(self, indices):
        if not isinstance(indices, (list, tuple)):
            return self.idx_to_token[indices]
        return [self.idx_to_token[i] for i in indices]

    @property
    def unk(self) -> int:
        return 0


def load_corpus(text: str, normalization: str = "book",
                max_tokens: int = -1) -> tuple[list[int], Vocab]:
    """§8.2: The book's `load_corpus_time_machine`: the vocabulary is built on the whole text,
    then the corpus is cut to `max_tokens` (≤ 0 keeps everything)."""
    chars = normalize_text(text, normalization)
    if not chars:
        raise DataError(f"normalization {normalization!r} leaves no characters of the text; "
                        "try 'raw' or another text", "normalization")
    vocab = Vocab(chars)
    corpus = [vocab[c] for c in (chars[:max_tokens] if max_tokens > 0 else chars)]
    return corpus, vocab


def seq_data_iter_random(corpus: Sequence[int], batch_size: int,
                         num_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """§8.3: The book's random sampling: random prefix dropped, shuffled subsequence starts."""
    corpus = corpus[random.randint(0, num_steps - 1):]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    random.shuffle(initial_indices)
    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        starts = initial_indices[i: i + batch_size]
        X = [corpus[j: j + num_steps] for j in starts]
        Y = [corpus[j + 1: j + 1 + num_steps] for j in starts]
        yield torch.tensor(X), torch.tensor(Y)


def seq_data_iter_sequential(corpus: Sequence[int], batch_size: int,
                             num_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """§8.3: The book's sequential partitioning (offset drawn from 0..num_steps inclusive, as the book)."""
    offset = random.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = torch.as_tensor(corpus[offset: offset + num_tokens])  # a view where corpus is a tensor
    Ys = torch.as_tensor(corpus[offset + 1: offset + 1 + num_tokens])
    Xs, Ys = Xs.reshape(batch_size, -1), Ys.reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        yield Xs[:, i: i + num_steps], Ys[:, i: i + num_steps]


class SeqDataLoader:
    """§8.3: Iterable over minibatches of a corpus; a fresh pass (new random draws) per `iter`."""

    def __init__(self, corpus: Sequence[int], batch_size: int, num_steps: int,
                 use_random_iter: bool = False):
        self.corpus, self.batch_size, self.num_steps = corpus, batch_size, num_steps
        self.data_iter_fn = seq_data_iter_random if use_random_iter else seq_data_iter_sequential
        if not use_random_iter:
            # The same minibatches, sliced from one tensor made once: building the epoch's
            # tensors from the list cost 2.5 ms per pass of the book's 10,000 characters
            self.corpus = torch.tensor(corpus, dtype=torch.long)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.data_iter_fn(self.corpus, self.batch_size, self.num_steps)


def min_corpus_length(batch_size: int, num_steps: int, use_random_iter: bool) -> int:
    """Shortest corpus that gives at least one minibatch whatever the random offset."""
    if use_random_iter:
        return batch_size * num_steps + num_steps
    return batch_size * num_steps + num_steps + 1
