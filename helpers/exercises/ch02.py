"""Checkers for chapter 2's exercises (neural-network basics).

Each checker runs the reader's code on small, freshly seeded CPU problems against a
reference that does not come from the chapter's solution: ``torch.optim.SGD`` for the
momentum optimizer, one big-batch SGD step per group (whose micro-batches differ in
size) for gradient accumulation, hand-made validation curves for the learning-rate
search, a large reference bootstrap, the trained network's own tensors (and the new
head's, kept from before the call) for a partial ``load_state_dict``, and a direct count
of the batches in an epoch. For the usual mistakes it computes what the mistake would
produce, or reads the error it raised, and names it. Exercise 2.5's batch-size sweep
is checked by :func:`check_sweep_batch_sizes` (in :mod:`helpers.exercises.ch02_sweep`),
re-exported here. Introduced with chapter 2's exercises.
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
    "check_load_matching",
    "check_momentum_sgd",
    "check_rate_search",
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
    """``accumulated_epoch(net, loader, loss_fn, optimizer, k)`` must equal big-batch steps,
    with micro-batches of unequal size."""
    net, x, y = ref.accumulation_problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=ref.MICRO_BATCH)
    optimizer = ref.CountingSGD(net.parameters(), lr=0.5)
    accumulated_epoch(net, loader, nn.BCEWithLogitsLoss(), optimizer, ref.GROUP_OF)
    groups = ", ".join(map(str, ref.GROUPS))
    examples = " + ".join(map(str, ref.GROUP_EXAMPLES))
    last_sizes = [min(ref.MICRO_BATCH, ref.N_EXAMPLES - i * ref.MICRO_BATCH) for i in range(ref.N_MICRO)]
    last_group = " and ".join(map(str, last_sizes[-ref.GROUPS[-1] :]))
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
        f"the weights after {len(loader)} micro-batches ({ref.N_EXAMPLES} examples in batches of "
        f"{ref.MICRO_BATCH}) with k = {ref.GROUP_OF}",
        mistakes={
            f"you weighted the micro-batches of a group equally: the last group's hold {last_group} "
            "examples, so its 2 examples counted as much as the other 4. Weight each micro-batch's "
            "mean loss by its share of the group's examples (or backward the summed loss and divide "
            "by the group's example count before the step)": ref.accumulated_with("group"),
            f"you divided every loss by k = {ref.GROUP_OF}: the last group holds only {ref.GROUPS[-1]} "
            "micro-batches, of unequal size; weight each loss by its share of the group's "
            "examples": ref.accumulated_with("k"),
            f"you weighted each loss by its size over k full micro-batches ({ref.GROUP_OF} x "
            f"{ref.MICRO_BATCH} examples): the last group holds fewer examples, so its step came "
            "out too short; divide by the examples the group actually holds": ref.accumulated_with("full"),
            "summed, the micro-batches' mean losses give more than the group's mean loss: weight "
            "each by its share of the group's examples": ref.accumulated_with("none"),
            "the gradients were not reset after a step, so each step also took in the earlier "
            "groups' gradients: call zero_grad() after optimizer.step()": ref.accumulated_with(zero="never"),
            "the gradients were not reset after a step, so each step also took in the earlier "
            "groups' gradients (and your division rescaled them again): call zero_grad() after "
            "optimizer.step()": ref.summed_without_zero_grad(),
            "zero_grad() before every backward discards the earlier micro-batches of the group: "
            "reset only after a step": ref.accumulated_with(zero="each"),
        },
    )
    return (
        f"matches one SGD step per group of {groups} micro-batches ({examples} examples) taken "
        f"as one batch, to {gap:.1e}, with {expected} optimizer steps"
    )


# Exercise 2.3 ------------------------------------------------------------------------


_SEARCH_HINTS = {
    "last": "that is the rate whose *last* epoch has the lowest loss: keep the rate and epoch "
    "with the lowest validation loss anywhere in the run (section 2.7 kept the best epoch)",
    "from zero": "epochs count from 1: the best epoch is the index of the lowest loss plus 1",
    "edge order": "the grid's edges are its smallest and largest rates, whatever order the rates "
    "come in: compare with min(rates) and max(rates)",
    "edge one side": "a rate is at the grid's edge when it is the smallest *or* the largest tried",
    "improving": "the best epoch is the run's last when it equals the number of epochs run "
    "(len of the curve): more epochs might still lower the loss",
}


def _search_verdict(got: Any, want: tuple, rates: tuple, curves: dict) -> None:
    """Compare the search's answer with ``want``, naming the mistake it matches."""
    expect(
        isinstance(got, tuple | list) and len(got) == 4,
        f"search_rates returned {got!r}; expected a tuple (rate, best_epoch, still_improving, at_edge)",
    )
    rate, epoch, improving, edge = got
    w_rate, w_epoch, w_improving, w_edge = want
    finals = min(rates, key=lambda r: curves[r][-1])
    expect(
        rate == w_rate,
        f"on the rates {rates}, search_rates chose lr {rate!r}; expected {w_rate:g}",
        _SEARCH_HINTS["last"] if rate == finals else None,
    )
    expect(
        epoch == w_epoch,
        f"for lr {w_rate:g} it gave best epoch {epoch!r}; expected {w_epoch}",
        _SEARCH_HINTS["from zero"] if epoch == w_epoch - 1 else None,
    )
    expect(
        bool(improving) == w_improving,
        f"for lr {w_rate:g}, best epoch {w_epoch} of {len(curves[w_rate])}, it said the best epoch "
        f"is the last: {improving!r}; expected {w_improving}",
        _SEARCH_HINTS["improving"],
    )
    ends = rates[0] == w_rate or rates[-1] == w_rate
    hint = _SEARCH_HINTS["edge one side"] if ends == w_edge else _SEARCH_HINTS["edge order"]
    expect(
        bool(edge) == w_edge,
        f"for lr {w_rate:g} among the rates {rates}, it said at the grid's edge: {edge!r}; expected {w_edge}",
        hint,
    )


