"""Chapter 7's exercise checkers: right answers pass, the usual mistakes get their hints."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from exercise_cells import run_starter, starter_cells
from scipy import stats
from torch import nn
from torch.distributions import Categorical, kl_divergence

from helpers.exercises import Mismatch
from helpers.exercises.ch07 import (
    check_batched_episode_gradients,
    check_gae_advantages,
    check_long_episodes,
    check_multi_step_update,
    check_paired_test,
)
from helpers.exercises.ch07_reference import (
    CheckSettings,
    DriftLeftPolicy,
    expect_number,
    gae_reference,
    long_episodes_reference,
)
from helpers.exercises.ch07_words import RunEnd, multi_step_answer
from helpers.rl import Episode, discounted_returns

STARTERS = starter_cells("07")
NAMES = {"Update": object, "Episode": Episode, "Settings": CheckSettings, "nn": nn, "torch": torch, "np": np}


# --- what the chapter's own helpers do, written out for the tests -----------------------


def batch_tensors(batch, device):
    states = np.concatenate([e.states[:-1] for e in batch])
    actions = np.concatenate([e.actions for e in batch])
    return torch.as_tensor(states, device=device), torch.as_tensor(actions, device=device)


def batch_returns(batch, settings):
    forever = 1 / (1 - settings.gamma)
    returns = [
        discounted_returns(e.rewards, settings.gamma, bootstrap=forever if e.truncated else 0.0)
        for e in batch
    ]
    return torch.cat(returns)


def normalise(returns, eps):
    return (returns - returns.mean()) / (returns.std() + eps)


def policy_step(policy, optimizer, states, actions, advantages, eps, mistake=None):
    log_probs = Categorical(logits=policy(states)).log_prob(actions)
    weights = advantages if mistake == "raw" else normalise(advantages, eps)
    loss = -(log_probs * weights).mean()
    if mistake != "no zero_grad":
        optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_the_chapter_has_one_starter_per_exercise_and_each_is_not_attempted_untouched():
    expected = [
        ("7.1", "make_multi_step_update"),
        ("7.2", "batched_episode_gradients"),
        ("7.3", "paired_test"),
        ("7.4", "long_episodes"),
        ("7.5", "gae_advantages"),
    ]
    assert len(STARTERS) == len(expected)
    for source, (exercise, *names) in zip(STARTERS, expected, strict=True):
        out = run_starter(source, **NAMES)
        assert out == "".join(
            f"… Exercise {exercise}: not attempted yet: fill in `{name}` above\n" for name in names
        )


def starter_with(index, old, new):
    source = STARTERS[index]
    assert old in source
    return run_starter(source.replace(old, new), **{**globals(), **NAMES})


# --- 7.1 ------------------------------------------------------------------------------


def make_multi_step_update(steps, log, mistake=None):
    def update(batch, policy, optimizer, settings):
        states, actions = batch_tensors(batch, settings.device)
        returns = batch_returns(batch, settings)
        if mistake == "no bootstrap":  # discounted_returns alone: a time-out counts as a fall
            returns = torch.cat([discounted_returns(e.rewards, settings.gamma) for e in batch])
        with torch.no_grad():
            before = Categorical(logits=policy(states))
        for _ in range(1 if mistake == "one step" else steps):
            if mistake == "inside":
                with torch.no_grad():
                    before_step = Categorical(logits=policy(states))
            policy_step(policy, optimizer, states, actions, returns, settings.eps, mistake)
        with torch.no_grad():
            after = Categorical(logits=policy(states))
        kl = {
            "reversed": kl_divergence(after, before).mean(),
            "inside": kl_divergence(before_step, after).mean() if mistake == "inside" else None,
            "sum": kl_divergence(before, after).sum(),
            "zero": kl_divergence(after, after).mean(),
            "half": kl_divergence(before, after).mean() / 2,
        }.get(mistake, kl_divergence(before, after).mean())
        played = after if mistake == "entropy after" else before
        log.append({"kl": kl.item(), "entropy": played.entropy().mean().item()})

    return update


def test_7_1_the_reference_passes_and_says_what_it_measured():
    verdict = check_multi_step_update(make_multi_step_update)
    assert verdict.passed and "matches 3 SGD steps per batch on 2 made-up batches" in verdict.message


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("reversed", "KL(new || old)"),
        ("inside", "last step only"),
        ("sum", "sum over the states"),
        ("zero", "the KL is 0"),
        ("entropy after", "entropy after the steps"),
        ("one step", "one step, not 3"),
        ("no bootstrap", "the truncated episode was not bootstrapped: use batch_returns"),
        ("raw", "the returns are not normalised"),
        ("no zero_grad", "call optimizer.zero_grad() before every backward()"),
    ],
)
def test_7_1_each_usual_mistake_gets_its_hint(mistake, hint):
    verdict = check_multi_step_update(lambda steps, log: make_multi_step_update(steps, log, mistake))
    assert verdict.status == "failed" and hint in verdict.hint


def test_7_1_other_wrong_answers_fail_without_a_hint(capsys):
    verdict = check_multi_step_update(lambda steps, log: make_multi_step_update(steps, log, "half"))
    assert not verdict and verdict.hint is None and "log[0]['kl']" in verdict.message
    assert not check_multi_step_update(lambda steps, log: None)
    assert "should return the update function" in capsys.readouterr().out

    def no_log(steps, log):
        return make_multi_step_update(steps, [])

    assert "`log` should hold 1 entries" in check_multi_step_update(no_log).message

    def a_list(steps, log):
        def update(*args):
            make_multi_step_update(steps, [])(*args)
            log.append([0.0, 0.0])

        return update

    assert "should be a dict with keys 'kl' and 'entropy'" in check_multi_step_update(a_list).message


def test_7_1_a_reader_filling_in_the_starter_with_a_reversed_kl_gets_the_hint():
    body = """states, actions = batch_tensors(batch, settings.device)
        returns = batch_returns(batch, settings)
        with torch.no_grad():
            before = Categorical(logits=policy(states))
        for _ in range(steps):
            policy_step(policy, optimizer, states, actions, returns, settings.eps)
        with torch.no_grad():
            after = Categorical(logits=policy(states))
        kl = kl_divergence(after, before).mean().item()
        log.append({"kl": kl, "entropy": before.entropy().mean().item()})"""
    out = starter_with(0, "raise NotImplementedError  # your code here", body)
    assert out.startswith("✗ Exercise 7.1: log[0]['kl'] is ")
    assert "Hint: that is KL(new || old)" in out


# --- 7.2 ------------------------------------------------------------------------------


def batched_episode_gradients(policy, episodes, weights, device, mistake=None):
    longest = max(len(e.actions) for e in episodes)
    states = torch.zeros(len(episodes), longest, 4)
    actions = torch.zeros(len(episodes), longest, dtype=torch.long)
    padded = torch.zeros(len(episodes), longest)
    for i, (e, w) in enumerate(zip(episodes, weights, strict=True)):
        states[i, : len(w)] = torch.as_tensor(e.states[:-1])
        actions[i, : len(w)] = torch.as_tensor(e.actions)
        padded[i, : len(w)] = w
    params = {k: v.detach() for k, v in policy.named_parameters()}

    def f(params, s, a, w):
        logits = torch.func.functional_call(policy, params, (s,))
        scores = logits if mistake == "logits" else F.log_softmax(logits, dim=-1)
        total = (w * scores.gather(1, a[:, None]).squeeze(1)).sum()
        return {"mean": total / longest, "sign": -total, "double": 2 * total}.get(mistake, total)

    if mistake == "loop":
        grads = [torch.func.grad(f)(params, *row) for row in zip(states, actions, padded, strict=True)]
        grads = {k: torch.stack([g[k] for g in grads]) for k in params}
    else:
        grads = torch.func.vmap(torch.func.grad(f), in_dims=(None, 0, 0, 0))(params, states, actions, padded)
    return torch.cat([grads[k].flatten(1) for k in params], dim=1)


def test_7_2_the_reference_passes():
    verdict = check_batched_episode_gradients(batched_episode_gradients)
    assert verdict.passed and "on 5 episodes of 1 to 7 steps" in verdict.message


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [("logits", "weighted logits"), ("mean", "divided by 7"), ("sign", "sign is flipped")],
)
def test_7_2_each_usual_mistake_gets_its_hint(mistake, hint):
    verdict = check_batched_episode_gradients(lambda *args: batched_episode_gradients(*args, mistake=mistake))
    assert verdict.status == "failed" and hint in verdict.hint


def test_7_2_other_wrong_answers_fail_without_a_hint():
    verdict = check_batched_episode_gradients(
        lambda *args: batched_episode_gradients(*args, mistake="double")
    )
    assert not verdict and verdict.hint is None and "entries differ" in verdict.message
    verdict = check_batched_episode_gradients(lambda *args: batched_episode_gradients(*args, mistake="loop"))
    assert not verdict and "ran the policy 5 times for 5 episodes" in verdict.message


# --- 7.3 ------------------------------------------------------------------------------


def paired_test(greedy, sampled, mistake=None):
    d = (greedy - sampled).double().numpy()
    if mistake == "reversed":
        d = -d
    n = len(d)
    sd = d.std(ddof=0 if mistake == "ddof" else 1)
    se = sd / math.sqrt(n)
    if mistake == "unpaired":
        se = math.sqrt((greedy.double().var() + sampled.double().var()).item() / n)
    z = {
        "one-sided": 1.645 + 0.84,
        "t": stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1),
    }.get(mistake, 1.96 + 0.84)
    needed = (z * (se if mistake == "se" else sd) / d.mean()) ** 2
    mean = d.mean() + (1.0 if mistake == "off" else 0.0)
    # a reader may round the episodes needed up: allowed
    return float(mean), float(se), math.ceil(needed) if mistake is None else needed


def test_7_3_the_reference_passes():
    verdict = check_paired_test(paired_test)
    assert verdict.passed and "20 pairs: " in verdict.message and "12 pairs: " in verdict.message


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("reversed", "sampled - greedy"),
        ("unpaired", "unpaired standard error"),
        ("ddof", "ddof=1"),
        ("se", "standard error where the std"),
        ("one-sided", "one-sided"),
        ("t", "Student's t quantiles"),
    ],
)
def test_7_3_each_usual_mistake_gets_its_hint(mistake, hint):
    verdict = check_paired_test(lambda g, s: paired_test(g, s, mistake))
    assert verdict.status == "failed" and hint in verdict.hint


def test_7_3_other_wrong_answers_fail_without_a_hint():
    verdict = check_paired_test(lambda g, s: paired_test(g, s, "off"))
    assert not verdict and verdict.hint is None and "the mean difference (20 pairs)" in verdict.message
    verdict = check_paired_test(lambda g, s: paired_test(g, s)[:2])
    assert not verdict and "should return (difference, standard error, episodes needed)" in verdict.message


def test_7_3_a_reader_who_uses_numpys_default_std_gets_the_hint():
    body = """d = (greedy - sampled).numpy()
    sd = d.std()
    return d.mean(), sd / len(d) ** 0.5, (2.8 * sd / d.mean()) ** 2"""
    out = starter_with(2, "raise NotImplementedError  # your code here", body)
    assert out.startswith("✗ Exercise 7.3: the paired standard error (20 pairs) is ")
    assert out.endswith("Hint: that divides by n, not n - 1 (NumPy's default): use ddof=1\n")


# --- 7.4 ------------------------------------------------------------------------------


OUTPUTS = ("lengths", "furthest", "last_states")


def long_episodes(policy, n, seed, time_limit, device, mistake=None):
    limit = {} if mistake == "no limit" else {"max_episode_steps": time_limit}
    mode = "sync" if mistake == "sync" else "vector_entry_point"
    envs = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode=mode, **limit)
    observations, _ = envs.reset(seed=seed)
    alive = np.ones(n, dtype=bool)
    lengths, furthest, last = np.zeros(n), np.abs(observations[:, 0]), np.zeros((n, 4))
    while alive.any():
        with torch.no_grad():
            actions = policy(torch.as_tensor(observations)).argmax(dim=1).numpy()
        previous = observations
        observations, _, terminated, truncated, _ = envs.step(actions)
        # "unmasked ...": that output goes on recording after the copy restarted
        everyone = np.ones(n, dtype=bool)
        counted = {
            name: everyone if mistake in ("unmasked", f"unmasked {name}") else alive for name in OUTPUTS
        }
        lengths += counted["lengths"]
        x = np.abs(observations[:, 0])
        furthest = np.where(counted["furthest"], np.maximum(furthest, x), furthest)
        ended = (terminated | truncated) & counted["last_states"]
        last[ended] = (previous if mistake == "before" else observations)[ended]
        alive &= ~(terminated | truncated)
    envs.close()
    if mistake == "shifted":
        furthest = furthest + 0.1
    return lengths, furthest, torch.as_tensor(last)  # NumPy or torch: both accepted


def test_7_4_the_reference_passes_on_episodes_that_end_both_ways():
    verdict = check_long_episodes(long_episodes)
    assert verdict.passed and "6 of them ended before the limit of 200" in verdict.message
    assert "5 of those copies ended again after restarting" in verdict.message


@pytest.mark.parametrize(
    ("mistake", "output", "hint"),
    [
        ("unmasked", "lengths", "stop recording an episode once it ended"),
        ("no limit", "lengths", "max_episode_steps=200"),
        ("sync", "lengths", 'vectorization_mode="vector_entry_point"'),
        ("before", "last_states", "states before the last step"),
    ],
)
def test_7_4_each_usual_mistake_gets_its_hint(mistake, output, hint):
    verdict = check_long_episodes(lambda *args: long_episodes(*args, mistake=mistake))
    assert verdict.status == "failed" and f"`{output}`" in verdict.message and hint in verdict.hint


@pytest.mark.parametrize("output", OUTPUTS)
def test_7_4_recording_after_a_restart_is_caught_in_each_output_alone(output):
    # the other two outputs right: only this one keeps recording after its copy restarted
    verdict = check_long_episodes(lambda *args: long_episodes(*args, mistake=f"unmasked {output}"))
    assert verdict.status == "failed" and verdict.message.startswith(f"`{output}`")
    assert "stop recording an episode once it ended" in verdict.hint


def test_7_4_the_checkers_policy_ends_some_episodes_early_and_restarted_copies_differ():
    ref = long_episodes_reference(DriftLeftPolicy(), 8, 7_014, 200)
    assert (ref["lengths"] <= 10).sum() >= 2 and (ref["lengths"] == 200).sum() >= 2
    assert (ref["all_furthest"] - ref["furthest"]).abs().max() > 0.1
    assert (ref["last_end"] - ref["last_states"]).abs().max() > 0.1
    assert (ref["ends"] > 1).sum() >= 1
    assert list(DriftLeftPolicy().parameters())  # a reader's code may ask for its device


def test_7_4_other_wrong_answers_fail_without_a_hint():
    verdict = check_long_episodes(lambda *args: long_episodes(*args, mistake="shifted"))
    assert not verdict and verdict.hint is None and "`furthest`" in verdict.message
    verdict = check_long_episodes(lambda *args: long_episodes(*args)[0])
    assert not verdict and "should return (lengths, furthest, last_states)" in verdict.message


# --- 7.5 ------------------------------------------------------------------------------


def gae_advantages(rewards, values, last_value, gamma, lam, mistake=None):
    """The chapter's solution written out (one backward pass), with the usual slips."""
    if mistake == "in place":
        values[-1] = values[-1] + 1  # changes the caller's tensor, then computes as if it had not
        values = values.clone()
        values[-1] -= 1
    after = 0.0 if mistake == "no last value" else last_value
    next_values = torch.cat([values[1:], values.new_tensor([after])])
    deltas = rewards + (1.0 if mistake == "undiscounted delta" else gamma) * next_values - values
    factor = {"gamma only": gamma, "lam only": lam}.get(mistake, gamma * lam)
    out, running = [0.0] * len(deltas), 0.0
    order = range(len(deltas)) if mistake == "forward" else range(len(deltas) - 1, -1, -1)
    for t in order:
        running = deltas[t].item() + factor * running
        out[t] = running
    if mistake == "list":
        return out
    result = torch.tensor(out)
    return 2 * result if mistake == "double" else result


