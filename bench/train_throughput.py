"""Training throughput (tokens/sec) at the book's §8.5 settings, every contender in one run.

Batch 32, 35 steps, 512 hidden units, V = 28, sequential partitioning of the first 10,000
characters, full BPTT, the book's clipping (theta = 1) and SGD (lr 1), all through the book's
`train_epoch_ch8` loop. Contenders:
  seed     the baseline every speed-up is measured against: the book's own §8.5 scratch code,
           as in the D2L notebook this project was seeded from (its functions are
           tests/d2l_book.py's `get_params`, `init_rnn_state` and `rnn`): `RNNModelScratch` over
           the book's `rnn` (per step: one-hot input, torch.mm(X, W_xh) + torch.mm(H, W_hh) +
           b_h, tanh, torch.mm(H, W_hq) + b_q), autograd through the loop, the book's
           `grad_clipping` and `sgd`. This is `train.py --kernel book` (bit-exact to the book,
           tests/test_faithful.py)
  nn.RNN   the book's concise model (§8.6: nn.RNN + nn.Linear, same hidden size), torch.optim.SGD
  fast     rnn_core.fast.FastRNN: `auto` (what `train.py` uses: the fastest kernel, timed
           once per machine), and each kernel that applies alone (`plain`: the split kernel;
           `batched`: its per-step products over a row block per thread; `rows`: the same
           with batch rows split across Python threads; `onednn`: the fused one)
and the machine's floor: the unavoidable sequential work of one minibatch, 2 x 35 products
(32 x 512)·(512 x 512) plus tanh, timed alone (the fastest of torch.mm, a batched product
over row blocks, oneDNN with tanh fused, oneDNN with the weight prepacked, and each core
running its share of the rows on its own, as the `rows` kernel does); and the
ceiling: the one-core time of every unavoidable product (those 70 and dW_hh) shared perfectly
by the cores, which no kernel of the book's float32 arithmetic can beat, so its "x seed" is
the most any kernel can gain over the seed on the machine at hand; and the bound: the fastest
floor plus dW_hh on the threads as they really run (torch.mm or oneDNN's weight-gradient op,
the faster), the products of a minibatch with nothing else, in the best arrangement measured
here, so its "x seed" is what a kernel would reach with every other part of a step free.

Rounds are interleaved (one epoch of every contender per round, the same minibatches for all,
the order rotated each round), the first rounds are warm-up, and ratios are taken within each
round, then the median. Limit the instruction set to measure an AVX2-only CPU on an AVX-512
one (the first lines printed say what is in force):

    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 \
        python -m bench.train_throughput

    python -m bench.train_throughput              # 2 warm-up + 9 measured rounds
    python -m bench.train_throughput --threads 1  # pin torch's thread count
    python -m bench.train_throughput --quick      # smoke test: 1 + 2 rounds
    python -m bench.train_throughput --arch lstm  # the ch. 9 cells instead (see train_cells)
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

from bench.common import book_text, isa_info, machine_info, summary

from rnn_core import choices
from rnn_core.data import DataError, load_corpus, read_text, SeqDataLoader
from rnn_core.fast import (FastRNN, _each_group, _one_core_per_group, _split,
                           _weight_grad_onednn, candidates, onednn_available,
                           onednn_prepack_available, onednn_weight_grad_available, row_blocks,
                           row_threads)
from rnn_core.fast_cells import FastCells, candidates as cell_backends
from rnn_core.model import RNNModelScratch
from rnn_core.training import make_updater, train_epoch_ch8

BATCH, STEPS, HIDDEN, MAX_TOKENS, LR = 32, 35, 512, 10_000, 1.0


class RNNModelConcise(nn.Module):
    """The book's §8.6 `RNNModel` around `nn.RNN`, its state wrapped in a tuple like the
    scratch model's so the same training loop drives both."""

    def __init__(self, vocab_size: int, num_hiddens: int):
        super().__init__()
        self.rnn, self.vocab_size = nn.RNN(vocab_size, num_hiddens), vocab_size
        self.linear = nn.Linear(num_hiddens, vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size).to(torch.float32)
        Y, H = self.rnn(X, state[0])
        return self.linear(Y.reshape((-1, Y.shape[-1]))), (H,)

    def begin_state(self, batch_size, device):
        return (torch.zeros((1, batch_size, self.rnn.hidden_size), device=device),)


