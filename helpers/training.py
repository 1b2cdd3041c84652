"""The training and evaluation steps that chapter 02 writes out by hand, as functions.

Chapter 02 builds the loop line by line first; later chapters call these instead of
repeating it. Nothing here hides a step the chapter has not shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from helpers.progress import tqdm

__all__ = [
    "EvalResult",
    "History",
    "Metric",
    "accuracy",
    "as_device",
    "evaluate",
    "fit",
    "logits_to_labels",
    "predict",
    "train_one_epoch",
]

Batch = tuple[torch.Tensor, torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], "float | torch.Tensor"]


def _batch_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``accuracy`` as a 0-dim tensor on the outputs' device (no wait for the device)."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    return (logits_to_labels(outputs) == targets.long()).float().mean()


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose predicted label (``logits_to_labels``) equals the target."""
    return _batch_accuracy(outputs, targets).item()


_METRICS: dict[str, Metric] = {"accuracy": _batch_accuracy}


@dataclass(frozen=True)
class EvalResult:
    """Mean loss and mean metric of a model over one pass of a loader.

    ``metric`` is ``None`` when ``evaluate`` was asked for no metric (e.g. regression,
    where the loss is the measure). ``accuracy`` reads the metric when it is accuracy.
    """

    loss: float
    metric: float | None = None
    metric_name: str | None = None

    @property
    def accuracy(self) -> float:
        if self.metric_name != "accuracy" or self.metric is None:
            raise AttributeError(f"this result holds metric {self.metric_name!r}, not accuracy")
        return self.metric


@dataclass
class History:
    """Per-epoch numbers of a training run, ready for ``plotting.plot_losses``.

    ``val_*`` are measured on the held-out (validation) loader ``fit`` was given.
    ``best_epoch`` (1-based) is the epoch ``fit`` selected: the lowest validation loss
    (``select="loss"``) or the highest validation metric (``select="metric"``).
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = 0
    metric_name: str | None = "accuracy"
    select: str = "metric"

    @property
    def val_accuracy(self) -> list[float]:
        if self.metric_name != "accuracy":
            raise AttributeError(f"this run tracked metric {self.metric_name!r}, not accuracy")
        return self.val_metric


def as_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; accepts ``"cpu"``, ``"cuda:0"``, ``torch.device(...)``."""
    if isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        try:
            return torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"device must name a torch device such as 'cpu', got {device!r}") from error
    raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")


def _check_common(model: nn.Module, device: str | torch.device) -> torch.device:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return as_device(device)


def _check_criterion(criterion: object) -> None:
    if not callable(criterion):
        raise TypeError(
            f"criterion must be a loss such as nn.CrossEntropyLoss(), got {type(criterion).__name__}"
        )


def _check_optimizer(optimizer: object) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")


