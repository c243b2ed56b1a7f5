"""`python -m rnn_core deploy` as a user runs it, against the Hub-compatible test server; then
the Space is simulated: its files downloaded into an empty folder and `python app.py` started
there with the Space's variables, as the Hub would run it."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError
from huggingface_hub import HfApi, SpaceCard

from hub_server import HubServer
from test_app import AppServer
from rnn_core.checkpoint import load_checkpoint
from rnn_core.data import normalize_prompt
from rnn_core.generation import predict_ch8

ROOT = Path(__file__).resolve().parent.parent
USER = "alice"
TOKEN = "hf_" + secrets.token_hex(16)  # must never show up in any output or log
MODEL = f"{USER}/tiny-rnn"
MODEL_FILES = ("model.safetensors", "config.json", "vocab.json", "README.md")


def expected_files(root: Path = ROOT) -> set[str]:
    """What a Space needs, listed independently of rnn_core.deploy: the app, the library, the
    requirements, .gitattributes, the card, and the bundled checkpoints' model files (and
    training text, for the memorisation check)."""
    files = {"app.py", "requirements.txt", "pre-requirements.txt", ".gitattributes", "README.md"}
    files |= {p.relative_to(root).as_posix() for p in (root / "rnn_core").rglob("*.py")
              if "__pycache__" not in p.parts}
    for folder in (root / "checkpoints").iterdir():
        files |= {f"checkpoints/{folder.name}/{p.name}" for p in folder.iterdir()
                  if p.name in (*MODEL_FILES, "perplexity.png", "training_text.xz")}
    return files


@pytest.fixture(scope="module")
def hub(tiny_checkpoint, bundled_checkpoint):
    """A Hub holding alice/tiny-rnn (the tiny trained model) and repos that do not load."""
    server = HubServer({TOKEN: USER}).start()
    server.put_commit(MODEL, {n: (tiny_checkpoint / n).read_bytes() for n in MODEL_FILES})
    no_weights = {n: (tiny_checkpoint / n).read_bytes() for n in ("config.json", "vocab.json")}
    server.put_commit(f"{USER}/broken", no_weights)
    server.put_commit(f"{USER}/private-rnn", {n: (tiny_checkpoint / n).read_bytes() for n in MODEL_FILES})
    server.repos[f"{USER}/private-rnn"].private = True
    yield server
    server.stop()


@pytest.fixture
def env(hub, tmp_path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    return {**base, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN,
            "HF_HUB_DISABLE_XET": "1", "PYTHONUNBUFFERED": "1"}


def deploy(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "rnn_core", "deploy", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=180)
    assert TOKEN not in r.stdout + r.stderr
    return r


def refused(r: subprocess.CompletedProcess) -> str:
    """A refusal: exit 2, nothing on stdout, exactly one line on stderr, no traceback."""
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def writes(hub: HubServer, since: int) -> list[tuple[str, str]]:
    return [(m, p) for m, p in hub.requests[since:] if m in ("POST", "PUT", "DELETE")]


def variables(hub: HubServer, space: str) -> dict[str, str]:
    api = HfApi(endpoint=hub.url, token=TOKEN)
    return {k: v.value for k, v in api.get_space_variables(space).items()}


# ---------------------------------------------------------------- the command

def test_dry_run_lists_files_and_variables_and_changes_nothing(hub, env):
    n = len(hub.requests)
    r = deploy(env, f"{USER}/dry", "--model", MODEL, "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"dry run: would create the Space {USER}/dry with ")
    listed = {ln.split()[0] for ln in lines if ln.startswith("  ")}
    assert listed == expected_files()
    assert f"variables: RNN_MODEL={MODEL}, RNN_MODEL_REVISION={hub.head(MODEL)}" in lines
    assert lines[-1] == f"{hub.url}/spaces/{USER}/dry"
    assert writes(hub, n) == [] and f"{USER}/dry" not in hub.spaces


def test_deploy_then_the_simulated_space_serves_the_pinned_model(hub, env, tmp_path,
                                                                 tiny_checkpoint):
    space, sha = f"{USER}/chat", hub.head(MODEL)
    r = deploy(env, space, "--model", MODEL, "--private")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"{hub.url}/spaces/{space}"
    assert f"set RNN_MODEL={MODEL}, RNN_MODEL_REVISION={sha}" in r.stdout

    # the Space: Gradio, private, one commit on top of the Hub's initial one, exactly the files
    repo = hub.spaces[space]
    assert repo.sdk == "gradio" and repo.private and len(hub.history(space, repo_type="space")) == 2
    files = hub.files(space, repo_type="space")
    assert set(files) == expected_files()
    for path, data in files.items():
        if path != "README.md":
            assert data == (ROOT / path).read_bytes(), path
    card = SpaceCard(files["README.md"].decode())
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.models == [MODEL]
    assert card.text == SpaceCard.load(ROOT / "README.md").text
    assert variables(hub, space) == {"RNN_MODEL": MODEL, "RNN_MODEL_REVISION": sha}

    # a later push to the model does not change what the Space serves: the revision is pinned
    hub.put_commit(MODEL, {"model.safetensors": (tiny_checkpoint / "model.safetensors").read_bytes(),
                           "notes.txt": b"a newer commit"})
    assert hub.head(MODEL) != sha and variables(hub, space)["RNN_MODEL_REVISION"] == sha

    # run it as the Hub would: the Space's files in an empty folder, its variables as env vars
    folder = tmp_path / "space"
    HfApi(endpoint=hub.url, token=TOKEN).snapshot_download(space, repo_type="space",
                                                           local_dir=folder)
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and ".cache" not in p.parts} == expected_files()
    app = AppServer(tmp_path, cwd=folder, **variables(hub, space), HF_ENDPOINT=hub.url,
                    HF_HOME=str(tmp_path / "space-hf-home"), HF_TOKEN=None, PYTHONPATH=None)
    try:
        client = app.client()
        pushed = load_checkpoint(tiny_checkpoint)  # the bytes the model repo holds at `sha`
        weights = (tiny_checkpoint / "model.safetensors").read_bytes()
        assert hub.files(MODEL, sha)["model.safetensors"] == weights
        message = normalize_prompt("Time traveller", pushed.normalization)
        reply = client.predict("Time traveller", 60, 0.0, 0, api_name="/chat")
        assert reply == predict_ch8(message, 60, pushed.net, pushed.vocab, "cpu")[len(message):]
        with pytest.raises(AppError):
            client.predict(f"{USER}/missing", "", api_name="/load_model")
    finally:
        app.stop()
    log = app.output()
    assert f"serving RNN_MODEL='{MODEL}' at revision '{sha}'" in log
    assert f"refused a model load for one session ('{USER}/missing'" in log
    assert TOKEN not in log


def test_redeploy_updates_in_place(hub, env):
    space = f"{USER}/again"
    assert deploy(env, space, "--model", MODEL).returncode == 0
    first = hub.head(space, repo_type="space")
    hub.put_commit(space, {"leftover.py": b"print('old')\n"}, repo_type="space")
    seeded = hub.head(space, repo_type="space")

    r = deploy(env, space, "--model", MODEL, "--revision", "main")  # follow the branch, as told
    assert r.returncode == 0, r.stderr
    history = hub.history(space, repo_type="space")
    assert [c.oid for c in history[1:3]] == [seeded, first]  # one new commit, on top
    assert set(hub.files(space, repo_type="space")) == expected_files()  # leftover removed
    assert variables(hub, space) == {"RNN_MODEL": MODEL, "RNN_MODEL_REVISION": "main"}

    r = deploy(env, space)  # no --model: the code is updated, the model variables are kept
    assert r.returncode == 0, r.stderr
    assert f"{space} already holds these" in r.stdout
    assert f"variables unchanged: RNN_MODEL={MODEL}, RNN_MODEL_REVISION=main" in r.stdout
    assert hub.head(space, repo_type="space") == history[0].oid
    card = SpaceCard(hub.files(space, repo_type="space")["README.md"].decode())
    assert card.data.models == [MODEL]


def test_a_private_model_is_deployed_with_a_note_on_the_token_it_needs(hub, env):
    r = deploy(env, f"{USER}/private-chat", "--model", f"{USER}/private-rnn", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert (f"note: {USER}/private-rnn is private; the Space can load it only with a read token in "
            "a secret named HF_TOKEN") in r.stdout


@pytest.mark.parametrize("model, expected", [
    (None, ["serving the bundled model checkpoints/timemachine-rnn512 (RNN_MODEL is not set)"]),
    (f"{USER}/broken", [f"refused RNN_MODEL='{USER}/broken' at revision 'main': Hub repo "
                        f"{USER}/broken@main has no model.safetensors",
                        "serving the bundled model checkpoints/timemachine-rnn512 (RNN_MODEL "
                        "could not be loaded)"]),
])
def test_the_app_logs_which_model_it_serves_and_why(hub, env, model, expected):
    """What a Space's logs show at start-up (the app's start-up, without serving)."""
    run_env = {k: v for k, v in env.items() if k != "RNN_MODEL"}
    if model:
        run_env["RNN_MODEL"] = model
    r = subprocess.run([sys.executable, "-c", "import app"], cwd=ROOT, env=run_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    logged = [ln.split(" app: ", 1)[1] for ln in r.stderr.splitlines() if " app: " in ln]
    said = [ln for ln in logged if ln.startswith(("serving", "refused"))]
    assert len(said) == len(expected), logged
    assert all(ln.startswith(e) for ln, e in zip(said, expected, strict=True)), said
    assert TOKEN not in r.stdout + r.stderr


def test_deploy_without_model_serves_the_bundled_one(hub, env):
    r = deploy(env, f"{USER}/bundled")
    assert r.returncode == 0, r.stderr
    assert "no --model: the Space serves the bundled model" in r.stdout
    assert variables(hub, f"{USER}/bundled") == {}
    card = hub.files(f"{USER}/bundled", repo_type="space")["README.md"].decode()
    assert SpaceCard(card).data.models is None


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("args, expected", [
    ([f"{USER}/s1", "--model", MODEL], "no Hugging Face token: set HF_TOKEN"),
    ([MODEL], f"{MODEL} is a model repo, not a Space"),
    ([f"{USER}/s2", "--model", f"{USER}/missing"],
     f"--model {USER}/missing cannot be served (no local folder"),
    ([f"{USER}/s3", "--model", f"{USER}/broken"], f"--model {USER}/broken cannot be served ("),
    ([f"{USER}/s4", "--model", "checkpoints/timemachine-rnn512"], "--model must be a Hub repo id"),
    (["not a space!"], "deploy needs a Space id like user/name"),
    ([f"{USER}/s5", "--revision", "main"], "--revision pins the --model repo; give --model too"),
])
def test_refusals_change_nothing(hub, env, args, expected):
    if "no Hugging Face token" in expected:
        env = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    n, spaces = len(hub.requests), set(hub.spaces)
    assert expected in refused(deploy(env, *args))
    assert writes(hub, n) == [] and set(hub.spaces) == spaces


def test_someone_elses_space_is_left_alone(hub, env):
    theirs = "bob/their-chat"
    before = hub.put_commit(theirs, {"app.py": b"print('bob')\n"}, repo_type="space")
    msg = refused(deploy(env, theirs))
    assert "HTTP 403" in msg and f"nothing was pushed, {theirs}@main is still at {before[:8]}" in msg
    assert hub.head(theirs, repo_type="space") == before


def project_copy(tmp_path: Path) -> Path:
    """The files deploy reads, copied: a checkout whose files can be made too large."""
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("app.py", "requirements.txt", "pre-requirements.txt", ".gitattributes", "README.md"):
        shutil.copy2(ROOT / name, copy / name)
    for name in ("rnn_core", "checkpoints"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_refuses_files_over_the_limits(hub, env, tmp_path):
    copy = project_copy(tmp_path)
    big = copy / "rnn_core" / "table.py"
    big.write_bytes(b"#" * (11 << 20))
    n = len(hub.requests)
    msg = refused(deploy(env, f"{USER}/big", cwd=copy))
    assert ("rnn_core/table.py is 11,534,336 bytes; the Hub refuses files over 10 MB not stored "
            "with LFS") in msg
    big.unlink()
    with open(copy / "checkpoints" / "timemachine-rnn512" / "perplexity.png", "r+b") as f:
        f.truncate(1 << 30)  # sparse: no disk used
    msg = refused(deploy(env, f"{USER}/big", cwd=copy))
    assert "over the 1 GB a Space may store" in msg
    assert writes(hub, n) == [] and f"{USER}/big" not in hub.spaces
