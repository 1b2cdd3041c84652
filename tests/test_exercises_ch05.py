"""Chapter 05's exercise checkers: right answers pass, the usual mistakes get their hints."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from exercise_cells import run_starter, starter_cells
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FrozenBatchNorm2d

from helpers.exercises.ch05 import (
    GRIDS,
    check_freeze_batchnorm,
    check_layerwise_groups,
    check_load_backbone,
    check_plain_counterpart,
    check_pooled_features,
    check_start_lpft,
    check_unfreeze_for_epoch,
)

STARTERS = starter_cells("05")


def test_the_chapter_has_one_starter_per_exercise_and_each_untouched_is_not_attempted():
    names = [
        ["pooled_features"],
        ["layerwise_groups", "unfreeze_for_epoch"],
        ["load_backbone"],
        ["start_lpft", "plain_counterpart"],
        ["freeze_batchnorm"],
    ]
    assert len(STARTERS) == len(names)
    for k, (source, attempts) in enumerate(zip(STARTERS, names, strict=True), start=1):
        out = run_starter(source, nn=nn, torch=torch)
        assert out == "".join(
            f"… Exercise 5.{k}: not attempted yet: fill in `{name}` above\n" for name in attempts
        )


def attempt(k: int, old: str, new: str) -> str:
    """What starter ``k`` prints when the reader replaces its skeleton line ``old``."""
    source = STARTERS[k - 1]
    assert old in source
    return run_starter(source.replace(old, new), nn=nn, torch=torch, F=F, copy=copy)


# ---- 5.1 ----------------------------------------------------------------------------------


def features(backbone, images, *, mode="eval", pool=None, grad=False, flatten=True):
    """A right answer to exercise 5.1, and the usual mistakes when asked."""
    extractor = create_feature_extractor(backbone, return_nodes=list(GRIDS))
    if mode == "eval":
        extractor.eval()
    with torch.set_grad_enabled(grad):
        maps = extractor(images)
    pool = pool or F.adaptive_avg_pool2d
    pooled = {name: pool(maps[name], grid) for name, grid in GRIDS.items()}
    return {name: p.flatten(1) if flatten else p for name, p in pooled.items()}


def test_pooled_features_right_answer_passes(capsys):
    verdict = check_pooled_features(features)
    assert verdict.passed, verdict
    out = capsys.readouterr().out
    assert out.startswith(
        "✓ Exercise 5.1: matches forward hooks on a fresh narrow GlyphNet (widths 4, 6, 8; in eval mode) "
    )
    assert "a fresh narrow GlyphNet (widths 4, 6, 8; in eval mode)" in out
    assert "for 3 blocks on 6 random images (64, 54, 32 features here; about 256" in out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ({"mode": "train"}, "put the feature extractor in eval()"),
        ({"pool": F.avg_pool2d}, "the grid is the *output* size"),
        ({"pool": F.adaptive_max_pool2d}, "that is max pooling"),
        ({"pool": lambda x, grid: x.mean(dim=(2, 3))}, "one average per channel"),
        ({"flatten": False}, "flatten each pooled map"),
        ({"pool": lambda x, grid: F.adaptive_avg_pool2d(x, grid).permute(0, 2, 3, 1)}, "without a permute"),
        ({"grad": True}, "under torch.no_grad()"),
    ],
)
def test_pooled_features_usual_mistakes_get_their_hints(mistake, hint):
    verdict = check_pooled_features(lambda b, x: features(b, x, **mistake))
    assert not verdict and hint in verdict.hint


def test_pooled_features_other_wrong_answers_fail_without_a_hint():
    doubled = check_pooled_features(lambda b, x: {k: 2 * v for k, v in features(b, x).items()})
    assert not doubled and doubled.hint is None and "entries differ from the reference" in doubled.message
    as_list = check_pooled_features(lambda b, x: list(features(b, x).values()))
    assert not as_list and as_list.message == "pooled_features returned a list, not a dict"
    two = check_pooled_features(lambda b, x: {"layer1": features(b, x)["layer1"]})
    assert "returned the keys ['layer1'], expected ['layer1', 'layer2', 'layer3']" in two.message
    assert "create_feature_extractor" in two.hint
    assert not check_pooled_features(3) and "should be a function, got int" in str(check_pooled_features(3))


# ---- 5.2: gradual unfreezing ---------------------------------------------------------------


def unfreeze(
    model,
    epoch,
    every,
    *,
    order=("layer3", "layer2", "layer1"),
    shift=1,
    head=True,
    freeze=True,
    give="frozen",
    whole=True,
):
    """A right answer to exercise 5.2, and the usual mistakes when asked."""
    joined = max(0, (epoch - shift) // every)
    model.fc.requires_grad_(head)
    frozen, trainable = [], []
    for k, name in enumerate(order, start=1):
        block = model.get_submodule(name)
        if k <= joined:
            block.requires_grad_(True)
            trainable.append(block)
        else:
            if freeze:
                (block if whole else block[0]).requires_grad_(False)
            frozen.append(block)
    return {
        "frozen": frozen,
        "trainable": trainable,
        "tuple": tuple(frozen),
        "set": set(frozen),
        "extra": [*frozen, model.fc],
    }[give]


def test_unfreeze_for_epoch_right_answer_passes(capsys):
    assert check_unfreeze_for_epoch(unfreeze)
    assert check_unfreeze_for_epoch(lambda m, e, n: unfreeze(m, e, n, give="tuple"))
    assert capsys.readouterr().out.startswith(
        "✓ Exercise 5.2: set the blocks of a narrow GlyphNet (widths 4, 6, 8) epoch by epoch as ULMFiT does "
        "(every=2: the head alone in epochs 1-2, layer3 from 3, layer2 from 5, layer1 from 7)"
    )


@pytest.mark.parametrize(
    ("options", "message", "hint"),
    [
        (
            {"shift": 0},
            "in epoch 2 with every=2 the trainable blocks are layer3, expected none",
            "from epoch 1 + every",
        ),
        (
            {"order": ("layer1", "layer2", "layer3")},
            "in epoch 3 with every=2 the trainable blocks are layer1, expected layer3",
            "from the top down",
        ),
        (
            {"freeze": False},
            "in epoch 1 with every=2 the trainable blocks are layer1, layer2, layer3",
            "freeze the blocks that have not joined",
        ),
        ({"head": False}, "in epoch 1 with every=2 the head fc is frozen", "the head trains from the first"),
        (
            {"give": "trainable"},
            "in epoch 1 with every=2 it returned the blocks none (and 0 in all)",
            "not the trainable ones",
        ),
        ({"whole": False}, "layer1 is half frozen", "requires_grad_(flag)"),
    ],
)
def test_unfreeze_for_epoch_usual_mistakes_get_their_hints(options, message, hint):
    verdict = check_unfreeze_for_epoch(lambda m, e, n: unfreeze(m, e, n, **options))
    assert not verdict and message in verdict.message and hint in verdict.hint


def test_unfreeze_for_epoch_other_wrong_answers_fail_without_a_hint():
    at_once = check_unfreeze_for_epoch(lambda m, e, n: unfreeze(m, e, 1, shift=0))
    assert not at_once and at_once.hint is None
    assert "in epoch 1 with every=2 the trainable blocks are layer3, expected none" in at_once.message
    some = check_unfreeze_for_epoch(lambda m, e, n: unfreeze(m, e, n, give="set"))
    assert "returned a set; expected a list of the frozen blocks" in some.message
    extra = check_unfreeze_for_epoch(lambda m, e, n: unfreeze(m, e, n, give="extra"))
    assert "(and 4 in all), expected the frozen layer1, layer2, layer3" in extra.message
    assert extra.hint is None
    nothing = check_unfreeze_for_epoch(lambda m, e, n: (unfreeze(m, e, n), None)[1])
    assert "returned a NoneType" in nothing.message


def groups(model, lr, ratio, *, exponent=lambda k: k, part=None, default_rate=False, shared=False):
    """A right answer to exercise 5.2's ``layerwise_groups``, and the usual mistakes when asked."""
    made = []
    for k, name in enumerate(("fc", "layer3", "layer2", "layer1")):
        block = model.get_submodule(name)
        params = (
            model.parameters()
            if shared
            else (block if part is None or name == "fc" else block[part]).parameters()
        )
        group = {"params": list(params)}
        if not (default_rate and name == "fc"):
            group["lr"] = lr / ratio ** exponent(k)
        made.append(group)
    return made


