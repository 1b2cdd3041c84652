"""Chapter 2's exercise checkers: right answers pass, the starters are "not attempted",
each listed mistake fails with its own hint, and other wrong answers fail without one."""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict

import pytest
import torch
from exercise_cells import run_starter, starter_cells
from torch import nn

from helpers.exercises.ch02 import (
    check_accumulated_epoch,
    check_bootstrap_share,
    check_make_mlp,
    check_momentum_sgd,
    check_updates_to_best,
)

STARTERS = starter_cells("02")


def failed_with(verdict, hint: str | None) -> bool:
    """The verdict failed, with a hint containing ``hint`` (or with no hint at all)."""
    if verdict.passed or verdict.status != "failed":
        return False
    return verdict.hint is None if hint is None else verdict.hint is not None and hint in verdict.hint


def test_the_chapter_has_one_starter_per_exercise():
    assert len(STARTERS) == 5


@pytest.mark.parametrize(
    ("index", "name"),
    list(enumerate(["MomentumSGD", "accumulated_epoch", "bootstrap_share", "make_mlp", "updates_to_best"])),
)
def test_an_untouched_starter_says_not_attempted_and_nothing_else(index, name):
    out = run_starter(STARTERS[index], torch=torch, nn=nn)
    assert out == f"… Exercise 2.{index + 1}: not attempted yet: fill in `{name}` above\n"


# Exercise 2.1: momentum by hand ----------------------------------------------------------


def momentum_class(rule: str = "right"):
    """MomentumSGD written right, or with one mistake."""

    class MomentumSGD:
        def __init__(self, params, lr, momentum):
            self.params, self.lr, self.momentum = list(params), lr, momentum
            self.steps = [torch.zeros_like(p) for p in self.params]

        def step(self):
            if rule == "no_grad forgotten":
                for p, s in zip(self.params, self.steps, strict=True):
                    p += s.mul_(self.momentum).sub_(self.lr * p.grad)
                return
            if rule == "raises other":
                raise RuntimeError("something else")
            with torch.no_grad():
                for p, s in zip(self.params, self.steps, strict=True):
                    beta = {"fixed 0.9": 0.9, "no momentum": 0.0}.get(rule, self.momentum)
                    if rule == "rebinds":
                        p = p - self.lr * p.grad  # the mistake under test: rebinds a local name
                    elif rule == "averages":
                        s.mul_(beta).add_((1 - beta) * p.grad)
                        p -= self.lr * s
                    elif rule == "lags":
                        p -= self.lr * s
                        s.mul_(beta).add_(p.grad)
                    elif rule == "wrong lr":
                        s.mul_(beta).sub_(2 * self.lr * p.grad)
                        p += s
                    else:  # the previous step, remembered: s <- beta s - lr g; p <- p + s
                        s.mul_(beta).sub_(self.lr * p.grad)
                        p += s

    return MomentumSGD


def test_momentum_right_passes_with_the_measured_gap(capsys):
    verdict = check_momentum_sgd(momentum_class())
    assert verdict.passed
    assert "matches torch.optim.SGD(momentum=0.8) to" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("rule", "hint"),
    [
        ("no momentum", "plain SGD's weights"),
        ("fixed 0.9", "use the `momentum` argument"),
        ("averages", "you averaged the gradients"),
        ("lags", "update the buffer first"),
        ("rebinds", "only rebinds a local name"),
        ("no_grad forgotten", "inside `with torch.no_grad():`"),
        ("wrong lr", None),
    ],
)
def test_momentum_mistakes_get_their_hints(rule, hint):
    assert failed_with(check_momentum_sgd(momentum_class(rule)), hint)


def test_momentum_other_errors_and_non_classes_are_reported():
    verdict = check_momentum_sgd(momentum_class("raises other"))
    assert failed_with(verdict, None) and "RuntimeError: something else" in verdict.message
    assert failed_with(check_momentum_sgd(42), None)


# Exercise 2.2: gradient accumulation ------------------------------------------------------


def accumulation(mistake: str = ""):
    """accumulated_epoch written right, or with one mistake."""

    def accumulated_epoch(net, loader, loss_fn, optimizer, k):
        n = len(loader)
        optimizer.zero_grad()
        for i, (inputs, targets) in enumerate(loader):
            start = i - i % k
            group = min(k, n - start)
            divisor = {"divide by k": k, "no division": 1, "divide by n": n}.get(mistake, group)
            if mistake == "zero each":
                optimizer.zero_grad()
            (loss_fn(net(inputs).squeeze(1), targets) / divisor).backward()
            last = i == start + group - 1
            if (
                mistake == "step each"
                or (mistake == "skip short group" and last and group == k)
                or (mistake not in ("step each", "skip short group", "never step") and last)
            ):
                optimizer.step()
                if mistake != "never zero":
                    optimizer.zero_grad()

    return accumulated_epoch