def test_7_5_the_reference_passes():
    verdict = check_gae_advantages(gae_advantages)
    assert verdict.passed and "5 made-up episodes" in verdict.message


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("no last value", "last_value"),
        ("forward", "accumulate from the last step backwards"),
        ("gamma only", "that is lam = 1's G_t - V(s_t)"),
        ("lam only", "weighted by lam alone"),
        ("undiscounted delta", "the TD error discounts the next value"),
    ],
)
def test_7_5_each_usual_mistake_gets_its_hint(mistake, hint):
    verdict = check_gae_advantages(lambda *args: gae_advantages(*args, mistake=mistake))
    assert verdict.status == "failed" and hint in verdict.hint


def test_7_5_other_wrong_answers_fail_with_a_message_and_no_hint():
    doubled = check_gae_advantages(lambda *args: gae_advantages(*args, mistake="double"))
    assert not doubled and doubled.hint is None and "entries differ" in doubled.message
    as_list = check_gae_advantages(lambda *args: gae_advantages(*args, mistake="list"))
    assert not as_list and "should be a tensor, got list" in as_list.message
    in_place = check_gae_advantages(lambda *args: gae_advantages(*args, mistake="in place"))
    assert not in_place and "changed the rewards or values" in in_place.message


def test_7_5_lam_1_gives_the_returns_minus_the_values_and_lam_0_the_td_errors():
    rewards, values = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.5, 0.2, 0.1])
    returns = discounted_returns(rewards, 0.9, bootstrap=2.0).double()
    assert torch.allclose(gae_reference(rewards, values, 2.0, 0.9, 1.0), returns - values.double())
    deltas = rewards + 0.9 * torch.tensor([0.2, 0.1, 2.0]) - values
    assert torch.allclose(gae_reference(rewards, values, 2.0, 0.9, 0.0), deltas.double())


