"""The pieces of data-parallel training that need no launcher: the user shards, and the
gradient sum across two real gloo processes (dense and sparse gradients)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from recall.trainer.distributed import Ranks, rank_seed, shard_owners, sum_gradients
from tests.live import free_port


def test_shards_are_contiguous_user_ranges_with_about_equal_examples() -> None:
    rng = np.random.default_rng(0)
    per_user = rng.integers(0, 300, 1000)
    users = np.repeat(np.arange(1000), per_user)
    for world in (1, 2, 3, 8):
        owners = shard_owners(users, 1000, world)
        assert (np.diff(owners) >= 0).all()  # contiguous: a user's examples on one rank
        assert set(owners.tolist()) == set(range(world))
        examples = np.bincount(owners[users], minlength=world)
        assert examples.max() - examples.min() <= 2 * per_user.max()
    assert (shard_owners(users, 1000, 1) == 0).all()


def test_rank_zero_keeps_the_seed_and_other_ranks_get_their_own() -> None:
    seeds = [rank_seed(7, Ranks(rank=r, world=4)) for r in range(4)]
    assert seeds[0] == 7
    assert len(set(seeds)) == 4


def _rank_gradients(rank: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """What rank ``rank`` contributes: a dense (3, 2) gradient, and sparse rows of a
    (10, 2) table (rank 1 repeats a row and shares one with rank 0; rank 2 has none)."""
    dense = torch.arange(6, dtype=torch.float32).view(3, 2) * (rank + 1)
    rows = [[1, 4], [4, 7, 7], []][rank]
    values = torch.ones(len(rows), 2) * (rank + 1)
    return dense, values, rows


def _sum_in_rank(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    dense_param, table = nn.Parameter(torch.zeros(3, 2)), nn.Parameter(torch.zeros(10, 2))
    dense, values, rows = _rank_gradients(rank)
    dense_param.grad = dense
    if rows:
        table.grad = torch.sparse_coo_tensor(torch.tensor([rows]), values, (10, 2))
    loss = sum_gradients([dense_param], [table], torch.tensor([float(rank)]))
    torch.save(
        {"dense": dense_param.grad, "table": table.grad.to_dense(), "loss": loss},
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_gradients_are_summed_over_real_gloo_ranks(tmp_path: Path) -> None:
    world = 3
    mp.spawn(_sum_in_rank, args=(world, free_port(), str(tmp_path)), nprocs=world)
    expected_dense = sum(_rank_gradients(r)[0] for r in range(world))
    expected_table = torch.zeros(10, 2)
    for r in range(world):
        _, values, rows = _rank_gradients(r)
        for row, value in zip(rows, values, strict=True):
            expected_table[row] += value
    for r in range(world):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        torch.testing.assert_close(got["dense"], expected_dense)
        torch.testing.assert_close(got["table"], expected_table)
        torch.testing.assert_close(got["loss"], torch.tensor([0.0 + 1.0 + 2.0]))
