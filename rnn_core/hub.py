"""Share checkpoints through the Hugging Face Hub: load by repo id, push a folder in one commit.

    ckpt = load_model("user/timemachine-rnn", revision="main")   # or a local folder
    info = push_checkpoint("runs/rnn", "user/timemachine-rnn")   # info.commit_url, info.oid

Loading downloads only config.json, vocab.json and model.safetensors into the standard Hugging
Face cache (each file's size asked of the Hub first; config first, so absurd sizes are refused
before the weights are fetched), all pinned to one commit, then validates them exactly like a
local folder. It works offline from the cache. Pushing uploads the model files, the plot and a
model card in a single commit, so a failed push never leaves a half-updated repo, on top of the
commit the push started from, so a push that raced another one is refused instead of
overwriting it. The token comes from HF_TOKEN or `hf auth login`
(huggingface_hub's defaults) and is never printed or written anywhere.

Every failure is a `HubError` (a `CheckpointError`, so a `ValueError`) with a one-line message
saying what went wrong and what to do.
"""
from __future__ import annotations

import os
from pathlib import Path

import httpx2
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, constants, get_token, hf_hub_download
from huggingface_hub.errors import (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                    RemoteEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from huggingface_hub.utils import validate_repo_id

from .card import make_model_card
from .checkpoint import (CARD_NAME, CONFIG_NAME, MAX_JSON_BYTES, MAX_PARAMETERS, MAX_PLOT_BYTES,
                         MAX_TRAINING_TEXT_BYTES, MODEL_FILES, PLOT_NAME, TRAINING_TEXT_NAME,
                         VOCAB_NAME, WEIGHTS_NAME, Checkpoint, CheckpointError, load_checkpoint,
                         read_config)
from .generation import predict_ch8
from .modelref import existing_folder, parse_model_ref

# Plus the card; never training_state.*. The training text only when the folder has it.
PUSHED_FILES = (WEIGHTS_NAME, CONFIG_NAME, VOCAB_NAME, PLOT_NAME, TRAINING_TEXT_NAME)
HEADER_ALLOWANCE = 64 << 10  # bytes a safetensors header may add to the raw float32 weights
NETWORK_ERRORS = (HfHubHTTPError, httpx2.HTTPError, OSError)


class HubError(CheckpointError):
    """A Hub model that cannot be loaded, or a push that failed; the message says what to do."""


def load_model(ref: str, revision: str | None = None,
               max_parameters: int = MAX_PARAMETERS) -> Checkpoint:
    """Load a checkpoint from a local folder or a Hub repo id "user/name", as
    `modelref.parse_model_ref` tells them apart.

    `revision` (a branch, tag or commit sha; default main) applies to Hub repos only. The
    result's `source` is the folder or repo id and `commit` the resolved Hub commit sha.
    Models of more than `max_parameters` are refused (before their weights are downloaded).
    """
    try:
        model = parse_model_ref(ref, revision)
    except CheckpointError as e:
        raise HubError(str(e), e.setting) from None
    if model.folder is None:
        return load_from_hub(model.repo_id, model.revision, max_parameters)
    folder = existing_folder(str(model.folder))
    if folder is None:
        raise HubError(f"checkpoint folder {ref.strip()} does not exist")
    return load_checkpoint(folder, max_parameters=max_parameters)


def load_from_hub(repo_id: str, revision: str | None = None,
                  max_parameters: int = MAX_PARAMETERS) -> Checkpoint:
    """Load a Hub repo's checkpoint (never a local folder of the same name)."""
    folder = download_checkpoint(repo_id, revision, max_parameters)
    ckpt = _validated(repo_id, folder, lambda f: load_checkpoint(f, max_parameters=max_parameters))
    ckpt.source, ckpt.commit = repo_id, folder.name
    return ckpt


def download_checkpoint(repo_id: str, revision: str | None = None,
                        max_parameters: int = MAX_PARAMETERS) -> Path:
    """Fetch a repo's checkpoint files into the HF cache; returns the commit's snapshot folder.

    Every file's size is asked of the Hub (its metadata) before the file is fetched:
    config.json and vocab.json must be small, and the weights no larger than the config
    implies. config.json comes first and is checked before anything else is fetched; the
    other files are pinned to the commit config.json came from.
    """
    folder = Path(_fetch(repo_id, CONFIG_NAME, revision, None, MAX_JSON_BYTES)).parent
    config = _validated(repo_id, folder, lambda f: read_config(f, max_parameters))
    commit = folder.name                                 # .../snapshots/<commit sha>
    asked = revision or "main"
    _fetch(repo_id, VOCAB_NAME, commit, asked, MAX_JSON_BYTES)
    V, H = config.vocab_size, config.num_hiddens
    max_bytes = 4 * config.num_params + HEADER_ALLOWANCE   # float32 weights
    _fetch(repo_id, WEIGHTS_NAME, commit, asked, max_bytes,
           f"vocab_size {V} and num_hiddens {H} need at most {max_bytes:,}")
    if config.training_text is not None:
        _download_training_text(repo_id, commit, asked)
    try:   # the training curve, for people; a repo without one (or a bad one) still loads
        _fetch(repo_id, PLOT_NAME, commit, asked, MAX_PLOT_BYTES)
    except HubError:
        pass
    return folder


def _download_training_text(repo_id: str, commit: str, asked: str) -> None:
    """Fetch the training text the config lists, if the repo has it and it is not absurdly
    large. Optional: without it the model loads, and the memorisation check says the text is
    missing."""
    try:
        _fetch(repo_id, TRAINING_TEXT_NAME, commit, asked, MAX_TRAINING_TEXT_BYTES)
    except HubError:
        pass


def hub_answers(timeout: float = 3.0) -> bool:
    """Whether the Hub (HF_ENDPOINT) answers an HTTP request within `timeout` seconds,
    whatever it says: a quick check, so that nobody waits through huggingface_hub's retries
    (about 25 s) to learn the Hub is unreachable. Offline mode needs no Hub: True."""
    if constants.is_offline_mode():
        return True
    try:
        with httpx2.Client(timeout=timeout, follow_redirects=False) as client:
            client.head(constants.ENDPOINT)
        return True
    except (httpx2.HTTPError, OSError):
        return False


def _fetch(repo_id: str, filename: str, revision: str | None, asked: str | None,
           max_bytes: int, why: str = "") -> str:
    """Download one file after asking the Hub its size; a file over `max_bytes` (or of no
    stated size) is refused without being fetched."""
    info = _download(repo_id, filename, revision, asked, dry_run=True)
    where = f"{repo_id}@{info.commit_hash[:8]}/{filename}"
    if info.file_size is None:
        raise HubError(f"the Hub did not say how large {where} is; not downloading it")
    if info.file_size > max_bytes:
        raise HubError(f"{where} is {info.file_size:,} bytes but "
                       f"{why or f'a checkpoint file needs at most {max_bytes:,}'}; not downloading "
                       "it, the repo does not hold a usable checkpoint of this project")
    path = _download(repo_id, filename, revision, asked)   # by name too, so the cache learns the ref
    if os.path.getsize(path) > max_bytes:   # the branch moved between the two requests
        raise HubError(f"{repo_id}@{revision or 'main'}/{filename} is larger than {max_bytes:,} "
                       "bytes; the repo does not hold a usable checkpoint of this project")
    return path


def _validated(repo_id: str, folder: Path, check):
    """Run a checkpoint.py check on a downloaded snapshot; errors name the repo, not the cache."""
    try:
        return check(folder)
    except CheckpointError as e:
        where = f"{repo_id}@{folder.name[:8]}"
        raise HubError(f"{str(e).replace(str(folder), where)}; {repo_id} does not hold a usable "
                       "checkpoint of this project") from None


def _download(repo_id: str, filename: str, revision: str | None, asked: str | None = None,
              dry_run: bool = False):
    """hf_hub_download with every failure turned into a one-line HubError.

    `asked` is the revision the user asked for, when `revision` is the sha it resolved to."""
    rev = asked or revision or "main"
    try:
        return hf_hub_download(repo_id, filename, revision=revision, dry_run=dry_run)
    except RepositoryNotFoundError:
        raise HubError(f"no local folder {repo_id} and no Hub repo {repo_id} at {constants.ENDPOINT} "
                       "(or it is private and no valid token was sent): check the name, or set "
                       "HF_TOKEN / run `hf auth login`") from None
    except RevisionNotFoundError:
        raise HubError(f"Hub repo {repo_id} has no revision {rev!r}: use an existing branch, tag or "
                       "full commit sha (default: main)") from None
    except RemoteEntryNotFoundError:
        raise HubError(f"Hub repo {repo_id}@{rev} has no {filename}: it is not a checkpoint of this "
                       f"project (those hold {', '.join(MODEL_FILES)})") from None
    except LocalEntryNotFoundError as e:
        if constants.is_offline_mode():
            raise HubError(f"{repo_id}@{rev} ({filename}) is not in the Hugging Face cache "
                           f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: unset it and "
                           "connect once to download the model") from None
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} ({_reason(e.__cause__ or e)}) "
                       f"and {repo_id}@{rev} ({filename}) is not in the cache: check your "
                       "connection and try again") from None
    except NETWORK_ERRORS as e:
        raise HubError(f"downloading {filename} of {repo_id}@{rev} failed ({_reason(e)}); "
                       "try again") from None