def auto_choice(forward, what: str) -> str:
    """Which kernel `auto` ran, and where that choice came from (rnn_core/choices.py)."""
    return (f"\nfast (auto) ran the {forward.backend} {what}: timed against the others the first "
            f"time this shape ran on this machine, then taken from {choices.path()} (train.py "
            "does the same; delete the file to time again)")


def contenders(vocab_size: int) -> dict:
    """name -> (net, updater, forward); the scratch nets start from the same weights."""
    out = {}
    torch.manual_seed(0)
    net = RNNModelScratch(vocab_size, HIDDEN)
    out["seed (scratch, book)"] = (net, make_updater(net, "sgd", LR), None)
    torch.manual_seed(0)
    concise = RNNModelConcise(vocab_size, HIDDEN)
    out["nn.RNN + nn.Linear"] = (concise, torch.optim.SGD(concise.parameters(), lr=LR), None)
    key = (STEPS, BATCH, HIDDEN, vocab_size, torch.float32, torch.device("cpu"))
    for backend in ["auto"] + candidates(key):
        torch.manual_seed(0)
        net = RNNModelScratch(vocab_size, HIDDEN)
        out[f"fast ({backend})"] = (net, make_updater(net, "sgd", LR), FastRNN(net, backend))
    return out


def floor_seconds(reps: int = 5) -> dict[str, float]:
    """Seconds for 2 x STEPS products (BATCH x H)·(H x H) + tanh, best of `reps`, per method:
    the sequential part of a minibatch, however it is arranged."""
    h = torch.randn(BATCH, HIDDEN) * 0.1
    W = torch.randn(HIDDEN, HIDDEN) * 0.01
    methods = {"torch.mm + tanh": lambda: torch.tanh(torch.mm(h, W))}
    blocks = row_blocks(BATCH)
    if blocks > 1:
        hb, Wb = h.view(blocks, -1, HIDDEN), W.expand(blocks, HIDDEN, HIDDEN)
        methods["batched blocks + tanh"] = lambda: torch.tanh(torch.bmm(hb, Wb))
    W_t = W.t().contiguous()  # (out, in), the layout oneDNN's linear takes
    if onednn_available():
        op = torch.ops.mkldnn._linear_pointwise
        methods["oneDNN, tanh fused"] = lambda: op(h, W_t, None, "tanh", [], "")
    if onednn_prepack_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(W_t, BATCH)
        methods["oneDNN, prepacked"] = lambda: op(h, packed, None, "tanh", [], "")
    passes = {name: (lambda fn=fn: [fn() for _ in range(2 * STEPS)])
              for name, fn in methods.items()}
    groups = row_threads(BATCH, h.device)
    if groups > 1:   # the `rows` kernel's arrangement: each core its rows' whole chain
        parts = [h[r] for r in _split(BATCH, groups)]

        def rows_apart() -> None:
            with _one_core_per_group(groups):
                _each_group(lambda g: [torch.tanh(torch.mm(parts[g], W))
                                       for _ in range(2 * STEPS)], groups)
        passes["rows apart, a core each"] = rows_apart
    return {name: best_of(fn, reps) for name, fn in passes.items()}


def weight_grad_seconds(reps: int = 5) -> float:
    """Seconds of dW_hh = H^T dA over a minibatch, (H x T·B)·(T·B x H), on torch's threads:
    the faster of torch.mm and oneDNN's weight-gradient op (what the fused kernel runs)."""
    Hs, dA = torch.randn(STEPS * BATCH, HIDDEN), torch.randn(STEPS * BATCH, HIDDEN)
    seconds = best_of(lambda: torch.mm(Hs.t(), dA), reps)
    if onednn_weight_grad_available():
        shape = torch.empty(HIDDEN, HIDDEN).to_mkldnn()
        seconds = min(seconds, best_of(lambda: _weight_grad_onednn(Hs, dA, shape), reps))
    return seconds