def test_layerwise_groups_right_answer_passes(capsys):
    assert check_layerwise_groups(groups)
    assert capsys.readouterr().out.startswith(
        "✓ Exercise 5.2: every parameter of a narrow GlyphNet (widths 4, 6, 8) in one group, "
        "at lr=0.1 for the head and 0.03333, 0.01111, 0.003704 for layer3, layer2, layer1 (ratio=3)"
    )


@pytest.mark.parametrize(
    ("options", "message", "hint"),
    [
        (
            {"exponent": lambda k: 4 - k if k else 0},
            "the rates are fc 0.1, layer3 0.003704",
            "shrink towards the input",
        ),
        ({"exponent": lambda k: max(k - 1, 0)}, "the rates are fc 0.1, layer3 0.1,", "already at lr / ratio"),
        ({"exponent": lambda k: -k}, "the rates are fc 0.1, layer3 0.3,", "divide by ratio"),
        (
            {"part": 0},
            "6 of the model's 11 parameters are in no group, e.g. ['layer1.1.weight'",
            "batch norm has a weight",
        ),
        (
            {"shared": True},
            "AdamW refused the groups: some parameters appear in more than one",
            "one block's",
        ),
        ({"default_rate": True}, "a group has no 'lr' of its own", "its own rate"),
    ],
)
def test_layerwise_groups_usual_mistakes_get_their_hints(options, message, hint):
    verdict = check_layerwise_groups(lambda m, lr, r: groups(m, lr, r, **options))
    assert not verdict and message in verdict.message and hint in verdict.hint


