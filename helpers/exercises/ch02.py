"""Checkers for chapter 2's exercises (neural-network basics).

Each checker runs the reader's code on small, freshly seeded CPU problems against a
reference that does not come from the chapter's solution: ``torch.optim.SGD`` for the
momentum optimizer, one big-batch SGD step per group for gradient accumulation, a
large reference bootstrap, the trained network's own tensors (and the new head's, kept
from before the call) for a partial ``load_state_dict``, a direct count of the
batches in an epoch, and section 2.5's rate rule written out on hand-made loss tables.
For the usual mistakes it computes what the mistake would produce, or reads the error
it raised, and names it. Exercise 2.5's batch-size sweep is checked by
:func:`check_sweep_batch_sizes` (in :mod:`helpers.exercises.ch02_sweep`, re-exported
here). Introduced with chapter 2's exercises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.exercises import Mismatch, checker, expect, expect_close, expect_tensor
from helpers.exercises import ch02_references as ref
from helpers.exercises.ch02_sweep import check_sweep_batch_sizes

__all__ = [
    "check_accumulated_epoch",
    "check_bootstrap_share",
    "check_load_hidden_only",
    "check_momentum_sgd",
    "check_sweep_batch_sizes",
]


@checker("2.1", "MomentumSGD")
def check_momentum_sgd(optimizer_class: type) -> str:
    """``optimizer_class(params, lr=..., momentum=...)`` with ``step()`` must match torch's SGD."""
    expect(callable(optimizer_class), f"MomentumSGD should be a class, got {type(optimizer_class).__name__}")
    net, x, y = ref.momentum_problem()
    before = ref.flat_parameters(net)
    optimizer = optimizer_class(net.parameters(), lr=ref.LR, momentum=ref.BETA)
    try:
        ref.run_steps(net, x, y, optimizer.step)
    except RuntimeError as error:
        if "leaf Variable" not in str(error):
            raise
        raise Mismatch(
            f"step() raised RuntimeError: {error}",
            "update the parameters inside `with torch.no_grad():`, as section 2.3 did: "
            "autograd refuses to record an in-place change to a leaf",
        ) from None
    after = ref.flat_parameters(net)
    expect(
        not torch.equal(after, before),
        f"after {ref.STEPS} calls of step() the parameters have not changed",
        "change each parameter in place (`param -= ...` or `param.add_(...)`): "
        "`param = param - ...` only rebinds a local name",
    )
    gap = expect_tensor(
        after,
        ref.by_torch(ref.BETA),
        f"the weights after {ref.STEPS} steps (lr {ref.LR}, momentum {ref.BETA})",
        mistakes={
            "these are plain SGD's weights: the extra tensor must carry the previous step "
            "(or the gradients' sum) from one call of step() to the next": ref.by_torch(0.0),
            f"these are momentum 0.9's weights: use the `momentum` argument ({ref.BETA} here)": ref.by_torch(
                0.9
            ),
            "you averaged the gradients (β·buf + (1 - β)·grad), as Adam's first moment does: "
            "momentum adds the whole gradient, buf = β·buf + grad, so steady steps grow "
            "to 1/(1 - β) times": ref.by_rule("dampened"),
            "each parameter moved by its buffer before the buffer took in the new gradient: "
            "update the buffer first, then the parameter": ref.by_rule("lagging"),
            "this is Nesterov momentum (torch.optim.SGD(nesterov=True)), which steps by "
            "grad + β·buf, looking one step ahead: plain momentum steps by the updated buffer "
            "itself": ref.by_torch(ref.BETA, nesterov=True),
            "you added β times the previous *gradient*: the extra tensor must hold the previous "
            "*step* (or the running sum buf = β·buf + grad), so that every earlier gradient "
            "still counts, with weight β, β², …": ref.by_rule("previous gradient"),
        },
    )
    return (
        f"matches torch.optim.SGD(momentum={ref.BETA}) to {gap:.1e} after {ref.STEPS} steps "
        "on a fresh nn.Linear(4, 2)"
    )


# Exercise 2.2 ------------------------------------------------------------------------


