"""Training as in §8.5 (and ch. 9, whose cells reuse it): BPTT over a minibatch, state detach,
gradient clipping, perplexity."""
from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .data import Vocab
from .distributed import SINGLE, Group
from .generation import predict_ch8
from .model import RNNModelScratch

OPTIMIZERS = ("sgd", "adam")
KERNELS = ("book", "fast")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the weights of that epoch are not to be kept."""


class Interrupted(KeyboardInterrupt):
    """Training was asked to stop (Ctrl-C, or SIGTERM from `docker stop`, Slurm, Kubernetes);
    `exit_status` is the shell's convention, 128 + the signal number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.exit_status = signum, 128 + signum


class StopSignals:
    """`with StopSignals() as stop:` turns SIGINT and SIGTERM into `Interrupted` in the main
    thread; inside `with stop.deferred():` (a save) a signal waits until the block ends, so
    a checkpoint is never abandoned halfway. The previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.pending: int | None = None
        self._depth, self._previous = 0, {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach only the main thread; nothing to install elsewhere
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self._depth:
            self.pending = signum
        else:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self.pending is not None:
            signum, self.pending = self.pending, None
            raise Interrupted(signum)


def grad_clipping(net: nn.Module, theta: float) -> None:
    """§8.5: The book's clipping: one global L2 norm over all gradients, scaled down to `theta`."""
    params = [p for p in net.parameters() if p.requires_grad]
    norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in params))
    if norm > theta:
        for param in params:
            param.grad[:] *= theta / norm


def sgd(params: Sequence[torch.Tensor], lr: float, batch_size: int) -> None:
    """§3.2: The book's minibatch SGD (called with batch_size=1, as the loss is already a mean)."""
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()


def clip_and_sgd(params: Sequence[torch.Tensor], theta: float, lr: float) -> None:
    """`grad_clipping(net, theta)` then `sgd(params, lr, 1)` (§8.5, §3.2) in two passes over
    the gradients instead of about nine: the same update up to float rounding, for the fast
    kernels (whose gradients already differ from autograd's by rounding; the book's kernel
    keeps the book's two functions and their exact numbers). The gradients are dropped, not
    zeroed, so the next backward stores its own instead of adding them to zeros."""
    grads = [p.grad for p in params]
    norm = float(nn.utils.get_total_norm(grads, foreach=True))
    step = lr * (theta / norm if norm > theta else 1.0)
    with torch.no_grad():
        for param, grad in zip(params, grads):
            param.add_(grad, alpha=-step)
            param.grad = None


def make_updater(net: RNNModelScratch, optimizer: str, lr: float):
    """`sgd`: the book's updater (a function of batch_size); `adam`: torch.optim.Adam."""
    if optimizer == "sgd":
        return functools.partial(sgd, net.params, lr=lr)
    if optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=lr)
    raise ValueError(f"unknown optimizer {optimizer!r}; use one of {OPTIMIZERS}")


def is_book_sgd(updater) -> bool:
    """Whether `updater` is `make_updater`'s `sgd` (whose learning rate `clip_and_sgd` can use)."""
    return isinstance(updater, functools.partial) and updater.func is sgd


def set_lr(updater, lr: float) -> None:
    """Change the learning rate of a `make_updater` updater."""
    if isinstance(updater, torch.optim.Optimizer):
        for group in updater.param_groups:
            group["lr"] = lr
    else:
        updater.keywords["lr"] = lr


def train_epoch_ch8(net: RNNModelScratch, train_iter: Iterable, loss: nn.Module, updater,
                    device: torch.device | str, use_random_iter: bool,
                    forward: Callable | None = None,
                    group: Group = SINGLE,
                    before_step: Callable[[], bool] | None = None) -> tuple[float, float]:
    """§8.5: One epoch, exactly the book's loop; returns (perplexity, tokens/sec).

    `forward` replaces `net(X, state)` (same inputs, outputs and gradients), e.g. a
    `fast.FastRNN` or `fast_cells.FastCells`; by default the book's own forward runs. Under
    torchrun (`group`) this rank trains on its rows of each minibatch (and of its dropout
    masks), gradients are averaged over the ranks before clipping, and perplexity and
    tokens/sec are the whole run's.
    `before_step()` runs before each minibatch (e.g. to set the learning rate); when it
    returns False the epoch ends there.
    """
    forward = net if forward is None else forward
    net.group = group  # its dropout masks: this rank's rows of the global minibatch's
    rest_of_step = getattr(forward, "rest_of_step", contextlib.nullcontext)
    state, start = None, time.perf_counter()
    loss_sum, num_tokens = 0.0, 0
    for X, Y in train_iter:
        if before_step is not None and not before_step():
            break
        X, Y = group.shard(X), group.shard(Y)
        if state is None or use_random_iter:
            # First minibatch, or random sampling: the state starts from zeros.
            state = net.begin_state(batch_size=X.shape[0], device=device)
        else:
            # Sequential partitioning: carry the state, but cut the graph (in place).
            for s in state:
                s.detach_()
        y = Y.T.reshape(-1)  # time-major labels, matching the time-major outputs
        X, y = X.to(device), y.to(device)
        y_hat, state = forward(X, state)
        with rest_of_step():  # a fast kernel's choice of threads (the book's: torch's own)
            l = loss(y_hat, y.long()).mean()
            if isinstance(updater, torch.optim.Optimizer):
                updater.zero_grad()
                l.backward()
                group.average_gradients(net)
                grad_clipping(net, 1)
                updater.step()
            elif forward is not net and is_book_sgd(updater):  # a fast kernel: fewer passes
                l.backward()
                group.average_gradients(net)
                clip_and_sgd(net.params, 1, updater.keywords["lr"])
            else:
                l.backward()
                group.average_gradients(net)
                grad_clipping(net, 1)
                updater(batch_size=1)
        loss_sum += float(l.detach()) * y.numel()
        num_tokens += y.numel()
    elapsed = group.max(time.perf_counter() - start)
    loss_sum, num_tokens = group.sum(loss_sum, num_tokens)
    if not num_tokens:
        return math.nan, 0.0
    return math.exp(loss_sum / num_tokens), num_tokens / elapsed


