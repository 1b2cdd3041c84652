"""Checkers for chapter 05's exercises on freezing: LP-FT's start (5.4) and frozen batch
norm (5.5). Exported by :mod:`helpers.exercises.ch05`, where the starters import them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from helpers.exercises import checker, expect, expect_tensor
from helpers.exercises.ch05_models import BLOCKS, SmallNet, bn_net, check_function, differing, swapped

__all__ = ["check_freeze_batchnorm", "check_plain_counterpart", "check_start_lpft"]


# ---- Exercise 5.4 -------------------------------------------------------------------------

#: Section 5.7's AdamW weight decay, which LP-FT's optimizer must use too.
_WEIGHT_DECAY = 1e-4


def _frozen_hint(frozen: object, model: nn.Module, fe_model: nn.Module) -> str | None:
    """The hint for a wrong ``frozen`` list, when it is one of the usual two mistakes."""
    if not isinstance(frozen, (list, tuple)):
        return None
    if any(block is model.layer3 for block in frozen):
        return "layer3 trains now, so its batch norm must be in training mode: leave it out of `frozen`"
    if any(block is fe_model.layer1 or block is fe_model.layer2 for block in frozen):
        return "list the copy's blocks (model.layer1, model.layer2), not the original model's"
    return None


@checker("5.4", "start_lpft")
def check_start_lpft(start_lpft: Callable) -> str:
    """Exercise 5.4: the model, frozen blocks and optimizer that ``start_lpft`` returns."""
    check_function(start_lpft, "start_lpft")
    lr, factor = 0.02, 0.3
    fe_model = SmallNet(10, torch.Generator().manual_seed(504))  # its head is "trained"
    for name in BLOCKS:
        fe_model.get_submodule(name).requires_grad_(False)
    fe_state = copy.deepcopy(fe_model.state_dict())
    fe_flags = [p.requires_grad for p in fe_model.parameters()]
    result = start_lpft(fe_model, lr, factor)
    expect(
        isinstance(result, tuple) and len(result) == 3,
        f"start_lpft should return (model, frozen, optimizer), got {type(result).__name__}",
    )
    model, frozen, optimizer = result
    expect(isinstance(model, nn.Module), f"the model is a {type(model).__name__}, not an nn.Module")
    copy_hint = "copy.deepcopy the feature-extraction model first: section 5.7's run must stay as it was"
    shared = {id(p) for p in fe_model.parameters()} & {id(p) for p in model.parameters()}
    expect(not shared, "the model shares its parameters with the feature-extraction model", copy_hint)
    expect(
        not differing(fe_model.state_dict(), fe_state)
        and fe_flags == [p.requires_grad for p in fe_model.parameters()],
        "the feature-extraction model was changed",
        copy_hint,
    )
    differ = differing(model.state_dict(), fe_state)
    expect(
        not differ,
        f"{len(differ)} tensors differ from the feature-extraction model's, e.g. {differ[:3]}",
        "LP-FT starts from the trained head (the linear probe): a new random head makes it plain fine-tuning"
        if any(k.startswith("fc.") for k in differ)
        else None,
    )
    for name, trainable in (("layer1", False), ("layer2", False), ("layer3", True), ("fc", True)):
        flags = {p.requires_grad for p in model.get_submodule(name).parameters()}
        expect(
            flags == {trainable},
            f"{name}'s parameters should {'' if trainable else 'not '}require gradients",
            "unfreeze layer3 with model.layer3.requires_grad_(True): the copied model has it frozen"
            if name == "layer3"
            else None,
        )
    expect(
        isinstance(frozen, (list, tuple)) and {id(b) for b in frozen} == {id(model.layer1), id(model.layer2)},
        "`frozen` should list the copy's layer1 and layer2 (which train_phases keeps in eval "
        f"mode), got {len(frozen) if isinstance(frozen, (list, tuple)) else frozen!r} modules",
        _frozen_hint(frozen, model, fe_model),
    )
    expect(
        isinstance(optimizer, torch.optim.Optimizer),
        f"the optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer",
    )
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, rate in (("fc", lr), ("layer3", lr * factor)):
        rates = {rate_of.get(id(p)) for p in model.get_submodule(name).parameters()}
        expect(
            rates == {rate},
            f"{name} learns at {sorted(rates, key=str)}, expected {rate:g} (lr={lr:g}, factor={factor:g})",
            "layer3 learns at lr * factor, as in section 5.7: give it its own parameter group"
            if name == "layer3" and rates == {lr}
            else "build the optimizer over the copy's parameters"
            if rates == {None}
            else None,
        )
    extra = len(rate_of) - sum(p.requires_grad for p in model.parameters())
    expect(extra == 0, f"the optimizer holds {extra} parameters that are frozen or not the model's")
    kind = type(optimizer).__name__
    expect(
        isinstance(optimizer, torch.optim.AdamW),
        f"the optimizer is {kind}, but section 5.7 fine-tunes with AdamW",
        "torch.optim.Adam's weight_decay adds an L2 term to the gradient, which Adam then rescales; "
        "AdamW decays the weights directly, as section 5.7 does: use torch.optim.AdamW"
        if isinstance(optimizer, torch.optim.Adam)
        else "a different optimizer makes LP-FT a different experiment from section 5.7's "
        "fine-tuning: use torch.optim.AdamW(groups, lr=lr, weight_decay=1e-4)",
    )
    decays = sorted({group["weight_decay"] for group in optimizer.param_groups})
    expect(
        decays == [_WEIGHT_DECAY],
        f"the weight decay is {decays}, expected {_WEIGHT_DECAY:g} in every group as in section 5.7",
        "AdamW's default weight_decay is 1e-2: pass weight_decay=1e-4" if decays == [1e-2] else None,
    )
    return (
        f"a copy with the trained head ({model.fc.weight.numel()} weights kept), layer3 and fc "
        f"trainable at {lr * factor:g} and {lr:g} with AdamW (weight decay {_WEIGHT_DECAY:g}), "
        "layer1 and layer2 frozen and in `frozen`; the feature-extraction model unchanged"
    )


def _counterpart_hint(key: tuple, draw: int, factor: float) -> str | None:
    """The hint for a wrong counterpart key, when it is one of the usual design slips."""
    if len(key) == 3 and key[1] == "fine-tuning":  # a 24-epoch run's (per_class, method, draw)
        return (
            "the 24-epoch run matches LP-FT's cost, not its schedule: its rate drops at epoch 16 "
            "and layer3 trains twice as long, so a gap would mix the start with the schedule"
        )
    if len(key) != 4:
        return None
    per_class, key_draw, method, key_factor = key
    if method == "feature extraction":
        return (
            "that run is LP-FT's first phase, the probe itself: compare with fine-tuning from a random head"
        )
    if method != "fine-tuning":
        return "a control changes layer3 itself; LP-FT's counterpart is plain fine-tuning"
    if key_draw != draw:
        return (
            "the same draw: LP-FT's labelled images and seeds are that draw's, and pairing on the "
            "same draw removes what the two runs share"
        )
    if key_factor != factor:
        return "LP-FT trains layer3 at this factor: compare at the same one, or the gap mixes start and rate"
    if per_class != 10:
        return "LP-FT trains on 10 labels per class: its counterpart must see the same images"
    return None


@checker("5.4", "plain_counterpart")
def check_plain_counterpart(plain_counterpart: Callable) -> str:
    """Exercise 5.4's design: the key of section 5.7's run that LP-FT is compared with.

    Only plain fine-tuning with the same labelled images, draw, factor and 12-epoch
    schedule differs from LP-FT in its start alone: ``(10, draw, "fine-tuning", factor)``."""
    check_function(plain_counterpart, "plain_counterpart")
    for draw, factor in ((7, 0.1), (12, 1.0)):  # fresh values, not the chapter's
        key = plain_counterpart(draw, factor)
        want = (10, draw, "fine-tuning", factor)
        expect(
            isinstance(key, tuple),
            f"plain_counterpart({draw}, {factor:g}) returned a {type(key).__name__}, "
            "not a key of `runs` (a tuple)",
        )
        expect(
            key == want,
            f"plain_counterpart({draw}, {factor:g}) returned {key!r}, which is not the run that "
            "differs from LP-FT in its start alone",
            _counterpart_hint(key, draw, factor),
        )
    return (
        "plain fine-tuning on the same draw, 10 labels per class, at the same factor and for the "
        "same 12 epochs: only the start (a random head or the probe) differs"
    )


# ---- Exercise 5.5 -------------------------------------------------------------------------


@checker("5.5", "freeze_batchnorm")
def check_freeze_batchnorm(freeze_batchnorm: Callable) -> str:
    """Exercise 5.5: ``freeze_batchnorm(module)`` against nn.BatchNorm2d in eval mode.

    The reader's own layer passes when it has no parameters and, in training mode, gives
    batch norm's eval-mode output; torchvision's FrozenBatchNorm2d itself (which section 5.6
    names) is refused, since the exercise is to write that layer."""
    from torchvision.ops import FrozenBatchNorm2d  # the reference for the wrong answers

    check_function(freeze_batchnorm, "freeze_batchnorm")
    generator = torch.Generator().manual_seed(505)
    net = bn_net(generator)
    x = torch.randn(5, 2, 6, 6, generator=generator)
    original = copy.deepcopy(net)
    freeze_batchnorm(net)
    with torch.no_grad():
        want = copy.deepcopy(original).eval()(x)  # torch's batch norm, statistics fixed

        def loaded(bn: nn.BatchNorm2d) -> nn.Module:  # the right copy, but with the default eps
            fixed = FrozenBatchNorm2d(bn.num_features)
            fixed.load_state_dict(bn.state_dict())
            return fixed

        default_eps = swapped(original, loaded)(x)
        fresh = swapped(original, lambda bn: FrozenBatchNorm2d(bn.num_features, eps=bn.eps))(x)
    kept = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    left = [name for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # kept layers that the reader tried to freeze in place
    stilled = [m for m in kept if m.momentum == 0 or not all(p.requires_grad for p in m.parameters())]
    if left == ["3.1"]:
        hint = "recurse into the children: the batch norm nested inside a block was not reached"
    elif stilled:
        hint = (
            "replace them with a layer of your own; BatchNorm2d in train mode still normalises "
            "with the batch's statistics, whatever its momentum or requires_grad"
        )
    else:
        hint = (
            "replace each batch norm with a layer of your own that keeps weight, bias and running "
            "statistics as buffers and always normalises with those statistics, set in its "
            "parent with "
            "setattr(parent, name, new_layer); "
            "rebinding a loop variable changes nothing, and the function must change the module "
            "in place"
        )
    expect(not left, f"{len(left)} of 2 BatchNorm2d layers are still there: {left}", hint)
    places = ("1", "3.1")  # where the two BatchNorm2d layers were
    replacements = {name: m for name, m in net.named_modules() if name in places}
    expect(
        len(replacements) == 2,
        f"the module should hold a layer where each BatchNorm2d was, found {sorted(replacements)}",
    )
    borrowed = sorted(name for name, layer in replacements.items() if type(layer) is FrozenBatchNorm2d)
    expect(
        not borrowed,
        f"the layers at {borrowed} are torchvision's FrozenBatchNorm2d, not a layer of your own",
        "write the class yourself: an nn.Module that keeps weight, bias and running statistics as "
        "buffers and whose forward always normalises with them (torchvision's is what the "
        "solution checks against)",
    )
    learnable = [
        f"{name}.{weight}" for name, layer in replacements.items() for weight, _ in layer.named_parameters()
    ]
    expect(
        not learnable,
        f"frozen batch norm should have no parameters, but {learnable} are",
        "copy the values into buffers (register_buffer, or load_state_dict(bn.state_dict()) "
        "into a layer that has them): assigning bn.weight registers a trainable Parameter again",
    )
    net.train()  # what model.train() does to every block
    with torch.no_grad():
        got = net(x)
        again = net(x)
    mistakes = {
        "the new layers use eps = 1e-5: pass the layer's own, eps=bn.eps": default_eps,
        "the new layers kept their initial statistics (mean 0, variance 1): load the old layer's "
        "weight, bias and running statistics": fresh,
    }
    gap = expect_tensor(got, want, "the output in training mode", mistakes=mistakes)
    expect(torch.equal(got, again), "two forward passes in training mode gave different outputs")
    return (
        f"replaced both BatchNorm2d layers (one nested) by layers with no parameters; in "
        f"training mode the module matches "
        f"the original in eval mode to {gap:.1g} on a random batch, and its state stays put"
    )