def _resolve_metric(metric: str | Metric | None) -> tuple[Metric | None, str | None]:
    if metric is None:
        return None, None
    if isinstance(metric, str):
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {sorted(_METRICS)}, a callable or None, got {metric!r}")
        return _METRICS[metric], metric
    if callable(metric):
        return metric, getattr(metric, "__name__", type(metric).__name__)
    raise TypeError(f"metric must be a str, a callable or None, got {type(metric).__name__}")


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """Class predictions from raw model outputs.

    One output per sample (shape ``(B,)`` or ``(B, 1)``) is read as a binary logit:
    positive means class 1. Several outputs are read as class scores: the largest wins.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        return (logits.reshape(-1) > 0).long()
    if logits.ndim == 2:
        return logits.argmax(dim=1)
    raise ValueError(f"logits must have shape (B,), (B, 1) or (B, C), got {tuple(logits.shape)}")


def _match_target(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # A single-output model returns (B, 1); losses want it shaped like a (B,) target.
    if outputs.ndim == 2 and outputs.shape[1] == 1 and targets.ndim == 1:
        return outputs.squeeze(1)
    return outputs


def _step_group(optimizer: torch.optim.Optimizer, examples: int) -> None:
    # Each micro-batch's mean loss was multiplied by its number of examples: dividing the
    # summed gradients by the group's examples gives the mean over all of them, as one
    # step on the concatenated batch would, however the micro-batches' sizes differ.
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.div_(examples)
    optimizer.step()
    optimizer.zero_grad()


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: str | torch.device,
    accumulation_steps: int = 1,
) -> float:
    """One pass over ``loader`` in training mode; returns the sample-weighted mean loss.

    With ``accumulation_steps=k`` the gradients of ``k`` consecutive batches (fewer for
    a last group) are summed, each batch's loss weighted by its number of examples, and
    divided by the group's examples before one optimizer step. For a mean-reduced loss
    and no batch-dependent layers (BatchNorm), each step then equals one step on the
    concatenated batch, even where the batches differ in size (a short last batch).
    Introduced in chapter 02.
    """
    device = _check_common(model, device)
    _check_criterion(criterion)
    _check_optimizer(optimizer)
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int):
        raise TypeError(f"accumulation_steps must be an int, got {type(accumulation_steps).__name__}")
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    model.train()
    optimizer.zero_grad()
    # Each batch's loss stays on the device: a .item() per step would make the CPU
    # wait for the GPU every step. They are read once, at the end of the epoch.
    losses: list[torch.Tensor] = []
    sizes: list[int] = []
    pending, examples = 0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = _match_target(model(inputs), targets)
        loss = criterion(outputs, targets)
        if accumulation_steps == 1:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        else:
            (loss * len(targets)).backward()
            pending, examples = pending + 1, examples + len(targets)
            if pending == accumulation_steps:
                _step_group(optimizer, examples)
                pending, examples = 0, 0
        losses.append(loss.detach())
        sizes.append(len(targets))
    if not sizes:
        raise ValueError("loader yielded no batches")
    if pending:
        _step_group(optimizer, examples)
    # float64 on the CPU (MPS has no float64): the same sum a Python loop would give
    per_batch = torch.stack(losses).cpu().double()
    return (per_batch * torch.tensor(sizes, dtype=torch.float64)).sum().item() / sum(sizes)


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[Batch], device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels for every sample of ``loader``, on the CPU.

    Runs in ``eval()`` mode without building a graph. Introduced in chapter 02.
    """
    device = _check_common(model, device)
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
    model: nn.Module,
    loader: Iterable[Batch],
    criterion: nn.Module,
    device: str | torch.device,
    *,
    metric: str | Metric | None = "accuracy",
) -> EvalResult:
    """Mean loss and mean ``metric`` over ``loader`` in ``eval()`` mode under ``no_grad``.

    ``metric`` is ``"accuracy"`` (the default), ``None`` (loss only, e.g. regression) or a
    callable ``(outputs, targets)`` returning a batch mean as a float or a one-element
    tensor (such as mean absolute error); batch means are combined weighted by batch size.
    Losses and tensor metrics stay on the device until the loop ends, as in
    ``train_one_epoch``. Introduced in chapter 02; chapter 04 uses ``metric=None`` for its
    forecasters.
    """
    device = _check_common(model, device)
    _check_criterion(criterion)
    metric_fn, metric_name = _resolve_metric(metric)
    model.eval()
    losses: list[torch.Tensor] = []
    values: list[float | torch.Tensor] = []  # one batch mean per batch
    sizes: list[int] = []
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = _match_target(model(inputs), targets)
        losses.append(criterion(outputs, targets))
        if metric_fn is not None:
            values.append(_batch_mean(metric_fn(outputs, targets), metric_name))
        sizes.append(len(targets))
    if not sizes:
        raise ValueError("loader yielded no batches")
    # read once, at the end, in float64 on the CPU (MPS has no float64)
    weights = torch.tensor(sizes, dtype=torch.float64)
    loss = (torch.stack(losses).cpu().double() * weights).sum().item() / sum(sizes)
    mean_metric = None
    if metric_fn is not None:
        on_device = [v for v in values if isinstance(v, torch.Tensor)]
        # one read for all of them (stack promotes mixed dtypes to their common one)
        read = iter(torch.stack(on_device).cpu().double().tolist() if on_device else [])
        means = [next(read) if isinstance(v, torch.Tensor) else v for v in values]
        mean_metric = (torch.tensor(means, dtype=torch.float64) * weights).sum().item() / sum(sizes)
    return EvalResult(loss=loss, metric=mean_metric, metric_name=metric_name)