def check_repo_id(repo_id: str, what: str = "repo_id needs a repo id",
                  setting: str | None = "repo_id") -> str:
    """Refuse anything but "owner/name" (what the Hub accepts as a repo id): "`what` like
    user/name", about `setting`."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        repo_id = ""
    if repo_id.count("/") != 1:
        raise HubError(f"{what} like user/name (letters, digits, '-', '_', '.')", setting)
    return repo_id


def check_push_target(repo_id: str, token: str | None = None) -> None:
    """Refuse a malformed repo id, or a token that is missing, refused by the Hub (whoami) or
    read-only, before any work (or training) starts."""
    check_repo_id(repo_id)
    if (token or get_token()) is None:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    try:
        me = HfApi(token=token).whoami()
    except HfHubHTTPError as e:
        if e.response.status_code == 401:
            raise HubError(f"the Hub at {constants.ENDPOINT} refused the Hugging Face token "
                           "(invalid or expired): set a valid HF_TOKEN or run `hf auth login`, "
                           "then try again") from None
        raise HubError(f"could not check the token with the Hub at {constants.ENDPOINT} "
                       f"({_reason(e)}); try again later") from None
    except NETWORK_ERRORS as e:
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} to check the token "
                       f"({_reason(e)}); check your connection") from None
    auth = me.get("auth") if isinstance(me, dict) else None
    access = auth.get("accessToken") if isinstance(auth, dict) else None
    if isinstance(access, dict) and access.get("role") == "read":
        raise HubError("the Hugging Face token is read-only and cannot push: create one with "
                       "write access (huggingface.co/settings/tokens) and set HF_TOKEN")


def push_checkpoint(folder: str | os.PathLike, repo_id: str, *, private: bool = False,
                    commit_message: str | None = None, revision: str | None = None,
                    token: str | None = None) -> CommitInfo:
    """Upload a checkpoint folder to a Hub model repo in one commit; returns its url and sha.

    Creates the repo (private if asked) and the branch `revision` when missing. Uploads the
    weights, config, vocabulary, perplexity plot and a model card whose `model_ref` is the
    repo id, never the resume state. The folder is validated first, so a broken checkpoint is
    never published. A failure raises HubError saying whether the repo changed (it cannot be
    half-updated: a commit is all or nothing).
    """
    check_push_target(repo_id, token)
    folder = Path(folder)
    ckpt = load_checkpoint(folder)
    sample = predict_ch8("time traveller", 50, ckpt.net, ckpt.vocab, "cpu")
    card = make_model_card(ckpt.config, sample, repo_id)
    ops = [CommitOperationAdd(name, folder / name) for name in PUSHED_FILES if (folder / name).is_file()]
    ops.append(CommitOperationAdd(CARD_NAME, str(card).encode()))
    t = ckpt.config.record()
    message = commit_message or (f"Upload char-{ckpt.net.cell.title} ({ckpt.config.num_hiddens} "
                                 f"hidden units, {t.get('num_epochs', '?')} epochs)")
    branch = revision or "main"
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        before = api.repo_info(repo_id, revision=branch).sha
    except NETWORK_ERRORS as e:
        raise HubError(f"push to {repo_id} failed before uploading ({_reason(e)}); nothing was "
                       "pushed") from None
    return commit_on(api, repo_id, ops, message, branch, before)


def commit_on(api: HfApi, repo_id: str, ops: list, message: str, branch: str, parent: str,
              repo_type: str | None = None) -> CommitInfo:
    """One commit on top of `parent`, the commit the push started from: if anyone else pushed
    to the branch meanwhile, the Hub refuses it and HubError says so (nothing is overwritten)."""
    try:
        return api.create_commit(repo_id, ops, commit_message=message, revision=branch,
                                 parent_commit=parent, repo_type=repo_type)
    except (*NETWORK_ERRORS, RuntimeError, ValueError) as e:
        raced = isinstance(e, HfHubHTTPError) and e.response.status_code in (409, 412)
        try:
            now = api.repo_info(repo_id, revision=branch, repo_type=repo_type).sha
        except NETWORK_ERRORS:
            now = None
        where = f"{repo_id}@{branch}"
        if raced and now not in (None, parent):
            raise HubError(f"push to {where} refused: another push moved it from {parent[:8]} to "
                           f"{now[:8]} while this one ran; nothing of this push was committed. "
                           "Check that commit, then push again if yours should replace it") from None
        if now is None:
            state = (f"could not check {repo_id} afterwards; a commit is all or nothing, so the "
                     f"branch holds either its previous commit {parent[:8]} or the whole new one")
        elif now == parent:
            state = f"nothing was pushed, {where} is still at {parent[:8]}"
        else:
            state = f"{where} moved from {parent[:8]} to {now[:8]}; check it before pushing again"
        raise HubError(f"push to {where} failed ({_reason(e)}); {state}") from None


def _reason(e: BaseException) -> str:
    """A short, one-line account of an exception: HTTP status and server message, or the first
    lines of the error and of its cause."""
    if isinstance(e, HfHubHTTPError):
        message = (e.server_message or "").strip() or e.response.reason_phrase
        hint = "; check HF_TOKEN or run `hf auth login`" if e.response.status_code == 401 else ""
        return f"HTTP {e.response.status_code}: {message.splitlines()[0]}{hint}"
    lines = []
    for err in (e, e.__cause__):
        line = next((ln.strip() for ln in str(err or "").splitlines() if ln.strip()), None)
        if err is not None and line not in lines:
            lines.append(line or type(err).__name__)
    return ": ".join(lines)
