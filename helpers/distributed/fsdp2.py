"""The training of train_ddp.py with the model sharded by FSDP2 (``fully_shard``).

Chapter 09. Two processes on one machine:

    torchrun --standalone --nproc-per-node=2 -m helpers.distributed.fsdp2 \\
        --data digits.pt --out-dir runs/fsdp2

Each process stores only its shard (1/world_size) of every parameter, gradient and
optimizer state. A layer's full parameters exist only while it runs: they are gathered
with all_gather just before, and freed after. Gradients are combined with
reduce_scatter, so each process receives the averaged gradient of its own shard only.
Same data, same order, same steps as train_ddp.py; the model is created on the meta
device and filled from rank 0's weights, so no other rank ever holds it whole. The
trained model is saved twice: as a distributed checkpoint, each rank writing its own
shards (``dcp/``), and gathered whole by rank 0 (``model.pt``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.elastic.multiprocessing.errors import record
from torch.distributed.fsdp import fully_shard

from helpers.distributed import rank_print, setup_distributed
from helpers.distributed.train_ddp import (
    build_parser,
    load_data,
    make_loader,
    make_model,
    train_one_epoch,
)


@record  # under torchrun: a failed worker's traceback goes into the agent's report
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser(fault_demo=False).parse_args(argv)
    ctx = setup_distributed(args.backend)
    rank, device, dtype = ctx.rank, ctx.device, getattr(torch, args.dtype)
    train_set, _, _ = load_data(args.data, dtype)
    loader = make_loader(train_set, args.batch_size, args.seed)

    # The model is built on the "meta" device: shapes, no memory. Only rank 0 ever
    # holds it whole, below, and only in CPU memory.
    with torch.device("meta"):
        model = make_model().to(dtype)
    # Name the device the shards live on. Without a mesh, fully_shard builds one on
    # the machine's accelerator whenever one exists, even when this job runs on the
    # CPU with gloo, and its gathers then fail.
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            # one unit per layer: gathered just before it runs
            fully_shard(layer, mesh=mesh)
    # the root module takes whatever is left (nothing, here)
    fully_shard(model, mesh=mesh)
    model.to_empty(device=device)  # memory for this rank's shards only, uninitialised
    # The weights: rank 0 holds them whole (here built from the seed, as train_ddp.py
    # does; usually read from a checkpoint) and sends each rank its shards.
    full = {}
    if rank == 0:
        torch.manual_seed(args.seed)
        full = make_model().to(dtype).state_dict()
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=options)
    node = os.environ.get("GROUP_RANK", "?")
    rank_print(
        rank, f"node {node}, local rank {ctx.local_rank}, {ctx.backend} on {device}"
    )
    for name, param in model.named_parameters():  # DTensors: shape is the full one
        local = tuple(param.to_local().shape)
        rank_print(
            rank, f"{name}: full shape {tuple(param.shape)}, stored here {local}"
        )
    # An optimizer made after sharding keeps its state (momentum) sharded too.
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)

    history = []
    for epoch in range(1, args.epochs + 1):
        loader.sampler.set_epoch(epoch)
        totals = train_one_epoch(model, loader, optimizer, device)
        dist.all_reduce(totals)
        history.append({"epoch": epoch, "train_loss": (totals[0] / totals[1]).item()})
        if rank == 0:
            rank_print(
                rank, f"epoch {epoch}: train loss {history[-1]['train_loss']:.4f}"
            )
    # What this rank keeps between steps: its shards of the weights, of their
    # gradients and of SGD's momentum, all DTensors, against the whole model's.
    params = list(model.parameters())
    kept = {
        "weights": params,
        "gradients": [p.grad for p in params],
        "momentum": [optimizer.state[p]["momentum_buffer"] for p in params],
    }
    whole = sum(p.numel() * p.element_size() for p in params)  # full shapes
    stored = ", ".join(
        f"{kind} {sum(t.to_local().nbytes for t in tensors):,}"
        for kind, tensors in kept.items()
    )
    rank_print(rank, f"bytes kept here: {stored}; the whole model's weights {whole:,}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    # A distributed checkpoint (DCP): each rank writes its own shards (DTensors),
    # nothing is gathered; a metadata file records which piece of each tensor is
    # in which file.
    sharded = {"model": get_model_state_dict(model)}
    dcp.save(sharded, checkpoint_id=args.out_dir / "dcp")
    # Or gather the shards into whole tensors, copied to the CPU of rank 0 only
    # (the other ranks get an empty dict). Every rank must call it: it all-gathers.
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full_state = get_model_state_dict(model, options=options)
    if rank == 0:
        torch.save(full_state, args.out_dir / "model.pt")
        (args.out_dir / "history.json").write_text(json.dumps({"history": history}))
    # Leave together: a rank that tears its connections down while rank 0 still
    # writes can make gloo abort the process on exit.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