def test_accumulation_right_passes(capsys):
    assert check_accumulated_epoch(accumulation()).passed
    assert "taken as one batch, to" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("divide by k", "you divided every loss by k"),
        ("no division", "summed, the mean losses"),
        ("never zero", "not reset after a step"),
        ("zero each", "zero_grad() before every backward"),
        ("step each", "take a step only after every k"),
        ("skip short group", "still needs its step"),
        ("never step", None),
        ("divide by n", None),
    ],
)
def test_accumulation_mistakes_get_their_hints(mistake, hint):
    assert failed_with(check_accumulated_epoch(accumulation(mistake)), hint)


# Exercise 2.3: the bootstrap ---------------------------------------------------------------


def bootstrap(mistake: str = ""):
    """bootstrap_share written right, or with one mistake."""

    def bootstrap_share(difference, n_resamples, generator):
        n = len(difference)
        if mistake == "global rng":
            rows = torch.randint(n, (n_resamples, n))
        elif mistake == "no replacement":
            rows = torch.stack([torch.randperm(n, generator=generator) for _ in range(n_resamples)])
        else:
            rows = torch.randint(n, (n_resamples, n), generator=generator)
        means = difference[rows].mean(dim=1)
        if mistake == "single values":
            return (difference > 0).float().mean().item()
        if mistake == "below":
            return (means < 0).float().mean().item()
        if mistake == "percentage":
            return 100 * (means > 0).float().mean().item()
        if mistake == "half":
            return 0.5
        return (means > 0).float().mean()  # a one-element tensor is accepted too

    return bootstrap_share


def test_bootstrap_right_passes(capsys):
    assert check_bootstrap_share(bootstrap()).passed
    assert "a seeded generator repeats it exactly" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("no replacement", "resample with replacement"),
        ("single values", "resample whole sets"),
        ("below", "count the resamples whose mean is above 0"),
        ("percentage", "not a percentage"),
        ("global rng", "from the `generator` argument"),
        ("half", None),
    ],
)
def test_bootstrap_mistakes_get_their_hints(mistake, hint):
    torch.manual_seed(0)
    assert failed_with(check_bootstrap_share(bootstrap(mistake)), hint)


def test_bootstrap_on_all_positive_differences_names_the_flip():
    verdict = check_bootstrap_share(lambda difference, n, generator: 0.0)
    assert failed_with(verdict, "mean is above 0") and "30 positive differences" in verdict.message


# Exercise 2.4: make_mlp ------------------------------------------------------------------


def mlp_builder(mistake: str = ""):
    """make_mlp written right, or with one mistake."""

    def make_mlp(sizes):
        layers = []
        for n_in, n_out in itertools.pairwise(sizes):
            layers.append(nn.Linear(n_in, n_out))
            if mistake != "no relu":
                layers.append(nn.Tanh() if mistake == "tanh" else nn.ReLU())
        if mistake not in ("final relu", "no relu"):
            layers = layers[:-1]
        if mistake == "list":
            return layers
        if mistake == "module":
            return nn.ModuleList(layers)
        if mistake == "square":
            return nn.Sequential(nn.Linear(sizes[0], sizes[0]), nn.ReLU(), *layers)
        return nn.Sequential(*layers)

    return make_mlp


def test_make_mlp_right_passes(capsys):
    assert check_make_mlp(mlp_builder()).passed
    assert "[4, 3] gives one Linear" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("final relu", "no ReLU after the output layer"),
        ("no relu", "put a ReLU between consecutive Linear layers"),
        ("list", "nn.Sequential(*layers)"),
        ("module", None),
        ("square", None),
        ("tanh", None),
    ],
)
def test_make_mlp_mistakes_get_their_hints(mistake, hint):
    assert failed_with(check_make_mlp(mlp_builder(mistake)), hint)


def test_make_mlp_with_renamed_layers_fails_on_the_keys():
    def named(sizes):
        return nn.Sequential(
            OrderedDict(hidden=nn.Linear(sizes[0], sizes[1]), relu=nn.ReLU(), out=nn.Linear(sizes[1], 9))
        )

    verdict = check_make_mlp(named)
    assert failed_with(verdict, None) and "Linear layers" in verdict.message


# Exercise 2.5: updates up to the best epoch ------------------------------------------------


@pytest.mark.parametrize(
    ("updates_to_best", "hint"),
    [
        (lambda e, n, b: e * (n // b), "round the batches per epoch up"),
        (lambda e, n, b: e * n / b, "an update count is a whole number"),
        (lambda e, n, b: math.ceil(e * n / b), "round up per epoch, then multiply"),
        (lambda e, n, b: (e - 1) * math.ceil(n / b), "best_epoch counts from 1"),
        (lambda e, n, b: e * math.ceil(n / b) + 1, None),
    ],
)
def test_updates_mistakes_get_their_hints(updates_to_best, hint):
    assert failed_with(check_updates_to_best(updates_to_best), hint)


def test_updates_right_passes_and_non_numbers_fail(capsys):
    assert check_updates_to_best(lambda e, n, b: e * -(-n // b)).passed
    assert "3 updates an epoch, 21 by epoch 7" in capsys.readouterr().out
    assert check_updates_to_best(lambda e, n, b: float(e * math.ceil(n / b))).passed
    verdict = check_updates_to_best(lambda e, n, b: str(e))
    assert failed_with(verdict, None) and "should be a number, got str" in verdict.message