def num_streams(corpus_length: int, streams: int, num_steps: int) -> int:
    """How many contiguous streams `evaluate_loss` reads: `streams`, fewer for a short text."""
    return max(1, min(streams, (corpus_length - 1) // num_steps))


@torch.no_grad()
def evaluate_loss(net: RNNModelScratch, corpus: Sequence[int], streams: int, num_steps: int,
                  device: torch.device | str, group: Group = SINGLE) -> float:
    """Mean cross-entropy (nats per character) of predicting each held-out character from
    those before it: the text cut into `num_streams(...)` contiguous streams (the last
    (n − 1) mod streams characters dropped), each read in windows of `num_steps` with its
    state carried from zeros. Deterministic (no random draws, dropout off), so validating
    never changes the training run. Under torchrun each rank reads its share of the streams
    and the loss sums are added up."""
    rows = num_streams(len(corpus), streams, num_steps)
    n = (len(corpus) - 1) // rows * rows
    mine = group.rows(rows)
    Xs = torch.tensor(corpus[:n], device=device).reshape(rows, -1)[mine.start:mine.stop]
    Ys = torch.tensor(corpus[1:n + 1], device=device).reshape(rows, -1)[mine.start:mine.stop]
    state, loss_sum = net.begin_state(len(mine), device), 0.0
    with evaluating(net):
        for i in range(0, Xs.shape[1] if len(mine) else 0, num_steps):
            y_hat, state = net(Xs[:, i:i + num_steps], state)
            y = Ys[:, i:i + num_steps].T.reshape(-1)
            loss_sum += float(nn.functional.cross_entropy(y_hat, y, reduction="sum"))
    loss_sum, = group.sum(loss_sum)
    return loss_sum / n  # n: every rank's labels together


def evaluate_perplexity(net: RNNModelScratch, corpus: Sequence[int], batch_size: int,
                        num_steps: int, device: torch.device | str,
                        group: Group = SINGLE) -> float:
    """Perplexity on held-out text: `batch_size` streams, see `evaluate_loss`."""
    return math.exp(evaluate_loss(net, corpus, batch_size, num_steps, device, group))


def loss_line(nats: float) -> str:
    """`val loss 1.6234 nats/char, 2.3421 bits/char, perplexity 5.07`."""
    return (f"val loss {nats:.4f} nats/char, {nats / math.log(2):.4f} bits/char, "
            f"perplexity {math.exp(nats):.2f}")


@contextlib.contextmanager
def evaluating(net: nn.Module):
    """net.eval() inside (dropout off), its previous mode after."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


class Schedule:
    """What happens before each minibatch: the learning rate (constant as in the book, or
    cosine decay from `lr` to `min_lr` over the run) and an optional wall-clock budget.

    Progress runs from 0 to 1 over `max_time` seconds from `start` when there is a budget,
    else over `total_steps` minibatches. Called before each minibatch; returns False (and
    sets `expired`) once the budget is spent, so training stops at a minibatch boundary.
    Under torchrun (`group`) the time read is rank 0's, sent to every rank at each call, so
    all ranks stop at the same minibatch and set the same learning rate.
    """

    def __init__(self, updater, lr: float, min_lr: float | None = None,
                 total_steps: int | None = None, max_time: float | None = None,
                 start: float | None = None, steps_done: int = 0, group: Group = SINGLE):
        self.updater, self.lr, self.min_lr = updater, lr, min_lr
        self.total_steps, self.max_time, self.steps = total_steps, max_time, steps_done
        self.start = time.perf_counter() if start is None else start
        self.group = group
        self.expired = False
        self.stopped_at: float | None = None   # seconds from `start` when the budget ran out
        self.longest_step = 0.0                # the longest time between two calls
        self._last: float | None = None

    def progress(self, elapsed: float) -> float:
        """How far the run is, from 0 to 1, `elapsed` seconds after `start`."""
        if self.max_time:
            return min(1.0, elapsed / self.max_time)
        return min(1.0, self.steps / self.total_steps) if self.total_steps else 0.0

    def __call__(self) -> bool:
        now = time.perf_counter()
        if self._last is not None:
            self.longest_step = max(self.longest_step, now - self._last)
        self._last = now
        if self.expired:
            return False
        elapsed = self.group.shared(now - self.start) if self.max_time else now - self.start
        if self.max_time and elapsed >= self.max_time:
            self.expired, self.stopped_at = True, elapsed
            return False
        if self.min_lr is not None:
            cosine = 0.5 * (1 + math.cos(math.pi * self.progress(elapsed)))
            set_lr(self.updater, self.min_lr + (self.lr - self.min_lr) * cosine)
        self.steps += 1
        return True


@dataclass
class EpochResult:
    """What one epoch measured (1-based epoch number)."""
    epoch: int
    ppl: float
    speed: float
    val_ppl: float | None = None


def train_ch8(net: RNNModelScratch, train_iter: Iterable, vocab: Vocab, lr: float,
              num_epochs: int, device: torch.device | str, use_random_iter: bool = False
              ) -> list[EpochResult]:
    """§8.5: The book's `train_ch8`: the book's SGD on the book's forward; prints a prediction
    of "time traveller" every 10 epochs, then the perplexity and speed and the predictions of
    "time traveller" and "traveller". Returns each epoch's result. `fit` is this loop with the
    choices a real run needs."""
    return fit(net, train_iter, vocab, lr, num_epochs, device, use_random_iter)


def fit(net: RNNModelScratch, train_iter: Iterable, vocab: Vocab, lr: float, num_epochs: int,
        device: torch.device | str, use_random_iter: bool = False, *,
        updater=None, start_epoch: int = 0, val_corpus: Sequence[int] | None = None,
        batch_size: int = 32, num_steps: int = 35,
        on_epoch: Callable[[EpochResult], None] | None = None,
        log: Callable[[str], None] = print, forward: Callable | None = None,
        group: Group = SINGLE, schedule: Schedule | None = None,
        prefixes: Sequence[str] = ("time traveller", "traveller")) -> list[EpochResult]:
    """`train_ch8`'s loop with what train.py needs around it: resume (`start_epoch`, and the
    `updater` with its state; default the book's SGD), validation on `val_corpus` after each
    epoch (`batch_size` streams of `num_steps`), a per-epoch callback, and the kernel:
    `forward` None runs the book's forward and autograd (bit for bit), and
    `fast_cells.fast_forward(net)` the same math through the fast kernels (the same gradients
    up to float rounding; tokens/sec in bench/README.md). What the book prints goes to `log`:
    predictions of `prefixes` (the book's by default), made with dropout off. A `schedule`
    sets the learning rate before each minibatch and may end the run at a minibatch boundary
    (its time budget). Under torchrun, `group` (see `distributed`) is this process's place in
    the run.

    Raises NonFiniteLossError when an epoch's loss is NaN or infinite.
    """
    loss = nn.CrossEntropyLoss()
    updater = make_updater(net, "sgd", lr) if updater is None else updater

    def predict(prefix):
        with evaluating(net):
            return predict_ch8(prefix, 50, net, vocab, device)

    history = []
    for epoch in range(start_epoch, num_epochs):
        ppl, speed = train_epoch_ch8(net, train_iter, loss, updater, device, use_random_iter,
                                     forward, group, schedule)
        if not speed:  # the budget ran out before this epoch's first minibatch
            break
        if not math.isfinite(ppl):
            raise NonFiniteLossError(f"the loss became NaN or infinite in epoch {epoch + 1}; "
                                     "try a smaller learning rate")
        val_ppl = (evaluate_perplexity(net, val_corpus, batch_size, num_steps, device, group)
                   if val_corpus else None)
        result = EpochResult(epoch + 1, ppl, speed, val_ppl)
        history.append(result)
        if (epoch + 1) % 10 == 0:
            log(predict(prefixes[0]))
        if on_epoch is not None:
            on_epoch(result)
        if schedule is not None and schedule.expired:
            break
    if history:
        ppl, speed = history[-1].ppl, history[-1].speed
        log(f"perplexity {ppl:.1f}, {speed:.1f} tokens/sec on {str(device)}")
    for prefix in prefixes:
        log(predict(prefix))
    return history