def test_layerwise_groups_other_wrong_answers_fail_without_a_hint():
    same = check_layerwise_groups(lambda m, lr, r: groups(m, lr, r, exponent=lambda k: 0))
    assert "the rates are fc 0.1, layer3 0.1, layer2 0.1" in same.message and same.hint is None
    no_head = check_layerwise_groups(lambda m, lr, r: groups(m, lr, r)[1:])
    assert "2 of the model's 11 parameters are in no group, e.g. ['fc.weight'" in no_head.message
    assert no_head.hint is None
    extra = check_layerwise_groups(
        lambda m, lr, r: [*groups(m, lr, r), {"params": [nn.Parameter(torch.ones(1))]}]
    )
    assert "the groups hold 1 tensors that are not the model's parameters" in extra.message
    split = groups_split = check_layerwise_groups(
        lambda m, lr, r: [*groups(m, lr, r)[:3], {"params": [m.layer1[0].weight], "lr": 1.0},
                          {"params": list(m.layer1[1].parameters()), "lr": 2.0}]
    )  # fmt: skip
    assert "layer1's parameters learn at several rates: [1.0, 2.0]" in split.message
    assert groups_split.hint is None
    empty = check_layerwise_groups(lambda m, lr, r: [])
    assert "AdamW refused the groups: optimizer got an empty parameter list" in empty.message
    assert empty.hint is None
    a_dict = check_layerwise_groups(lambda m, lr, r: {"params": m.parameters()})
    assert "returned a dict; expected a list of parameter groups" in a_dict.message


# ---- 5.3 ----------------------------------------------------------------------------------


