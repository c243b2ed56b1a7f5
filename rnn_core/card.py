"""The model card (README.md of a checkpoint): YAML metadata the Hub indexes, plus prose."""
from __future__ import annotations

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A character-level RNN written from scratch as in *Dive into Deep Learning* §8.5
(`H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h)`, `Y_t = H_t W_hq + b_q`), trained with
truncated backpropagation through time, gradient clipping and {{ optimizer }}.

| | |
|---|---|
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

```bash
pip install -r requirements.txt   # from the project that trained it
python -m rnn_core generate --model {{ model_ref }} --prefix "time traveller" --num-preds 50
python -m rnn_core generate --model {{ model_ref }} --prefix "the time" --temperature 0.8 --top-k 5 --seed 0
```

```python
from rnn_core import load_model, generate_text
ckpt = load_model("{{ model_ref }}")
print(generate_text(ckpt.net, ckpt.vocab, "time traveller", 50, ckpt.normalization))
```

The weights (`model.safetensors`: float32 `W_xh`, `W_hh`, `b_h`, `W_hq`, `b_q`) also drop
into the book's `RNNModelScratch`: `net.params = [W_xh, W_hh, b_h, W_hq, b_q]`, with
`vocab.json` as `idx_to_token`.
"""


def _fmt(x) -> str:
    return "—" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def make_model_card(config: dict, sample: str, model_ref: str = "path/to/checkpoint") -> ModelCard:
    """Build the card from a checkpoint's config; `model_ref` is how users will load it."""
    t = config.get("training", {})
    metric = t.get("best_val_ppl") or t.get("final_ppl")
    split = "validation" if t.get("best_val_ppl") else "train"
    data_name = t.get("data_name", "unknown text")
    card_data = ModelCardData(
        library_name="pytorch",
        license="mit",
        language=["en"] if config.get("normalization") == "book" else None,
        pipeline_tag="text-generation",
        tags=["char-rnn", "d2l", "rnn", "text-generation", "from-scratch", "safetensors"],
        datasets=["time-machine"] if "timemachine" in data_name else None,
        model_name=model_ref,
        eval_results=[EvalResult(task_type="text-generation", dataset_type="text",
                                 dataset_name=data_name, dataset_split=split,
                                 metric_type="perplexity", metric_name=f"{split} perplexity",
                                 metric_value=round(float(metric), 4))] if metric else None,
    )
    V, H = config["vocab_size"], config["num_hiddens"]
    return ModelCard.from_template(
        card_data, template_str=TEMPLATE, model_name=model_ref,
        optimizer={"adam": "Adam"}.get(t.get("optimizer"), "the book's SGD"),
        num_hiddens=H, vocab_size=V,
        normalization=config.get("normalization"), num_params=f"{V * H * 2 + H * H + H + V:,}",
        data_name=data_name, num_tokens=_fmt(t.get("num_train_tokens")),
        data_sha1=t.get("data_sha1", "?"), num_epochs=_fmt(t.get("num_epochs")),
        lr=_fmt(t.get("lr")), batch_size=_fmt(t.get("batch_size")),
        num_steps=_fmt(t.get("num_steps")),
        iterator="random sampling" if t.get("use_random_iter") else "sequential partitioning",
        ppl=_fmt(t.get("final_ppl")),
        val_ppl=(f"{_fmt(t.get('final_val_ppl'))} final, {_fmt(t.get('best_val_ppl'))} best"
                 if t.get("best_val_ppl") else "— (no validation split)"),
        speed=_fmt(t.get("tokens_per_sec")), device=t.get("device", "?"),
        sample=sample, command=t.get("command", "python train.py"), model_ref=model_ref)