def ceiling_seconds(reps: int = 5) -> float:
    """A lower bound on the minibatch time of any float32 kernel doing the book's arithmetic:
    the one-core time of its unavoidable products — 2 x 35 per-step (B x H)·(H x H) and
    dW_hh = H^T dA over the minibatch (H x T·B)·(T·B x H) — shared perfectly by torch's
    threads, with nothing else (no input, output layer, loss, clipping or update)."""
    threads = torch.get_num_threads()
    h, W = torch.randn(BATCH, HIDDEN) * 0.1, torch.randn(HIDDEN, HIDDEN) * 0.01
    Hs, dA = torch.randn(STEPS * BATCH, HIDDEN), torch.randn(STEPS * BATCH, HIDDEN)
    torch.set_num_threads(1)
    try:
        steps = best_of(lambda: [torch.mm(h, W) for _ in range(2 * STEPS)], reps)
        weight_grad = best_of(lambda: torch.mm(Hs.t(), dA), reps)
    finally:
        torch.set_num_threads(threads)
    return (steps + weight_grad) / threads


def best_of(fn, reps: int) -> float:
    """Seconds of the fastest of `reps` calls of `fn`, after three warm-up calls."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9, help="measured rounds (one epoch each)")
    p.add_argument("--warmup", type=int, default=2, help="rounds run first and not counted")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--data", default=None,
                   help="the book's text (default: ../shared/data/timemachine.txt, else download)")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS,
                   help="characters of the text to train on (the book: 10000, 8 minibatches)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 warm-up + 2 rounds of 2 minibatches each")
    p.add_argument("--arch", choices=("rnn", "gru", "lstm"), default="rnn",
                   help="gru / lstm: the ch. 9 contenders instead (train_cells)")
    p.add_argument("--num-layers", type=int, default=1, help="layers, for --arch gru / lstm")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.max_tokens = 2, 1, 2 * BATCH * STEPS + STEPS + 1
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.arch != "rnn":
        return train_cells(args)
    data = book_minibatches(args)
    if data is None:
        return 2
    train_iter, vocab = data
    nets = contenders(len(vocab))
    loss = nn.CrossEntropyLoss()

    print("training throughput, book settings: batch 32, 35 steps, H 512, V 28, sequential, "
          "BPTT + clipping + SGD")
    print(machine_info())
    print(isa_info())
    speeds = {name: [] for name in nets}
    ppl = {}
    floors: dict[str, list[float]] = {}
    ceilings: list[float] = []  # tokens/sec of the unavoidable products alone, per round
    bounds: list[float] = []    # tokens/sec of the fastest floor + dW_hh, per round
    names = list(nets)
    for r in range(args.warmup + args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            net, updater, forward = nets[name]
            random.seed(r)  # the same minibatches for every contender in this round
            ppl[name], speed = train_epoch_ch8(net, train_iter, loss, updater, "cpu", False,
                                               forward)
            if r >= args.warmup:
                speeds[name].append(speed)
        if r >= args.warmup:
            floor_now = floor_seconds()
            for name, sec in floor_now.items():
                floors.setdefault(name, []).append(BATCH * STEPS / sec)
            ceilings.append(BATCH * STEPS / ceiling_seconds())
            bounds.append(BATCH * STEPS / (min(floor_now.values()) + weight_grad_seconds()))

    seed, concise = speeds["seed (scratch, book)"], speeds["nn.RNN + nn.Linear"]
    floor = max(floors.values(), key=statistics.median)
    print(f"\n{'contender':<26} {'tokens/sec: median [min–max]':<36} {'x seed':>8} "
          f"{'x nn.RNN':>9} {'of floor':>9} {'ppl':>7}")
    for name, values in speeds.items():
        vs_seed = statistics.median(v / s for v, s in zip(values, seed))
        vs_rnn = statistics.median(v / c for v, c in zip(values, concise))
        of_floor = statistics.median(v / f for v, f in zip(values, floor))
        print(f"{name:<26} {summary(values):<36} {vs_seed:>7.2f}x {vs_rnn:>8.2f}x "
              f"{of_floor:>8.0%} {ppl[name]:>7.2f}")
    for name, values in floors.items():
        print(f"{'floor: ' + name:<26} {summary(values):<36}")
    for name, values in (("ceiling", ceilings), ("bound: floor + dW_hh", bounds)):
        vs_seed = statistics.median(v / s for v, s in zip(values, seed))
        print(f"{name:<26} {summary(values):<36} {vs_seed:>7.2f}x")
    print("(ceiling: the one-core time of the book's unavoidable products, 2 x 35 per step and "
          "dW_hh,\n shared perfectly by the threads: no float32 kernel of the book's arithmetic "
          "can beat it here;\n x seed is the most any can gain over the seed on this machine. "
          "bound: the fastest floor and dW_hh\n as the threads really run them, nothing else "
          "of a step: what a kernel reaches if all else were free)")
    print(auto_choice(nets['fast (auto)'][2], "kernel"))
    print(f"(ppl: training perplexity of the last epoch, {args.warmup + args.rounds} epochs "
          "from the same start; the scratch contenders see the same weights and minibatches)")
    return 0



# ---------------------------------------------------------------- the ch. 9 cells (GRU, LSTM)

CELL_HIDDEN = 256  # the book's §9.1 / §9.2 runs


class CellModelConcise(nn.Module):
    """The book's concise §9.1 / §9.2 model: d2l's `RNNModel` around `nn.GRU` / `nn.LSTM`
    (oneDNN-backed on CPU), its state a tuple like the scratch model's."""

    def __init__(self, arch: str, vocab_size: int, num_hiddens: int, num_layers: int = 1):
        super().__init__()
        layer = {"gru": nn.GRU, "lstm": nn.LSTM}[arch]
        self.rnn, self.vocab_size = layer(vocab_size, num_hiddens, num_layers), vocab_size
        self.linear = nn.Linear(num_hiddens, vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size).to(torch.float32)
        Y, state = self.rnn(X, state[0] if isinstance(self.rnn, nn.GRU) else state)
        return self.linear(Y.reshape((-1, Y.shape[-1]))), (state,) if isinstance(self.rnn, nn.GRU) else state

    def begin_state(self, batch_size, device):
        zeros = torch.zeros((self.rnn.num_layers, batch_size, self.rnn.hidden_size), device=device)
        return (zeros,) if isinstance(self.rnn, nn.GRU) else (zeros, zeros.clone())