def _batch_mean(value: object, name: str | None) -> float | torch.Tensor:
    """A metric's batch mean, checked: a float, or a 0-dim tensor left on its device."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"metric {name!r} must return one number per batch, got shape {tuple(value.shape)}"
            )
        return value.detach().reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"metric {name!r} must return a float or a one-element tensor, got {type(value).__name__}"
        )
    return float(value)


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: str | torch.device,
    *,
    metric: str | Metric | None = "accuracy",
    select: str | None = None,
    scheduler: LRScheduler | ReduceLROnPlateau | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
) -> History:
    """Train for ``epochs`` epochs, evaluating on the validation loader after each one.

    The loop chapter 02 writes out, with a progress bar over epochs. ``metric`` is passed
    to ``evaluate``. ``select`` says which epoch is best: ``"metric"`` (highest validation
    metric; the default when there is a metric) or ``"loss"`` (lowest validation loss; the
    default without one, and the choice for regression or for error-type metrics).
    ``scheduler`` is stepped once per epoch after that epoch's optimizer steps; a
    ``ReduceLROnPlateau`` is given the selected validation value, so its ``mode`` must be
    ``"min"`` for ``select="loss"`` and ``"max"`` for ``select="metric"``. With
    ``checkpoint_path`` the model's ``state_dict`` is saved whenever the selected value
    improves: the file ends up holding the best epoch's weights (a snapshot, not a
    resumable checkpoint). Introduced in chapter 02; chapter 03 adds the options.
    """
    device = _check_common(model, device)
    _check_criterion(criterion)
    _check_optimizer(optimizer)
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise TypeError(f"epochs must be an int, got {type(epochs).__name__}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    _, metric_name = _resolve_metric(metric)
    if select is None:
        select = "metric" if metric_name is not None else "loss"
    if select not in ("metric", "loss"):
        raise ValueError(f"select must be 'metric' or 'loss', got {select!r}")
    if select == "metric" and metric_name is None:
        raise ValueError("select='metric' needs a metric; pass metric=... or select='loss'")
    if scheduler is not None and not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
        raise TypeError(f"scheduler must be a torch LR scheduler or None, got {type(scheduler).__name__}")
    if isinstance(scheduler, ReduceLROnPlateau):
        wanted = "min" if select == "loss" else "max"
        if scheduler.mode != wanted:
            raise ValueError(
                f"scheduler is ReduceLROnPlateau(mode={scheduler.mode!r}) but select={select!r} "
                f"needs mode={wanted!r}"
            )
    if checkpoint_path is not None and not isinstance(checkpoint_path, (str, Path)):
        raise TypeError(
            f"checkpoint_path must be a str, a Path or None, got {type(checkpoint_path).__name__}"
        )
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    history = History(metric_name=metric_name, select=select)
    best = float("inf")
    for epoch in tqdm(range(1, epochs + 1), desc="epochs", disable=not progress):
        history.lr.append(optimizer.param_groups[0]["lr"])
        history.train_loss.append(train_one_epoch(model, train_loader, criterion, optimizer, device))
        result = evaluate(model, val_loader, criterion, device, metric=metric)
        history.val_loss.append(result.loss)
        if result.metric is not None:
            history.val_metric.append(result.metric)
        value = result.loss if select == "loss" else result.metric
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(value)
        elif scheduler is not None:
            scheduler.step()
        # Compare so that lower is better for both kinds of selection.
        score = value if select == "loss" else -value
        if score < best:
            best = score
            history.best_epoch = epoch
            if checkpoint_path is not None:
                torch.save(model.state_dict(), checkpoint_path)
    return history
