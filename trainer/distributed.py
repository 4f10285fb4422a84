"""Data-parallel training across processes (``torchrun``): who this process is, which users
it trains on, and the gradient sum that keeps every rank's model identical.

Every rank loads the whole data set and prepares the same split and examples (all of it
is deterministic), then computes only the examples of its own users: the users are cut
into ``world`` contiguous row ranges holding about equal numbers of examples, so a user's
prefixes stay on one rank. Each step's global batch is the same slice of one shared
permutation on every rank, as in a single process; a rank computes the part of it that
it owns, with its loss scaled by its share of the batch, and :func:`sum_gradients` adds
the ranks' gradients. The sum is the gradient of the whole batch's mean loss, so every
rank applies the same update and the models never drift apart.

Why no ``DistributedDataParallel`` wrapper: the item tables of the sampled softmax emit
sparse gradients for SparseAdam. NCCL cannot all-reduce sparse tensors, and densifying
them would send every row of a 1M-item table each step. Instead the dense gradients
travel in one flat all-reduce and each sparse gradient is all-gathered as (rows, values)
and summed by ``coalesce``: the same sum, sent in proportion to the rows touched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

logger = logging.getLogger(__name__)


class PeerLost(RuntimeError):
    """A collective failed: another rank died, or did not answer within the timeout."""


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a failed collective (gloo and NCCL raise plain RuntimeErrors) into PeerLost."""
    try:
        yield
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeerLost(f"{what} failed: {first}") from e


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world``, ``local_rank`` on its host."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes checkpoints and the bundle."""
        return self.rank == 0


SINGLE = Ranks()


def from_environment() -> Ranks:
    """The ranks ``torchrun`` describes in RANK / WORLD_SIZE / LOCAL_RANK; one process else."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    try:
        return Ranks(
            rank=int(os.environ["RANK"]),
            world=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except (KeyError, ValueError) as e:
        raise ValueError(f"torchrun's RANK / WORLD_SIZE / LOCAL_RANK are not usable: {e}") from None


def device_for(kind: str, ranks: Ranks) -> torch.device:
    """The torch device of this rank: the CPU, or GPU ``LOCAL_RANK`` (one GPU per rank)."""
    if kind != "cuda":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            f"--device cuda was asked for, but torch {torch.__version__} sees no CUDA device"
            + ("" if torch.version.cuda else " (a CPU build of torch)")
        )
    if ranks.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"local rank {ranks.local_rank} needs GPU {ranks.local_rank}, but this host has "
            f"{torch.cuda.device_count()}: run at most that many processes per node"
        )
    return torch.device("cuda", ranks.local_rank)


def start(ranks: Ranks, device: torch.device, timeout_s: float) -> None:
    """Join the process group (gloo on the CPU, NCCL on GPUs). A collective that waits
    longer than ``timeout_s`` (a rank died, a host vanished) raises instead of hanging."""
    if not ranks.distributed:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    logger.info(
        "rank %d of %d (pid %d): %s on %s", ranks.rank, ranks.world, os.getpid(), backend, device
    )


def stop(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard_owners(example_users: np.ndarray, n_users: int, world: int) -> np.ndarray:
    """The rank that trains each user, (n_users,) int64: ``world`` contiguous ranges of
    user rows, cut where the cumulative example count (``example_users`` (n,) user rows)
    crosses each ``k / world`` of the total, so shards differ by at most one user's
    examples."""
    counts = np.bincount(example_users, minlength=n_users).astype(np.int64)
    before = np.cumsum(counts) - counts  # examples of the users before each user
    total = max(int(counts.sum()), 1)
    owners: np.ndarray = np.minimum(before * world // total, world - 1).astype(np.int64)
    return owners


def rank_seed(seed: int, ranks: Ranks) -> int:
    """The seed of a rank's own random stream (dropout): rank 0 keeps the run's seed, so
    a one-process run is the run it always was; other ranks get independent streams."""
    if ranks.rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, ranks.rank]).generate_state(1, np.uint64)[0] >> 1)


def all_sum(values: Tensor) -> Tensor:
    """``values`` summed over the ranks (in place; returned for chaining)."""
    with _collective("all-reduce"):
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def sum_gradients(dense: list[nn.Parameter], sparse: list[nn.Parameter], extra: Tensor) -> Tensor:
    """Replace every parameter's gradient by its sum over the ranks and return ``extra``
    (a small 1-D float tensor, e.g. the loss) summed too, carried in the dense all-reduce.

    ``sparse`` are the parameters with sparse gradients (the same list on every rank). A
    missing gradient counts as zero: a rank without examples in a step still takes part.
    """
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in dense]
        + [extra.to(dtype=dense[0].dtype, device=dense[0].device)]
    )
    all_sum(flat)
    offset = 0
    for p in dense:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    for p in sparse:
        grad = p.grad if p.grad is not None else _empty_sparse(p)
        p.grad = _gather_sparse(grad)
    return flat[offset:]


def _empty_sparse(p: nn.Parameter) -> Tensor:
    rows = torch.zeros((1, 0), dtype=torch.int64, device=p.device)
    values = torch.zeros((0, *p.shape[1:]), dtype=p.dtype, device=p.device)
    return torch.sparse_coo_tensor(rows, values, p.shape, check_invariants=False)


def _gather_sparse(grad: Tensor) -> Tensor:
    """The sum over ranks of a sparse (rows, dim) gradient: every rank's coalesced rows
    gathered (padded to the longest) and concatenated in rank order, uncoalesced."""
    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    world = dist.get_world_size()
    size = torch.tensor([len(rows)], device=rows.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    with _collective("all-gather of sparse gradient sizes"):
        dist.all_gather(sizes, size)
    longest = max(int(s) for s in sizes)
    if longest == 0:  # no rank touched a row (the same on every rank): nothing to send
        return grad
    padded_rows = torch.zeros(longest, dtype=rows.dtype, device=rows.device)
    padded_rows[: len(rows)] = rows
    padded_values = torch.zeros(
        (longest, *values.shape[1:]), dtype=values.dtype, device=values.device
    )
    padded_values[: len(rows)] = values
    all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
    all_values = [torch.empty_like(padded_values) for _ in range(world)]
    with _collective("all-gather of sparse gradients"):
        dist.all_gather(all_rows, padded_rows)
        dist.all_gather(all_values, padded_values)
    kept = [int(s) for s in sizes]
    rows = torch.cat([r[:k] for r, k in zip(all_rows, kept, strict=True)])
    values = torch.cat([v[:k] for v, k in zip(all_values, kept, strict=True)])
    # rows come from coalesced gradients: in range by construction, no check needed
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, grad.shape, check_invariants=False)


def gather_states(state: Tensor, device: torch.device) -> list[Tensor]:
    """Every rank's ``state`` (a CPU uint8 tensor of the same length on every rank, e.g.
    an RNG state), in rank order, as CPU tensors."""
    if not dist.is_initialized():
        return [state]
    moved = state.to(device)
    out = [torch.empty_like(moved) for _ in range(dist.get_world_size())]
    with _collective("all-gather of RNG states"):
        dist.all_gather(out, moved)
    return [t.cpu() for t in out]
