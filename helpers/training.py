"""The training and evaluation steps that chapter 02 writes out by hand, as functions.

Chapter 02 builds the loop line by line first; later chapters call these instead of
repeating it. Nothing here hides a step the chapter has not shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "EvalResult",
    "History",
    "evaluate",
    "fit",
    "logits_to_labels",
    "predict",
    "train_one_epoch",
]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EvalResult:
    """Mean loss and accuracy of a model over one pass of a loader."""

    loss: float
    accuracy: float


@dataclass
class History:
    """Per-epoch numbers of a training run, ready for ``plotting.plot_losses``.

    ``val_*`` are measured on whatever held-out loader ``fit`` was given; ``best_epoch``
    (1-based) is the epoch with the highest held-out accuracy.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = 0


def _check_common(model: nn.Module, device: torch.device) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, got {type(device).__name__}")


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """Class predictions from raw model outputs.

    One output per sample (shape ``(B,)`` or ``(B, 1)``) is read as a binary logit:
    positive means class 1. Several outputs are read as class scores: the largest wins.
    """
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        return (logits.reshape(-1) > 0).long()
    if logits.ndim == 2:
        return logits.argmax(dim=1)
    raise ValueError(f"logits must have shape (B,), (B, 1) or (B, C), got {tuple(logits.shape)}")


def _match_target(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # A single-logit model returns (B, 1); BCE-style losses want it shaped like the (B,) target.
    if outputs.ndim == 2 and outputs.shape[1] == 1 and targets.ndim == 1:
        return outputs.squeeze(1)
    return outputs


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    accumulation_steps: int = 1,
) -> float:
    """One pass over ``loader`` in training mode; returns the sample-weighted mean loss.

    With ``accumulation_steps=k`` gradients of ``k`` consecutive batches are summed
    (each loss divided by ``k``) before one optimizer step, which matches one step on
    a ``k`` times larger batch. Introduced in chapter 02.
    """
    _check_common(model, device)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int):
        raise TypeError("accumulation_steps must be an int")
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    model.train()
    optimizer.zero_grad()
    total, count, pending = 0.0, 0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = _match_target(model(inputs), targets)
        loss = criterion(outputs, targets)
        (loss / accumulation_steps).backward()
        pending += 1
        if pending == accumulation_steps:
            optimizer.step()
            optimizer.zero_grad()
            pending = 0
        total += loss.item() * len(targets)
        count += len(targets)
    if pending:  # a last, partial group still deserves its update
        optimizer.step()
        optimizer.zero_grad()
    if count == 0:
        raise ValueError("loader yielded no batches")
    return total / count


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[Batch], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels for every sample of ``loader``, on the CPU.

    Runs in ``eval()`` mode without building a graph. Introduced in chapter 02.
    """
    _check_common(model, device)
    model.eval()
    preds, trues = [], []
    for inputs, targets in loader:
        outputs = model(inputs.to(device))
        preds.append(logits_to_labels(outputs).cpu())
        trues.append(targets.long().cpu())
    if not preds:
        raise ValueError("loader yielded no batches")
    return torch.cat(preds), torch.cat(trues)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[Batch], criterion: nn.Module, device: torch.device
) -> EvalResult:
    """Mean loss and accuracy over ``loader`` in ``eval()`` mode under ``no_grad``.

    Introduced in chapter 02.
    """
    _check_common(model, device)
    model.eval()
    total, correct, count = 0.0, 0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = _match_target(model(inputs), targets)
        total += criterion(outputs, targets).item() * len(targets)
        correct += (logits_to_labels(outputs) == targets.long()).sum().item()
        count += len(targets)
    if count == 0:
        raise ValueError("loader yielded no batches")
    return EvalResult(loss=total / count, accuracy=correct / count)


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
) -> History:
    """Train for ``epochs`` epochs, evaluating on ``val_loader`` after each one.

    The loop chapter 02 writes out, with a ``tqdm`` bar over epochs. Chapter 03 adds the
    two options: ``scheduler`` is stepped once per epoch, after that epoch's optimizer
    steps; with ``checkpoint_path`` the model's ``state_dict`` is saved there whenever
    the held-out accuracy improves, so the file ends up holding the best epoch's weights.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise TypeError(f"scheduler must be a torch LRScheduler or None, got {type(scheduler).__name__}")
    history = History()
    for epoch in tqdm(range(1, epochs + 1), desc="epochs", disable=not progress):
        history.lr.append(optimizer.param_groups[0]["lr"])
        history.train_loss.append(train_one_epoch(model, train_loader, criterion, optimizer, device))
        if scheduler is not None:
            scheduler.step()
        result = evaluate(model, val_loader, criterion, device)
        history.val_loss.append(result.loss)
        history.val_accuracy.append(result.accuracy)
        if result.accuracy > max(history.val_accuracy[:-1], default=-1.0):
            history.best_epoch = epoch
            if checkpoint_path is not None:
                torch.save(model.state_dict(), checkpoint_path)
    return history
