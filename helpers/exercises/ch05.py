"""Checkers for chapter 05's exercises (transfer learning); see :mod:`helpers.exercises`.

Each checker builds its own small model named like the chapter's ``GlyphNet``
(:mod:`helpers.exercises.ch05_models`), runs the reader's function on it, and compares the
result with torch's own behaviour: forward hooks for features, the optimizer's parameter
groups for learning rates, ``load_state_dict`` for checkpoints. Exercise 5.2 (gradual
unfreezing) is checked in :mod:`helpers.exercises.ch05_unfreezing`, exercises 5.4 and 5.5
(freezing) in :mod:`helpers.exercises.ch05_freezing`; all are exported here.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from helpers.exercises import Mismatch, checker, expect, expect_tensor
from helpers.exercises.ch05_freezing import check_freeze_batchnorm, check_plain_counterpart, check_start_lpft
from helpers.exercises.ch05_models import BLOCKS, SmallNet, check_function, differing
from helpers.exercises.ch05_unfreezing import check_layerwise_groups, check_unfreeze_for_epoch

__all__ = [
    "check_freeze_batchnorm",
    "check_layerwise_groups",
    "check_load_backbone",
    "check_plain_counterpart",
    "check_pooled_features",
    "check_start_lpft",
    "check_unfreeze_for_epoch",
]

#: Exercise 5.1's pooled grid per block: about 256 features each in the chapter's model.
GRIDS = {"layer1": 4, "layer2": 3, "layer3": 2}


# ---- Exercise 5.1 -------------------------------------------------------------------------

_TRAIN_MODE = (
    "the blocks ran in training mode, so batch norm used the batch's statistics: put the "
    "feature extractor in eval() before computing features"
)
_WINDOWS = (
    "avg_pool2d(x, {grid}) takes {grid} x {grid} windows; the grid is the *output* size: "
    "adaptive_avg_pool2d(x, {grid})"
)
_MAX_POOL = "that is max pooling: the exercise averages each cell of the grid (adaptive_avg_pool2d)"
_ONE_CELL = "that is one average per channel (a 1 x 1 grid): pool to the block's grid"
_UNFLATTENED = "flatten each pooled map to (N, C * grid * grid) with .flatten(1)"
_CHANNELS_LAST = "keep the (C, grid, grid) order when flattening: .flatten(1), without a permute"


def _hooked_maps(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each block's output, read with forward hooks on a copy of ``model`` as it is."""
    model, maps = copy.deepcopy(model), {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: maps.__setitem__(name, out.detach())
        )
        for name in BLOCKS
    ]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return maps


def _within(gap: float) -> str:
    """'exactly' for a zero gap, else 'to <gap>'."""
    return "exactly" if gap == 0 else f"to {gap:.1g}"


@checker("5.1", "pooled_features")
def check_pooled_features(pooled_features: Callable) -> str:
    """Exercise 5.1: ``pooled_features(backbone, images)`` against forward hooks."""
    check_function(pooled_features, "pooled_features")
    generator = torch.Generator().manual_seed(501)
    backbone = SmallNet(10, generator).train()  # the reader's function must switch to eval
    images = torch.randn(6, 1, 28, 28, generator=generator)
    original = copy.deepcopy(backbone)  # the reader's code may change the backbone
    got = pooled_features(backbone, images.clone())
    want_maps = _hooked_maps(original.eval(), images)
    train_maps = _hooked_maps(original.train(), images)
    expect(isinstance(got, Mapping), f"pooled_features returned a {type(got).__name__}, not a dict")
    expect(
        set(BLOCKS) <= set(got),
        f"pooled_features returned the keys {sorted(got)}, expected {list(BLOCKS)}",
        "torchvision.models.feature_extraction.create_feature_extractor(backbone, "
        "return_nodes=[...]) returns the blocks' outputs by name (forward hooks work too)",
    )
    gaps = []
    for name, grid in GRIDS.items():
        want_map, pooled = want_maps[name], F.adaptive_avg_pool2d(want_maps[name], grid)
        want = pooled.flatten(1)  # (N, C * grid * grid)
        mistakes = {
            _TRAIN_MODE: F.adaptive_avg_pool2d(train_maps[name], grid).flatten(1),
            _WINDOWS.format(grid=grid): F.avg_pool2d(want_map, grid).flatten(1),
            _MAX_POOL: F.adaptive_max_pool2d(want_map, grid).flatten(1),
            _ONE_CELL: want_map.mean(dim=(2, 3)),
            _UNFLATTENED: pooled,
            _CHANNELS_LAST: pooled.permute(0, 2, 3, 1).flatten(1),
        }
        gaps.append(expect_tensor(got[name], want, f"features[{name!r}]", mistakes=mistakes))
        expect(
            not got[name].requires_grad,
            f"features[{name!r}] requires grad: autograd recorded its computation",
            "compute the features under torch.no_grad(): they are a classifier's inputs, and "
            "the recorded graph only costs memory",
        )
    sizes = ", ".join(str(want_maps[n].shape[1] * g * g) for n, g in GRIDS.items())
    return (
        "matches forward hooks on a fresh narrow GlyphNet (widths 4, 6, 8; in eval mode) "
        f"{_within(max(gaps))} for 3 blocks on {len(images)} random images ({sizes} features "
        "here; about 256 each in the chapter's GlyphNet)"
    )


