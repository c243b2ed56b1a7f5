"""Sharing through the Hub, end to end: the real train.py / CLI (in subprocesses, as a user runs
them) with the real huggingface_hub client against the Hub-compatible server in hub_server.py."""
from __future__ import annotations

import json
import os
import pickle
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save

from hub_server import HubServer

ROOT = Path(__file__).resolve().parent.parent
USER = "alice"
TOKEN = "hf_" + secrets.token_hex(16)  # must never show up in any output or file
MODEL_FILES = {"model.safetensors", "config.json", "vocab.json"}
PUSHED = MODEL_FILES | {"perplexity.png", "README.md", ".gitattributes", "training_text.xz"}


@pytest.fixture(scope="module")
def hub():
    server = HubServer({TOKEN: USER}).start()
    yield server
    server.stop()


@pytest.fixture
def env(hub, tmp_path) -> dict[str, str]:
    """A user's environment: the test Hub, a fresh HF cache, a token. The server speaks LFS,
    not Xet, hence HF_HUB_DISABLE_XET."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    return {**base, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN,
            "HF_HUB_DISABLE_XET": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory, data_path) -> Path:
    """A second, different model (16 hidden units, 3 epochs, seed 1)."""
    import train
    out = tmp_path_factory.mktemp("other") / "other"
    assert train.main(["--data", str(data_path), "--num-hiddens", "16", "--num-epochs", "3",
                       "--seed", "1", "--out", str(out), "--device", "cpu"]) == 0
    return out


def run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run python with `args` as a user would; whatever happens, the token is never shown."""
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert TOKEN not in r.stdout + r.stderr
    return r


def generate(env: dict[str, str], model: str, *extra: str) -> subprocess.CompletedProcess:
    return run(["-m", "rnn_core", "generate", "--model", model, "--prefix", "time traveller",
                "--num-preds", "40", *extra], env)