@checker("2.2", "accumulated_epoch")
def check_accumulated_epoch(accumulated_epoch: Callable[..., Any]) -> str:
    """``accumulated_epoch(net, loader, loss_fn, optimizer, k)`` must equal big-batch steps."""
    net, x, y = ref.accumulation_problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=ref.MICRO_BATCH)
    optimizer = ref.CountingSGD(net.parameters(), lr=0.5)
    accumulated_epoch(net, loader, nn.BCEWithLogitsLoss(), optimizer, ref.GROUP_OF)
    groups = ", ".join(map(str, ref.GROUPS))
    expected = len(ref.GROUPS)
    expect(
        optimizer.steps != len(loader),
        f"optimizer.step() ran {optimizer.steps} times, once per micro-batch; expected {expected}",
        f"take a step only after every k = {ref.GROUP_OF} micro-batches (and after the last, short group)",
    )
    expect(
        optimizer.steps == expected,
        f"optimizer.step() ran {optimizer.steps} times; expected {expected}, "
        f"one per group of {groups} micro-batches",
        "the last group holds fewer than k micro-batches and still needs its step"
        if optimizer.steps == expected - 1
        else None,
    )
    gap = expect_tensor(
        ref.flat_parameters(net),
        ref.big_batches(),
        f"the weights after {len(loader)} micro-batches of {ref.MICRO_BATCH} with k = {ref.GROUP_OF}",
        mistakes={
            f"you divided every loss by k = {ref.GROUP_OF}: the last group holds only {ref.GROUPS[-1]} "
            "micro-batches, so its step came out too short; divide by the number of "
            "micro-batches in the group": ref.accumulated_with("k"),
            "divide each micro-batch's loss by the number of micro-batches in its group: "
            "summed, the mean losses give that many times the batch's gradient (this assumes "
            "micro-batches of equal size; with a short one, weight each loss by its share of "
            "the group's examples, as section 2.7 showed)": ref.accumulated_with("none"),
            "the gradients were not reset after a step, so each step also took in the earlier "
            "groups' gradients: call zero_grad() after optimizer.step()": ref.accumulated_with(zero="never"),
            "zero_grad() before every backward discards the earlier micro-batches of the group: "
            "reset only after a step": ref.accumulated_with(zero="each"),
        },
    )
    return (
        f"matches one SGD step per group of {groups} micro-batches taken as one batch, "
        f"to {gap:.1e}, with {expected} optimizer steps"
    )


# Exercise 2.3 ------------------------------------------------------------------------


def _share(got: Any, want: float, what: str, mistakes: dict[str, float], tol: float) -> float:
    """``got`` as a float within ``tol`` of ``want``; the hint of a mistake it matches otherwise."""
    value = expect_close(got, want, what, tol=math.inf)  # a finite number, whatever its size
    hint = next((h for h, wrong in mistakes.items() if abs(value - wrong) <= tol < abs(wrong - want)), None)
    expect(abs(value - want) <= tol, f"{what} is {value:.4g}, expected {want:.4g} (± {tol:g})", hint)
    return value


@checker("2.3", "bootstrap_share")
def check_bootstrap_share(bootstrap_share: Callable[..., Any]) -> str:
    """``bootstrap_share(difference, n_resamples, generator)``: share of resampled means above 0."""
    flipped = "count the resamples whose mean is above 0 (where the MLP's loss is lower), not below"
    percentage = "return a share between 0 and 1, not a percentage"
    positive = 0.1 + torch.rand(30, generator=ref.seeded_generator(5))
    got = bootstrap_share(positive, 500, ref.seeded_generator(6))
    on_positive = _share(
        got, 1.0, "the share for 30 positive differences", {flipped: 0.0, percentage: 100.0}, 0.0
    )
    sample, tol = ref.skewed_sample(), 0.04
    want = ref.reference_share(sample)
    mistakes = {
        "resample with replacement (torch.randint), as many values as there are: without "
        "replacement every resample is the whole sample, and its mean never changes": 1.0,
        "resample whole sets: the share of single values above 0 is not the share of "
        "resampled *means* above 0": (sample > 0).double().mean().item(),
        flipped: 1 - want,
        percentage: 100 * want,
    }
    what = "the share for a skewed sample of 40 (2,000 resamples)"
    got = _share(bootstrap_share(sample, 2000, ref.seeded_generator(7)), want, what, mistakes, tol)
    again = expect_close(bootstrap_share(sample, 2000, ref.seeded_generator(7)), want, what, tol=math.inf)
    use_it = (
        "draw the resamples from the `generator` argument (torch.randint(..., generator=generator)), "
        "so that its seed fixes them"
    )
    expect(
        again == got, f"two calls with identically seeded generators gave {got:.4f} and {again:.4f}", use_it
    )
    # a fixed seed of its own repeats too: generators seeded otherwise must give other, close shares
    others = [
        _share(bootstrap_share(sample, 2000, ref.seeded_generator(s)), want, what, {}, tol) for s in (8, 9)
    ]
    expect(
        any(other != got for other in others),
        f"generators with three different seeds all gave {got:.4f}: the resamples ignore `generator`",
        use_it + ", not from a generator or NumPy seed of your own",
    )
    return (
        f"gives {got:.3f} on a skewed sample of 40, against {want:.3f} from 20,000 reference "
        f"resamples, and {on_positive:g} on an all-positive one; a seeded generator repeats it exactly, "
        "another seed gives a close but different share"
    )


# Exercise 2.4 ------------------------------------------------------------------------

