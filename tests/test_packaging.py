"""Where users meet the project: `pip install` into a fresh virtual environment (the `rnn-core`
command, the README's Python snippet), a fresh `git clone` (bundled model, LFS attributes, the
test data), what a Space installs, and every imported package declared."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from hub_server import HubServer
from rnn_core.checkpoint import load_checkpoint
from rnn_core.generation import predict_ch8

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUNDLED = "checkpoints/timemachine-rnn512"


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the Hub settings or test-data overrides of the caller."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING")) and k not in ("PYTHONPATH", "TIMEMACHINE_TXT")}
    return {**env, **extra}


# ---------------------------------------------------------------- pip install

@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with this checkout pip-installed. It sees the system's
    packages (so torch is not downloaded again) and pip may not reach any index: every
    declared dependency must already be satisfied, and nothing else is fetched."""
    base = tmp_path_factory.mktemp("pip")
    src = base / "src"  # the working tree's package files, so the checkout itself stays clean
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "rnn_core", src / "rnn_core", ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    # --without-pip: the system's pip and setuptools (a venv's bundled ones are older)
    r = run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], base)
    assert r.returncode == 0, r.stderr
    r = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
             "--no-build-isolation", str(src)], base)
    assert r.returncode == 0, r.stdout + r.stderr
    return venv


