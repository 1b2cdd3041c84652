"""Checker for chapter 3's exercise 3.5: a DigitCNN head that is not tied to positions.

:func:`check_pooled_head` recomputes the reader's head with ``torch.nn.functional``, in
both versions the exercise asks for: a third conv block before global average pooling,
and (``extra_block=False``) the pooling and linear layer alone. It runs inside
``torch.random.fork_rng``, so it leaves the chapter's global random state as it was.
Re-exported by :mod:`helpers.exercises.ch03`; introduced with chapter 3's exercises.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from helpers.exercises import Mismatch, checker, expect, expect_tensor
from helpers.exercises.ch03_models import _flat, keep_random_state

__all__ = ["check_pooled_head"]


def _leaves(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def _split_features(net: nn.Module, base: nn.Module) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
    """DigitCNN's own blocks of ``net`` (checked against ``base``) and what follows them."""
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
    return features[:n_base], [(f"features.{i}", features[i]) for i in range(n_base, len(features))]


def _where_the_block_goes(net: nn.Module) -> str:
    """The hint for a head without the extra block: where the checker looks for it."""
    hint = (
        "put the new block in self.classifier, before the pooling (or append it to "
        "self.features): the checker looks for it there, as does the solution's count of "
        "the head's parameters"
    )
    elsewhere = [
        name
        for name, child in net.named_children()
        if name not in ("features", "classifier") and _leaves(child, nn.Conv2d)
    ]
    return f"{hint}; yours is in self.{elsewhere[0]}" if elsewhere else hint


def _check_bare_head(pooled_class: Any, base_class: Any, c1: int, c2: int) -> None:
    """The control, ``extra_block=False``: global average pooling and the linear layer alone."""
    torch.manual_seed(0)
    try:
        net = pooled_class(channels=(c1, c2), augment=False, extra_block=False)
    except TypeError as error:
        raise Mismatch(
            f"PooledDigitCNN(channels=({c1}, {c2}), augment=False, extra_block=False) raised "
            f"TypeError: {error}",
            "take extra_block as a keyword argument of __init__ "
            "(def __init__(self, channels=(16, 32), *, extra_block=True, **kwargs))",
        ) from None
    torch.manual_seed(0)
    body, extra = _split_features(net, base_class(channels=(c1, c2), augment=False))
    head = nn.ModuleList([module for _, module in extra] + [net.classifier])
    blocks = len(_leaves(head, nn.Conv2d)) + len(_leaves(head, nn.BatchNorm2d))
    expect(
        blocks == 0,
        f"with extra_block=False the head holds {blocks} convolution or batch-norm layers",
        "extra_block=False is the control: global average pooling straight after the second "
        "block, then the linear layer",
    )
    expect(not _leaves(head, nn.Dropout), "with extra_block=False the head has a dropout layer")
    linears = _leaves(head, nn.Linear)
    expect(
        [(layer.in_features, layer.out_features) for layer in linears] == [(c2, 10)],
        f"with extra_block=False the head should hold one Linear {c2} -> 10, got "
        f"{[(layer.in_features, layer.out_features) for layer in linears]}",
    )
    (linear,) = linears
    net.eval()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(36))
    with torch.no_grad():
        maps = body(x)  # (3, c2, 7, 7)
        want = F.linear(maps.mean(dim=(2, 3)), linear.weight, linear.bias)
        mistakes = {
            "global *average* pooling: nn.AdaptiveAvgPool2d(1), not a max": F.linear(
                maps.amax(dim=(2, 3)), linear.weight, linear.bias
            )
        }
        expect_tensor(net(x), want, "the output with extra_block=False", mistakes=mistakes)


@checker("3.5", "PooledDigitCNN")
@keep_random_state
def check_pooled_head(pooled_class: Any, base_class: Any) -> str:
    """Exercise 3.5: DigitCNN ending in global average pooling, after a third conv block or not."""
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
    body, extra = _split_features(net, base)
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
        _where_the_block_goes(net) if not convs and not norms else None,
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
    _check_bare_head(pooled_class, base_class, c1, c2)
    return (
        f"the head matches conv, batch norm, ReLU, global average and linear to {gap:.0e}, works on "
        f"56 x 56 images, and the first two blocks start from DigitCNN's weights; at c2 = 32 it has "
        f"9·32² + 2·32 + 10·32 + 10 = {9 * 32 * 32 + 2 * 32 + 10 * 32 + 10:,} parameters, and "
        f"with extra_block=False (average and linear alone) {10 * 32 + 10} parameters"
    )
