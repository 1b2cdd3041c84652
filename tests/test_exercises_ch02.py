"""Chapter 2's exercise checkers: right answers pass, the starters are "not attempted",
each listed mistake fails with its own hint, and other wrong answers fail without one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from exercise_cells import run_starter, starter_cells
from torch import nn

from helpers.exercises import ch02_references as ref
from helpers.exercises.ch02 import (
    check_accumulated_epoch,
    check_bootstrap_share,
    check_load_matching,
    check_momentum_sgd,
    check_rate_search,
    check_sweep_batch_sizes,
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
    ("index", "names"),
    list(
        enumerate(
            [
                ["MomentumSGD"],
                ["accumulated_epoch"],
                ["search_rates", "bootstrap_share"],
                ["load_matching"],
                ["sweep_batch_sizes"],
            ]
        )
    ),
)
def test_an_untouched_starter_says_not_attempted_and_nothing_else(index, names):
    out = run_starter(STARTERS[index], torch=torch, nn=nn)
    assert out == "".join(
        f"… Exercise 2.{index + 1}: not attempted yet: fill in `{name}` above\n" for name in names
    )


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
                    elif rule == "nesterov":  # steps by grad + beta * (updated buffer)
                        s.mul_(beta).add_(p.grad)
                        p -= self.lr * (p.grad + beta * s)
                    elif rule == "previous gradient":  # s holds the last gradient only
                        p -= self.lr * (p.grad + beta * s)
                        s.copy_(p.grad)
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
        ("nesterov", "this is Nesterov momentum"),
        ("previous gradient", "β times the previous *gradient*"),
        ("no_grad forgotten", "inside `with torch.no_grad():`"),
        ("wrong lr", None),
    ],
)
def test_momentum_mistakes_get_their_hints(rule, hint):
    assert failed_with(check_momentum_sgd(momentum_class(rule)), hint)


def test_each_momentum_mistake_differs_from_torch_and_from_the_others():
    right = ref.by_torch(ref.BETA)
    made = [ref.by_torch(0.0), ref.by_torch(0.9), ref.by_torch(ref.BETA, nesterov=True)]
    made += [ref.by_rule(rule) for rule in ("dampened", "lagging", "previous gradient")]
    for i, one in enumerate(made):
        assert not torch.allclose(one, right, atol=1e-4)
        assert not any(torch.allclose(one, other, atol=1e-4) for other in made[i + 1 :])


def test_momentum_other_errors_and_non_classes_are_reported():
    verdict = check_momentum_sgd(momentum_class("raises other"))
    assert failed_with(verdict, None) and "RuntimeError: something else" in verdict.message
    assert failed_with(check_momentum_sgd(42), None)


# Exercise 2.2: gradient accumulation ------------------------------------------------------


def accumulation(mistake: str = ""):
    """accumulated_epoch written right (summed losses, gradients divided by the group's
    example count before each step), or with one mistake."""

    def accumulated_epoch(net, loader, loss_fn, optimizer, k):
        n = len(loader)
        optimizer.zero_grad()
        seen = 0  # examples in the group so far
        for i, (inputs, targets) in enumerate(loader):
            start = i - i % k
            group = min(k, n - start)
            if mistake == "zero each":
                optimizer.zero_grad()
            loss = loss_fn(net(inputs).squeeze(1), targets)
            sizes = [min(loader.batch_size, len(loader.dataset) - j * loader.batch_size) for j in range(n)]
            share = sum(sizes[start : start + group]) / len(targets)
            divisor = {
                "never zero, weighted": share,
                "weighted": share,
                "equal weights": group,
                "divide by k": k,
                "no division": 1,
                "divide by n": n,
                "full groups": k * loader.batch_size / len(targets),
            }.get(mistake)
            if divisor is None:  # right: the summed loss, normalised before the step
                (loss * len(targets)).backward()
            else:
                (loss / divisor).backward()
            seen += len(targets)
            last = i == start + group - 1
            if (
                mistake == "step each"
                or (mistake == "skip short group" and last and group == k)
                or (mistake not in ("step each", "skip short group", "never step") and last)
            ):
                if divisor is None:
                    for param in net.parameters():
                        param.grad /= seen
                optimizer.step()
                seen = 0
                if not mistake.startswith("never zero"):
                    optimizer.zero_grad()

    return accumulated_epoch


@pytest.mark.parametrize("way", ["", "weighted"])
def test_accumulation_right_passes(capsys, way):
    # summed losses divided before the step, or each mean loss weighted by its share
    assert check_accumulated_epoch(accumulation(way)).passed
    assert "taken as one batch, to" in capsys.readouterr().out


def test_the_accumulation_problem_has_unequal_micro_batches_in_a_group():
    sizes = [len(rows) for rows in torch.arange(ref.N_EXAMPLES).split(ref.MICRO_BATCH)]
    assert len(set(sizes[-ref.GROUPS[-1] :])) > 1  # the last group: 4 and 2 examples
    assert sum(ref.GROUP_EXAMPLES) == ref.N_EXAMPLES
    # equal weighting is then a real mistake: it moves the weights
    assert (ref.accumulated_with("group") - ref.big_batches()).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("equal weights", "weighted the micro-batches of a group equally"),
        ("divide by k", "you divided every loss by k"),
        ("full groups", "over k full micro-batches"),
        ("no division", "summed, the micro-batches' mean losses"),
        ("never zero", "not reset after a step"),
        ("never zero, weighted", "not reset after a step"),
        ("zero each", "zero_grad() before every backward"),
        ("step each", "take a step only after every k"),
        ("skip short group", "still needs its step"),
        ("never step", None),
        ("divide by n", None),
    ],
)
def test_accumulation_mistakes_get_their_hints(mistake, hint):
    assert failed_with(check_accumulated_epoch(accumulation(mistake)), hint)


# Exercise 2.3: the learning-rate search ---------------------------------------------------


def search(mistake: str = ""):
    """search_rates written right, or with one mistake."""

    def search_rates(train_rate, rates):
        curves = {rate: train_rate(rate) for rate in rates}
        if mistake == "twice":
            curves = {rate: train_rate(rate) for rate in rates}
        if mistake == "last":
            rate = min(curves, key=lambda r: curves[r][-1])
        else:
            rate = min(curves, key=lambda r: min(curves[r]))
        run = curves[rate]
        epoch = run.index(min(run)) + (0 if mistake == "from zero" else 1)
        improving = False if mistake == "improving" else epoch == len(run)
        edges = {
            "edge order": (rates[0], rates[-1]),
            "edge one side": (max(rates),),
        }.get(mistake, (min(rates), max(rates)))
        if mistake == "list":
            return rate
        return rate, epoch, improving, rate in edges

    return search_rates


def test_search_right_passes(capsys):
    assert check_rate_search(search()).passed
    assert "training each rate once" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("last", "*last* epoch has the lowest loss"),
        ("from zero", "epochs count from 1"),
        ("edge order", "whatever order the rates"),
        ("edge one side", "the smallest *or* the largest"),
        ("improving", "more epochs might still lower"),
        ("twice", "call train_rate once per rate"),
        ("list", None),
    ],
)
def test_search_mistakes_get_their_hints(mistake, hint):
    assert failed_with(check_rate_search(search(mistake)), hint)


def test_each_search_case_catches_a_mistake_the_others_miss():
    # the first grid alone catches choosing by the last epoch; the second alone the
    # edge read from the order given; the third alone an edge that only checks the largest
    from helpers.exercises.ch02 import _search_verdict

    def fails(mistake, case):
        rates, curves, want = ref.SEARCH_CASES[case]
        calls = []
        got = search(mistake)(lambda lr: calls.append(lr) or list(curves[lr]), rates)
        try:
            _search_verdict(got, want, rates, curves)
        except Exception:
            return True
        return False

    assert [fails("last", c) for c in range(3)] == [True, False, False]
    assert [fails("edge order", c) for c in range(3)] == [False, True, False]
    assert [fails("edge one side", c) for c in range(3)] == [False, False, True]


# Exercise 2.3: the bootstrap ---------------------------------------------------------------


def bootstrap(mistake: str = ""):
    """bootstrap_share written right, or with one mistake."""

    def bootstrap_share(difference, n_resamples, generator):
        n = len(difference)
        if mistake == "global rng":
            rows = torch.randint(n, (n_resamples, n))
        elif mistake == "own seed":  # repeats, whatever generator it is given
            rows = torch.from_numpy(np.random.default_rng(0).integers(n, size=(n_resamples, n)))
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
    assert "another seed gives a close but different share" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("no replacement", "resample with replacement"),
        ("single values", "resample whole sets"),
        ("below", "count the resamples whose mean is above 0"),
        ("percentage", "not a percentage"),
        ("global rng", "from the `generator` argument"),
        ("own seed", "not from a generator or NumPy seed of your own"),
        ("half", None),
    ],
)
def test_bootstrap_mistakes_get_their_hints(mistake, hint):
    torch.manual_seed(0)
    assert failed_with(check_bootstrap_share(bootstrap(mistake)), hint)


def test_bootstrap_on_all_positive_differences_names_the_flip():
    verdict = check_bootstrap_share(lambda difference, n, generator: 0.0)
    assert failed_with(verdict, "mean is above 0") and "30 positive differences" in verdict.message


# Exercise 2.4: loading the tensors whose shapes fit ------------------------------------------


def matcher(mistake: str = ""):
    """load_matching written right, or with one mistake."""

    def load_matching(new, state):
        own = new.state_dict()
        fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(k for k in state if k in own and k not in fits)
        if mistake == "copies mismatched":  # loads everything new has, whatever its shape
            return new.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        if mistake == "strict default":
            new.load_state_dict(fits)
            return skipped
        if mistake == "silent":  # skips for shape but reports nothing
            new.load_state_dict(fits, strict=False)
            return []
        if mistake == "no report":
            return new.load_state_dict(fits, strict=False)
        if mistake == "first layer only":
            new.load_state_dict({k: v for k, v in fits.items() if k.startswith("0.")}, strict=False)
            return skipped
        if mistake == "reports unexpected":
            new.load_state_dict(fits, strict=False)
            return sorted(k for k in state if k not in fits)
        if mistake == "reports weights only":
            new.load_state_dict(fits, strict=False)
            return [k for k in skipped if k.endswith("weight")]
        if mistake == "reports loaded":
            new.load_state_dict(fits, strict=False)
            return sorted(own)
        if mistake == "partial copy":  # copies the overlapping corner of a mismatched tensor
            new.load_state_dict(fits, strict=False)
            with torch.no_grad():
                for key in skipped:
                    target = new.state_dict()[key]
                    corner = tuple(
                        slice(0, min(a, b)) for a, b in zip(target.shape, state[key].shape, strict=True)
                    )
                    target[corner] = state[key][corner]
            return skipped
        if mistake == "changes state":
            for key in skipped:
                del state[key]
        if mistake == "other error":
            raise RuntimeError("CUDA out of memory")
        new.load_state_dict(fits, strict=False)
        return skipped

    return load_matching


def test_load_matching_right_passes(capsys):
    assert check_load_matching(matcher()).passed
    assert "reports the keys skipped for shape" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("copies mismatched", "no `strict` setting tolerates a mismatch"),
        ("strict default", "strict by default"),
        ("silent", "a loader that skips tensors silently"),
        ("no report", "return the keys you skipped for shape"),
        ("first layer only", "not only the first layer's"),
        ("reports unexpected", "keys new lacks are unexpected"),
        ("reports weights only", "biases too"),
        ("reports loaded", "a tensor that was loaded was not skipped"),
        ("partial copy", None),
        ("changes state", None),
        ("other error", None),
    ],
)
def test_load_matching_mistakes_get_their_hints(mistake, hint):
    assert failed_with(check_load_matching(matcher(mistake)), hint)


def test_each_load_matching_case_catches_what_the_others_miss():
    # only the third case has a layer the new network lacks; only the first loads two layers
    verdict = check_load_matching(matcher("reports unexpected"))
    assert "into an MLP(5, 7, 3)" in verdict.message
    verdict = check_load_matching(matcher("first layer only"))
    assert "into an MLP(5, 7, 4, 2)" in verdict.message and "['2.bias', '2.weight']" in verdict.message
    verdict = check_load_matching(matcher("copies mismatched"))
    assert verdict.message.startswith("your code raised RuntimeError: Error(s) in loading state_dict")
    verdict = check_load_matching(matcher("changes state"))
    assert "changed the state_dict it was given" in verdict.message


# Exercise 2.5: the batch-size sweep ---------------------------------------------------------


def sweeper(mistake: str = ""):
    """sweep_batch_sizes written right, or with one mistake."""

    def rule(runs, *, kept=True):
        best = min(run["best_val"] for run in runs)
        near = [run for run in runs if run["best_val"] <= 1.01 * best]
        if mistake == "lowest" and kept:  # for the kept runs only, not the base rate
            return min(runs, key=lambda run: run["best_val"])
        if mistake == "largest" and kept and runs[0]["batch_size"] == 32:
            return max(near, key=lambda run: run["lr"])
        if mistake == "from largest":
            return max(near, key=lambda run: run["lr"])
        return min(near, key=lambda run: run["lr"])

    def sweep_batch_sizes(train, runs_32, sizes, n_train):
        if mistake == "not a dict":
            return [runs_32]
        if mistake == "from lowest":
            base = min(runs_32, key=lambda run: run["best_val"])["lr"]
        else:
            base = rule(runs_32, kept=False)["lr"]
        kept = {} if mistake == "no 32" else {32: rule(runs_32)}
        for size in sizes:
            if size == 32 and mistake != "with 32":
                continue
            factors = [math.sqrt(size / 32), size / 32]
            if mistake == "inverted":
                factors = [1 / f for f in factors]
            if mistake in ("sqrt only", "linear only"):
                factors = factors[:1] if mistake == "sqrt only" else factors[1:]
            if mistake == "extra run":
                factors.append(1.0)
            runs = [train(base * f, size) for f in factors]
            if size != 32:
                kept[size] = rule(runs)
        bests = [run["best_val"] for run in kept.values()]
        target = max(bests)
        if mistake == "all tried":
            target = max([*bests, *(run["best_val"] for run in runs_32)])
        if mistake in ("lowest target", "unreached is None"):
            target = min(bests)
        if mistake == "loose target":
            target = 1.5 * max(bests)
        if mistake == "epoch one":
            target = max(run["val"][0] for run in kept.values())
        for size, run in kept.items():
            per_epoch = math.ceil(n_train / size)
            if mistake in ("own targets", "differ"):
                target = run["best_val"] * (1.0 if mistake == "own targets" else 1.1)
            start = 0 if mistake == "from zero" else 1
            reached = (e for e, loss in enumerate(run["val"], start=start) if loss <= target)
            epoch = next(reached, None) if mistake == "unreached is None" else next(reached)
            if mistake in ("own best", "own targets"):
                epoch = run["best_epoch"]
            if mistake != "no target":
                run["target"] = target
            if mistake != "no target epoch":
                run["target_epoch"] = epoch
            if epoch is None:
                run["updates"] = None
                continue
            run["updates"] = {
                "floor": epoch * (n_train // size),
                "before best": (epoch - 1) * per_epoch,
                "float": epoch * n_train / size,
                "one epoch": per_epoch,
                "examples": epoch * n_train,
                "ceil total": math.ceil(epoch * n_train / size),
                "plus one": epoch * per_epoch + 1,
                "own best updates": run["best_epoch"] * per_epoch,
            }.get(mistake, np.int64(epoch * per_epoch))
        if mistake == "runs not dicts":
            return {size: run["lr"] for size, run in kept.items()}
        return kept

    return sweep_batch_sizes


def test_sweep_right_passes(capsys):
    assert check_sweep_batch_sizes(sweeper()).passed
    out = capsys.readouterr().out
    assert (
        "on the checker's made-up runs (not the chapter's), it asked for 4 runs" in out
        and "two per batch size other than 32, and kept lr 0.0075 for 8, lr 0.03 for 32" in out
    )


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("from lowest", "not the one with the lowest loss outright"),
        ("from largest", "the largest rate within 1 %"),
        ("inverted", "not by their inverses"),
        ("with 32", "train only the other sizes"),
        ("sqrt only", "train two runs per other size"),
        ("linear only", "train two runs per other size"),
        ("extra run", None),
        ("no 32", "batches of 32 belong in the result too"),
        ("not a dict", None),
        ("runs not dicts", None),
        ("lowest", "the rate with the lowest loss outright"),
        ("largest", "the largest rate within 1 %"),
        ("floor", "the last, shorter batch is an update too"),
        ("before best", "epochs count from 1"),
        ("one epoch", "that is one epoch's updates"),
        ("examples", "not per example"),
        ("ceil total", "round up each epoch's batch count, not the total"),
        ("float", "round n_train / batch_size up with math.ceil"),
        ("plus one", None),
        ("own best", "that is the run's own best epoch"),
        ("own targets", "that is the run's own best epoch"),
        ("differ", "one target for all kept runs"),
        ("no target", "add an entry 'target' to each kept run"),
        ("lowest target", None),
        ("unreached is None", "not every kept run reaches that target"),
        ("epoch one", "it tells the runs apart by nothing"),
        ("from zero", "the first epoch (counted from 1)"),
        ("no target epoch", "add an entry 'target_epoch'"),
        ("own best updates", None),
    ],
)
def test_sweep_mistakes_get_their_hints(mistake, hint):
    assert failed_with(check_sweep_batch_sizes(sweeper(mistake)), hint)


@pytest.mark.parametrize("other_target", ["all tried", "loose target"])
def test_sweep_accepts_any_target_every_kept_run_reaches(other_target):
    # a looser common target than the worst of the bests is a fair choice too, so long as
    # some kept run still needs more than one epoch to reach it
    assert check_sweep_batch_sizes(sweeper(other_target)).passed


def test_sweep_reports_calls_and_non_integer_counts():
    verdict = check_sweep_batch_sizes(lambda train, runs, sizes, n: {})
    assert failed_with(verdict, None) and verdict.message.startswith(
        "train(lr, batch_size) was called with never"
    )

    def bool_counts(train, runs_32, sizes, n_train):
        kept = sweeper()(train, runs_32, sizes, n_train)
        for run in kept.values():
            run["updates"] = True
        return kept

    verdict = check_sweep_batch_sizes(bool_counts)
    assert failed_with(verdict, None) and "should be a whole number (an int), got True" in verdict.message


def test_each_sweep_mistake_differs_from_the_right_sweep_and_from_the_others():
    names = ["from lowest", "from largest", "inverted", "with 32", "sqrt only", "linear only"]
    made = [tuple(sorted(ref.sweep_calls(name))) for name in names]
    assert tuple(sorted(ref.sweep_calls())) not in made and len(set(made)) == len(made)
    for size in ref.SWEEP_SIZES:
        kept = ref.sweep_kept(size)
        epoch = ref.first_epoch_at(kept["val"], ref.sweep_target())
        counts = ref.update_mistakes(epoch, ref.SWEEP_N_TRAIN, size)
        right = ref.updates_to_best(epoch, ref.SWEEP_N_TRAIN, size)
        assert right not in counts.values() and len(set(counts.values())) == len(counts)
    # the common target differs from each run's own best for batches of 32 and of 128
    assert (
        ref.first_epoch_at(ref.sweep_kept(32)["val"], ref.sweep_target()) < ref.sweep_kept(32)["best_epoch"]
    )
    assert ref.sweep_kept(8)["lr"] != ref.sweep_rate_mistakes(8)["lowest"]
    assert ref.sweep_kept(32)["lr"] not in ref.sweep_rate_mistakes(32).values()
