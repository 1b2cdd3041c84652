"""The small models that chapter 05's exercise checkers run the reader's code on.

``SmallNet`` has the layout of the chapter's ``GlyphNet`` (blocks ``layer1`` to ``layer3``,
a head ``fc``) at widths 4, 6, 8 (not 16, 32, 64), with seeded random weights and batch-norm
statistics far from their defaults, so that a mistake shows in the numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import nn

from helpers.exercises import expect

__all__ = ["BLOCKS", "SmallNet", "bn_net", "check_function", "differing", "randomize", "swapped"]

BLOCKS = ("layer1", "layer2", "layer3")


class SmallNet(nn.Module):
    """GlyphNet's layout, narrowed to widths 4, 6, 8: three conv blocks, pooling, ``fc``."""

    def __init__(self, num_classes: int, generator: torch.Generator) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())

        self.layer1 = block(1, 4, 2)  # (B, 4, 14, 14)
        self.layer2 = block(4, 6, 2)  # (B, 6, 7, 7)
        self.layer3 = block(6, 8, 1)  # (B, 8, 7, 7)
        self.pool = nn.Sequential(nn.AvgPool2d(4, stride=3), nn.Flatten())  # (B, 32)
        self.fc = nn.Linear(32, num_classes)
        randomize(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(x)))))


def randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Seeded random weights and batch-norm statistics far from their defaults."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(int(torch.randint(1, 100, (), generator=generator)))
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            else:
                tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator))


def check_function(function: object, name: str) -> None:
    """Fail the check, naming ``name``, unless the reader's attempt is callable."""
    expect(callable(function), f"{name} should be a function, got {type(function).__name__}")


def differing(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not equal in ``got`` and ``want`` (or absent from ``got``)."""
    return [k for k, v in want.items() if k not in got or not torch.equal(got[k].cpu(), v.cpu())]


def bn_net(generator: torch.Generator) -> nn.Sequential:
    """Batch norm as a direct child and nested one level down, with eps = 1e-3 and tiny
    running variances, so that a lost eps or lost statistics change the output."""
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3, eps=1e-3),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4, eps=1e-3)),
    )
    randomize(net, generator)
    with torch.no_grad():
        for bn in (net[1], net[3][1]):
            bn.running_var.mul_(0.004)
    return net


def swapped(net: nn.Module, make: Callable[[nn.BatchNorm2d], nn.Module]) -> nn.Module:
    """A copy of ``net`` with every BatchNorm2d replaced by ``make(it)`` (for the hints)."""
    net = copy.deepcopy(net)
    for name, child in list(net.named_modules()):
        if isinstance(child, nn.BatchNorm2d):
            parent, _, last = name.rpartition(".")
            setattr(net.get_submodule(parent), last, make(child))
    return net