def load(
    model,
    state,
    prefix="",
    head="fc",
    *,
    copy_first=True,
    drop_head=True,
    strict=False,
    check="exact",
    head_name=None,
    drop_first=False,
):
    """A right answer to exercise 5.3, and the usual mistakes when asked."""
    dropped = f"{head if head_name is None else head_name}."
    if drop_first:  # the head dropped before the prefix is stripped: its keys still prefixed
        state = OrderedDict((k, v) for k, v in state.items() if not k.startswith(dropped))
        state._metadata = OrderedDict()
    if copy_first == "shallow":  # a new dict, but the caller's _metadata shared
        state = copy.copy(state)
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, prefix)
    elif copy_first:
        state = OrderedDict((k.removeprefix(prefix), v) for k, v in state.items())
    else:  # renames the caller's dict
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, prefix)
    if drop_head and not drop_first:
        state = OrderedDict((k, v) for k, v in state.items() if not k.startswith(dropped))
    result = model.load_state_dict(state, strict=strict)
    head_missing = "fc.weight" in result.missing_keys
    if check == "exact" and (result.missing_keys != ["fc.weight", "fc.bias"] or result.unexpected_keys):
        raise RuntimeError(f"backbone did not load cleanly: {result}")
    if check == "loose" and (not head_missing or result.unexpected_keys):
        raise RuntimeError(f"backbone did not load cleanly: {result}")
    if check == "missing" and result.missing_keys != ["fc.weight", "fc.bias"]:
        raise RuntimeError(f"backbone did not load cleanly: {result}")


def test_load_backbone_right_answer_passes(capsys):
    assert check_load_backbone(load)
    assert capsys.readouterr().out.startswith(
        "✓ Exercise 5.3: loaded all 18 backbone tensors from checkpoints prefixed 'module.' (head "
        "'classifier') and '_orig_mod.' (head 'fc')"
    )


def test_load_backbone_head_mistakes_get_their_hints():
    # the prefix stripped but the model's head name dropped: 'classifier.*' left unexpected
    prefix_only = check_load_backbone(lambda m, s, p, h: load(m, s, p, h, head_name="fc"))
    assert "on a checkpoint with the prefix 'module.' and the head 'classifier'" in prefix_only.message
    assert "this checkpoint's head is called 'classifier'" in prefix_only.hint
    # the head dropped by its name before the prefix came off: nothing matched
    too_early = check_load_backbone(lambda m, s, p, h: load(m, s, p, h, drop_first=True))
    assert "this checkpoint's head is called 'classifier'" in too_early.hint
    # the head name handled but the prefix ignored: nothing of the backbone loads
    head_only = check_load_backbone(lambda m, s, p, h: load(m, s, "", h))
    assert "consume_prefix_in_state_dict_if_present(state, prefix)" in head_only.hint
    # 'classifier' hard-coded: the checkpoint whose head is 'fc' keeps its old head
    hard_coded = check_load_backbone(lambda m, s, p, h: load(m, s, p, h, head_name="classifier"))
    assert "prefix '_orig_mod.' and the head 'fc'" in hard_coded.message
    assert "use the head argument" in hard_coded.hint
    # strict=False, only missing_keys checked: the renamed old head goes unnoticed
    silent = check_load_backbone(lambda m, s, p, h: load(m, s, p, h, check="missing"))
    assert not silent and "check unexpected_keys too" in silent.hint


def test_load_backbone_refuses_a_head_passed_under_the_wrong_name():
    def ignores_extra_head(model, state, prefix, head):
        # right for every checkpoint that names its head as the caller says,
        # but it accepts an old head's keys that the model lacks
        if any(k.removeprefix(prefix).startswith("layer4.") for k in state):
            raise RuntimeError("extra block")
        load(model, state, prefix, head, check="missing")

    verdict = check_load_backbone(ignores_extra_head)
    assert "accepted a checkpoint whose head 'classifier' was passed as head='fc'" in verdict.message
    assert "the old head's keys in silence" in verdict.hint


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ({"copy_first": False}, "renames the keys of the dict you give it, in place"),
        ({"drop_head": False}, "drop the keys that start with 'classifier.'"),
        ({"strict": True}, "load with strict=False"),
        ({"check": None}, "strict=False never complains"),
        ({"check": "loose"}, "passes even when more is missing"),
        ({"check": "missing"}, "check unexpected_keys too"),
        ({"copy_first": "shallow"}, "copy.copy(state) shares that"),
    ],
)
def test_load_backbone_usual_mistakes_get_their_hints(mistake, hint):
    verdict = check_load_backbone(lambda m, s, p, h: load(m, s, p, h, **mistake))
    assert not verdict and hint in verdict.hint


