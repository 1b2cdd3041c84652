"""Reinforcement-learning pieces for CartPole: returns, evaluation, episodes and frames.

Introduced in chapter 07 (policy gradients on ``gymnasium``'s ``CartPole-v1``). The chapter
writes each idea out first (the backwards return loop, the rollout loop) and then uses
these functions, which are tested in ``tests/test_rl.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn

__all__ = [
    "Episode",
    "cartpole_frame",
    "discounted_returns",
    "draw_cartpole",
    "evaluate_policy",
    "moving_average",
    "play_episode",
]


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"gamma must be a float, got {type(gamma).__name__}")
    if not 0.0 <= gamma <= 1.0:  # False for NaN too
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    return float(gamma)


def discounted_returns(
    rewards: torch.Tensor | Sequence[float], gamma: float, *, bootstrap: float = 0.0
) -> torch.Tensor:
    """Return ``G_t = r_t + gamma * r_{t+1} + gamma**2 * r_{t+2} + ...`` for every step ``t``.

    The sum is computed backwards in one pass (``G_t = r_t + gamma * G_{t+1}``). For an
    episode cut short by a time limit, ``bootstrap`` is an estimate of the return *after*
    the last reward (``G_T``); for an episode that really ended it must stay 0.
    ``rewards`` is 1-D; the result is a float32 tensor of the same length. Introduced in
    chapter 07.
    """
    if isinstance(rewards, torch.Tensor):
        values = rewards.detach().to("cpu", torch.float64)
    elif isinstance(rewards, (Sequence, np.ndarray)) and not isinstance(rewards, (str, bytes)):
        try:
            values = torch.as_tensor(np.asarray(rewards, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise TypeError(f"rewards must be a sequence of numbers: {error}") from None
    else:
        raise TypeError(f"rewards must be a tensor or a sequence of numbers, got {type(rewards).__name__}")
    if values.ndim != 1:
        raise ValueError(f"rewards must be 1-D (one episode), got shape {tuple(values.shape)}")
    gamma = _check_gamma(gamma)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, float)):
        raise TypeError(f"bootstrap must be a float, got {type(bootstrap).__name__}")
    if not torch.isfinite(values).all():
        bad = values[~torch.isfinite(values)][0].item()
        raise ValueError(f"rewards must be finite numbers, got {bad}")
    if not np.isfinite(bootstrap):
        raise ValueError(f"bootstrap must be a finite number, got {bootstrap}")
    rewards_list = values.tolist()  # plain floats: a Python loop over them is fast
    returns = [0.0] * len(rewards_list)
    running = float(bootstrap)
    for t in range(len(rewards_list) - 1, -1, -1):
        running = rewards_list[t] + gamma * running
        returns[t] = running
    return torch.tensor(returns, dtype=torch.float32)


def moving_average(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start); same length.

    Entry ``i`` is the mean of ``values[max(0, i - window + 1) : i + 1]``. Introduced in
    chapter 07 for curves of episode returns.
    """
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {array.shape}")
    sums = np.concatenate([[0.0], np.cumsum(array)])
    ends = np.arange(1, array.size + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _check_seed(seed: int, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"{name} must be in [0, 2**32), got {seed}")
    return int(seed)


def _check_policy(policy: nn.Module | None, device: torch.device | str) -> torch.device:
    if policy is not None and not isinstance(policy, nn.Module):
        raise TypeError(f"policy must be an nn.Module or None, got {type(policy).__name__}")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    return torch.device(device)


def _check_options(greedy: bool, env_id: str) -> None:
    if not isinstance(greedy, bool):
        raise TypeError(f"greedy must be a bool, got {type(greedy).__name__}")
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a str such as 'CartPole-v1', got {type(env_id).__name__}")


@torch.no_grad()
def _actions(
    policy: nn.Module, observations: np.ndarray, device: torch.device, greedy: bool, n_actions: int
) -> np.ndarray:
    logits = policy(torch.as_tensor(observations, dtype=torch.float32, device=device))
    if logits.shape != (len(observations), n_actions):
        raise ValueError(
            f"policy must map {tuple(observations.shape)} observations to ({len(observations)}, "
            f"{n_actions}) action logits, one per action, got shape {tuple(logits.shape)}"
        )
    if greedy:
        return logits.argmax(dim=-1).cpu().numpy()
    return torch.distributions.Categorical(logits=logits).sample().cpu().numpy()


def evaluate_policy(
    policy: nn.Module | None,
    n_episodes: int,
    seed: int,
    *,
    device: torch.device | str = "cpu",
    greedy: bool = True,
    time_limit: int | None = None,
    env_id: str = "CartPole-v1",
) -> torch.Tensor:
    """Play ``n_episodes`` episodes side by side; return their undiscounted returns.

    The episodes run in one vectorised environment, ``gym.make_vec(env_id, n_episodes,
    vectorization_mode="vector_entry_point")`` (NumPy does all copies at once), whose
    ``reset(seed=seed)`` draws every start state; only each copy's first episode counts.
    ``policy`` maps ``(B, obs)`` to action logits: ``greedy=True`` takes the most likely
    action, ``False`` samples from ``Categorical(logits=...)`` (torch's global generator).
    ``policy=None`` plays uniformly random actions from the action space seeded with
    ``seed``. ``time_limit`` replaces the environment's own step limit (500 for
    ``CartPole-v1``). The policy is put in ``eval()`` mode and left there. Returns a float32
    tensor of shape ``(n_episodes,)``. Introduced in chapter 07.
    """
    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int):
        raise TypeError(f"n_episodes must be an int, got {type(n_episodes).__name__}")
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    seed = _check_seed(seed)
    device = _check_policy(policy, device)
    _check_options(greedy, env_id)
    limit = {}
    if time_limit is not None:
        if isinstance(time_limit, bool) or not isinstance(time_limit, int):
            raise TypeError(f"time_limit must be an int or None, got {type(time_limit).__name__}")
        if time_limit < 1:
            raise ValueError(f"time_limit must be >= 1, got {time_limit}")
        limit["max_episode_steps"] = time_limit
    if policy is not None:
        policy.eval()
    envs = gym.make_vec(env_id, num_envs=n_episodes, vectorization_mode="vector_entry_point", **limit)
    observations, _ = envs.reset(seed=seed)
    envs.action_space.seed(seed)
    returns = np.zeros(n_episodes)
    running = np.ones(n_episodes, dtype=bool)
    while running.any():
        if policy is None:
            actions = envs.action_space.sample()
        else:
            actions = _actions(policy, observations, device, greedy, int(envs.single_action_space.n))
        observations, rewards, terminated, truncated, _ = envs.step(actions)
        returns += rewards * running  # a finished copy restarts; its new episode is ignored
        running &= ~(terminated | truncated)
    envs.close()
    return torch.as_tensor(returns, dtype=torch.float32)


