"""Checkers for chapter 7's exercises (policy gradients on CartPole).

Each checker runs the reader's code on inputs of its own (a seeded ``torch.Generator``,
a tiny policy, made-up episodes, the CPU) and compares the result with a reference
from ``helpers.exercises.ch07_reference``, written from the definitions: a REINFORCE
step with ``torch.optim.SGD``, KL divergence and entropy from their formulas,
per-episode gradients from ``torch.autograd.grad``, episode lengths from
``evaluate_policy``, advantages from their double sum. Updates get a
:class:`CheckSettings` and an SGD optimizer, so that every parameter moves by exactly
the learning rate times its gradient and a wrong loss shows in the parameters.
Introduced with chapter 7's exercises.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from helpers.exercises import checker, expect, expect_tensor
from helpers.exercises.ch07_reference import (
    CPU,
    GAE_SLIPS,
    Z_POWER,
    Z_TWO_SIDED,
    CheckSettings,
    DriftLeftPolicy,
    batch_of,
    entropy,
    expect_number,
    flat,
    gae_reference,
    kl_divergence,
    log_probs,
    long_episodes_reference,
    made_up_episodes,
    normalised,
    per_episode_gradients,
    reinforce_loss,
    small_policy,
    stepped,
    stepped_without_zero_grad,
)
from helpers.rl import Episode, evaluate_policy

__all__ = [
    "check_batched_episode_gradients",
    "check_gae_advantages",
    "check_long_episodes",
    "check_multi_step_update",
    "check_paired_test",
]


def _run_update(update: Any, batch: list[Episode], policy: nn.Module, settings: CheckSettings) -> None:
    """Call the reader's update as ``train_reinforce`` would, with an SGD optimizer."""
    expect(callable(update), f"your factory should return the update function, got {type(update).__name__}")
    update(batch, policy, torch.optim.SGD(policy.parameters(), lr=settings.lr), settings)


def _expect_params(
    policy: nn.Module, want: torch.Tensor, what: str, mistakes: dict[str, torch.Tensor]
) -> float:
    return expect_tensor(flat(policy), want, what, atol=1e-6, rtol=1e-4, mistakes=mistakes)


@checker("7.1", "make_multi_step_update")
def check_multi_step_update(make_multi_step_update: Callable[[int, list], Any]) -> str:
    """Three steps on each of two made-up batches: the parameters, and the KL and entropy logged."""
    generator, settings, steps = torch.Generator().manual_seed(701), CheckSettings(), 3
    policy, log = small_policy(generator), []
    update, reference, gaps = make_multi_step_update(steps, log), copy.deepcopy(policy), []
    for call, lengths in enumerate([(6, 9, 4), (5, 8)]):
        batch = made_up_episodes(generator, lengths, truncated=call)
        _run_update(update, batch, policy, settings)
        states, actions, returns = batch_of(batch, settings.gamma)
        loss = reinforce_loss(actions, normalised(returns, settings.eps))
        ends_in_zero = batch_of(batch, settings.gamma, bootstrap=False)[2]
        no_bootstrap = reinforce_loss(actions, normalised(ends_in_zero, settings.eps))
        unnormalised = reinforce_loss(actions, returns)
        played, unbootstrapped, raw = [reference], reference, reference  # played: then after each step
        for _ in range(steps):
            played.append(stepped(played[-1], loss, states))
            unbootstrapped = stepped(unbootstrapped, no_bootstrap, states)
            raw = stepped(raw, unnormalised, states)
        piled_up = stepped_without_zero_grad(reference, loss, states, steps)
        reference = played[-1]
        with torch.no_grad():
            old, before_last, new = (log_probs(p, states) for p in (played[0], played[-2], played[-1]))
        wrong_steps = {
            f"the policy moved by one step, not {steps}": flat(played[1]),
            "the truncated episode was not bootstrapped: use batch_returns": flat(unbootstrapped),
            "the returns are not normalised: policy_step normalises them; a loss of your own must "
            "subtract their mean and divide by their std (+ eps)": flat(raw),
            "the gradients piled up over the steps: call optimizer.zero_grad() before every backward()": flat(
                piled_up
            ),
        }
        _expect_params(policy, flat(reference), f"the parameters after update {call + 1}", wrong_steps)
        expect(
            isinstance(log, list) and len(log) == call + 1,
            f"after {call + 1} update(s) `log` should hold {call + 1} entries, got {log!r}",
        )
        entry = log[-1]
        expect(
            isinstance(entry, dict) and {"kl", "entropy"} <= entry.keys(),
            f"each log entry should be a dict with keys 'kl' and 'entropy', got {entry!r}",
        )
        kl = kl_divergence(old, new)
        mistakes = {
            "that is KL(new || old): kl_divergence(p, q) takes the policy that played first": (
                kl_divergence(new, old).mean().item()
            ),
            "that is the KL of the last step only: take `before` once, before the steps": (
                kl_divergence(before_last, new).mean().item()
            ),
            "that is the sum over the states: take the mean": kl.sum().item(),
            "the KL is 0: was `before` computed after the steps?": 0.0,
        }
        got = expect_number(entry["kl"], kl.mean().item(), f"log[{call}]['kl']", rel=1e-3, mistakes=mistakes)
        gaps.append(abs(got / kl.mean().item() - 1))
        later = {
            "that is the entropy after the steps: take the policy that played the batch": entropy(new)
            .mean()
            .item()
        }
        want = entropy(old).mean().item()
        expect_number(entry["entropy"], want, f"log[{call}]['entropy']", rel=1e-3, mistakes=later)
    return (
        f"matches {steps} SGD steps per batch on 2 made-up batches, and logs their mean KL "
        f"({kl.mean().item():.3g} on the second) to a relative {max(gaps):.0e}"
    )


