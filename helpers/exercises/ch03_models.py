"""Checkers for chapter 3's training and model exercises (3.3 and 3.5).

:func:`check_short_run` trains a tiny network on made-up data with the reader's
``short_run`` and with an independent loop (``torch.optim.AdamW`` and
``CosineAnnealingLR``); :func:`check_pooled_head` recomputes the reader's pooling head
with ``torch.nn.functional``. Both run inside ``torch.random.fork_rng``, so they leave
the chapter's global random state as it was. Re-exported by
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

from helpers.exercises import Mismatch, checker, expect, expect_close, expect_tensor

__all__ = ["check_pooled_head", "check_short_run", "keep_random_state"]


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


def _leaves(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


@checker("3.5", "PooledDigitCNN")
@keep_random_state
def check_pooled_head(pooled_class: Any, base_class: Any) -> str:
    """Exercise 3.5: DigitCNN ending in a third conv block and global average pooling."""
    for name, value in [("PooledDigitCNN", pooled_class), ("DigitCNN", base_class)]:
        expect(isinstance(value, type), f"{name} should be a class, got {type(value).__name__}")
    expect(
        issubclass(pooled_class, base_class),
        "PooledDigitCNN should be a subclass of DigitCNN (class PooledDigitCNN(DigitCNN))",
    )
    c1, c2 = 4, 6
    torch.manual_seed(0)
    net = pooled_class(channels=(c1, c2), augment=False)
    torch.manual_seed(0)
    base = base_class(channels=(c1, c2), augment=False)
    # the third block may go into the classifier or be appended to self.features:
    # DigitCNN's own blocks are the first len(base.features) modules either way
    n_base = len(base.features)
    features = net.features
    same_start = isinstance(features, nn.Sequential) and len(features) >= n_base
    if same_start:
        start, base_start = _flat(features[:n_base]), _flat(base.features)
        same_start = start.shape == base_start.shape and torch.equal(start, base_start)
    expect(
        same_start,
        "the first two blocks do not start from DigitCNN's initial weights for the same seed",
        "call super().__init__(channels, **kwargs) first and then replace only self.classifier "
        "(or append the new block to self.features)",
    )
    body, extra = features[:n_base], [(f"features.{i}", features[i]) for i in range(n_base, len(features))]
    head = nn.ModuleList([module for _, module in extra] + [net.classifier])  # what follows the 7 x 7 maps
    linears = _leaves(net.classifier, nn.Linear)
    expect(
        not any(layer.in_features == c2 * 7 * 7 for layer in linears),
        "net.classifier is still the Flatten + Linear head",
        "DigitCNN.forward calls self.classifier: assign the new head to self.classifier",
    )
    linears = _leaves(head, nn.Linear)
    expect(not _leaves(head, nn.Dropout), "the head has a dropout layer", "leave the dropout out")
    convs, norms = _leaves(head, nn.Conv2d), _leaves(head, nn.BatchNorm2d)
    expect(
        len(convs) == 1 and len(norms) == 1 and len(linears) == 1,
        f"the head should hold one Conv2d, one BatchNorm2d and one Linear, got {len(convs)}, "
        f"{len(norms)} and {len(linears)}",
    )
    (conv,), (norm,), (linear,) = convs, norms, linears
    expect(
        linear.in_features == c2 and linear.out_features == 10,
        f"with channels=({c1}, {c2}) the Linear layer is {linear.in_features} -> {linear.out_features}, "
        f"expected {c2} -> 10",
        "take the width from channels (c2 = channels[1]), not a fixed 32"
        if 32 in (linear.in_features, conv.in_channels, conv.out_channels)
        else None,
    )
    expect(
        (conv.in_channels, conv.out_channels, conv.kernel_size) == (c2, c2, (3, 3)),
        f"the head's convolution is {conv.in_channels} -> {conv.out_channels} channels with a "
        f"{conv.kernel_size} kernel, expected {c2} -> {c2}, (3, 3)",
    )
    expect(
        conv.bias is None,
        "the head's convolution has a bias",
        "batch norm subtracts it again (section 3.3): nn.Conv2d(..., bias=False)",
    )
    generator = torch.Generator().manual_seed(35)
    with torch.no_grad():  # batch norm with statistics and an affine map of its own
        norm.running_mean.copy_(torch.randn(c2, generator=generator))
        norm.running_var.copy_(0.5 + torch.rand(c2, generator=generator))
        norm.weight.copy_(torch.randn(c2, generator=generator))
        norm.bias.copy_(torch.randn(c2, generator=generator))
    net.eval()
    x = torch.randn(3, 1, 28, 28, generator=generator)
    maps = body(x).detach()  # (3, c2, 7, 7)

    def head_of(
        maps: torch.Tensor, *, padding: int = 1, relu: bool = True, pool: str = "mean"
    ) -> torch.Tensor:
        if pool == "first":  # pooled before the convolution
            maps = maps.mean(dim=(2, 3), keepdim=True)
        h = F.conv2d(maps, conv.weight, padding=padding)
        h = F.batch_norm(h, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=norm.eps)
        h = F.relu(h) if relu else h
        pooled = h.amax(dim=(2, 3)) if pool == "max" else h.mean(dim=(2, 3))
        return F.linear(pooled, linear.weight, linear.bias)

    with torch.no_grad():
        want = head_of(maps)
        mistakes = {
            "global *average* pooling: nn.AdaptiveAvgPool2d(1), not a max": head_of(maps, pool="max"),
            "pad the convolution by 1, so that it works on the whole 7 x 7 map": head_of(maps, padding=0),
            "the conv block goes before the pooling, at 7 x 7: after it, the convolution sees a "
            "single position": head_of(maps, pool="first"),
            "the block is convolution, batch norm, ReLU: the ReLU is missing": head_of(maps, relu=False),
        }
        got = net(x)
    gap = expect_tensor(got, want, "the network's output", mistakes=mistakes)
    try:
        larger = net(torch.randn(2, 1, 56, 56, generator=generator))
    except RuntimeError as error:
        raise Mismatch(
            f"on 56 x 56 images the network raised RuntimeError: {error}",
            "nn.AdaptiveAvgPool2d(1) averages maps of any size; a fixed-size pooling does not",
        ) from None
    expect(tuple(larger.shape) == (2, 10), f"on 56 x 56 images the output has shape {tuple(larger.shape)}")
    net.train()
    net(x).square().sum().backward()
    named = [*net.classifier.named_parameters()]
    named += [(f"{where}.{name}", p) for where, module in extra for name, p in module.named_parameters()]
    idle = [name for name, p in named if p.grad is None or not p.grad.any()]
    expect(not idle, f"no gradient reaches the head's parameters {idle}: are they used in forward?")
    return (
        f"the head matches conv, batch norm, ReLU, global average and linear to {gap:.0e}, works on "
        f"56 x 56 images, and the first two blocks start from DigitCNN's weights; at c2 = 32 it has "
        f"9·32² + 2·32 + 10·32 + 10 = {9 * 32 * 32 + 2 * 32 + 10 * 32 + 10:,} parameters"
    )
