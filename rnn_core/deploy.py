"""Deploy the chat app to a Hugging Face Space in one command:

    python -m rnn_core deploy you/timemachine-chat --model you/timemachine-rnn

Stages, so that nothing on the Hub changes until everything has been checked (a missing
token is refused before anything else):
  1. plan     the files a Space needs, read from this checkout: app.py, the rnn_core library,
              requirements.txt and pre-requirements.txt (CPU torch), .gitattributes, the
              checkpoints the app bundles (validated), and a README whose front matter is a
              valid Space card naming the model under `models:`; sizes checked against limits
  2. check    the id names a Space, not a model repo; --model exists and loads (through the
              same checks the app uses), its revision pinned to the commit sha
  3. upload   create the Space (Gradio SDK) if missing, then one commit on top of the commit
              the deploy started from, making the Space hold exactly the planned files
  4. set      the Space variables RNN_MODEL and RNN_MODEL_REVISION (with --model)

Re-running updates the Space in place; --dry-run stops after stage 2 and lists what would
change. Every refusal is a one-line DeployError.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, SpaceCard, constants, get_token
from huggingface_hub.utils import disable_progress_bars

from .checkpoint import CARD_NAME, CheckpointError, checkpoint_folders, load_checkpoint
from .hub import (NETWORK_ERRORS, PUSHED_FILES, HubError, _reason, check_repo_id, commit_on,
                  load_from_hub)
from .modelref import parse_model_ref

SDK = "gradio"
REQUIREMENTS = ("requirements.txt", "pre-requirements.txt")  # Spaces installs pre- first
# The Hub refuses files over 10 MB not stored with LFS (binary files here match .gitattributes),
# and 1 GB is the size reported as a Space repository's limit: far beyond what this app needs,
# so a deploy that large has picked up something it should not.
MAX_REGULAR_FILE_BYTES = 10 << 20
MAX_SPACE_BYTES = 1 << 30


class DeployError(HubError):
    """A deploy that was refused or failed; the message says what to do."""


@dataclass
class Plan:
    """What a deploy uploads and sets: Space path → local file or bytes, and the variables."""
    space: str
    files: dict[str, Path | bytes]
    variables: dict[str, str] = field(default_factory=dict)
    model_note: str = ""

    def size(self, path: str) -> int:
        data = self.files[path]
        return len(data) if isinstance(data, bytes) else data.stat().st_size


def project_root() -> Path:
    """The checkout holding app.py: where rnn_core was imported from, else the current folder
    (rnn_core installed with pip, run from inside a clone)."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (root / "app.py").is_file() and (root / "rnn_core" / "__init__.py").is_file():
            return root
    raise DeployError("deploy uploads this project's app.py, rnn_core/ and checkpoints/, and "
                      "none are here: run it from inside a clone of the project")


def lfs_patterns(root: Path) -> list[str]:
    """The patterns .gitattributes stores with LFS."""
    path = root / ".gitattributes"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [ln.split()[0] for ln in lines if "filter=lfs" in ln and not ln.startswith("#")]


def space_files(root: Path) -> dict[str, Path]:
    """The files a Space runs from: app, library, requirements, .gitattributes, and the
    model files of every checkpoint under checkpoints/ (each validated first)."""
    files = {name: root / name for name in ("app.py", *REQUIREMENTS, ".gitattributes")}
    files.update({p.relative_to(root).as_posix(): p for p in sorted((root / "rnn_core").rglob("*.py"))
                  if "__pycache__" not in p.parts})
    for folder in checkpoint_folders(root / "checkpoints"):
        try:
            load_checkpoint(folder)
        except CheckpointError as e:
            raise DeployError(f"the bundled checkpoint does not load ({e}); fix or remove "
                              f"{folder.relative_to(root)} before deploying") from None
        files.update({f"checkpoints/{folder.name}/{name}": folder / name
                      for name in (*PUSHED_FILES, CARD_NAME) if (folder / name).is_file()})
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise DeployError(f"{', '.join(missing)} missing from {root}; deploy needs a complete checkout")
    return files


def space_card(root: Path, model: str | None) -> bytes:
    """The project's README as the Space card, naming the served model under `models:`."""
    card = SpaceCard.load(root / "README.md")
    if model:
        card.data.models = [model]
    if card.data.sdk != SDK or card.data.app_file != "app.py":
        raise DeployError(f"README.md's front matter must say sdk: {SDK} and app_file: app.py")
    return str(card).encode()


def check_limits(plan: Plan, root: Path) -> None:
    patterns = lfs_patterns(root)
    for path in plan.files:
        size = plan.size(path)
        lfs = any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) for p in patterns)
        if not lfs and size > MAX_REGULAR_FILE_BYTES:
            raise DeployError(f"{path} is {size:,} bytes; the Hub refuses files over "
                              f"{MAX_REGULAR_FILE_BYTES >> 20} MB not stored with LFS: shrink or "
                              "remove it, or add its pattern to .gitattributes if it is binary")
    total = sum(plan.size(p) for p in plan.files)
    if total > MAX_SPACE_BYTES:
        raise DeployError(f"the Space would hold {total:,} bytes, over the {MAX_SPACE_BYTES >> 30} GB "
                          "a Space may store: remove large checkpoints from checkpoints/")


