"""References and made-up inputs for chapter 7's exercise checkers (``helpers.exercises.ch07``).

Written from the definitions, independently of the chapter's solutions: a REINFORCE
step with ``torch.optim.SGD``, KL divergence and entropy from their formulas,
per-episode gradients from ``torch.autograd.grad``, a record of whole
vector-environment runs from which each first episode is read off afterwards, and
generalised advantages as the double sum that defines them.
``expect_number`` is a scalar counterpart of ``expect_tensor``'s ``mistakes=``.
Introduced with chapter 7's exercises.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers.exercises import expect_close
from helpers.rl import Episode, discounted_returns

CPU = torch.device("cpu")
LR = 0.5  # plain SGD: a parameter moves by exactly -LR times its gradient
Z_TWO_SIDED = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.975)).item()  # 1.96
Z_POWER = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.8)).item()  # 0.84

Loss = Callable[[torch.Tensor], torch.Tensor]  # (N, 2) log-probabilities -> a scalar loss


@dataclass(frozen=True)
class CheckSettings:
    """The settings a chapter-7 update reads (the chapter's ``Settings`` has more)."""

    device: torch.device = CPU
    gamma: float = 0.9
    eps: float = 1e-8
    lr: float = LR


def expect_number(got: Any, want: float, what: str, *, rel: float, mistakes: dict[str, float]) -> float:
    """``got`` must be within ``rel`` (relative) of ``want``; when it is what a mistake in
    ``mistakes`` (hint -> the number it gives) gives, the failure carries that hint."""
    if not isinstance(rel, float) or not 0 < rel < 1:
        raise ValueError(f"rel must be a float in (0, 1), got {rel!r}")
    if isinstance(got, np.generic) or (isinstance(got, torch.Tensor) and got.numel() == 1):
        got = got.item()  # a NumPy scalar (np.float32 is no float) or a one-number tensor
    hint = None
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        hint = next((h for h, p in mistakes.items() if abs(got - p) <= rel * abs(p) + 1e-12), None)
    return expect_close(got, want, what, tol=rel * abs(want) + 1e-12, hint=hint)


def small_policy(generator: torch.Generator, hidden: int = 16, scale: float = 1.0) -> nn.Module:
    """A policy (B, 4) -> (B, 2) logits, every weight ``scale`` times a draw from ``generator``."""
    with torch.random.fork_rng(devices=[]):  # leave the global generator as it was
        policy = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator))
    return policy


def made_up_episodes(
    generator: torch.Generator, lengths: tuple[int, ...], truncated: int = -1
) -> list[Episode]:
    """Episodes of random states, actions and rewards in [0, 2); episode ``truncated`` timed out."""
    episodes = []
    for i, n in enumerate(lengths):
        states = torch.randn(n + 1, 4, generator=generator).numpy()
        actions = torch.randint(2, (n,), generator=generator).numpy()
        rewards = (2 * torch.rand(n, generator=generator, dtype=torch.float64)).numpy()
        timed_out = i == truncated % len(lengths)
        episodes.append(Episode(states, actions, rewards, terminated=not timed_out, truncated=timed_out))
    return episodes