# ---- Exercise 5.3 -------------------------------------------------------------------------


def _saved_wrapped(model: nn.Module, attribute: str) -> dict:
    """``model``'s state dict as saved from a wrapper that keeps it as ``attribute``."""
    wrapper = nn.Module()
    setattr(wrapper, attribute, model)  # DataParallel/DDP: "module", torch.compile: "_orig_mod"
    return wrapper.state_dict()


_PREFIX_HINT = (
    "strip the prefix from every key before loading: "
    "torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, prefix) does it, in "
    "place, so call it on a copy"
)


def _load_hint(error: Exception) -> str | None:
    text = str(error)
    if "size mismatch" in text:
        return (
            "drop the old head's keys (fc.weight, fc.bias) before loading: strict=False skips "
            "missing and unexpected keys, not keys whose shapes differ"
        )
    if "Missing key" in text or "Unexpected key" in text:
        return "load with strict=False: the new head is missing from the checkpoint by design"
    return None


def _renamed_head(state: dict, prefix: str, head: str) -> OrderedDict:
    """``state`` with its head ``{prefix}fc.`` filed as ``{prefix}{head}.``, version metadata too."""
    old, new = f"{prefix}fc", f"{prefix}{head}"

    def rename(key: str) -> str:
        return new + key[len(old) :] if key == old or key.startswith(f"{old}.") else key

    renamed = OrderedDict((rename(k), v) for k, v in state.items())
    renamed._metadata = OrderedDict((rename(k), v) for k, v in state._metadata.items())
    return renamed


def _head_hint(head: str) -> str:
    return (
        f"this checkpoint's head is called {head!r}: after stripping the prefix, drop the keys "
        f"that start with {head + '.'!r} (the head argument), whatever the model calls its own head"
    )