def test_7_5_a_reader_filling_in_the_starter_passes():
    body = """next_values = torch.cat([values[1:], values.new_tensor([last_value])])
    deltas = rewards + gamma * next_values - values
    advantages, running = torch.zeros_like(deltas), 0.0
    for t in range(len(deltas) - 1, -1, -1):
        running = deltas[t] + gamma * lam * running
        advantages[t] = running
    return advantages"""
    out = starter_with(4, "    raise NotImplementedError  # your code here", "    " + body)
    assert "Exercise 7.5: matches the definition on 5 made-up episodes" in out


# --- the module's own pieces -------------------------------------------------------------


def test_checkers_leave_the_global_generator_alone():
    state = torch.get_rng_state()
    check_multi_step_update(make_multi_step_update)
    check_long_episodes(long_episodes)
    assert torch.equal(torch.get_rng_state(), state)


def test_expect_number_hints_only_for_numbers_that_match_a_mistake():
    assert expect_number(torch.tensor(2.0), 2.0, "x", rel=1e-3, mistakes={"halved": 1.0}) == 2.0
    assert expect_number(np.float32(2.0), 2.0, "x", rel=1e-3, mistakes={}) == 2.0
    with pytest.raises(Mismatch) as wrong:
        expect_number(1.0, 2.0, "x", rel=1e-3, mistakes={"halved": 1.0})
    assert wrong.value.hint == "halved"
    with pytest.raises(Mismatch, match="x should be a number, got str") as wrong:
        expect_number("1.0", 2.0, "x", rel=1e-3, mistakes={"halved": 1.0})
    assert wrong.value.hint is None
    for rel in (0.0, 1, 2.0):
        with pytest.raises(ValueError, match="rel must be a float in"):
            expect_number(1.0, 1.0, "x", rel=rel, mistakes={})


