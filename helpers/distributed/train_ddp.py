"""Data-parallel training of a digit classifier with DistributedDataParallel.

Chapter 09. Two processes on one machine:

    torchrun --standalone --nproc-per-node=2 -m helpers.distributed.train_ddp \\
        --data digits.pt --out-dir runs/ddp

Every process (rank) holds a full copy of the model and trains on its own share of each
epoch's examples (DistributedSampler). In backward, DDP averages the gradients across
the processes, so every copy takes the same optimizer step and the copies stay equal.
Rank 0 alone evaluates, prints and writes files. Each epoch ends with a checkpoint; a
run whose --out-dir holds one resumes from it, which is what lets
`torchrun --max-restarts` recover from a crashed process.

--data is a file written by torch.save: a dict of the tensors x_train (N, 784),
y_train (N,), x_val and y_val, preprocessed once before the launch rather than in
every process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from helpers.distributed import rank_print, setup_distributed


def build_parser(fault_demo: bool = True) -> argparse.ArgumentParser:
    """The command-line options; fault_demo=False leaves out the crash options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="tensors (torch.save)")
    parser.add_argument("--out-dir", type=Path, required=True, help="checkpoints, logs")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None)
    parser.add_argument(
        "--micro-batches", type=int, default=1, help="gradient accumulation pieces"
    )
    if fault_demo:  # make one rank fail once, in this epoch, to test a restart
        parser.add_argument("--crash-at-epoch", type=int, default=None)
        parser.add_argument("--crash-rank", type=int, default=1)
    return parser


def make_model() -> nn.Module:
    """A small multilayer perceptron: 784 pixels -> 128 hidden units -> 10 digits."""
    return nn.Sequential(nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 10))