def batch_of(
    episodes: list[Episode], gamma: float, bootstrap: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """States (N, 4), actions (N,), returns (N,); a time-out bootstraps 1 / (1 - gamma)
    (with ``bootstrap=False``, what forgetting it gives: every return ends in 0)."""
    states = torch.as_tensor(np.concatenate([e.states[:-1] for e in episodes]))
    actions = torch.as_tensor(np.concatenate([e.actions for e in episodes]))
    forever = 1 / (1 - gamma)
    returns = [
        discounted_returns(e.rewards, gamma, bootstrap=forever if bootstrap and e.truncated else 0.0)
        for e in episodes
    ]
    return states, actions, torch.cat(returns)


def flat(policy: nn.Module) -> torch.Tensor:
    """All parameters in one vector (P,), detached."""
    return torch.cat([p.detach().flatten() for p in policy.parameters()])


def log_probs(policy: nn.Module, states: torch.Tensor) -> torch.Tensor:
    """(N, 2) log-probabilities of both actions."""
    return F.log_softmax(policy(states), dim=-1)


def stepped(policy: nn.Module, loss: Loss, states: torch.Tensor) -> nn.Module:
    """A copy of ``policy`` after one SGD step (lr ``LR``) on ``loss`` of its log-probabilities."""
    policy = copy.deepcopy(policy)
    optimizer = torch.optim.SGD(policy.parameters(), lr=LR)
    optimizer.zero_grad()
    loss(log_probs(policy, states)).backward()
    optimizer.step()
    return policy


def stepped_without_zero_grad(policy: nn.Module, loss: Loss, states: torch.Tensor, steps: int) -> nn.Module:
    """A copy of ``policy`` after ``steps`` SGD steps that never zero the gradients (they pile up)."""
    policy = copy.deepcopy(policy)
    for p in policy.parameters():
        p.grad = None
    optimizer = torch.optim.SGD(policy.parameters(), lr=LR)
    for _ in range(steps):
        loss(log_probs(policy, states)).backward()
        optimizer.step()
    return policy


def reinforce_loss(actions: torch.Tensor, weights: torch.Tensor) -> Loss:
    """-mean_t w_t log pi(a_t | s_t)."""

    def loss(log_p: torch.Tensor) -> torch.Tensor:
        taken = log_p.gather(1, actions[:, None]).squeeze(1)  # (N,)
        return -(taken * weights).mean()

    return loss


def normalised(returns: torch.Tensor, eps: float) -> torch.Tensor:
    """(returns - mean) / (std + eps), the std with Bessel's correction."""
    return (returns - returns.mean()) / (returns.std() + eps)


def kl_divergence(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """(N,) KL(old || new) = sum_a p_old(a) (log p_old(a) - log p_new(a)) per state."""
    return (old.exp() * (old - new)).sum(dim=1)


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """(N,) entropy -sum_a p(a) log p(a) per state."""
    return -(log_p.exp() * log_p).sum(dim=1)


def per_episode_gradients(
    policy: nn.Module, episodes: list[Episode], weights: list[torch.Tensor], of: str = "log_probs"
) -> torch.Tensor:
    """(M, P): sum_t w_t grad log pi(a_t | s_t) per episode (``of="logits"``: of the taken logit)."""
    rows = []
    for episode, w in zip(episodes, weights, strict=True):
        logits = policy(torch.as_tensor(episode.states[:-1]))  # (T, 2)
        taken = logits if of == "logits" else F.log_softmax(logits, dim=-1)
        chosen = taken.gather(1, torch.as_tensor(episode.actions)[:, None]).squeeze(1)  # (T,)
        grads = torch.autograd.grad((w * chosen).sum(), list(policy.parameters()))
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


class DriftLeftPolicy(nn.Module):
    """Greedy logits (B, 4) -> (B, 2): push right when the pole swings right (omega > 0),
    except when the cart is more than ``x0`` metres left of the centre: then push left.

    A cart that drifts left of ``-x0`` is pushed further left, so its pole falls within
    about 10 steps; the others balance for a long time. Copies whose first episode ends
    early therefore restart and often end again, or get further from the centre, before
    the slowest first episode is over. One parameter, the logit scale, so that code that
    asks the policy for its parameters (its device) works.
    """

    def __init__(self, x0: float = 0.02) -> None:
        super().__init__()
        self.x0 = x0
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        right = (states[:, 3] > 0) & (states[:, 0] > -self.x0)  # (B,)
        zero = torch.zeros_like(states[:, 0])
        return self.scale * torch.stack([zero, right.to(states.dtype)], dim=1)


def long_episodes_reference(
    policy: nn.Module, n: int, seed: int, time_limit: int, mode: str = "vector_entry_point"
) -> dict[str, torch.Tensor]:
    """Greedy play in ``n`` copies until every first episode ended; then read each one off the record.

    ``mode`` is ``gym.make_vec``'s ``vectorization_mode``: ``"sync"`` gives what a reader
    who made the environment that way gets (other start states from the same seed).

    Returns float64 tensors: ``lengths``, ``furthest`` (largest |x|, start included) and
    ``last_states`` (n, 4), and what three mistakes give: ``before_last`` (the state before
    the last step), ``every_step`` (lengths counted for every copy), ``all_furthest`` and
    ``last_end`` (recording on after the copy restarted); ``ends`` counts how often each
    copy ended before the record stops.
    """
    envs = gym.make_vec("CartPole-v1", n, vectorization_mode=mode, max_episode_steps=time_limit)
    observations, _ = envs.reset(seed=seed)
    record, ends = [observations], [np.zeros(n, dtype=bool)]
    with torch.no_grad():
        while not np.any(ends, axis=0).all():
            actions = policy(torch.as_tensor(observations)).argmax(dim=1).numpy()
            observations, _, terminated, truncated, _ = envs.step(actions)
            record.append(observations)
            ends.append(terminated | truncated)
    envs.close()
    states, ended = np.stack(record), np.stack(ends)  # (T + 1, n, 4), (T + 1, n): row k after step k
    last, columns = len(ended) - 1, np.arange(n)
    first = ended.argmax(axis=0)  # the step that ended each first episode
    latest = last - ended[::-1].argmax(axis=0)  # the step of each copy's latest end
    x = np.abs(states[:, :, 0])  # (T + 1, n)
    furthest = np.array([x[: first[i] + 1, i].max() for i in columns])
    found = {
        "lengths": first,
        "furthest": furthest,
        "last_states": states[first, columns],
        "before_last": states[first - 1, columns],
        "every_step": np.full(n, last),
        "all_furthest": x.max(axis=0),
        "last_end": states[latest, columns],
        "ends": ended.sum(axis=0),
    }
    return {name: torch.as_tensor(value, dtype=torch.float64) for name, value in found.items()}


# exercise 7.5's advantages: what each usual slip computes instead, and its hint
GAE_SLIPS = {
    "no last value": "the last step's TD error needs the value after the episode, last_value "
    "(0 after a fall, the bootstrap after a time-out): it was left out",
    "forward": "that sums the errors of the steps before t: an advantage looks ahead, so "
    "accumulate from the last step backwards",
    "gamma only": "the errors are weighted by gamma alone: that is lam = 1's G_t - V(s_t) whatever "
    "lam is; the factor per step is gamma * lam",
    "lam only": "the errors are weighted by lam alone: the factor per step is gamma * lam",
    "undiscounted delta": "the TD error discounts the next value: r_t + gamma * V(s_{t+1}) - V(s_t)",
}


def gae_reference(
    rewards: torch.Tensor,
    values: torch.Tensor,
    last_value: float,
    gamma: float,
    lam: float,
    mistake: str | None = None,
) -> torch.Tensor:
    """One episode's advantages from the definition, in float64: the TD errors
    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` (``V(s_T) = last_value``) summed as
    ``A_t = sum_k (gamma lam)^k delta_{t+k}``, a double sum; ``mistake`` (a key of
    ``GAE_SLIPS``) gives what that slip computes instead."""
    r, v = rewards.to(torch.float64), values.to(torch.float64)
    after = 0.0 if mistake == "no last value" else float(last_value)
    next_v = torch.cat([v[1:], torch.tensor([after], dtype=torch.float64)])
    delta = r + (1.0 if mistake == "undiscounted delta" else gamma) * next_v - v
    factor = {"gamma only": gamma, "lam only": lam}.get(mistake, gamma * lam)
    steps = len(delta)
    out = torch.zeros(steps, dtype=torch.float64)
    for t in range(steps):
        ks = range(0, t + 1) if mistake == "forward" else range(0, steps - t)
        sign = -1 if mistake == "forward" else 1
        out[t] = sum(factor**k * delta[t + sign * k] for k in ks)
    return out
