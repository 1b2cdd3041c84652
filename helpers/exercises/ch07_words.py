"""Exercise 7.1's answer in words, from the numbers the solution's runs produced.

The solution in ``chapters/07_rl.py`` trains the runs and measures them; this module only
turns those measurements into sentences, so that the solution cell shows the code that
answers the exercise and not the many branches that phrase the answer for every outcome.
Nothing here trains or measures anything: every function is a pure function of its
arguments, which ``tests/test_exercises_ch07.py`` exercises with made-up numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RunEnd:
    """How one run of an arm ended."""

    solved_at: int | None  # training episodes to pass validation; None if it never did
    last_val: float  # the last greedy validation mean
    entropy: float  # mean entropy of the policy that played the last batch, in nats
    gap: float  # largest logit gap of the final weights on section 7.7's map


def kl_range(values: Sequence[float]) -> str:
    """'a to b' with two significant digits."""
    return f"{min(values):.2g} to {max(values):.2g}"


def multi_step_answer(
    *,
    lr: float,
    big_lr: float,
    ten: str,
    big: str,
    run_seeds: Sequence[int],
    first_kl: dict[str, Sequence[float]],
    ends: dict[str, Sequence[RunEnd]],
    control_needed: Sequence[int | None],
    control_entropy: Sequence[float],
    budget: int,
    collapse_at: float,
    fair_coin: float,
    clamp_gap: float,
    near_band: float = 0.1,
) -> list[str]:
    """The answer to exercise 7.1 as a list of sentences.

    ``first_kl`` maps "one step", ``ten`` and ``big`` to each seed's first-update KL;
    ``ends`` maps ``ten`` and ``big`` to each seed's :class:`RunEnd`; ``control_needed``
    are the episodes section 7.5's plain runs (one step at ``lr``) needed,
    ``control_entropy`` the entropy of the policy that played each of those runs' last batch
    within ``budget``, and ``budget`` the episodes each arm's run could play.
    """
    if len(control_entropy) != len(run_seeds):
        raise ValueError(f"control_entropy has {len(control_entropy)} values for {len(run_seeds)} run seeds")
    arms = (ten, big)
    n_runs = len(run_seeds)
    one = first_kl["one step"]
    ten_ratio = [t / o for t, o in zip(first_kl[ten], one, strict=True)]
    big_ratio = [b / o for b, o in zip(first_kl[big], one, strict=True)]
    outcomes: dict[str, list[str]] = {arm: [] for arm in arms}
    passed_at: dict[str, list[int]] = {arm: [] for arm in arms}
    n_collapsed = dict.fromkeys(arms, 0)  # clearly below the threshold
    n_near = dict.fromkeys(arms, 0)  # within near_band of it: too close to call
    collapsed_gaps = []
    n_sooner = 0
    for arm in arms:
        for run_seed, one_step_needed, end in zip(run_seeds, control_needed, ends[arm], strict=True):
            if end.solved_at is not None:
                passed_at[arm].append(end.solved_at)
                n_sooner += arm == ten and (one_step_needed is None or end.solved_at < one_step_needed)
                outcome = f"passed validation after {end.solved_at} episodes"
            else:
                outcome = f"did not pass (last validation {end.last_val:.0f})"
            off = abs(end.entropy / collapse_at - 1)
            if off <= near_band:
                n_near[arm] += 1
                outcome += (
                    f", entropy {end.entropy:.4f}, within {off:.0%} of the threshold "
                    f"{collapse_at:.4f}: not counted as a clear collapse"
                )
            elif end.entropy < collapse_at:
                n_collapsed[arm] += 1
                collapsed_gaps.append(end.gap)
                outcome += (
                    f", nearly deterministic (entropy {end.entropy:.3f}; final "
                    f"weights' largest logit gap on the map {end.gap:.1f})"
                )
            outcomes[arm].append(f"seed {run_seed} {outcome}")
    lines = [
        "Mean KL divergence between the policy that played the first batch and "
        f"the updated one: one step at lr {lr}: {kl_range(one)}; ten steps at lr {lr}: "
        f"{kl_range(first_kl[ten])} ({min(ten_ratio):.0f} to {max(ten_ratio):.0f} times as "
        f"large); {big}: {kl_range(first_kl[big])} ({min(big_ratio):.0f} to "
        f"{max(big_ratio):.0f} times as large)."
    ]
    lines += [f"{arm.capitalize()} per batch: {'; '.join(outcomes[arm])}." for arm in arms]
    one_step = ", ".join(str(n) for n in control_needed)
    lines.append(f"With one step at lr {lr} the same seeds needed {one_step} episodes.")
    control_within = sum(n is not None and n <= budget for n in control_needed)
    collapse = (
        "a collapse (the policy that played the last batch had an entropy below "
        f"5% of a fair coin's, {collapse_at:.4f} nats, by more than "
        f"{near_band:.0%} of that threshold)"
    )
    if control_within == 0:
        lines.append(
            "Passing validation is not the yardstick at this budget: no control "
            f"run passed within {budget} episodes. A failure here is {collapse}."
        )
    else:
        lines.append(
            f"{control_within} of {n_runs} control runs passed within {budget} episodes; "
            f"a failure here is still {collapse}."
        )
    n_control_collapsed = sum(e < collapse_at * (1 - near_band) for e in control_entropy)
    entropies = ", ".join(f"{e:.2g}" for e in control_entropy)
    lines.append(
        f"The control runs' policies that played their last batch within the first "
        f"{budget} episodes had entropies {entropies} nats: {n_control_collapsed} of {n_runs} "
        "collapsed."
    )
    fastest_control = min((n for n in control_needed if n is not None), default=None)
    for arm in arms:
        if not passed_at[arm]:
            continue
        passes = f"{len(passed_at[arm])} of the {n_runs} runs with {arm} per batch"
        after = " and ".join(str(n) for n in passed_at[arm])
        if fastest_control is not None and max(passed_at[arm]) < fastest_control:
            lines.append(
                f"Yet {passes} passed, sooner than any control run: after {after} "
                f"episodes, where the fastest control run needed {fastest_control}."
            )
        else:
            lines.append(f"{passes[0].upper()}{passes[1:]} passed, after {after} episodes.")
    if n_sooner and n_collapsed[ten]:
        lines.append(
            f"So ten steps made the outcome a gamble: {n_sooner} of {n_runs} runs "
            f"passed sooner than with one step, {n_collapsed[ten]} collapsed. A "
            "large move per batch does not always do harm, but nothing in plain "
            "REINFORCE stops one that goes wrong."
        )
    kl_scale = (sum(first_kl[big]) / len(first_kl[big])) / (sum(first_kl[ten]) / len(first_kl[ten]))
    lead = f"One step per batch at lr {big_lr}, with a first-update KL {kl_scale:.1f} times ten steps',"
    if n_collapsed[big] and n_collapsed[ten]:
        lines.append(
            f"{lead} clearly collapsed in {n_collapsed[big]} of {n_runs} runs "
            f"(ten steps: {n_collapsed[ten]}; one step at lr {lr}: "
            f"{n_control_collapsed}): a large move per batch, by either "
            "route, risks a collapse, and reusing the batch is not needed for it. "
            f"With {n_runs} runs per arm, the first update's KL does not rank the "
            f"harm (lr {big_lr} also enlarges every later step)."
        )
    elif n_collapsed[big]:
        lines.append(
            f"{lead} clearly collapsed in {n_collapsed[big]} of {n_runs} runs, "
            f"ten steps in none (one step at lr {lr}: {n_control_collapsed}): here "
            "one large step did harm that reusing the batch did not, and with "
            f"{n_runs} runs per arm the first update's KL does not rank the harm "
            f"(lr {big_lr} also enlarges every later step)."
        )
    elif n_collapsed[ten]:
        lines.append(
            f"{lead} collapsed in none of the {n_runs} runs (ten steps: "
            f"{n_collapsed[ten]}; one step at lr {lr}: {n_control_collapsed}): here "
            "reusing the batch did harm that one large step did not."
        )
    else:
        lines.append(
            f"Neither arm collapsed in any of the {n_runs} runs: within "
            f"{budget} episodes no harm from a large move showed."
        )
    for arm in arms:
        if n_collapsed[arm]:
            lines.append(
                f"{arm.capitalize()}: {n_collapsed[arm]} of {n_runs} runs ended "
                "with a nearly deterministic policy, one that in almost every "
                "state takes one of the actions almost surely (a fair coin's "
                f"entropy is {fair_coin:.2f} nats)."
            )
        if n_near[arm]:
            lines.append(
                f"{arm.capitalize()}: {n_near[arm]} of {n_runs} runs ended within "
                f"{near_band:.0%} of the threshold, on the edge of a collapse; the "
                "counts above leave them out."
            )
    if collapsed_gaps:
        lines.append(
            "Such a policy rarely samples the other action, so it rarely sees what "
            "that action would have done; its batches carry almost no gradient "
            "towards it, and later batches did not undo the step within the budget."
        )
        over = sum(g > clamp_gap for g in collapsed_gaps)
        if over:
            clamp_note = (
                "on the states where it does, a softmax policy would get no "
                "gradient at all from their samples; with logits the gradient "
                "there is exact, but the other action is almost never sampled"
            )
        else:
            clamp_note = (
                "a softmax policy would not be clamped on these states either; "
                "the other action is simply almost never sampled"
            )
        lines.append(
            f"The largest logit gap on section 7.7's map passes the "
            f"{clamp_gap:.1f} from which Categorical(probs=...) clamps (section "
            f"7.2) in {over} of the {len(collapsed_gaps)} collapsed runs: "
            f"{clamp_note}."
        )
    lines.append(
        "A batch estimates the gradient at the policy that played it, and that "
        "estimate is only good nearby; a policy moved far from it, by many steps "
        "or by one large one, follows a direction measured somewhere else. PPO "
        "reuses batches for several steps while discouraging large moves: it clips "
        "the probability ratio of the new and the old policy in its loss, and some "
        "implementations also stop a batch's steps once the KL divergence passes "
        "a target (the aside in section 7.4)."
    )
    return lines
