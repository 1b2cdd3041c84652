"""Checker for chapter 3's training exercise (3.3), and what the other checkers share.

:func:`check_short_run` trains a tiny network on made-up data with the reader's
``short_run`` and with an independent loop (``torch.optim.AdamW`` and
``CosineAnnealingLR``). It runs inside ``torch.random.fork_rng``
(:func:`keep_random_state`), so it leaves the chapter's global random state as it was. Re-exported by
:mod:`helpers.exercises.ch03`; introduced with chapter 3's exercises.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.exercises import checker, expect, expect_close, expect_tensor

__all__ = ["check_short_run", "keep_random_state"]


def keep_random_state(check: Callable[..., str]) -> Callable[..., str]:
    """Run ``check`` inside ``torch.random.fork_rng``: the caller's CPU random state is kept."""

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> str:
        with torch.random.fork_rng(devices=[]):
            return check(*args, **kwargs)

    return run


def _flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _reference_run(
    net: nn.Module,
    rate: float,
    loaders: tuple[DataLoader, DataLoader],
    start: torch.Tensor,
    *,
    n_epochs: int,
    weight_decay: float = 1e-4,
    schedule: str = "epoch",
) -> tuple[torch.Tensor, float, float, torch.Tensor]:
    """Train with AdamW and a cosine schedule; the loader's generator starts at ``start``.

    Returns the trained weights (flattened), the last epoch's mean loss, the last batch's
    loss and the validation predictions.
    """
    train_loader, val_loader = loaders
    train_loader.generator.set_state(start)
    optimizer = torch.optim.AdamW(net.parameters(), lr=rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=n_epochs)
    for _ in range(n_epochs):
        net.train()
        total, count = 0.0, 0
        for inputs, targets in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(inputs), targets)
            loss.backward()
            optimizer.step()
            if schedule == "batch":
                scheduler.step()
            total, count = total + loss.item() * len(targets), count + len(targets)
        if schedule == "epoch":
            scheduler.step()
    net.eval()
    with torch.no_grad():
        predictions = torch.cat([net(inputs).argmax(dim=1) for inputs, _ in val_loader])
    return _flat(net), total / count, loss.item(), predictions


@checker("3.3", "short_run")
@keep_random_state
def check_short_run(short_run: Callable[..., Any]) -> str:
    """Exercise 3.3: a short AdamW run with a cosine schedule and a fixed batch order."""
    expect(callable(short_run), "short_run should be a function")
    generator = torch.Generator().manual_seed(33)
    x = torch.randn(68, 6, generator=generator)
    y = (x[:, :3] + 0.5 * torch.randn(68, 3, generator=generator)).argmax(dim=1)
    train_loader = DataLoader(
        TensorDataset(x[:48], y[:48]), batch_size=8, shuffle=True, generator=torch.Generator()
    )
    val_loader = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=10)
    loaders, rate, seed, n_epochs = (train_loader, val_loader), 0.05, 7, 3
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    initial, untrained = _flat(net), copy.deepcopy(net)
    seeded = torch.Generator().manual_seed(seed).get_state()
    stale = torch.Generator().manual_seed(seed + 1000).get_state()
    train_loader.generator.set_state(stale)  # as a previous run would leave it
    got = short_run(
        net, rate, loaders=loaders, criterion=nn.CrossEntropyLoss(), device=torch.device("cpu"),
        seed=seed, n_epochs=n_epochs,
    )  # fmt: skip
    expect(
        isinstance(got, tuple) and len(got) == 2,
        f"short_run should return (last training loss, validation predictions), got {type(got).__name__}",
    )
    loss, predictions = got
    expect(
        not torch.equal(_flat(net), initial),
        "net's weights did not change",
        "train the network short_run is given (not a copy of it): the caller measures it",
    )

    def reference(**options: Any) -> tuple[torch.Tensor, float, float, torch.Tensor]:
        start = options.pop("start", seeded)
        return _reference_run(copy.deepcopy(untrained), rate, loaders, start, n_epochs=n_epochs, **options)

    want, want_loss, last_batch_loss, want_pred = reference()
    mistakes = {
        "step the scheduler once per epoch, after that epoch's optimizer steps "
        "(scheduler.step(), or fit(..., scheduler=scheduler))": reference(schedule="none")[0],
        "the schedule runs over T_max = n_epochs steps: step it once per epoch, not after "
        "every batch": reference(schedule="batch")[0],
        "reseed the training loader's own generator, train_loader.generator.manual_seed(seed): "
        "torch.manual_seed does not reach it, so the batch order changes from run to run": (
            reference(start=stale)[0]
        ),
        "torch.optim.AdamW's default weight_decay is 0.01; the chapter's runs use 1e-4": reference(
            weight_decay=0.01
        )[0],
    }
    gap = expect_tensor(_flat(net), want, "net's weights after short_run", atol=1e-6, mistakes=mistakes)
    hint = None
    if isinstance(loss, (int, float)) and abs(loss - last_batch_loss) < 1e-7:
        hint = "return the mean over the last epoch's batches (fit's history.train_loss[-1])"
    expect_close(loss, want_loss, "the last training loss", tol=1e-6, hint=hint)
    expect(
        isinstance(predictions, torch.Tensor) and predictions.ndim == 1,
        "the validation predictions should be a 1-D tensor of classes, got "
        + (f"shape {tuple(predictions.shape)}" if isinstance(predictions, torch.Tensor) else "no tensor"),
        "return the predicted classes (the argmax over dim 1, as predict returns them), not scores",
    )
    expect_tensor(predictions, want_pred, "the validation predictions", check_dtype=False)
    return (
        f"matches AdamW with a per-epoch cosine schedule and a reseeded batch order: weights to "
        f"{gap:.0e} after {n_epochs} epochs of a small network, the last loss and all "
        f"{len(want_pred)} predictions"
    )