def test_load_backbone_names_what_changed_in_the_callers_checkpoint():
    renamed = check_load_backbone(lambda m, s, p, h: load(m, s, p, h, copy_first=False))
    assert "its keys now start ['layer1.0.weight'" in renamed.message
    shallow = check_load_backbone(lambda m, s, p, h: load(m, s, p, h, copy_first="shallow"))
    assert "its version metadata (state._metadata) was renamed: it now starts" in shallow.message
    assert "expected ['module.'" not in shallow.message and "expected ['', 'module']" in shallow.message


def test_load_backbone_refuses_a_checkpoint_with_extra_keys():
    ignores_extra = check_load_backbone(lambda m, s, p, h: load(m, s, p, h, check="missing"))
    assert "accepted a checkpoint with a layer4 that the model does not have" in ignores_extra.message
    assert "so it came from another architecture" in ignores_extra.message


def test_load_backbone_prefix_mistakes_get_their_hints():
    fixed = check_load_backbone(lambda m, s, p, h: load(m, s, "module.", h))
    assert "raised RuntimeError on a checkpoint with the prefix '_orig_mod.'" in fixed.message
    assert "use the prefix argument" in fixed.hint
    unchecked = check_load_backbone(lambda m, s, p, h: load(m, s, "module.", h, check=None))
    assert "with the prefix '_orig_mod.', 18 of 18 backbone tensors did not load" in unchecked.message
    assert "strip the prefix" in unchecked.hint


def test_load_backbone_names_the_prefix_helper_when_the_prefix_is_not_stripped():
    unstripped = check_load_backbone(lambda m, s, p, h: load(m, s, "", h))
    assert "raised RuntimeError on a checkpoint with the prefix 'module.'" in unstripped.message
    assert "consume_prefix_in_state_dict_if_present(state, prefix)" in unstripped.hint


def test_load_backbone_other_wrong_answers_fail_without_a_hint():
    def deletes_head(model, state, prefix, head):
        for key in [k for k in state if k.endswith((f"{head}.weight", f"{head}.bias"))]:
            del state[key]
        load(model, state, prefix, head)

    assert "changed the caller's checkpoint" in check_load_backbone(deletes_head).message

    def touches_head(model, state, prefix, head):
        load(model, state, prefix, head)
        model.fc.reset_parameters()

    assert check_load_backbone(touches_head).message == "load_backbone changed the new head"
    broken = check_load_backbone(lambda m, s, p, h: 1 / 0)
    assert "raised ZeroDivisionError" in broken.message and broken.hint is None


# ---- 5.4 ----------------------------------------------------------------------------------


def lpft(
    fe_model,
    lr,
    factor,
    *,
    deepcopy=True,
    new_head=False,
    unfreeze=True,
    frozen="copy",
    groups=2,
    optimizer="adamw",
):
    """A right answer to exercise 5.4, and the usual mistakes when asked."""
    model = copy.deepcopy(fe_model) if deepcopy else fe_model
    if new_head:
        model.fc = nn.Linear(model.fc.in_features, model.fc.out_features)
    if unfreeze:
        model.layer3.requires_grad_(True)
    blocks = {
        "copy": [model.layer1, model.layer2],
        "with layer3": [model.layer1, model.layer2, model.layer3],
        "original": [fe_model.layer1, fe_model.layer2],
    }[frozen]
    source = fe_model if groups == "original" else model
    if groups == 1:
        params = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        params = [
            {"params": source.layer3.parameters(), "lr": lr * factor},
            {"params": model.fc.parameters(), "lr": lr},
        ]
    make = {
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=1e-4),
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=1e-4),
        "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9),
        "default decay": lambda: torch.optim.AdamW(params, lr=lr),
    }[optimizer]
    return model, blocks, make()