_NAMES = (
    "the trained model names its layers `hidden` and `output`, the nn.Sequential by position, "
    "`0` and `2`: rename the keys you load (`hidden.weight` -> `0.weight`)"
)
_SHAPES = (
    "the trained head's tensors have another shape than the new head's, and no `strict` setting "
    "tolerates that (strict=False only tolerates missing and unexpected keys): leave the head's "
    "keys out of what you load"
)
_STRICT = (
    "load_state_dict is strict by default: the new head's keys, `2.weight` and `2.bias`, have no "
    "trained counterpart; pass strict=False and read what it reports"
)


def _load_error(error: RuntimeError, copied: bool) -> Mismatch:
    """The failure for a ``RuntimeError`` from the reader's code, with the hint its text points to."""
    text = str(error)
    hint = next(
        (
            h
            for phrase, h in (
                ("Unexpected key", _NAMES),
                ("size mismatch", _SHAPES),
                ("Missing key", _STRICT),
            )
            if phrase in text
        ),
        None,
    )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    after = ", after it had already copied the hidden layer (a failed load leaves a half-loaded net)"
    said = " ".join(lines[:2]).rstrip(".")
    return Mismatch(f"your code raised RuntimeError: {said}{after if copied else ''}", hint)


def _same(net: nn.Module, state: dict[str, torch.Tensor], prefix: str, source: str) -> bool:
    """``net``'s tensors under ``prefix`` equal ``state``'s under ``source`` (same shapes)."""
    mine = {k.removeprefix(prefix): v for k, v in net.state_dict().items() if k.startswith(prefix)}
    theirs = {k.removeprefix(source): v for k, v in state.items() if k.startswith(source)}
    return mine.keys() == theirs.keys() and all(
        mine[k].shape == theirs[k].shape and torch.equal(mine[k], theirs[k]) for k in mine
    )


def _check_transfer(load_hidden_only: Callable[[nn.Module, nn.Sequential], Any], new_out: int) -> None:
    trained, new = ref.transfer_problem(new_out)
    trained_before, new_before = ref.cloned_state(trained), ref.cloned_state(new)
    case = f"with a new head of {new_out} outputs"
    try:
        report = load_hidden_only(trained, new)
    except NotImplementedError:  # a RuntimeError too: the untouched starter
        raise
    except RuntimeError as error:
        raise _load_error(error, _same(new, trained_before, "0.", "hidden.")) from None
    expect(
        _same(trained, trained_before, "", ""),
        f"{case}, load_hidden_only changed the trained network; it should only read it",
    )
    expect(
        hasattr(report, "missing_keys") and hasattr(report, "unexpected_keys"),
        f"{case}, load_hidden_only returned {type(report).__name__}, not what load_state_dict reports",
        "return the result of new.load_state_dict(..., strict=False): its missing_keys and "
        "unexpected_keys say what was loaded",
    )
    missing, unexpected = sorted(report.missing_keys), sorted(report.unexpected_keys)
    expect(
        _same(new, trained_before, "0.", "hidden."),
        f"{case}, new[0] does not hold the trained hidden layer; load_state_dict reported "
        f"missing {missing}, unexpected {unexpected}",
        "strict=False loaded nothing: " + _NAMES if "hidden.weight" in unexpected else None,
    )
    expect(
        not _same(new, trained_before, "2.", "output."),
        f"{case}, the new head holds the trained head's weights (its shape fits, so nothing raised)",
        "copy the hidden layer only: the new head is for the new task and keeps its fresh weights, "
        "so leave the trained head's keys (`output.*`) out of what you load",
    )
    expect(_same(new, new_before, "2.", "2."), f"{case}, the new head's weights changed")
    expect(
        (missing, unexpected) == (["2.bias", "2.weight"], []),
        f"{case}, load_state_dict reported missing {missing} and unexpected {unexpected}; "
        "expected the new head's keys missing and nothing unexpected",
        "leave the trained head's keys out of what you load (filter them): they show up as unexpected"
        if unexpected
        else "call load_state_dict on the whole new network with the hidden layer's keys: its "
        "report then lists the head's keys as missing, the sign that only the hidden layer was loaded"
        if not missing
        else None,
    )


@checker("2.4", "load_hidden_only")
def check_load_hidden_only(load_hidden_only: Callable[[nn.Module, nn.Sequential], Any]) -> str:
    """``load_hidden_only(trained, new)``: the trained hidden layer into ``new[0]``, the head left alone."""
    for new_out in (3, ref.TRAINED_OUT):
        _check_transfer(load_hidden_only, new_out)
    return (
        f"copies the hidden layer of an MLP({ref.IN_FEATURES}, {ref.HIDDEN}, {ref.TRAINED_OUT}) into "
        f"new[0] and leaves the new head alone, for a head of 3 outputs and one of the trained "
        "head's shape; load_state_dict reports the head's keys missing, nothing unexpected"
    )


# Exercise 2.5 ------------------------------------------------------------------------