def resolve_model(model: str, revision: str | None) -> dict[str, str]:
    """Check that the model loads as the Space will load it; its variables, with the revision
    pinned to the commit sha it resolved to unless one was given."""
    try:
        parsed = parse_model_ref(model, revision)
        ckpt = load_from_hub(parsed.repo_id, parsed.revision) if parsed.folder is None else None
    except CheckpointError as e:
        raise DeployError(f"--model {model} cannot be served ({e}); nothing was changed") from None
    if ckpt is None:
        raise DeployError(f"--model must be a Hub repo id: a Space cannot read the local folder "
                          f"{model}; push it first (python train.py --push-only {model} "
                          "--push-to-hub you/name)")
    return {"RNN_MODEL": parsed.repo_id, "RNN_MODEL_REVISION": parsed.revision or ckpt.commit}


def current_variables(api: HfApi, space: str) -> dict[str, str]:
    """The model variables an existing Space has, checked: strings only."""
    found = api.get_space_variables(space)
    return {k: v.value for k, v in found.items()
            if k in ("RNN_MODEL", "RNN_MODEL_REVISION") and isinstance(v.value, str)}


def check_target(api: HfApi, space: str) -> bool:
    """True if the Space exists; refuses an id that names a model repo and no Space."""
    if api.repo_exists(space, repo_type="space"):
        return True
    if api.repo_exists(space, repo_type="model"):
        raise DeployError(f"{space} is a model repo, not a Space: deploy to a Space id (created "
                          f"if missing), e.g. {space}-chat, and pass --model {space}")
    return False


def make_plan(space: str, model: str | None, revision: str | None, api: HfApi) -> tuple[Plan, bool]:
    """Stages 1 and 2: everything checked, nothing changed. Returns the plan and whether the
    Space exists already."""
    if revision is not None and model is None:
        raise DeployError("--revision pins the --model repo; give --model too")
    root = project_root()
    files: dict[str, Path | bytes] = dict(space_files(root))
    exists = check_target(api, space)
    variables = resolve_model(model, revision) if model else {}
    current = current_variables(api, space) if exists and not model else {}
    note = ("" if model else f"variables unchanged: {_show(current)}" if current else
            "no --model: the Space serves the bundled model")
    if model and api.model_info(model).private:
        note = (f"note: {model} is private; the Space can load it only with a read token in a "
                "secret named HF_TOKEN (Space settings, Variables and secrets)")
    files["README.md"] = space_card(root, model or current.get("RNN_MODEL"))
    plan = Plan(space, dict(sorted(files.items())), variables, note)
    check_limits(plan, root)
    return plan, exists


def upload(api: HfApi, plan: Plan, private: bool) -> tuple[str, bool]:
    """Stages 3 and 4; returns the commit url and whether the files changed."""
    api.create_repo(plan.space, repo_type="space", space_sdk=SDK, private=private, exist_ok=True)
    info = api.repo_info(plan.space, repo_type="space")
    stale = sorted({s.rfilename for s in info.siblings or []} - set(plan.files))
    ops = [CommitOperationAdd(path, data) for path, data in plan.files.items()]
    ops += [CommitOperationDelete(path) for path in stale]
    commit = commit_on(api, plan.space, ops, "Deploy the char-RNN chat", "main", info.sha,
                       repo_type="space")
    try:
        for key, value in plan.variables.items():
            api.add_space_variable(plan.space, key, value)
    except NETWORK_ERRORS as e:
        raise DeployError(f"the Space's files were updated ({commit.commit_url}) but setting its "
                          f"variables failed ({_reason(e)}); run the same deploy again") from None
    return commit.commit_url, commit.oid != info.sha


def deploy(space: str, model: str | None = None, revision: str | None = None, *,
           private: bool = False, dry_run: bool = False, out=print) -> Plan:
    """The whole command; `out` receives the lines to show (the Space URL last)."""
    space = check_repo_id(space, "deploy needs a Space id", None)
    token = get_token()
    if token is None and not dry_run:
        raise DeployError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then deploy again")
    api = HfApi(token=token)
    url = f"{constants.ENDPOINT}/spaces/{space}"
    try:
        plan, exists = make_plan(space, model, revision, api)
        total = sum(plan.size(p) for p in plan.files)
        if dry_run:
            out(f"dry run: would {'update' if exists else 'create'} the Space {space} with "
                f"{len(plan.files)} files ({total:,} bytes); nothing was uploaded")
            for path in plan.files:
                out(f"  {path}  {plan.size(path):,} bytes")
            for line in (*_model_lines(plan, "variables:"), url):
                out(line)
            return plan
        disable_progress_bars()  # per-file upload bars; the summary below says what happened
        commit_url, changed = upload(api, plan, private)
    except DeployError:
        raise
    except HubError as e:
        raise DeployError(str(e)) from None
    except NETWORK_ERRORS as e:
        raise DeployError(f"deploy to {space} failed ({_reason(e)}); run it again") from None
    out(f"uploaded {len(plan.files)} files ({total:,} bytes) to {space} in one commit: {commit_url}"
        if changed else f"{space} already holds these {len(plan.files)} files: {commit_url}")
    for line in (*_model_lines(plan, "set"), url):
        out(line)
    return plan


def _model_lines(plan: Plan, verb: str) -> list[str]:
    """The variables set (or to set) and what to know about the model served."""
    lines = [f"{verb} {_show(plan.variables)}"] if plan.variables else []
    return lines + ([plan.model_note] if plan.model_note else [])


def _show(variables: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in variables.items())

