"""Generation latency, one stream: microseconds per generated character from a carried state.

Ours (`rnn_core.generation.TextStream`, what the app streams with) against the book's
`predict_ch8` loop on the same weights (the bundled model by default), greedy and sampled.
The book's loop: per character, a (1, 1) input tensor, the model's forward (one-hot, the `rnn`
loop, `torch.cat`), then `argmax` — with autograd recording, as the book runs it. The book has
no sampling; its sampled variant here is the same loop drawing the way one usually writes it
in torch (`torch.topk`, `softmax`, `torch.multinomial`). Greedy outputs are checked equal
before anything is timed.

Rounds are interleaved (every contender once per round), the first is warm-up, ratios are
taken within each round, then the median.

    python -m bench.generation_latency                # 200 characters x 15 rounds
    python -m bench.generation_latency --quick        # smoke test
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 \
        python -m bench.generation_latency            # as on an AVX2-only CPU
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import ROOT, isa_info, machine_info, summary

from rnn_core.checkpoint import load_checkpoint
from rnn_core.generation import TextStream, predict_ch8
from rnn_core.model import RNNModelScratch

PREFIX = "time traveller "


def conventional_draw(logits: torch.Tensor, temperature: float, top_k: int,
                      rng: torch.Generator) -> int:
    """Sample softmax(logits / temperature), restricted to the top_k largest, with torch ops."""
    if 0 < top_k < logits.numel():
        values, indices = torch.topk(logits, top_k)
        return int(indices[torch.multinomial(torch.softmax(values / temperature, 0), 1,
                                             generator=rng)])
    return int(torch.multinomial(torch.softmax(logits / temperature, 0), 1, generator=rng))


def book_loop(net, vocab, num_preds: int, temperature: float, top_k: int,
              rng: torch.Generator, started: list | None = None) -> str:
    """`predict_ch8` as the book writes it (prefix warm-up, then the prediction loop), with
    the draw swappable for sampling; the time the prediction loop starts goes to `started`."""
    state = net.begin_state(batch_size=1, device="cpu")
    outputs = [vocab[PREFIX[0]]]

    def get_input():
        return torch.tensor([outputs[-1]], device="cpu").reshape((1, 1))

    for y in PREFIX[1:]:
        _, state = net(get_input(), state)
        outputs.append(vocab[y])
    if started is not None:
        started.append(time.perf_counter())
    for _ in range(num_preds):
        y, state = net(get_input(), state)
        outputs.append(conventional_draw(y[0], temperature, top_k, rng) if temperature > 0
                       else int(y.argmax(dim=1).reshape(1)))
    return "".join(vocab.idx_to_token[i] for i in outputs)


def ours(gen: TextStream, num_preds: int, temperature: float, top_k: int,
         rng: torch.Generator, started: list | None = None) -> str:
    gen.reset()
    prefix = gen.feed(PREFIX)
    if started is not None:
        started.append(time.perf_counter())
    return prefix + "".join(gen.generate(num_preds, temperature, top_k, rng))


def per_char_us(fn, num_preds: int) -> float:
    """Microseconds per generated character, from the end of the prefix to the last one."""
    started: list[float] = []
    fn(num_preds, started)
    return (time.perf_counter() - started[0]) / num_preds * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "checkpoints" / "timemachine-rnn512"),
                   help="checkpoint folder (default: the bundled model)")
    p.add_argument("--chars", type=int, default=200, help="characters generated per measurement")
    p.add_argument("--rounds", type=int, default=15, help="measured rounds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 characters x 2 rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.chars, args.rounds = 20, 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.model)
    vocab = ckpt.vocab
    gen = TextStream(ckpt.net, vocab, ckpt.normalization)
    # The book's model holds its parameters with requires_grad=True (get_params), so its
    # predict_ch8 records autograd as it goes: the same weights, as the book holds them.
    net = RNNModelScratch(len(vocab), ckpt.net.num_hiddens)
    net.load_state_dict(ckpt.net.state_dict())

    book_greedy = predict_ch8(PREFIX, args.chars, net, vocab, "cpu")
    ours_greedy = ours(gen, args.chars, 0.0, 0, None)
    if ours_greedy != book_greedy or book_loop(net, vocab, args.chars, 0, 0, None) != book_greedy:
        raise SystemExit(f"greedy outputs differ:\n  book: {book_greedy!r}\n  ours: {ours_greedy!r}")

    modes = {"greedy": (0.0, 0), "sampled (T=0.8, top-k 5)": (0.8, 5)}
    print("generation latency, one stream, from a carried state; model "
          f"{args.model} (H={net.num_hiddens}, V={len(vocab)})")
    print(machine_info())
    print(isa_info())
    print(f"greedy outputs equal the book's predict_ch8: {ours_greedy[:60]!r}...")
    print(f"\n{'mode':<26} {'book loop µs/char':<28} {'ours µs/char':<28} {'speed-up':>9}")
    for mode, (temperature, top_k) in modes.items():
        times = {"book": [], "ours": []}
        for r in range(args.rounds + 1):
            rng = torch.Generator().manual_seed(r)
            book = per_char_us(lambda n, t: book_loop(net, vocab, n, temperature, top_k, rng, t),
                               args.chars)
            mine = per_char_us(lambda n, t: ours(gen, n, temperature, top_k, rng, t), args.chars)
            if r:  # round 0 is warm-up
                times["book"].append(book)
                times["ours"].append(mine)
        ratio = statistics.median(b / o for b, o in zip(times["book"], times["ours"]))
        print(f"{mode:<26} {summary(times['book'], '{:.1f}'):<28} "
              f"{summary(times['ours'], '{:.1f}'):<28} {ratio:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