def greedy(env: dict[str, str], model: str, *extra: str) -> str:
    r = generate(env, model, *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout


def push(env: dict[str, str], folder: Path, repo: str, *extra: str) -> subprocess.CompletedProcess:
    return run(["train.py", "--push-only", str(folder), "--push-to-hub", repo, *extra], env)


def pushed_sha(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout.split("commit ")[1].split()[0]


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """A refused command: exit code 2 or 4, nothing on stdout, one `error:` line, no traceback."""
    assert r.returncode in (2, 4), (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


@pytest.fixture(scope="module")
def local_outputs(tiny_checkpoint, other_checkpoint):
    """Greedy generations of the two local folders, the reference for every pull."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    outs = {p: greedy(e, str(p)) for p in (tiny_checkpoint, other_checkpoint)}
    assert outs[tiny_checkpoint] != outs[other_checkpoint]  # else the tests below could not tell them apart
    return outs


# --- push, pull ----------------------------------------------------------------------------

def test_train_then_push_then_pull_by_repo_id(hub, env, tmp_path, data_path):
    out = tmp_path / "run"
    r = run(["train.py", "--data", str(data_path), "--num-hiddens", "16", "--num-epochs", "3",
             "--out", str(out), "--device", "cpu", "--push-to-hub", f"{USER}/trained"], env)
    sha = pushed_sha(r)
    assert sha == hub.head(f"{USER}/trained") and len(sha) == 40
    assert f"{hub.url}/{USER}/trained/commit/{sha}" in r.stdout
    files = hub.files(f"{USER}/trained")
    assert set(files) == PUSHED  # the resume state stays local
    assert (out / "training_state.json").is_file()
    for name in MODEL_FILES | {"perplexity.png", "training_text.xz"}:
        assert files[name] == (out / name).read_bytes()
    assert greedy(env, f"{USER}/trained") == greedy(env, str(out))
    # The pulled model carries its training text, for the memorisation check.
    code = ("from rnn_core import load_model; from rnn_core.inspector import notes_for; "
            f"print(len(notes_for(load_model('{USER}/trained')).training_text))")
    r = run(["-c", code], env)
    assert r.returncode == 0 and r.stdout.strip() == "10000", r.stderr

    card = ModelCard(files["README.md"].decode())
    meta = card.data.to_dict()
    assert meta["library_name"] == "pytorch" and meta["license"] == "mit"
    assert {"char-rnn", "d2l", "text-generation"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "text-generation"
    assert "datasets" not in meta  # the training text is a local file, not a Hub dataset id
    metric = meta["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "perplexity" and metric["value"] > 1
    assert card.data.eval_results[0].metric_value == metric["value"]
    assert f"--model {USER}/trained" in card.text and f'CharRNN.load("{USER}/trained")' in card.text
    assert "https://d2l.ai/" in card.text and "Code: " in card.text

    written = [p.read_bytes() for p in out.iterdir()] + list(files.values())
    assert not any(TOKEN.encode() in data for data in written)  # not in the card, config, state


def test_push_twice_then_pull_by_branch_and_sha(hub, env, tiny_checkpoint, other_checkpoint,
                                                local_outputs):
    repo = f"{USER}/twice"
    first = pushed_sha(push(env, tiny_checkpoint, repo, "--commit-message", "first model"))
    second = pushed_sha(push(env, other_checkpoint, repo))
    assert [c.oid for c in hub.history(repo)][:2] == [second, first]
    assert hub.history(repo)[1].message == "first model"
    assert len(hub.history(repo)) == 3  # the repo's initial commit, then one commit per push

    dev = pushed_sha(push(env, tiny_checkpoint, repo, "--revision", "dev"))
    assert hub.head(repo, "dev") == dev and hub.head(repo) == second

    assert greedy(env, repo) == local_outputs[other_checkpoint]
    assert greedy(env, repo, "--revision", first) == local_outputs[tiny_checkpoint]

    # the library call the app makes: source and commit say what was loaded
    code = (f"from rnn_core import load_model, generate_text; c = load_model({repo!r}, revision='dev'); "
            "print(c.source, c.commit); print(generate_text(c.net, c.vocab, 'time traveller', 40, "
            "c.normalization))")
    r = run(["-c", code], env)
    assert r.returncode == 0, r.stderr
    ids, text = r.stdout.split("\n", 1)
    assert ids == f"{repo} {dev}" and text == local_outputs[tiny_checkpoint]


def test_private_repo_needs_the_token(hub, env, tiny_checkpoint, local_outputs):
    repo = f"{USER}/secret"
    pushed_sha(push(env, tiny_checkpoint, repo, "--private"))
    assert hub.repos[repo].private
    anonymous = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    msg = one_line_error(generate(anonymous, repo))
    assert f"no Hub repo {repo}" in msg and "private" in msg and "HF_TOKEN" in msg
    assert greedy(env, repo) == local_outputs[tiny_checkpoint]


def test_push_refuses_without_token_or_with_bad_repo_id(env, tiny_checkpoint):
    anonymous = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    assert "set HF_TOKEN or run `hf auth login`" in one_line_error(
        push(anonymous, tiny_checkpoint, f"{USER}/never"))
    assert "needs a repo id like user/name" in one_line_error(push(env, tiny_checkpoint, "no-namespace"))
    msg = one_line_error(push(env, tiny_checkpoint, "bob/not-mine"))
    assert "HTTP 403" in msg and "nothing was pushed" in msg


# --- a push that fails midway --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["500", "drop"])
def test_failed_push_leaves_the_previous_commit(hub, env, mode, tiny_checkpoint, other_checkpoint):
    """The commit endpoint answers a server error, or drops the connection, after the LFS
    uploads went through: the branch must stay where it was, and the retry hint must work."""
    repo = f"{USER}/flaky-{mode}"
    weights = "model.safetensors"
    before = pushed_sha(push(env, tiny_checkpoint, repo))
    hub.fail_next("commit", mode)
    r = push(env, other_checkpoint, repo)
    msg = one_line_error(r)
    assert r.returncode == 4
    assert f"nothing was pushed, {repo}@main is still at {before[:8]}" in msg
    assert hub.head(repo) == before and len(hub.history(repo)) == 2
    assert hub.files(repo)[weights] == (tiny_checkpoint / weights).read_bytes()

    retry = shlex.split(msg.split("retry with: ")[1])
    assert retry[:2] == ["python", "train.py"]
    after = pushed_sha(run(retry[1:], env))
    assert after != before and hub.head(repo) == after
    assert hub.files(repo)[weights] == (other_checkpoint / weights).read_bytes()


# --- two pushes at once --------------------------------------------------------------------

def test_a_push_that_raced_another_fails_and_the_first_stays(hub, env, tiny_checkpoint,
                                                             other_checkpoint):
    """Two pushes read the same branch head; the server holds both commits until both have
    arrived, then takes them in turn: the first lands, the second is refused (it names the new
    commit), and the repo holds exactly the first push's files."""
    repo = f"{USER}/race"
    start = hub.put_commit(repo, {"README.md": b"an older model"})
    hub.gate("commit", 2)
    cmds = [[sys.executable, "train.py", "--push-only", str(folder), "--push-to-hub", repo]
            for folder in (other_checkpoint, tiny_checkpoint)]
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in cmds]
    results = [subprocess.CompletedProcess(c, p.wait(timeout=180), *p.communicate()) for c, p in
               zip(cmds, procs)]
    won = [r for r in results if r.returncode == 0]
    lost = [r for r in results if r.returncode != 0]
    assert len(won) == 1 and len(lost) == 1, [(r.returncode, r.stderr[-300:]) for r in results]
    first = pushed_sha(won[0])
    assert TOKEN not in lost[0].stdout + lost[0].stderr
    msg = one_line_error(lost[0])
    assert (f"push to {repo}@main refused: another push moved it from {start[:8]} to {first[:8]}"
            in msg and "nothing of this push was committed" in msg), msg
    assert hub.head(repo) == first and [c.oid for c in hub.history(repo)][:2] == [first, start]
    winner = Path(won[0].args[3])
    assert hub.files(repo)["model.safetensors"] == (winner / "model.safetensors").read_bytes()


# --- offline -------------------------------------------------------------------------------

def test_offline_loads_from_the_cache(hub, env, tiny_checkpoint, local_outputs):
    repo = f"{USER}/offline"
    sha = pushed_sha(push(env, tiny_checkpoint, repo))
    expected = local_outputs[tiny_checkpoint]
    assert greedy(env, repo) == expected  # fills the cache
    n = len(hub.requests)
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    assert greedy(offline, repo) == expected
    assert greedy(offline, repo, "--revision", sha) == expected
    unreachable = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on port 9
    assert greedy(unreachable, repo) == expected
    assert len(hub.requests) == n  # the Hub was never asked


# --- errors a user can act on --------------------------------------------------------------

def _pickle_bomb(marker: Path) -> bytes:
    """A pickle that creates `marker` if anything ever unpickles it."""
    class Bomb:
        def __reduce__(self):
            return os.mkdir, (str(marker),)
    return pickle.dumps(Bomb())


@pytest.fixture(scope="module")
def bad_repos(hub, tiny_checkpoint, other_checkpoint, tmp_path_factory):
    """Repos that are not usable checkpoints of ours, seeded straight into the server."""
    ours = {n: (tiny_checkpoint / n).read_bytes() for n in MODEL_FILES}
    marker = tmp_path_factory.mktemp("bomb") / "unpickled"
    absurd = ours["config.json"].replace(b'"num_hiddens": 32', b'"num_hiddens": 1000000')
    assert absurd != ours["config.json"]
    config = json.loads(ours["config.json"])
    vocab = json.loads(ours["vocab.json"])
    weights = load_file(tiny_checkpoint / "model.safetensors")

    def with_config(**training) -> bytes:
        return json.dumps({**config, "training": {**config["training"], **training}}).encode()

    def with_vocab(index: int, token: str) -> bytes:
        return json.dumps(vocab[:index] + [token] + vocab[index + 1:]).encode()

    huge = {**weights, "W_hq": weights["W_hq"] * 1e30}   # finite, but the logits overflow
    seeds = {
        "big-config": {**ours, "config.json": with_config(notes="x" * (3 << 20))},
        "big-vocab": {**ours, "vocab.json": ours["vocab.json"] + b" " * (3 << 20)},
        "long-token": {**ours, "vocab.json": with_vocab(5, "e" * 1000)},
        "surrogate-token": {**ours, "vocab.json": with_vocab(5, "\ud800")},
        "huge-ppl": {**ours, "config.json": with_config(final_val_ppl=10 ** 30)},
        "endless-int": {**ours, "config.json": with_config(num_epochs=0).replace(
            b'"num_epochs": 0', b'"num_epochs": ' + b"9" * 4301)},
        "training-list": {**ours, "config.json": json.dumps({**config, "training": [1]}).encode()},
        "huge-weights": {**ours, "model.safetensors": save(huge)},
        "no-weights": {k: v for k, v in ours.items() if k != "model.safetensors"},
        "wrong-shapes": {**ours, "model.safetensors": (other_checkpoint / "model.safetensors").read_bytes()},
        "absurd": {**ours, "config.json": absurd},
        "oversized-weights": {**ours, "model.safetensors": bytes(2 << 20)},
        "pickle": {**ours, "model.safetensors": _pickle_bomb(marker)},
    }
    for name, files in seeds.items():
        hub.put_commit(f"{USER}/{name}", files)
    return marker


@pytest.mark.parametrize("model, extra, expected", [
    (f"{USER}/missing", [], f"no local folder {USER}/missing and no Hub repo {USER}/missing"),
    (f"{USER}/no-weights", ["--revision", "nope"], "has no revision 'nope'"),
    (f"{USER}/no-weights", [], "has no model.safetensors: it is not a checkpoint of this project"),
    (f"{USER}/wrong-shapes", [], "model.safetensors: W_xh has shape (28, 16), expected (28, 32)"),
    (f"{USER}/absurd", [], "config.json: num_hiddens must be an integer from 1 to 8192, got 1000000"),
    (f"{USER}/oversized-weights", [], "is 2,097,152 bytes but vocab_size 28 and num_hiddens 32 need at most"),
    (f"{USER}/big-config", [], "config.json is 3,14"),
    (f"{USER}/big-vocab", [], "vocab.json is 3,14"),
    (f"{USER}/long-token", [],
     "vocab.json: token 5 is 'eeeeeeeeeeeeeeeeeeee'...; every token after '<unk>' must be a single"),
    (f"{USER}/surrogate-token", [], "vocab.json: token 5 is '\\ud800'; every token after '<unk>' "
     "must be a single Unicode character (not a lone surrogate)"),
    (f"{USER}/huge-ppl", [], "config.json: training.final_val_ppl must be a number of at most"),
    (f"{USER}/endless-int", [], "config.json is not valid JSON (Exceeds the limit (4300 digits)"),
    (f"{USER}/training-list", [], "config.json: training must be a JSON object"),
    (f"{USER}/huge-weights", [],
     "model.safetensors: W_hq holds values beyond ±1e+06, which overflow the logits"),
    ("", [], "no model given: name a checkpoint folder or a Hub repo id like user/name"),
    (f"{USER}/pickle", [], "model.safetensors is not a valid safetensors file"),
    ("./not-a-folder", [], "checkpoint folder ./not-a-folder does not exist"),
    ("not a repo!", [], "is neither a checkpoint folder nor a Hub repo id"),
])
def test_load_errors(hub, env, bad_repos, model, extra, expected):
    n = len(hub.requests)
    msg = one_line_error(generate(env, model, *extra))
    assert expected in msg
    assert "/snapshots/" not in msg  # the repo is named, not the cache path
    fetched = [p for m, p in hub.requests[n:] if m == "GET"]
    if model.endswith(("absurd", "oversized-weights")):  # refused before the weights were fetched
        assert fetched and not any(p.endswith("model.safetensors") for p in fetched)
    if model.endswith(("big-config", "big-vocab")):   # its size was asked, the file never fetched
        name = model.split("-")[-1] + ".json"
        assert any(m == "HEAD" and p.endswith(name) for m, p in hub.requests[n:])
        assert not any(p.endswith(name) for p in fetched)
        assert not any(p.endswith("model.safetensors") for p in fetched)
    assert not bad_repos.exists()  # the pickle was never unpickled


def test_nothing_cached_and_offline(env):
    msg = one_line_error(generate({**env, "HF_HUB_OFFLINE": "1"}, f"{USER}/anything"))
    assert "not in the Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg


def test_nothing_cached_and_hub_unreachable(env):
    """huggingface_hub retries a while (about 25 s) before giving up; then one clear line."""
    msg = one_line_error(generate({**env, "HF_ENDPOINT": "http://127.0.0.1:9"}, f"{USER}/anything"))
    assert "cannot reach the Hub at http://127.0.0.1:9" in msg and "not in the cache" in msg


def test_revision_is_for_hub_repos_only(env, tiny_checkpoint):
    msg = one_line_error(generate(env, str(tiny_checkpoint), "--revision", "main"))
    assert "--revision only applies to Hub repo ids" in msg