@checker("7.2", "batched_episode_gradients")
def check_batched_episode_gradients(batched_episode_gradients: Callable[..., Any]) -> str:
    """Rows for 5 made-up episodes of 1 to 7 steps against a per-episode autograd loop."""
    generator = torch.Generator().manual_seed(702)
    policy = small_policy(generator, hidden=8)
    episodes = made_up_episodes(generator, (3, 7, 5, 1, 6))
    weights = [torch.randn(len(e.actions), generator=generator) for e in episodes]
    calls = []
    hook = policy.register_forward_hook(lambda *_: calls.append(1))
    try:
        got = batched_episode_gradients(policy, episodes, weights, CPU)
    finally:
        hook.remove()
    want = per_episode_gradients(policy, episodes, weights)
    longest = max(len(e.actions) for e in episodes)
    mistakes = {
        "these are gradients of the weighted logits: take log_softmax (the log-probabilities) first": (
            per_episode_gradients(policy, episodes, weights, of="logits")
        ),
        f"these are divided by {longest}, the padded length: sum over the steps, do not average": want
        / longest,
        "the sign is flipped: return sum_t w_t log pi(a_t | s_t), not the loss": -want,
    }
    gap = expect_tensor(got, want, "your (M, P) rows", atol=1e-5, rtol=1e-4, mistakes=mistakes)
    expect(
        len(calls) == 1,
        f"your function ran the policy {len(calls)} times for {len(episodes)} episodes: "
        "pad them and run it once, through torch.func.vmap",
    )
    return (
        f"matches a per-episode autograd loop to {gap:.1e}"
        f" on {len(episodes)} episodes of 1 to {longest} steps"
    )


@checker("7.3", "paired_test")
def check_paired_test(paired_test: Callable[[torch.Tensor, torch.Tensor], Any]) -> str:
    """The paired mean, standard error and sample size on two made-up pairs of evaluations."""
    from scipy.stats import t as student_t  # here: importing scipy takes a while

    generator, z, results = torch.Generator().manual_seed(703), Z_TWO_SIDED + Z_POWER, []
    for n in (20, 12):
        greedy = 500.0 - torch.randint(0, 120, (n,), generator=generator).float()
        sampled = (greedy - torch.randint(-60, 80, (n,), generator=generator)).clamp(max=500.0)
        d = (greedy - sampled).double()
        mean, sd = d.mean().item(), d.std().item()
        se, needed = sd / math.sqrt(n), (z * sd / mean) ** 2
        got = paired_test(greedy.clone(), sampled.clone())
        expect(
            isinstance(got, tuple) and len(got) == 3,
            f"paired_test should return (difference, standard error, episodes needed), got {got!r}",
        )
        one_sided = needed * ((1.645 + Z_POWER) / z) ** 2
        t_sum = student_t.ppf(0.975, n - 1) + student_t.ppf(0.8, n - 1)
        with_t = needed * (t_sum / z) ** 2
        unpaired = math.sqrt((greedy.double().var() + sampled.double().var()).item() / n)
        checks = [
            ("the mean difference", mean, 1e-4, {"that is sampled - greedy: take greedy - sampled": -mean}),
            ("the paired standard error", se, 1e-4, {
                "that is the unpaired standard error: take the std of the n differences": unpaired,
                "that divides by n, not n - 1 (NumPy's default): use ddof=1": se * math.sqrt((n - 1) / n),
            }),
            ("the episodes needed", needed, 0.02, {
                "that uses the standard error where the std of one difference belongs": needed / n,
                "that is a one-sided test: a two-sided 5% test uses 1.96": one_sided,
                "that uses Student's t quantiles: the exercise asks for the normal "
                "approximation, 1.96 + 0.84": with_t,
            }),
        ]  # fmt: skip
        for value, (what, want, rel, mistakes) in zip(got, checks, strict=True):
            expect_number(value, want, f"{what} ({n} pairs)", rel=rel, mistakes=mistakes)
        results.append(f"{n} pairs: {mean:+.1f} ± {se:.1f}, {needed:.0f} episodes")
    return "matches the paired difference, standard error and episodes needed on " + "; ".join(results)


