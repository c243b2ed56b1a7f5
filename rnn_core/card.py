"""The model card (README.md of a checkpoint): YAML metadata the Hub indexes, plus prose."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .cells import describe, get_cell, param_shapes
from .config import CheckpointConfig

BOOK_URL = get_cell("rnn").url  # §8.5

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A character-level {{ cell }} written from scratch as in *Dive into Deep Learning*
{{ section }}{{ deep }} (`{{ formula }}`, `Y = H W_hq + b_q`), trained with
truncated backpropagation through time, gradient clipping and {{ optimizer }}.

| | |
|---|---|
| cell | {{ structure }} |
| hidden units | {{ num_hiddens }} |
| vocabulary | {{ vocab_size }} tokens (`{{ normalization }}` normalisation) |
| parameters | {{ num_params }} |
| training text | {{ data_name }} ({{ num_tokens }} tokens, sha1 `{{ data_sha1 }}`) |
| epochs / lr / batch / steps | {{ num_epochs }} / {{ lr }} / {{ batch_size }} / {{ num_steps }} |
| iterator | {{ iterator }} |
| train perplexity | {{ ppl }} |
| validation perplexity | {{ val_ppl }} |
| speed | {{ speed }} tokens/sec on {{ device }} |

## Sample (greedy, as the book's `predict_ch8`)

```text
{{ sample }}
```

## How it was made

```bash
{{ command }}
```

## How to use

The model is the book's ([{{ section }}]({{ book_url }})). Its weights load with this project's
library, `rnn_core`, which checks every file before use. Code: {{ code }}.

```python
from rnn_core import CharRNN
rnn = CharRNN.load("{{ model_ref }}")   # or revision="main", a tag, a commit sha
print(rnn.generate("time traveller", 50))                # greedy: the book's predict_ch8
print(rnn.generate("the time", 50, temperature=0.8, top_k=5, seed=0))   # sampled
print(rnn.perplexity("the time traveller smiled"))       # 1 = perfect prediction
```

```bash
rnn-core generate --model {{ model_ref }} --prefix "time traveller" --num-preds 50
```

The weights (`model.safetensors`: float32 {{ weight_names }}) also drop
into the book's `RNNModelScratch`: `net.params = [{{ book_params }}]`, with
`vocab.json` as `idx_to_token`.
"""


def _fmt(x) -> str:
    return "—" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def code_url() -> str | None:
    """Where the code that makes and loads these models is published: $RNN_CORE_CODE_URL, else
    the https form of this checkout's `origin` remote; None when neither is known."""
    url = os.environ.get("RNN_CORE_CODE_URL", "").strip()
    if not url:
        try:
            url = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True,
                                 text=True, timeout=10, cwd=Path(__file__).parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        url = re.sub(r"^(?:ssh://)?git@([^:/]+)[:/]", r"https://\1/", url).removesuffix(".git")
        url = re.sub(r"//[^/@]+@", "//", url)  # never publish credentials embedded in a remote
    return url if url.startswith("https://") else None


def make_model_card(config: CheckpointConfig, sample: str, model_ref: str = "path/to/checkpoint"
                    ) -> ModelCard:
    """Build the card from a checkpoint's config; `model_ref` is how users will load it."""
    t = config.record()
    metric = t.get("best_val_ppl") or t.get("final_ppl")
    split = "validation" if t.get("best_val_ppl") else "train"
    data_name = t.get("data_name", "unknown text")
    card_data = ModelCardData(
        # "pytorch": the framework the weights are for. No library the Hub integrates (such as
        # transformers) can load them, so naming one would promise a snippet that fails; the
        # card's own example shows the code that does.
        library_name="pytorch",
        license="mit",
        language=["en"] if config.normalization == "book" else None,
        pipeline_tag="text-generation",
        tags=["char-rnn", "d2l", *dict.fromkeys(["rnn", config.arch]),
              "text-generation", "from-scratch", "safetensors"],
        # No `datasets:` list: the training text is a local file, not a Hub dataset, and the
        # Hub would link any id listed there. The file's name and sha1 are in the table below.
        model_name=model_ref,
        eval_results=[EvalResult(task_type="text-generation", dataset_type=data_name,
                                 dataset_name=data_name, dataset_split=split,
                                 metric_type="perplexity", metric_name=f"{split} perplexity",
                                 metric_value=round(float(metric), 4))] if metric else None,
    )
    V, H = config.vocab_size, config.num_hiddens
    arch, L, dropout = config.arch, config.num_layers, config.dropout
    cell, names = get_cell(arch), list(param_shapes(V, H, arch, L))
    structure = describe(arch, L, H) + (f", dropout {dropout:g}" if dropout else "")
    return ModelCard.from_template(
        card_data, template_str=TEMPLATE, model_name=model_ref,
        optimizer={"adam": "Adam"}.get(t.get("optimizer"), "the book's SGD"),
        cell=cell.title, section=cell.section, formula=cell.formula, structure=structure,
        deep=f", stacked {L} layers deep as in §9.3" if L > 1 else "",
        weight_names=", ".join(f"`{n}`" for n in names)
        if L == 1 else f"`{names[0]}` … `{names[-1]}`, {len(names)} tensors",
        book_params=", ".join(names),
        num_hiddens=H, vocab_size=V,
        normalization=config.normalization, num_params=f"{config.num_params:,}",
        data_name=data_name, num_tokens=_fmt(t.get("num_train_tokens")),
        data_sha1=t.get("data_sha1", "?"), num_epochs=_fmt(t.get("num_epochs")),
        lr=_fmt(t.get("lr")), batch_size=_fmt(t.get("batch_size")),
        num_steps=_fmt(t.get("num_steps")),
        iterator="random sampling" if t.get("use_random_iter") else "sequential partitioning",
        ppl=_fmt(t.get("final_ppl")),
        val_ppl=(f"{_fmt(t.get('final_val_ppl'))} final, {_fmt(t.get('best_val_ppl'))} best"
                 if t.get("best_val_ppl") else "— (no validation split)"),
        speed=_fmt(t.get("tokens_per_sec")), device=t.get("device", "?"),
        sample=sample, command=t.get("command", "python train.py"), model_ref=model_ref,
        book_url=cell.url, code=f"<{url}> (`pip install git+{url}`)" if (url := code_url()) else
        "not published at a public URL when this card was made (`pip install .` in the project)")