@checker("2.3", "search_rates")
def check_rate_search(search_rates: Callable[..., Any]) -> str:
    """``search_rates(train_rate, rates)``: one training per rate; the best rate and epoch, flagged."""
    for rates, curves, want in ref.SEARCH_CASES:
        calls: list[float] = []

        def train_rate(lr: float, curves: dict = curves, calls: list = calls) -> list[float]:
            calls.append(lr)
            return list(curves[lr])

        got = search_rates(train_rate, rates)
        expect(
            sorted(calls) == sorted(rates),
            f"search_rates called train_rate with {calls}; expected each of {list(rates)} once",
            "call train_rate once per rate and keep its curve: each call trains a model from scratch",
        )
        _search_verdict(got, want, rates, curves)
    return (
        f"picks the right rate, epoch and flags on {len(ref.SEARCH_CASES)} hand-made grids (the best "
        "inside the grid with a lower last loss elsewhere, at the largest rate's last epoch, at the "
        "smallest rate), training each rate once"
    )


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

_SHAPES = (
    "load_state_dict copies a tensor only into one of the same shape, and no `strict` setting "
    "tolerates a mismatch (strict=False only tolerates missing and unexpected keys): compare each "
    "tensor's .shape with new.state_dict()'s and leave out, and report, those that differ"
)
_STRICT = (
    "load_state_dict is strict by default: keys that one side has and the other lacks raise; "
    "pass strict=False"
)
_REPORT = (
    "return the keys you skipped for shape, a list of str: a loader that skips tensors silently "
    "hides which layers start from scratch"
)


def _load_error(error: RuntimeError) -> Mismatch:
    """The failure for a ``RuntimeError`` from the reader's code, with the hint its text points to."""
    text = str(error)
    hint = next(
        (
            h
            for phrase, h in (
                ("size mismatch", _SHAPES),
                ("Unexpected key", _STRICT),
                ("Missing key", _STRICT),
            )
            if phrase in text
        ),
        None,
    )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = " ".join(lines[:2]).rstrip(".")
    return Mismatch(f"your code raised RuntimeError: {said}", hint)


# (old widths, new widths): hidden widths differ, the output widths too, and in the second
# case `state` holds a layer `new` lacks (its keys are unexpected, not skipped for shape)
_CASES = (((5, 7, 4, 1), (5, 7, 4, 2)), ((5, 7, 4, 1), (5, 7, 6, 2)), ((5, 7, 4, 1), (5, 7, 3)))


def _check_matching(load_matching: Callable[[nn.Module, dict[str, torch.Tensor]], Any], case: int) -> None:
    old_sizes, new_sizes = _CASES[case]
    gen = ref.seeded_generator(20 + case)
    state, new = ref.cloned_state(ref.seeded_mlp(old_sizes, gen)), ref.seeded_mlp(new_sizes, gen)
    given = {key: value.clone() for key, value in state.items()}
    before = ref.cloned_state(new)
    where = f"from an MLP{old_sizes} into an MLP{new_sizes}"
    try:
        got = load_matching(new, given)
    except NotImplementedError:  # a RuntimeError too: the untouched starter
        raise
    except RuntimeError as error:
        raise _load_error(error) from None
    expect(
        given.keys() == state.keys() and all(torch.equal(given[k], state[k]) for k in state),
        f"{where}, load_matching changed the state_dict it was given; it should only read it",
    )
    fits = {k for k, v in before.items() if k in state and state[k].shape == v.shape}
    want = sorted(k for k in before if k in state and k not in fits)
    after = new.state_dict()
    dropped = sorted(k for k in fits if not torch.equal(after[k], state[k]))
    expect(
        not dropped,
        f"{where}, new does not hold the given tensors under {dropped}, though their shapes match",
        "load every tensor whose key new has with the same shape, not only the first layer's",
    )
    changed = sorted(k for k in before if k not in fits and not torch.equal(after[k], before[k]))
    expect(not changed, f"{where}, new's tensors under {changed} changed; nothing fits them, so leave them")
    expect(
        isinstance(got, list | tuple) and all(isinstance(k, str) for k in got),
        f"{where}, load_matching returned {type(got).__name__}, not a list of keys",
        _REPORT,
    )
    got = sorted(got)
    hint = (
        _REPORT
        if not got
        else "report only keys that new has with another shape; keys new lacks are unexpected, "
        "not skipped for shape"
        if set(got) - set(before)
        else "a tensor that was loaded was not skipped: report only those whose shapes differ"
        if set(got) & fits
        else "report every key skipped for shape, biases too"
    )
    expect(got == want, f"{where}, load_matching reported {got}; expected {want}", hint)


@checker("2.4", "load_matching")
def check_load_matching(load_matching: Callable[[nn.Module, dict[str, torch.Tensor]], Any]) -> str:
    """``load_matching(new, state)``: the tensors whose key and shape fit, and the keys skipped for shape."""
    for case in range(len(_CASES)):
        _check_matching(load_matching, case)
    return (
        "loads every tensor whose key and shape fit, leaves the rest, and reports the keys skipped "
        "for shape, for "
        + ", ".join(f"MLP{old} into MLP{new}" for old, new in _CASES)
        + " (a layer the new network lacks is not reported)"
    )


# Exercise 2.5 ------------------------------------------------------------------------