def test_start_lpft_right_answer_passes(capsys):
    assert check_start_lpft(lpft)
    assert capsys.readouterr().out == (
        "✓ Exercise 5.4: a copy with the trained head (320 weights kept), layer3 and fc trainable "
        "at 0.006 and 0.02 with AdamW (weight decay 0.0001), layer1 and layer2 frozen and in "
        "`frozen`; the feature-extraction model unchanged\n"
    )


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ({"deepcopy": False}, "copy.deepcopy the feature-extraction model"),
        ({"new_head": True}, "a new random head makes it plain fine-tuning"),
        ({"unfreeze": False}, "unfreeze layer3"),
        ({"frozen": "with layer3"}, "leave it out of `frozen`"),
        ({"frozen": "original"}, "not the original model's"),
        ({"groups": 1}, "give it its own parameter group"),
        ({"groups": "original"}, "over the copy's parameters"),
        ({"optimizer": "adam"}, "AdamW decays the weights directly"),
        ({"optimizer": "sgd"}, "use torch.optim.AdamW(groups, lr=lr, weight_decay=1e-4)"),
        ({"optimizer": "default decay"}, "AdamW's default weight_decay is 1e-2"),
    ],
)
def test_start_lpft_usual_mistakes_get_their_hints(mistake, hint):
    verdict = check_start_lpft(lambda m, lr, f: lpft(m, lr, f, **mistake))
    assert not verdict and hint in verdict.hint


def test_plain_counterpart_right_answer_passes(capsys):
    assert check_plain_counterpart(lambda draw, factor: (10, draw, "fine-tuning", factor))
    assert capsys.readouterr().out == (
        "✓ Exercise 5.4: plain fine-tuning on the same draw, 10 labels per class, at the same "
        "factor and for the same 12 epochs: only the start (a random head or the probe) differs\n"
    )


@pytest.mark.parametrize(
    ("counterpart", "hint"),
    [
        (lambda d, f: (10, "fine-tuning", d), "matches LP-FT's cost, not its schedule"),
        (lambda d, f: (10, d, "feature extraction", 0.0), "LP-FT's first phase, the probe itself"),
        (lambda d, f: (10, d, "fine-tuning, random layer3", f), "a control changes layer3 itself"),
        (lambda d, f: (10, 0, "fine-tuning", f), "the same draw"),
        (lambda d, f: (10, d, "fine-tuning", 0.01), "compare at the same one"),
        (lambda d, f: (1, d, "fine-tuning", f), "must see the same images"),
    ],
)
def test_plain_counterpart_design_slips_get_their_hints(counterpart, hint):
    verdict = check_plain_counterpart(counterpart)
    assert not verdict and hint in verdict.hint


def test_plain_counterpart_other_wrong_answers_fail_without_a_hint():
    verdict = check_plain_counterpart(lambda d, f: [10, d, "fine-tuning", f])
    assert verdict.message == "plain_counterpart(7, 0.1) returned a list, not a key of `runs` (a tuple)"
    verdict = check_plain_counterpart(lambda d, f: (10, d))
    assert "returned (10, 7)" in verdict.message and verdict.hint is None
    assert not check_plain_counterpart("(10, draw, 'fine-tuning', factor)")