# --- exercise 1's answer in words (helpers/exercises/ch07_words.py) ---------------------


def _answer(ten_ends, big_ends, control=(320, 320, 480), control_entropy=(0.5, 0.3, 0.4)):
    return multi_step_answer(
        lr=0.01,
        big_lr=0.1,
        ten="ten steps",
        big="one step at lr 0.1",
        run_seeds=[0, 1, 2],
        first_kl={"one step": [1e-3] * 3, "ten steps": [5e-2] * 3, "one step at lr 0.1": [2e-2] * 3},
        ends={"ten steps": ten_ends, "one step at lr 0.1": big_ends},
        control_needed=list(control),
        control_entropy=list(control_entropy),
        budget=160,
        collapse_at=0.05 * math.log(2),
        fair_coin=math.log(2),
        clamp_gap=16.6,
    )


def test_exercise_1_words_follow_the_numbers():
    healthy = RunEnd(solved_at=None, last_val=150.0, entropy=0.5, gap=3.0)
    collapsed = RunEnd(solved_at=None, last_val=9.0, entropy=0.001, gap=20.0)
    near = RunEnd(solved_at=None, last_val=30.0, entropy=0.05 * math.log(2) * 1.05, gap=8.0)
    fast = RunEnd(solved_at=96, last_val=500.0, entropy=0.3, gap=4.0)
    text = "\n".join(_answer([fast, collapsed, near], [collapsed, healthy, healthy]))
    assert "ten times" not in text  # ratios are printed as numbers
    assert "50 to 50 times as large" in text and "20 to 20 times as large" in text
    assert "no control run passed within 160 episodes" in text
    assert "Yet 1 of the 3 runs with ten steps per batch passed, sooner than any control run" in text
    assert (
        "ten steps made the outcome a gamble: 1 of 3 runs passed sooner than with one step, 1 collapsed"
        in text
    )
    assert "clearly collapsed in 1 of 3 runs (ten steps: 1; one step at lr 0.01: 0)" in text
    assert "within the first 160 episodes had entropies 0.5, 0.3, 0.4 nats: 0 of 3 collapsed" in text
    assert "Ten steps: 1 of 3 runs ended within 10% of the threshold" in text
    assert "in 2 of the 2 collapsed runs" in text  # both gaps pass 16.6
    quiet = "\n".join(_answer([healthy] * 3, [healthy] * 3, control=(96, 320, 480)))
    assert "Neither arm collapsed in any of the 3 runs" in quiet
    assert "1 of 3 control runs passed within 160 episodes" in quiet
    assert "collapsed runs" not in quiet
    only_ten = "\n".join(_answer([collapsed, healthy, healthy], [healthy] * 3))
    assert "collapsed in none of the 3 runs (ten steps: 1; one step at lr 0.01: 0)" in only_ten
    assert "in 1 of the 1 collapsed runs" in only_ten
    soft = RunEnd(solved_at=None, last_val=9.0, entropy=0.001, gap=10.0)
    only_big = "\n".join(_answer([healthy] * 3, [soft, healthy, healthy]))
    assert "clearly collapsed in 1 of 3 runs, ten steps in none (one step at lr 0.01: 0)" in only_big
    # a control entropy just inside the near band is not counted as collapsed; one below is
    edge = 0.05 * math.log(2) * 0.95
    counted = "\n".join(_answer([healthy] * 3, [healthy] * 3, control_entropy=(edge, 1e-4, 0.5)))
    assert "nats: 1 of 3 collapsed" in counted
    with pytest.raises(ValueError, match="control_entropy has 2 values for 3 run seeds"):
        _answer([healthy] * 3, [healthy] * 3, control_entropy=(0.5, 0.5))
    assert "in 0 of the 1 collapsed runs: a softmax policy would not be clamped" in only_big