def test_rnn_core_command_prints_what_python_m_rnn_core_prints(venv, tmp_path, tiny_checkpoint):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env()
    r = run([str(venv / "bin" / "python"), "-c", "import rnn_core; print(rnn_core.__file__)"],
            elsewhere, env)
    assert r.stdout.startswith(str(venv)), r.stdout + r.stderr  # the installed copy, not the checkout
    for extra in ([], ["--temperature", "0.8", "--top-k", "5", "--seed", "3"]):
        args = ["generate", "--model", str(tiny_checkpoint), "--prefix", "the time", "--num-preds",
                "80", *extra]
        installed = run([str(venv / "bin" / "rnn-core"), *args], elsewhere, env)
        checkout = run([sys.executable, "-m", "rnn_core", *args], ROOT, env)
        assert installed.returncode == 0 and checkout.returncode == 0, installed.stderr + checkout.stderr
        assert installed.stdout == checkout.stdout and len(installed.stdout) > 80
    usage = run([str(venv / "bin" / "rnn-core"), "--help"], elsewhere, env).stdout
    assert usage.startswith("usage: rnn-core") and "generate" in usage and "deploy" in usage
    r = run([str(venv / "bin" / "rnn-core"), "deploy", "you/space"], elsewhere,
            clean_env(HF_TOKEN="hf_unused", HF_ENDPOINT="http://127.0.0.1:9"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: deploy uploads this project's app.py, rnn_core/ and checkpoints/, and none are "
        "here: run it from inside a clone of the project"]


def test_the_readmes_python_snippet_runs_after_pip_install(venv, tmp_path, tiny_checkpoint):
    """The README's "Use a model from Python" block, unchanged, in the fresh environment, with
    its repo id served by the test Hub."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use a model from Python", 1)[1].split("\n## ", 1)[0]
    snippet = re.findall(r"```python\n(.*?)\n```", section, re.S)[0]
    repo = re.search(r'CharRNN\.load\("([^"]+)"', snippet).group(1)
    hub = HubServer({"hf_readme": repo.split("/")[0]}).start()
    try:
        hub.put_commit(repo, {n: (tiny_checkpoint / n).read_bytes()
                              for n in ("model.safetensors", "config.json", "vocab.json")})
        env = clean_env(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1")
        r = run([str(venv / "bin" / "python"), "-c", snippet], tmp_path, env)
    finally:
        hub.stop()
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(tiny_checkpoint)
    lines = r.stdout.splitlines()
    assert lines[0] == predict_ch8("time traveller", 50, ckpt.net, ckpt.vocab, "cpu")
    assert lines[1].startswith("time traveller") and len(lines[1]) == len(lines[0])
    assert 1 < float(lines[2]) < len(ckpt.vocab)


# ---------------------------------------------------------------- a fresh clone

@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """`git clone` of this repository (its committed state), with nothing beside it."""
    target = tmp_path_factory.mktemp("fresh") / "clone"
    r = run(["git", "clone", "-q", str(ROOT), str(target)], ROOT)
    assert r.returncode == 0, r.stderr
    return target


def test_bundled_weights_are_lfs_files_to_git_yet_real_in_a_clone(clone):
    r = run(["git", "check-attr", "filter", "diff", "merge", "--",
             f"{BUNDLED}/model.safetensors", f"{BUNDLED}/perplexity.png", "app.py"], clone)
    assert r.stdout.splitlines() == [
        f"{BUNDLED}/model.safetensors: filter: lfs", f"{BUNDLED}/model.safetensors: diff: lfs",
        f"{BUNDLED}/model.safetensors: merge: lfs", f"{BUNDLED}/perplexity.png: filter: lfs",
        f"{BUNDLED}/perplexity.png: diff: lfs", f"{BUNDLED}/perplexity.png: merge: lfs",
        "app.py: filter: unspecified", "app.py: diff: unspecified", "app.py: merge: unspecified"]
    weights = (clone / BUNDLED / "model.safetensors").read_bytes()
    assert not weights.startswith(b"version https://git-lfs")  # a real file, not an LFS pointer
    args = ["-m", "rnn_core", "generate", "--model", BUNDLED, "--num-preds", "100"]
    fresh = run([sys.executable, *args], clone, clean_env())
    here = run([sys.executable, *args], ROOT, clean_env())
    assert fresh.returncode == 0 and fresh.stdout == here.stdout, fresh.stderr


def test_pip_install_from_git_holds_the_whole_package(clone, tmp_path):
    """`pip install git+<url>` builds from the repository's committed files: every module of
    rnn_core and the rnn-core command must come with it."""
    target = tmp_path / "site"
    r = run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation",
             "--no-deps", "--target", str(target), f"git+file://{clone}"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    committed = {p.name for p in (clone / "rnn_core").glob("*.py")}
    assert {p.name for p in (target / "rnn_core").glob("*.py")} == committed
    assert (target / "bin" / "rnn-core").is_file()


PROBE = "def test_probe(data_path):\n    print('DATA', data_path)\n"


@pytest.mark.parametrize("cached", [True, False])
def test_a_clone_without_shared_data_uses_the_cache_or_fails_in_one_line(clone, tmp_path,
                                                                       data_path, cached):
    """No ../shared beside the clone: the suite takes the book's text from the project's
    sha1-checked download cache; with an empty cache and no way to download it, it fails (never
    skips) with one line saying where the file is expected."""
    assert not (clone.parent / "shared").exists()
    cache = tmp_path / "cache"
    cache.mkdir()
    if cached:
        shutil.copy2(data_path, cache / "timemachine.txt")
    (clone / "tests" / "test_probe_data.py").write_text(PROBE)
    env = clean_env(RNN_CORE_CACHE=str(cache), http_proxy="http://127.0.0.1:9",
                    HTTP_PROXY="http://127.0.0.1:9")  # the download cannot reach anything
    r = run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
             "tests/test_probe_data.py"], clone, env)
    if cached:
        assert r.returncode == 0 and f"DATA {cache / 'timemachine.txt'}" in r.stdout, r.stdout
    else:
        assert r.returncode == 1 and "skipped" not in r.stdout, r.stdout
        expected = (f"test data missing: the book's text is expected at "
                    f"{clone.parent / 'shared' / 'data' / 'timemachine.txt'} or in "
                    f"{cache}/timemachine.txt, and downloading it failed (could not download")
        assert [ln for ln in r.stdout.splitlines() if "test data missing" in ln][0].startswith(
            expected), r.stdout


# ---------------------------------------------------------------- what a Space installs

def requirement_lines(name: str) -> list[str]:
    return [ln.split("#")[0].strip() for ln in (ROOT / name).read_text().splitlines()
            if ln.split("#")[0].strip()]


def test_a_space_installs_cpu_torch_and_the_local_install_is_unchanged():
    pre = requirement_lines("pre-requirements.txt")
    assert pre[0] == "--index-url https://download.pytorch.org/whl/cpu"
    torch_pins = {str(Requirement(ln).specifier) for name in ("requirements.txt", "pyproject")
                  for ln in (requirement_lines(name) if name != "pyproject"
                             else PYPROJECT["project"]["dependencies"])
                  if Requirement(ln).name == "torch"}
    assert [str(Requirement(ln)) for ln in pre[1:]] == ["torch==2.13.0"] and torch_pins == {"==2.13.0"}
    # Spaces install pre-requirements.txt first: the CPU build then satisfies requirements.txt's pin
    assert SpecifierSet("==2.13.0").contains("2.13.0+cpu")
    assert not any(ln.startswith("-") for ln in requirement_lines("requirements.txt"))


# ---------------------------------------------------------------- declared dependencies

def imported_modules(paths: list[Path]) -> set[str]:
    """Top-level names of every module imported (at any depth) by these files."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def third_party(names: set[str]) -> set[str]:
    """The distributions that provide the modules that are neither stdlib nor the project's."""
    local = {p.stem for p in ROOT.glob("*.py")} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    local |= {"rnn_core", "bench"} | {p.stem for p in (ROOT / "bench").glob("*.py")}
    providers = packages_distributions()
    found = names - local - set(sys.stdlib_module_names)
    unknown = sorted(n for n in found if n not in providers)
    assert not unknown, f"imported but not installed here: {unknown}"
    return {canonicalize_name(providers[n][0]) for n in found}


def declared(*files: str) -> set[str]:
    out = set()
    for name in files:
        lines = (PYPROJECT["project"]["dependencies"] if name == "pyproject.toml"
                 else requirement_lines(name))
        out |= {canonicalize_name(Requirement(ln).name) for ln in lines}
    return out


@pytest.mark.parametrize("scope, files, declared_in", [
    ("the library", ["rnn_core/**/*.py"], ["pyproject.toml"]),
    ("the app and train.py", ["app.py", "train.py", "rnn_core/**/*.py"], ["requirements.txt"]),
    ("tests and benchmarks", ["tests/*.py", "bench/*.py"],
     ["requirements.txt", "requirements-test.txt"]),
])
def test_every_imported_package_is_declared(scope, files, declared_in):
    paths = [p for pattern in files for p in ROOT.glob(pattern)]
    # d2l, the tests' oracle, is installed by tests/run.sh on its own (--no-deps: its pins are old)
    missing = third_party(imported_modules(paths)) - declared(*declared_in) - {"d2l"}
    assert not missing, f"{scope} imports {sorted(missing)}, not declared in {declared_in}"


def test_the_code_passes_ruff():
    """The lint tests/run.sh runs, here too, so a plain pytest run catches it before landing."""
    r = run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
            ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