def test_start_lpft_other_wrong_answers_fail_without_a_hint():
    def unfreezes_the_original(fe_model, lr, factor):
        fe_model.layer3.requires_grad_(True)
        return lpft(fe_model, lr, factor)

    assert check_start_lpft(unfreezes_the_original).message == "the feature-extraction model was changed"

    def new_layer3(fe_model, lr, factor):
        model, frozen, optimizer = lpft(fe_model, lr, factor)
        with torch.no_grad():
            model.layer3[0].weight.zero_()
        return model, frozen, optimizer

    verdict = check_start_lpft(new_layer3)
    assert "1 tensors differ from the feature-extraction model's, e.g. ['layer3.0.weight']" in verdict.message
    assert verdict.hint is None

    def everything_trainable(fe_model, lr, factor):
        model, frozen, optimizer = lpft(fe_model, lr, factor)
        model.requires_grad_(True)
        return model, frozen, optimizer

    verdict = check_start_lpft(everything_trainable)
    assert verdict.message == "layer1's parameters should not require gradients" and verdict.hint is None

    def with_frozen_in_optimizer(fe_model, lr, factor):
        model, frozen, _ = lpft(fe_model, lr, factor)
        groups = [{"params": model.layer3.parameters(), "lr": lr * factor}]
        groups += [{"params": [*model.fc.parameters(), *model.layer1.parameters()], "lr": lr}]
        return model, frozen, torch.optim.AdamW(groups)

    verdict = check_start_lpft(with_frozen_in_optimizer)
    assert "the optimizer holds 3 parameters that are frozen" in verdict.message

    def head_at_factor(fe_model, lr, factor):
        return lpft(fe_model, lr * factor, 1.0)

    assert "fc learns at [0.006], expected 0.02" in check_start_lpft(head_at_factor).message

    def head_without_decay(fe_model, lr, factor):
        model, frozen, _ = lpft(fe_model, lr, factor)
        groups = [
            {"params": model.layer3.parameters(), "lr": lr * factor},
            {"params": model.fc.parameters(), "lr": lr, "weight_decay": 0.0},
        ]
        return model, frozen, torch.optim.AdamW(groups, lr=lr, weight_decay=1e-4)

    verdict = check_start_lpft(head_without_decay)
    assert (
        verdict.message
        == "the weight decay is [0.0, 0.0001], expected 0.0001 in every group as in section 5.7"
    )
    assert verdict.hint is None
    for result, message in [
        (None, "should return (model, frozen, optimizer), got NoneType"),
        ((1, [], None), "the model is a int, not an nn.Module"),
        ("frozen", "`frozen` should list the copy's layer1 and layer2"),
        ("optimizer", "the optimizer is a str, not a torch.optim.Optimizer"),
    ]:
        if result == "frozen":
            verdict = check_start_lpft(lambda m, lr, f: (lpft(m, lr, f)[0], "layer1", None))
        elif result == "optimizer":
            verdict = check_start_lpft(lambda m, lr, f: (*lpft(m, lr, f)[:2], "adam"))
        else:
            verdict = check_start_lpft(lambda m, lr, f, result=result: result)
        assert message in verdict.message and verdict.hint is None


# ---- 5.5 ----------------------------------------------------------------------------------


class ReadersFrozenBatchNorm2d(FrozenBatchNorm2d):
    """Stands for a reader's own class: torchvision's own is refused."""


def freeze(module, *, recurse=True, eps=True, load=True, assign=False, layer=ReadersFrozenBatchNorm2d):
    """A right answer to exercise 5.5, and the usual mistakes when asked."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            fixed = layer(child.num_features, **({"eps": child.eps} if eps else {}))
            if load:
                fixed.load_state_dict(child.state_dict())
            if assign:
                fixed.weight = child.weight
            setattr(module, name, fixed)
        elif recurse:
            freeze(child, recurse=recurse, eps=eps, load=load, assign=assign, layer=layer)


def test_freeze_batchnorm_right_answer_passes(capsys):
    assert check_freeze_batchnorm(freeze)
    assert capsys.readouterr().out.startswith(
        "✓ Exercise 5.5: replaced both BatchNorm2d layers (one nested) by layers with no "
        "parameters; in training mode the module matches"
    )


def test_freeze_batchnorm_refuses_torchvisions_own_layer():
    verdict = check_freeze_batchnorm(lambda m: freeze(m, layer=FrozenBatchNorm2d))
    assert not verdict and "torchvision's FrozenBatchNorm2d, not a layer of your own" in verdict.message
    assert "write the class yourself" in verdict.hint


class OwnFrozen(nn.Module):
    """A reader's own frozen batch norm: buffers only, running statistics always."""

    def __init__(self, bn: nn.BatchNorm2d, *, as_parameters: bool = False):
        super().__init__()
        self.eps = bn.eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(bn, name).detach().clone()
            if as_parameters:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None] + shift[:, None, None]


def own(module, **kwargs):
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, OwnFrozen(child, **kwargs))
        else:
            own(child, **kwargs)


def test_freeze_batchnorm_accepts_a_layer_of_the_readers_own():
    assert check_freeze_batchnorm(own)
    verdict = check_freeze_batchnorm(lambda m: own(m, as_parameters=True))
    assert not verdict and "registers a trainable Parameter again" in verdict.hint


def rebinds(module):
    for child in module.modules():
        if isinstance(child, nn.BatchNorm2d):
            child = FrozenBatchNorm2d(child.num_features, eps=child.eps)  # the mistake: rebinds a name