@checker("7.4", "long_episodes")
def check_long_episodes(long_episodes: Callable[..., Any]) -> str:
    """Lengths, furthest |x| and final states of 8 greedy episodes under a time limit of 200.

    The policy balances some episodes to the limit and drops others within about 10 steps
    (``DriftLeftPolicy``); the copies that end early restart, then end again or get further
    from the centre than in their first episode, so recording after a restart shows in
    each of the three outputs on its own.
    """
    policy = DriftLeftPolicy()
    n, seed, limit = 8, 7_014, 200
    got = long_episodes(policy, n, seed, limit, CPU)
    expect(
        isinstance(got, tuple) and len(got) == 3,
        f"long_episodes should return (lengths, furthest, last_states), got {type(got).__name__}",
    )
    ref = long_episodes_reference(policy, n, seed, limit)
    restarted = "a finished copy restarts by itself: stop recording an episode once it ended"
    mistakes = {
        "lengths": {
            restarted: ref["every_step"],
            f"these ran to 500 steps: make the environment with max_episode_steps={limit}": (
                evaluate_policy(policy, n, seed).double()
            ),
            "these started from other states: make the environment with vectorization_mode="
            '"vector_entry_point", as evaluate_policy does ("sync" seeds each copy differently)': (
                long_episodes_reference(policy, n, seed, limit, mode="sync")["lengths"]
            ),
        },
        "furthest": {restarted: ref["all_furthest"]},
        "last_states": {
            restarted: ref["last_end"],
            "these are the states before the last step: keep what the ending step returned": ref[
                "before_last"
            ],
        },
    }
    for name, value in zip(mistakes, got, strict=True):
        value = torch.as_tensor(np.asarray(value, dtype=np.float64))
        expect_tensor(value, ref[name], f"`{name}`", atol=1e-6, check_dtype=False, mistakes=mistakes[name])
    lengths = evaluate_policy(policy, n, seed, time_limit=limit).double()
    expect_tensor(ref["lengths"], lengths, "the reference's lengths (a defect in the checker)")
    early, twice = int((lengths < limit).sum()), int((ref["ends"] > 1).sum())
    return (
        f"matches a reference on {n} greedy episodes, {early} of them ended before the limit of {limit} "
        f"steps (and {twice} of those copies ended again after restarting): their lengths, "
        "furthest |x| and final states"
    )


@checker("7.5", "gae_advantages")
def check_gae_advantages(gae_advantages: Callable[..., Any]) -> str:
    """Five made-up episodes against the definition: lam from 0 to 1, ending in a fall and
    in time-outs, one of a single step."""
    generator, gamma = torch.Generator().manual_seed(7_505), 0.9
    cases = ((7, 0.0, 0.8), (9, 5.0, 0.95), (5, 3.0, 0.0), (6, 2.0, 1.0), (1, 4.0, 0.5))
    gap = 0.0
    for steps, last_value, lam in cases:
        rewards = 0.5 + torch.rand(steps, generator=generator)
        values = 3 * torch.rand(steps, generator=generator)
        given = (rewards.clone(), values.clone())
        got = gae_advantages(*given, last_value, gamma, lam)
        want = gae_reference(rewards, values, last_value, gamma, lam)
        mistakes = {
            hint: slip
            for key, hint in GAE_SLIPS.items()
            if not torch.allclose(slip := gae_reference(rewards, values, last_value, gamma, lam, key), want)
        }
        ending = "a fall" if last_value == 0 else f"a time-out (last_value {last_value})"
        what = f"the advantages of a {steps}-step episode ending in {ending}, lam = {lam}"
        if isinstance(got, torch.Tensor):
            got = got.to(torch.float64)
        gap = max(gap, expect_tensor(got, want, what, atol=1e-5, rtol=1e-5, mistakes=mistakes))
        expect(
            torch.equal(given[0], rewards) and torch.equal(given[1], values),
            "gae_advantages changed the rewards or values it was given: compute into a new tensor",
        )
    return (
        f"matches the definition on {len(cases)} made-up episodes (lam 0 to 1, ending in a fall "
        f"and in time-outs) to {gap:.1e}"
    )