@dataclass
class Episode:
    """One played episode: ``states`` has one row more than ``actions`` (the final state)."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    truncated: bool
    frames: list[np.ndarray] = field(default_factory=list)

    @property
    def total_reward(self) -> float:
        return float(self.rewards.sum())


def play_episode(
    policy: nn.Module,
    seed: int,
    *,
    device: torch.device | str = "cpu",
    greedy: bool = True,
    render: bool = False,
    env_id: str = "CartPole-v1",
) -> Episode:
    """Play one episode from ``env.reset(seed=seed)`` and record states, actions and rewards.

    With ``render=True`` the environment is made with ``render_mode="rgb_array"`` and
    ``frames`` holds one ``(H, W, 3)`` image per state; for CartPole gymnasium draws them
    with ``pygame`` (``pip install "gymnasium[classic-control]"``). Introduced in chapter 07.
    """
    seed = _check_seed(seed)
    device = _check_policy(policy, device)
    if policy is None:
        raise TypeError("policy must be an nn.Module, got None")
    _check_options(greedy, env_id)
    if not isinstance(render, bool):
        raise TypeError(f"render must be a bool, got {type(render).__name__}")
    policy.eval()
    env = gym.make(env_id, render_mode="rgb_array" if render else None)
    observation, _ = env.reset(seed=seed)
    states, actions, rewards, frames = [observation], [], [], []
    if render:
        frames.append(env.render())
    terminated = truncated = False
    while not (terminated or truncated):
        action = int(_actions(policy, observation[None], device, greedy, int(env.action_space.n))[0])
        observation, reward, terminated, truncated, _ = env.step(action)
        states.append(observation)
        actions.append(action)
        rewards.append(reward)
        if render:
            frames.append(env.render())
    env.close()
    return Episode(
        np.stack(states), np.array(actions), np.array(rewards, dtype=np.float64),
        bool(terminated), bool(truncated), frames,
    )  # fmt: skip


_SUBPIXELS = 4  # sub-pixels per pixel side in cartpole_frame


def cartpole_frame(state: Sequence[float] | np.ndarray, *, width: int = 300, height: int = 200) -> np.ndarray:
    """Draw a CartPole state ``(x, x_dot, theta, theta_dot)`` as an RGB image without pygame.

    Same geometry as gymnasium's own renderer: the picture spans the track's +-2.4 m, the
    pole is 1 m long and ``theta > 0`` leans it to the right. Each pixel's colour is the
    average over a 4 x 4 grid of sub-pixels, so a slanted pole gets smooth edges instead
    of jagged steps. Returns ``(height, width, 3)`` ``uint8``: white background, black
    track and cart, brown pole. Introduced in chapter 07 for machines where
    ``render_mode="rgb_array"`` cannot draw (no pygame).
    """
    array = np.asarray(state, dtype=np.float64)
    if array.shape != (4,):
        raise ValueError(f"state must hold 4 numbers (x, x_dot, theta, theta_dot), got shape {array.shape}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 20:
            raise ValueError(f"{name} must be >= 20 pixels, got {value}")
    x, _, theta, _ = array
    n = _SUBPIXELS
    scale = width / 4.8  # pixels per metre
    offsets = (np.arange(n) + 0.5) / n  # sub-pixel centres inside a pixel
    u = (np.arange(width)[:, None] + offsets).reshape(-1)  # (width * n,), to the right
    v = (height - np.arange(height)[:, None] - offsets).reshape(-1)  # (height * n,), upwards
    u, v = np.meshgrid(u, v)  # (height * n, width * n) each
    track_y = 0.25 * height
    track = (v >= track_y - 1) & (v <= track_y)  # one full pixel row below the track line
    cart_x = x * scale + width / 2
    cart_w, cart_h = 0.4 * scale, 0.24 * scale  # gymnasium draws 50 x 30 px at 600 px wide
    cart = (np.abs(u - cart_x) <= cart_w / 2) & (np.abs(v - track_y) <= cart_h / 2)
    pivot_u, pivot_v = cart_x, track_y + cart_h / 4
    sin, cos = np.sin(theta), np.cos(theta)  # unit vector along the pole: (sin, cos)
    du, dv = u - pivot_u, v - pivot_v
    along = du * sin + dv * cos
    across = np.abs(du * cos - dv * sin)
    pole = (along >= 0) & (along <= 1.0 * scale) & (across <= 0.04 * scale)
    image = np.full((height, width, 3), 255.0)
    for mask, colour in ((track, (0, 0, 0)), (cart, (0, 0, 0)), (pole, (202, 152, 101))):
        coverage = mask.reshape(height, n, width, n).mean(axis=(1, 3))[..., None]  # (H, W, 1)
        image = image * (1 - coverage) + np.array(colour, dtype=np.float64) * coverage
    return np.rint(image).astype(np.uint8)


def draw_cartpole(states: np.ndarray, *, env_id: str = "CartPole-v1") -> tuple[list[np.ndarray], str]:
    """Draw CartPole states ``(n, 4)`` as 600 x 400 RGB frames, and say what drew them.

    Where ``pygame`` is installed, gymnasium's own renderer draws each state, set into the
    environment ``env_id`` one at a time; elsewhere :func:`cartpole_frame` draws the same
    geometry at the same size. Returns the frames and ``"gymnasium (pygame)"`` or
    ``"cartpole_frame (no pygame)"``. Introduced in chapter 07.
    """
    array = np.asarray(states, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"states must have shape (n, 4), got {array.shape}")
    if importlib.util.find_spec("pygame") is None:
        return [cartpole_frame(state, width=600, height=400) for state in array], "cartpole_frame (no pygame)"
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset()  # gymnasium refuses to render before a reset; the state is then replaced
    frames = []
    for state in array:
        env.unwrapped.state = state  # the renderer draws the state the environment holds
        frames.append(env.render())
    env.close()
    return frames, "gymnasium (pygame)"