def stills(module, *, momentum=True, grad=True):
    for child in module.modules():
        if isinstance(child, nn.BatchNorm2d):  # the mistake: kept, only its updates stopped
            if momentum:
                child.momentum = 0.0
            if grad:
                child.requires_grad_(False)


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (lambda m: freeze(m, recurse=False), "recurse into the children"),
        (stills, "replace them with a layer of your own; BatchNorm2d in train mode still"),
        (lambda m: stills(m, grad=False), "whatever its momentum or requires_grad"),
        (lambda m: stills(m, momentum=False), "whatever its momentum or requires_grad"),
        (lambda m: freeze(m, eps=False), "pass the layer's own, eps=bn.eps"),
        (lambda m: freeze(m, load=False), "kept their initial statistics"),
        (lambda m: freeze(m, assign=True), "registers a trainable Parameter again"),
        (rebinds, "rebinding a loop variable changes nothing"),
    ],
)
def test_freeze_batchnorm_usual_mistakes_get_their_hints(attempt, hint):
    verdict = check_freeze_batchnorm(attempt)
    assert not verdict and hint in verdict.hint


def test_freeze_batchnorm_names_the_frozen_layer_when_nothing_was_replaced():
    untouched = check_freeze_batchnorm(lambda module: None)
    assert "2 of 2 BatchNorm2d layers are still there" in untouched.message
    assert "keeps weight, bias and running statistics as buffers" in untouched.hint


def test_freeze_batchnorm_other_wrong_answers_fail_without_a_hint():
    def identity(module):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.Identity())
            else:
                identity(child)

    verdict = check_freeze_batchnorm(identity)
    assert "entries differ from the reference" in verdict.message and verdict.hint is None

    class Drifting(FrozenBatchNorm2d):
        def forward(self, x):
            out = super().forward(x)
            self.bias += 1.0  # a buffer that moves: not frozen at all
            return out

    def drifting(module):
        freeze(module)
        for parent in module.modules():
            for name, child in parent.named_children():
                if isinstance(child, FrozenBatchNorm2d):
                    new = Drifting(child.weight.numel(), eps=child.eps)
                    new.load_state_dict(child.state_dict())
                    setattr(parent, name, new)

    verdict = check_freeze_batchnorm(drifting)
    assert verdict.message == "two forward passes in training mode gave different outputs"

    def scaled(module):
        freeze(module)
        module[0].weight.data.mul_(2)

    verdict = check_freeze_batchnorm(scaled)
    assert "entries differ from the reference" in verdict.message and verdict.hint is None


# ---- the starters, filled in as a reader would --------------------------------------------

SKELETON = "raise NotImplementedError  # your code here"


def test_a_filled_in_starter_runs_its_check_right_and_wrong():
    groups_skeleton = '# fill in: a list of {"params": ..., "lr": ...}\n    ' + SKELETON
    groups = (
        "return [{'params': model.get_submodule(n).parameters(), 'lr': lr / ratio**k} "
        "for k, n in enumerate(['fc', 'layer3', 'layer2', 'layer1'])]"
    )
    right = (
        "return [b for k, b in enumerate([model.layer3, model.layer2, model.layer1], 1) "
        "if not next(b.requires_grad_(k <= (epoch - 1) // every).parameters()).requires_grad]"
    )
    source = STARTERS[1].replace(groups_skeleton, groups).replace(SKELETON, right)
    out = run_starter(source, nn=nn, torch=torch)
    first, second = out.splitlines()
    assert first.startswith(
        "✓ Exercise 5.2: every parameter of a narrow GlyphNet (widths 4, 6, 8) in one group"
    )
    assert second.startswith("✓ Exercise 5.2: set the blocks of a narrow GlyphNet")
    shallow = (
        "[setattr(module, n, __import__('torchvision').ops.FrozenBatchNorm2d(c.num_features, c.eps)) "
        "for n, c in list(module.named_children()) if isinstance(c, nn.BatchNorm2d)]"
    )
    out = attempt(5, SKELETON, shallow)
    assert out.startswith("✗ Exercise 5.5: 1 of 2 BatchNorm2d layers are still there: ['3.1']\n")
    assert out.endswith(
        "  Hint: recurse into the children: the batch norm nested inside a block was not reached\n"
    )