@checker("5.3", "load_backbone")
def check_load_backbone(load_backbone: Callable) -> str:
    """Exercise 5.3: ``load_backbone(model, state, prefix, head)`` against the source's tensors."""
    check_function(load_backbone, "load_backbone")
    generator = torch.Generator().manual_seed(503)
    source = SmallNet(7, generator)  # another head size than the target's, as in the chapter
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    # DataParallel/DDP with the head renamed (as torchvision's VGG or MobileNet name it), and
    # torch.compile with the model's own head name
    for attribute, head in (("module", "classifier"), ("_orig_mod", "fc")):
        prefix = f"{attribute}."
        state = _renamed_head(_saved_wrapped(source, attribute), prefix, head)
        keys, versions = list(state), list(state._metadata)
        target = SmallNet(3, generator)
        fc = copy.deepcopy(target.fc.state_dict())
        try:
            load_backbone(target, state, prefix, head)
        except NotImplementedError:
            raise
        except Exception as error:
            text = str(error)
            if head != "fc" and head in text and f"{prefix}{head}" not in text:
                hint = _head_hint(head)
            elif head == "fc" and "size mismatch" in text and "fc." in text:
                hint = (
                    "use the head argument: this checkpoint's head is 'fc', like the model's, "
                    "and must be dropped too"
                )
            else:
                hint = _load_hint(error) or (
                    "use the prefix argument: the first checkpoint's 'module.' is not every "
                    "checkpoint's prefix"
                    if attribute == "_orig_mod"
                    else _PREFIX_HINT
                    if prefix in text
                    else None
                )
            raise Mismatch(
                f"load_backbone raised {type(error).__name__} on a checkpoint with the prefix "
                f"{prefix!r} and the head {head!r}: {text[:200]}",
                hint,
            ) from None
        if list(state) != keys:
            changed = f"its keys now start {list(state)[:2]}, expected {keys[:2]}"
        else:  # the keys are intact: only the shared version metadata was renamed
            changed = (
                f"its version metadata (state._metadata) was renamed: it now starts "
                f"{list(state._metadata)[:2]}, expected {versions[:2]}"
            )
        expect(
            list(state) == keys and list(state._metadata) == versions,
            f"load_backbone changed the caller's checkpoint: {changed}",
            "consume_prefix_in_state_dict_if_present renames the keys of the dict you give it, in "
            "place, and its _metadata too (copy.copy(state) shares that), and deleting the head's "
            "keys changes it as well: work on a copy (OrderedDict(state), with a copy of its "
            "_metadata)",
        )
        differ = differing(target.state_dict(), backbone)
        expect(
            not differ,
            f"with the prefix {prefix!r}, {len(differ)} of {len(backbone)} backbone tensors did not "
            f"load, e.g. {differ[:3]}",
            "strip the prefix from every key before loading, using the prefix argument "
            "(consume_prefix_in_state_dict_if_present does it)",
        )
        expect(not differing(target.fc.state_dict(), fc), "load_backbone changed the new head")
    missing_hint = (
        "raise unless missing_keys is exactly ['fc.weight', 'fc.bias'] and unexpected_keys "
        "is empty: strict=False never complains, and `'fc.weight' in missing_keys` passes "
        "even when more is missing"
    )
    # a deeper model's checkpoint: every key the model has, plus a layer4 it lacks
    deeper = OrderedDict(source.state_dict())
    deeper["layer4.0.weight"] = torch.randn(8, 8, 3, 3, generator=generator)
    refusals = {
        "a checkpoint whose prefix was not given (prefix '')": (
            _saved_wrapped(source, "module"),
            "",
            "which leaves part of the backbone random",
            missing_hint,
        ),
        "a checkpoint without layer2's tensors": (
            OrderedDict((k, v) for k, v in source.state_dict().items() if not k.startswith("layer2.")),
            "",
            "which leaves part of the backbone random",
            missing_hint,
        ),
        "a checkpoint with a layer4 that the model does not have": (
            deeper,
            "",
            "so it came from another architecture",
            "check unexpected_keys too, not only missing_keys: strict=False skips keys the "
            "model lacks in silence, and a checkpoint with extra blocks is not the backbone "
            "you meant to load",
        ),
    }
    # a checkpoint whose head was renamed, loaded as if it were still 'fc'
    refusals["a checkpoint whose head 'classifier' was passed as head='fc'"] = (
        _renamed_head(source.state_dict(), "", "classifier"),
        "",
        "which leaves the old head's keys unexpected",
        "check unexpected_keys too: strict=False skips the old head's keys in silence when they "
        "have a name the model lacks",
    )
    for what, (state, prefix, why, hint) in refusals.items():
        try:
            load_backbone(SmallNet(3, generator), state, prefix, "fc")
        except Exception:  # a refusal: what the exercise asks for
            continue
        raise Mismatch(f"load_backbone accepted {what}, {why}", hint)
    return (
        f"loaded all {len(backbone)} backbone tensors from checkpoints prefixed 'module.' (head "
        "'classifier') and '_orig_mod.' (head 'fc'), kept the new head and the caller's "
        "checkpoint as they were, and refused a wrong prefix, a wrong head name, a checkpoint "
        "without layer2 and one with an extra layer4"
    )
