"""One training run across processes, GPUs and nodes, launched by `torchrun`.

    torchrun --nproc_per_node 2 train.py ...                  # 2 processes on this machine
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 train.py ...

Every process (rank) holds the whole model and runs the single-process loop on a fixed slice
of each global minibatch's rows; after each backward the gradients are averaged across ranks,
so every rank applies the update the single process would (the loss is the global mean, the
book's clipping sees the global norm, the SGD/Adam step is the same), up to the order in which
floats are summed. Why not `DistributedDataParallel`: it overlaps its bucketed all-reduce with
autograd's backward, but the fast kernels produce every weight gradient at once at the end of
a hand-written backward, so one all-reduce of one flat buffer does the same work plainly.

Started without torchrun (no WORLD_SIZE > 1 in the environment), `start` returns `SINGLE`,
whose methods do nothing: the single-process run is exactly what it was.
"""
from __future__ import annotations

import atexit
import datetime
import os
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .data import DataError

# How long a rank waits in a collective for the others before giving up. A rank that dies
# closes its connections and the others fail at once; this bounds a rank that hangs.
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("RNN_DIST_TIMEOUT", "600")))


class DistributedError(RuntimeError):
    """Another process of the run failed, or a collective timed out; this rank stops too."""


@dataclass(frozen=True)
class Group:
    """This process's place in the run: `rank` of `world_size`, `local_rank` on its node."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, writes checkpoints and plots, and pushes to the Hub."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, X: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's fixed slice of a global minibatch's rows (along `dim`): rows
        rank*b .. (rank+1)*b - 1 of b = B / world_size. For sequential partitioning the same
        rows (and so the same carried state) stay with a rank for the whole epoch."""
        if not self.distributed:
            return X
        b = X.shape[dim] // self.world_size
        return X.narrow(dim, self.rank * b, b)

    def rows(self, num_rows: int) -> range:
        """This rank's share of `num_rows` independent streams (validation): contiguous,
        as even as possible, possibly empty."""
        base, extra = divmod(num_rows, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def average_gradients(self, net: torch.nn.Module) -> None:
        """Replace every rank's gradients by their mean over the ranks: the gradient of the
        global minibatch's mean loss (each rank's loss is the mean over equally many tokens)."""
        if not self.distributed:
            return
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._all_reduce(flat, dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def sum(self, *values: float) -> tuple[float, ...]:
        """The sums over ranks of a few numbers (token counts, loss sums), in float64."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        self._all_reduce(t, dist.ReduceOp.SUM)
        return tuple(t.tolist())

    def shared(self, value: float) -> float:
        """Rank 0's `value` on every rank: one clock for decisions every rank must take alike
        (where a time budget ends, the learning rate that depends on the time)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        self._call(dist.broadcast, t, 0)
        return t.item()

    def shared_text(self, text: str) -> str:
        """Rank 0's `text` on every rank (e.g. the fast kernel it chose, so all compute alike)."""
        if not self.distributed:
            return text
        box = [text]
        self._call(dist.broadcast_object_list, box, 0)
        return str(box[0])

    def max(self, value: float) -> float:
        """The largest of one number over ranks (e.g. the slowest rank's epoch time)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        self._all_reduce(t, dist.ReduceOp.MAX)
        return t.item()

    def agree(self, error: str | None) -> bool:
        """Every rank calls this once before training: with its refusal (an error line) or
        None. True when every rank may train; otherwise all stop, and rank 0 prints the first
        refusal (naming the rank when it is another's). Without torchrun: prints `error`."""
        global _agreed
        if not self.distributed or _agreed:
            if error is not None:
                print(error if self.is_main else f"[rank {self.rank}] {error}", file=sys.stderr)
            return error is None
        _agreed = True
        errors = [None] * self.world_size
        self._call(dist.all_gather_object, errors, error)
        first = next(((r, m) for r, m in enumerate(errors) if m is not None), None)
        if first is not None:
            rank, message = first
            say(self, message if rank == 0 else f"{message} (on rank {rank})", sys.stderr)
        return first is None

    def hold_signals(self) -> None:
        """Under torchrun, ignore SIGINT and SIGTERM from now on except where training installs
        its own handlers (training.StopSignals): torchrun passes a Ctrl-C on to every process
        (a second one after the terminal's) and SIGTERMs them all when one fails; the first
        signal stops training, and the rest must not cut rank 0's last save short."""
        if self.distributed:
            _ignore_stop_signals()

    def broadcast_parameters(self, params: Sequence[torch.Tensor]) -> None:
        """Make every rank start from rank 0's weights (they are equal by the shared seed or
        the shared checkpoint; this makes it certain)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for p in params:
                self._call(dist.broadcast, p, 0)

    def close(self) -> None:
        """Leave the process group (not after a failed collective: it may wait on the dead)."""
        if self.distributed and dist.is_initialized() and not _failed:
            dist.destroy_process_group()

    def _all_reduce(self, t: torch.Tensor, op) -> None:
        self._call(dist.all_reduce, t, op)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except (RuntimeError, dist.DistError) as e:  # gloo/nccl: a peer's socket closed, timeout
            global _failed
            _failed = True
            _ignore_stop_signals()  # torchrun's SIGTERM follows; rank 0 is about to save
            raise DistributedError(f"another process of this run stopped or timed out "
                                   f"({_first_line(e)})") from None


SINGLE = Group()
_failed = False  # a collective failed in this process
_agreed = False  # the ranks agreed to train (Group.agree)


def _first_line(e: BaseException) -> str:
    """The gist of a backend's error: its first sentence, without the source location."""
    text = re.sub(r"^\[[^\]]*\] ", "", str(e).strip()).split("\n")[0].split(". ")[0]
    return text[:200] or type(e).__name__


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start() -> Group:
    """Join the run torchrun started, or return `SINGLE` without torchrun. The process group
    sends CPU tensors through gloo and, on a CUDA machine, CUDA tensors through nccl; it is
    closed at exit."""
    if not launched_by_torchrun():
        return SINGLE
    env = {k: int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                           "LOCAL_WORLD_SIZE")}
    group = Group(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"])
    # torch.distributed.nn binds the default group into its functions' default arguments when
    # first imported (torch.optim's Adam imports it through torch._dynamo). Imported after the
    # group exists, it keeps the group and its gloo threads alive past destroy_process_group,
    # and a gloo thread that frees a collective's tensor while the interpreter shuts down
    # aborts the process ("terminate called without an active exception"). Imported first,
    # it binds nothing.
    import torch.distributed.nn  # noqa: F401
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(group.close)
    return group


def _ignore_stop_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def pick_device(group: Group, device: str | None) -> torch.device:
    """This process's device for `--device` ("cpu", "cuda", or None: cuda when available):
    under torchrun on CUDA, GPU number `LOCAL_RANK` (one GPU per process)."""
    use_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not group.distributed:
        return torch.device("cuda")
    if torch.cuda.device_count() < group.local_world_size:
        raise DataError(f"--nproc_per_node {group.local_world_size} needs one GPU per process "
                        f"but this machine has {torch.cuda.device_count()}; start fewer "
                        "processes or pass --device cpu")
    torch.cuda.set_device(group.local_rank)
    return torch.device("cuda", group.local_rank)


def resume_command(group: Group, out) -> str:
    """How to continue this run: the same launcher, `train.py --resume OUT`."""
    import shlex
    script = f"train.py --resume {shlex.quote(str(out))}"
    if not group.distributed:
        return f"python {script}"
    if group.world_size == group.local_world_size:
        return f"torchrun --nproc_per_node {group.world_size} {script}"
    return f"the same torchrun command on every node with {script}"


def say(group: Group, message: str, file=None) -> None:
    """Print on rank 0 only."""
    if group.is_main:
        print(message, file=file or sys.stdout)