def make_loader(
    dataset: TensorDataset, batch_size: int, seed: int, **sampler_kwargs
) -> DataLoader:
    """A loader over this rank's share of the data, reshuffled when set_epoch is called.

    Inside a torchrun job the sampler takes the rank and world size from the process
    group; pass num_replicas= and rank= to build any rank's loader outside one.
    """
    if not isinstance(dataset, TensorDataset):
        raise TypeError(
            f"dataset must be a TensorDataset, got {type(dataset).__name__}"
        )
    for name, value, minimum in (("batch_size", batch_size, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed, **sampler_kwargs)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def load_data(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[TensorDataset, torch.Tensor, torch.Tensor]:
    """The training set as a TensorDataset, and the validation tensors."""
    data = torch.load(path, weights_only=True)
    train_set = TensorDataset(data["x_train"].to(dtype), data["y_train"])
    return train_set, data["x_val"].to(dtype), data["y_val"]


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    crash_after_steps: int | None = None,
) -> torch.Tensor:
    """One pass over this rank's batches; returns (sum of losses, example count)."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    # The sums stay on the device: a .item() per step would make the CPU wait for the
    # GPU at every step (chapter 8).
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for step, (inputs, targets) in enumerate(loader):
        if crash_after_steps is not None and step == crash_after_steps:
            raise RuntimeError("simulated failure: this worker dies mid-epoch")
        inputs, targets = inputs.to(device), targets.to(device)
        loss = criterion(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()  # DDP all-reduces (averages) the gradients during backward
        optimizer.step()
        totals[0] += loss.detach() * len(targets)
        totals[1] += len(targets)
    return totals


def train_one_epoch_accumulating(
    model: DDP,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    micro_batches: int,
) -> torch.Tensor:
    """train_one_epoch, with each batch split into micro_batches pieces (chapter 8).

    The pieces' gradients add up before the one optimizer step. Each piece's loss is
    weighted by its share of the batch, so the sum is the whole batch's mean loss even
    when the pieces differ in size; and DDP all-reduces only in the last piece's
    backward: no_sync() skips the all-reduce for the others.
    """
    criterion = nn.CrossEntropyLoss()
    model.train()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        x_pieces = inputs.tensor_split(micro_batches)
        y_pieces = targets.tensor_split(micro_batches)
        # a batch shorter than micro_batches leaves some pieces empty: skip them
        pieces = [(x, y) for x, y in zip(x_pieces, y_pieces, strict=True) if len(y)]
        optimizer.zero_grad()
        for i, (x, y) in enumerate(pieces):
            last = i == len(pieces) - 1
            with contextlib.nullcontext() if last else model.no_sync():
                loss = criterion(model(x), y)
                (loss * (len(y) / len(targets))).backward()
            totals[0] += loss.detach() * len(y)
        totals[1] += len(targets)
        optimizer.step()
    return totals


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of model on (x, y)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("x and y must be torch.Tensors")
    if y.ndim != 1 or len(y) == 0 or len(x) != len(y):
        raise ValueError(
            f"y must be 1-D class indices, one per row of x: x has shape "
            f"{tuple(x.shape)}, y has shape {tuple(y.shape)}"
        )
    if y.dtype != torch.long:
        raise ValueError(f"y must hold int64 class indices, got dtype {y.dtype}")
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(dim=1) == y).float().mean().item()


def save_atomically(obj: object, path: Path) -> None:
    """Write a temporary file, then rename: a crash never leaves half a checkpoint."""
    if not isinstance(path, Path):
        raise TypeError(f"path must be a pathlib.Path, got {type(path).__name__}")
    if not path.parent.is_dir():
        raise ValueError(f"path must be in an existing folder, got {path}")
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@record  # under torchrun: a failed worker's traceback goes into the agent's report
def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.micro_batches <= args.batch_size:
        parser.error(
            f"--micro-batches must be in [1, --batch-size], got {args.micro_batches}"
        )
    ctx = setup_distributed(args.backend)
    rank, device = ctx.rank, ctx.device
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if rank == 0:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    train_set, x_val, y_val = load_data(args.data, dtype)
    loader = make_loader(train_set, args.batch_size, args.seed)

    torch.manual_seed(args.seed)
    model = make_model().to(device, dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    checkpoint_path = args.out_dir / "checkpoint.pt"
    history: list[dict] = []
    start_epoch = 1
    # Rank 0 alone reads the checkpoint and sends it to the others, so that all resume
    # alike: on a file system several machines share, a rank on another node could see
    # an older version of a file just rewritten, or none, and resume elsewhere.
    shared: list[dict | None] = [None]
    if rank == 0 and checkpoint_path.exists():
        shared[0] = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    dist.broadcast_object_list(shared, src=0)
    if shared[0] is not None:
        state = shared[0]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_epoch = state["history"], state["epoch"] + 1
    # DDP copies rank 0's parameters to every rank here, then syncs gradients.
    model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    rank_print(
        rank,
        f"attempt {attempt}: {ctx.backend} on {device}, {len(loader.sampler)} examples "
        f"in {len(loader)} batches per epoch, starting at epoch {start_epoch}",
    )

    for epoch in range(start_epoch, args.epochs + 1):
        loader.sampler.set_epoch(epoch)  # a different shuffle every epoch
        crash = (
            epoch == args.crash_at_epoch and rank == args.crash_rank and attempt == 0
        )
        start = time.perf_counter()
        if args.micro_batches > 1:
            totals = train_one_epoch_accumulating(
                model, loader, optimizer, device, args.micro_batches
            )
        else:
            totals = train_one_epoch(
                model, loader, optimizer, device, crash_after_steps=5 if crash else None
            )
        dist.all_reduce(totals)  # loss sums and counts of all ranks
        train_loss = (totals[0] / totals[1]).item()
        if rank == 0:  # one process evaluates, logs and checkpoints
            val_loss, val_acc = evaluate(
                model.module, x_val.to(device), y_val.to(device)
            )
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_accuracy": val_acc,
                    "seconds": time.perf_counter() - start,
                    "attempt": attempt,
                }
            )
            rank_print(
                rank,
                f"epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                f"val accuracy {val_acc:.4f}",
            )
            state = {
                "epoch": epoch,
                "model": model.module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
            }
            # best.pt before the checkpoint, so a resumed run never misses a best.
            # Strictly better only: on a tie the earlier epoch stays the best.
            if val_acc > max((h["val_accuracy"] for h in history[:-1]), default=-1.0):
                save_atomically(model.module.state_dict(), args.out_dir / "best.pt")
            save_atomically(state, checkpoint_path)

    if rank == 0:
        save_atomically(model.module.state_dict(), args.out_dir / "model.pt")
        summary = {
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "device_type": device.type,
            "batch_size_per_process": args.batch_size,
            "steps_per_epoch": len(loader),
            "history": history,
        }
        (args.out_dir / "history.json").write_text(json.dumps(summary, indent=1))
    # Leave together: a rank that tears its connections down while rank 0 still
    # writes can make gloo abort the process on exit.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
