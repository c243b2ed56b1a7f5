"""Which model a reference names — a local checkpoint folder or a Hub repo id — the one rule
the command line, the app and the library share (`parse_model_ref`):

    1. a folder the caller can use is that folder (`folder(ref)`: by default any existing
       folder; the app allows only those under its checkpoints/);
    2. text shaped like a path is a folder, existing or not: it starts with `.`, `/` or `~`,
       ends with `/`, or holds a backslash or more than one `/`;
    3. anything else must be a Hub repo id, `owner/name` or `name`: ASCII letters, digits,
       `_`, `-` and `.`, each part starting with a letter or digit, at most 96 characters,
       no `--` or `..` (what the Hub accepts);
    4. a revision (branch, tag or commit sha) is for Hub repos only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from .config import CheckpointError

HUB_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)
REVISION = re.compile(r"^\w[\w./-]{0,99}$", re.ASCII)


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a local `folder` (None for a Hub repo) or a Hub `repo_id` at
    `revision` (None: main)."""
    folder: Path | None = None
    repo_id: str | None = None
    revision: str | None = None


def existing_folder(ref: str) -> Path | None:
    """Rule 1's default: `ref` (with `~` expanded) if it is an existing folder."""
    try:
        path = Path(ref).expanduser()
        return path if path.is_dir() else None
    except (OSError, RuntimeError):   # a name too long for the file system; no home for `~user`
        return None


def looks_like_path(ref: str) -> bool:
    """Rule 2: text that can only be a path, never a Hub repo id."""
    return ref.startswith((".", "/", "~")) or ref.endswith("/") or ref.count("/") > 1 \
        or "\\" in ref


def parse_model_ref(ref, revision=None,
                    folder: Callable[[str], Path | None] = existing_folder) -> ModelRef:
    """The model `ref` names (see the module docstring), or a CheckpointError saying why none
    (`setting`: "ref" or "revision", the parameter at fault).
    Surrounding whitespace is ignored; an empty revision is none. A path-shaped `ref` that
    `folder` does not accept comes back as ModelRef(folder=Path(ref)): loading it says it is
    missing, in the caller's words."""
    if not isinstance(ref, str) or not ref.strip():
        raise CheckpointError("no model given: name a checkpoint folder or a Hub repo id like "
                            "user/name", "ref")
    ref = ref.strip()
    revision = revision.strip() if isinstance(revision, str) and revision.strip() else None
    path = folder(ref)
    if path is not None or looks_like_path(ref):
        if revision is not None:
            raise CheckpointError(f"revision only applies to Hub repo ids, but {ref} is a local "
                                "folder; leave it out", "revision")
        return ModelRef(folder=path if path is not None else Path(ref))
    if not HUB_REPO_ID.match(ref) or ".." in ref or "--" in ref:
        raise CheckpointError(f"{ref[:100]!r} is neither a checkpoint folder nor a Hub repo id like "
                            "user/name", "ref")
    if revision is not None and (not REVISION.match(revision) or ".." in revision):
        raise CheckpointError(f"revision {revision[:100]!r} is not a valid revision; use a branch, "
                            "tag or commit sha", "revision")
    return ModelRef(repo_id=ref, revision=revision)
