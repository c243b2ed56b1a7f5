"""The project's own promises: a valid Space card, the two set-up commands, CI runs the tests."""
from __future__ import annotations

import re

from huggingface_hub import SpaceCard

from conftest import ROOT


def test_readme_front_matter_is_a_valid_space_card():
    card = SpaceCard.load(ROOT / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert (ROOT / card.data.app_file).is_file()


def test_readme_has_exactly_the_two_set_up_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    assert commands == ["pip install -r requirements.txt && python app.py", "bash tests/run.sh"]
    assert "bash tests/run.sh" in (ROOT / ".ci" / "run").read_text()


def test_requirements_pin_torch_and_use_no_extra_index():
    reqs = (ROOT / "requirements.txt").read_text() + (ROOT / "requirements-test.txt").read_text()
    assert "torch==2.13.0" in reqs and "--extra-index-url" not in reqs and "--index-url" not in reqs


def test_bundled_model_is_small_safetensors_with_its_command():
    folder = ROOT / "checkpoints" / "timemachine-rnn512"
    assert (folder / "model.safetensors").stat().st_size < 5 * 2 ** 20
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    assert "python train.py --max-tokens 0 --val-fraction" in (folder / "README.md").read_text()


def test_bundled_model_reads_like_the_book(bundled_checkpoint, data_path):
    from rnn_core import generate_text, load_checkpoint
    from rnn_core.data import normalize_text, read_text
    book_words = set(normalize_text(read_text(data_path).replace("\n", " "), "book").split())
    ckpt = load_checkpoint(bundled_checkpoint)
    for prefix in ("the time machine", "i saw", "the morlocks"):
        words = generate_text(ckpt.net, ckpt.vocab, prefix, 300, ckpt.normalization).split()[1:-1]
        assert sum(w in book_words for w in words) / len(words) >= 0.8, words