def cell_contenders(arch: str, vocab_size: int, num_layers: int) -> dict:
    """name -> (net, updater, forward): the book's scratch cell (its forward and autograd),
    the concise nn.GRU / nn.LSTM, and rnn_core.fast_cells.FastCells: `auto` (what train.py
    uses) and each backend that applies alone; the scratch ones start from the same weights."""
    title = arch.upper()
    torch.manual_seed(0)
    book = RNNModelScratch(vocab_size, CELL_HIDDEN, arch=arch, num_layers=num_layers)
    torch.manual_seed(0)
    concise = CellModelConcise(arch, vocab_size, CELL_HIDDEN, num_layers)
    out = {f"book scratch {title}": (book, make_updater(book, "sgd", LR), None),
           f"nn.{title} + nn.Linear": (concise, torch.optim.SGD(concise.parameters(), lr=LR),
                                       None)}
    for backend in ["auto"] + cell_backends(arch, torch.float32, torch.device("cpu")):
        torch.manual_seed(0)
        fast = RNNModelScratch(vocab_size, CELL_HIDDEN, arch=arch, num_layers=num_layers)
        out[f"fast ({backend})"] = (fast, make_updater(fast, "sgd", LR), FastCells(fast, backend))
    return out


def cell_floor_seconds(arch: str, reps: int = 5) -> float:
    """Seconds of the matrix products one training minibatch cannot avoid, for one core's
    share of the batch rows (BATCH / torch threads, each core on its own rows), best of
    `reps`: per step the recurrent product forward, H (rows x H) times the gates' W_h
    (H x G*H), and backward, dA times W_h^T; then every W_h gradient over all steps. The
    input products (one-hot rows) and the output layer are left out, so it is a bound."""
    G, H = {"gru": 3, "lstm": 4}[arch], CELL_HIDDEN
    threads = torch.get_num_threads()
    rows = BATCH // max(1, min(threads, BATCH // 8))
    h, W = torch.randn(rows, H) * 0.1, torch.randn(H, G * H) * 0.01
    a, W_T = torch.randn(rows, G * H) * 0.1, W.t().contiguous()
    Hs, dA = torch.randn(STEPS * rows, H), torch.randn(STEPS * rows, G * H)
    out_f, out_b, dW = torch.empty(rows, G * H), torch.empty(rows, H), torch.empty(H, G * H)

    def minibatch():
        for _ in range(STEPS):
            torch.mm(h, W, out=out_f)
        for _ in range(STEPS):
            torch.mm(a, W_T, out=out_b)
        torch.mm(Hs.t(), dA, out=dW)

    torch.set_num_threads(1)
    try:
        return best_of(minibatch, reps)
    finally:
        torch.set_num_threads(threads)


