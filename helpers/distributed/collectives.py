"""Collective operations, run by every process of a job; each rank prints what it holds.

Chapter 09. Start two processes on one machine with

    torchrun --standalone --nproc-per-node=2 -m helpers.distributed.collectives

A collective is called by every rank of the group, with tensors of the same shape and
dtype; a rank that never makes the call leaves the others waiting.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from helpers.distributed import rank_print, setup_distributed


def main() -> None:
    ctx = setup_distributed()  # nccl + one GPU per process, or gloo on the CPU
    rank, world_size, device = ctx.rank, ctx.world_size, ctx.device
    rank_print(
        rank,
        f"of world size {world_size}, local rank {ctx.local_rank} on node "
        f"{os.environ.get('GROUP_RANK', '?')} ({socket.gethostname()}), "
        f"backend {ctx.backend}, device {device}",
    )

    # all_reduce: every rank contributes a tensor; afterwards every rank holds the sum.
    x = torch.tensor([float(rank + 1)], device=device)
    before = x.item()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)  # in place
    rank_print(rank, f"all_reduce(SUM):  had {before}, now holds {x.item()}")

    # Averaging: all_reduce sums, then divide by world size. DDP computes this
    # average of the gradients, but divides each by world size before the sum,
    # while copying it into its bucket (one pass over the gradients saved).
    grad = torch.tensor([1.0, -2.0], device=device) * (rank + 1)
    local = grad.tolist()
    dist.all_reduce(grad)  # SUM is the default op
    grad /= world_size
    rank_print(rank, f"average:          had {local}, now holds {grad.tolist()}")

    # broadcast: rank 0's tensor overwrites the tensor of every other rank.
    weights = (
        torch.arange(4.0, device=device) if rank == 0 else torch.zeros(4, device=device)
    )
    before_list = weights.tolist()
    dist.broadcast(weights, src=0)
    rank_print(
        rank, f"broadcast(src=0): had {before_list}, now holds {weights.tolist()}"
    )

    # all_gather: every rank receives every rank's tensor, in rank order.
    mine = torch.full((2,), 10.0 * rank, device=device)
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    everything = [t.tolist() for t in gathered]
    rank_print(rank, f"all_gather:       had {mine.tolist()}, now holds {everything}")

    # reduce_scatter: sum like all_reduce, but each rank keeps only its slice of the sum.
    # FSDP uses it for gradients, and all_gather for parameters.
    full = torch.arange(2.0 * world_size, device=device) + 100 * rank
    piece = torch.empty(2, device=device)
    dist.reduce_scatter_tensor(piece, full)
    rank_print(
        rank, f"reduce_scatter:   had {full.tolist()}, now holds {piece.tolist()}"
    )

    dist.destroy_process_group()  # release sockets / communicators before exiting


if __name__ == "__main__":
    main()