def book_minibatches(args):
    """The book's minibatches (sequential, batch 32, 35 steps) of the first `--max-tokens`
    characters and the vocabulary, or None after a one-line error when the text is missing."""
    try:
        text = read_text(args.data or book_text())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    corpus, vocab = load_corpus(text, "book", args.max_tokens)
    return SeqDataLoader(corpus, BATCH, STEPS), vocab


def train_cells(args) -> int:
    """Tokens/sec of the §9.1 / §9.2 settings (H 256, batch 32, 35 steps, lr 1, the first
    10,000 characters, sequential), interleaved rounds, ratios within each round."""
    data = book_minibatches(args)
    if data is None:
        return 2
    train_iter, vocab = data
    nets = cell_contenders(args.arch, len(vocab), args.num_layers)
    loss = nn.CrossEntropyLoss()
    print(f"training throughput, {args.arch.upper()} x {args.num_layers} layer(s): batch 32, "
          f"35 steps, H {CELL_HIDDEN}, V {len(vocab)}, sequential, BPTT + clipping + SGD")
    print(machine_info())
    print(isa_info())
    speeds = {name: [] for name in nets}
    ppl = {}
    names = list(nets)
    floor = []
    for r in range(args.warmup + args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            net, updater, forward = nets[name]
            random.seed(r)
            ppl[name], speed = train_epoch_ch8(net, train_iter, loss, updater, "cpu", False,
                                               forward)
            if r >= args.warmup:
                speeds[name].append(speed)
        if r >= args.warmup and args.num_layers == 1:
            floor.append(BATCH * STEPS / cell_floor_seconds(args.arch))
    if floor:
        speeds["floor: products alone"] = floor
        ppl["floor: products alone"] = float("nan")
    book, concise = list(speeds.values())[:2]
    print(f"\n{'contender':<26} {'tokens/sec: median [min–max]':<36} {'x book':>8} "
          f"{'x concise':>10} {'ppl':>7}")
    for name, values in speeds.items():
        vs_book = statistics.median(v / b for v, b in zip(values, book))
        vs_concise = statistics.median(v / c for v, c in zip(values, concise))
        print(f"{name:<26} {summary(values):<36} {vs_book:>7.2f}x {vs_concise:>9.2f}x "
              f"{ppl[name]:>7.2f}")
    print(auto_choice(nets['fast (auto)'][2], "backend"))
    if floor:
        print("(floor: the recurrent products and W_h's gradient alone, each core on its share "
              "of the rows, nothing else of a training step: no kernel can beat it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
