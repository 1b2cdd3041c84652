import importlib.util
from fractions import Fraction

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control import CartPoleEnv
from torch import nn
from torch.overrides import TorchFunctionMode

from helpers.rl import (
    Episode,
    cartpole_frame,
    discounted_returns,
    draw_cartpole,
    evaluate_policy,
    moving_average,
    play_episode,
)


class _Constant(nn.Module):
    """Always prefers one action: logits (0, 1) for "right", (1, 0) for "left"."""

    def __init__(self, action: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([1.0, 0.0] if action == 0 else [0.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], 2)


class _Lean(nn.Module):
    """Pushes the cart towards the side the pole leans to (a decent hand-made controller)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, 2] + 0.5 * x[:, 3]  # angle plus some angular velocity
        return torch.stack([-score, score], dim=1) * 100.0


def _direct_returns(rewards, gamma, bootstrap=0.0):
    n = len(rewards)
    return [
        sum(gamma ** (k - t) * rewards[k] for k in range(t, n)) + gamma ** (n - t) * bootstrap
        for t in range(n)
    ]


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_discounted_returns_match_the_direct_sum(gamma):
    rewards = [1.0, -2.0, 0.5, 3.0, 0.0, 1.5, -1.0]
    got = discounted_returns(rewards, gamma)
    assert got.dtype == torch.float32 and got.shape == (7,)
    np.testing.assert_allclose(got.numpy(), _direct_returns(rewards, gamma), rtol=1e-6, atol=1e-6)


def test_discounted_returns_with_bootstrap_and_tensor_input():
    rewards = torch.ones(5)
    got = discounted_returns(rewards, 0.9, bootstrap=10.0)
    np.testing.assert_allclose(got.numpy(), _direct_returns([1.0] * 5, 0.9, 10.0), rtol=1e-6)
    # G_0 = (1 - 0.9**5) / 0.1 + 0.9**5 * 10
    assert got[0].item() == pytest.approx((1 - 0.9**5) / 0.1 + 0.9**5 * 10, rel=1e-6)


def test_discounted_returns_of_a_full_cartpole_episode_match_the_geometric_series():
    got = discounted_returns([1.0] * 500, 0.99)
    assert got[0].item() == pytest.approx((1 - 0.99**500) / 0.01, rel=1e-5)
    assert got[-1].item() == 1.0


def test_discounted_returns_check_arguments():
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns([1.0], 1.5)
    with pytest.raises(TypeError, match="gamma"):
        discounted_returns([1.0], "0.9")
    with pytest.raises(ValueError, match="rewards"):
        discounted_returns(torch.ones(2, 3), 0.9)
    with pytest.raises(TypeError, match="rewards"):
        discounted_returns(3.0, 0.9)
    with pytest.raises(TypeError, match="bootstrap"):
        discounted_returns([1.0], 0.9, bootstrap=None)


def test_moving_average_is_the_trailing_mean():
    values = [1.0, 3.0, 5.0, 7.0, 9.0]
    got = moving_average(values, 3)
    expected = [1.0, 2.0, 3.0, 5.0, 7.0]  # means of [1], [1,3], [1,3,5], [3,5,7], [5,7,9]
    np.testing.assert_allclose(got, expected)
    np.testing.assert_allclose(moving_average(values, 1), values)
    np.testing.assert_allclose(moving_average(values, 100), np.cumsum(values) / np.arange(1, 6))


def test_moving_average_checks_arguments():
    with pytest.raises(ValueError, match="window"):
        moving_average([1.0], 0)
    with pytest.raises(TypeError, match="window"):
        moving_average([1.0], 2.0)
    with pytest.raises(ValueError, match="values"):
        moving_average([], 3)


def _one_episode_by_hand(seed, choose):
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(choose(env, obs))
        total += reward
        done = terminated or truncated
    return total


def _lean_action(obs):
    return int(obs[2] + 0.5 * obs[3] > 0)


def _single_env_returns_from_the_same_starts(n, seed, choose, time_limit=500):
    """Replay each vectorised episode in the ordinary one-copy CartPole from its start state."""
    starts, _ = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point").reset(
        seed=seed
    )
    returns = []
    for start in starts:
        env = gym.make("CartPole-v1", max_episode_steps=time_limit)
        env.reset(seed=0)
        env.unwrapped.state = start.astype(np.float64)
        obs, total, done = start, 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(choose(obs))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return returns


def test_evaluate_policy_matches_the_ordinary_environment_episode_by_episode():
    pushing_right = evaluate_policy(_Constant(action=1), 6, seed=3)
    assert pushing_right.shape == (6,) and pushing_right.dtype == torch.float32
    assert pushing_right.tolist() == _single_env_returns_from_the_same_starts(6, 3, lambda obs: 1)
    assert pushing_right.max() < 20  # always pushing right drops the pole quickly
    lean = evaluate_policy(_Lean(), 6, seed=3)
    assert lean.tolist() == _single_env_returns_from_the_same_starts(6, 3, _lean_action)
    assert lean.min() > pushing_right.max()


def test_evaluate_policy_time_limit_truncates_every_surviving_episode():
    assert evaluate_policy(_Lean(), 5, seed=0, time_limit=50).tolist() == [50.0] * 5
    assert evaluate_policy(_Lean(), 5, seed=0).tolist() == [500.0] * 5  # CartPole-v1's own limit
    # the rule ignores the cart's position: with more time, some carts drift off the track
    # (NumPy's vectorised cos/sin may differ from math.cos in the last bit, and the
    # dynamics amplify that over hundreds of steps, so long episodes are not compared
    # step for step with the one-copy environment)
    longer = evaluate_policy(_Lean(), 5, seed=0, time_limit=800)
    assert longer.max() == 800 and 500 < longer.min() < 800


def test_evaluate_policy_random_actions_are_seeded_and_short():
    got = evaluate_policy(None, 50, seed=1)
    assert torch.equal(evaluate_policy(None, 50, seed=1), got)  # repeatable
    assert not torch.equal(evaluate_policy(None, 50, seed=2), got)
    # a random CartPole episode lasts about 22 steps on average; at least 8 steps always
    assert 12 < got.mean().item() < 35 and got.min() >= 8
    # the same random episodes played one at a time in the ordinary environment
    by_hand = [_one_episode_by_hand(s, lambda env, obs: env.action_space.sample()) for s in range(200)]
    assert abs(np.mean(by_hand) - got.mean().item()) < 6


def test_evaluate_policy_sampling_follows_the_logits():
    # logits (-50, 50): sampling picks action 1 with probability 1 - 4e-44, i.e. always.
    policy = _Constant(action=1)
    with torch.no_grad():
        policy.logits.copy_(torch.tensor([-50.0, 50.0]))
    assert torch.equal(evaluate_policy(policy, 4, seed=5, greedy=False), evaluate_policy(policy, 4, seed=5))


def test_evaluate_policy_checks_arguments():
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate_policy(None, 0, seed=0)
    with pytest.raises(TypeError, match="n_episodes"):
        evaluate_policy(None, 2.0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        evaluate_policy(None, 2, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        evaluate_policy(None, 2, seed="0")
    with pytest.raises(TypeError, match="policy"):
        evaluate_policy(lambda x: x, 2, seed=0)
    with pytest.raises(TypeError, match="device"):
        evaluate_policy(None, 2, seed=0, device=0)
    with pytest.raises(ValueError, match="time_limit"):
        evaluate_policy(None, 2, seed=0, time_limit=0)
    with pytest.raises(TypeError, match="time_limit"):
        evaluate_policy(None, 2, seed=0, time_limit=5.0)


class _OneOutput(nn.Module):
    """A value-network-shaped model, (B, 4) -> (B, 1): not a policy over CartPole's 2 actions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: discounted_returns([1.0, float("nan")], 0.9),
            ValueError,
            "rewards must be finite numbers, got nan",
        ),
        (lambda: discounted_returns(torch.tensor([float("inf")]), 0.9), ValueError, "rewards must be finite"),
        (
            lambda: discounted_returns([1.0], 0.9, bootstrap=float("nan")),
            ValueError,
            "bootstrap must be a finite",
        ),
        (lambda: discounted_returns([1.0], float("nan")), ValueError, r"gamma must be in \[0, 1\]"),
        (lambda: discounted_returns(["a"], 0.9), TypeError, "rewards must be a sequence of numbers"),
        (
            lambda: evaluate_policy(_OneOutput(), 2, seed=0),
            ValueError,
            r"policy must map \(2, 4\) observations to \(2, 2\) action logits.*got shape \(2, 1\)",
        ),
        (lambda: evaluate_policy(None, 2, seed=0, greedy="no"), TypeError, "greedy must be a bool"),
        (lambda: evaluate_policy(None, 2, seed=0, env_id=None), TypeError, "env_id must be a str"),
        (lambda: evaluate_policy(None, 2, seed=None), TypeError, "seed must be an int"),
        (lambda: play_episode(_OneOutput(), seed=0), ValueError, r"\(1, 2\) action logits"),
        (lambda: play_episode(_Lean(), seed=0, render="yes"), TypeError, "render must be a bool"),
        (lambda: play_episode(None, seed=0), TypeError, "policy must be an nn.Module"),
    ],
)
def test_rl_helpers_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_play_episode_records_states_actions_and_rewards():
    episode = play_episode(_Lean(), seed=4)
    assert isinstance(episode, Episode)
    n = len(episode.actions)
    assert episode.states.shape == (n + 1, 4) and episode.rewards.shape == (n,)
    assert episode.total_reward == _one_episode_by_hand(4, lambda env, obs: _lean_action(obs))
    expected_start, _ = gym.make("CartPole-v1").reset(seed=4)
    np.testing.assert_array_equal(episode.states[0], expected_start)
    assert episode.terminated != episode.truncated and episode.frames == []
    # each recorded action is what the policy picks in the state before it
    lean = (episode.states[:-1, 2] + 0.5 * episode.states[:-1, 3] > 0).astype(int)
    np.testing.assert_array_equal(episode.actions, lean)
    with pytest.raises(TypeError, match="policy"):
        play_episode(None, seed=0)
    with pytest.raises(ValueError, match="seed"):
        play_episode(_Lean(), seed=-3)


def test_cartpole_frame_draws_the_cart_where_the_state_puts_it():
    width, height = 300, 200
    upright = cartpole_frame([0.0, 0.0, 0.0, 0.0], width=width, height=height)
    assert upright.shape == (200, 300, 3) and upright.dtype == np.uint8
    track_row = height - int(0.25 * height) - 1
    scale = width / 4.8
    # the cart is black at the centre of the track; the pole is brown straight above it
    assert tuple(upright[track_row, width // 2]) == (0, 0, 0)
    # the track is one fully black pixel row (v from 49 to 50 px), white above and below
    line_row = height - int(0.25 * height)
    assert tuple(upright[line_row, 10]) == (0, 0, 0)
    assert tuple(upright[line_row - 1, 10]) == tuple(upright[line_row + 1, 10]) == (255, 255, 255)
    tip_row = height - int(0.25 * height + 0.24 * scale / 4 + 0.9 * scale)
    assert tuple(upright[tip_row, width // 2]) == (202, 152, 101)
    moved = cartpole_frame([1.2, 0.0, 0.0, 0.0], width=width, height=height)  # 1.2 m right
    assert tuple(moved[track_row, width // 2 + int(1.2 * scale)]) == (0, 0, 0)
    assert tuple(moved[tip_row, width // 2]) == (255, 255, 255)
    leaning = cartpole_frame([0.0, 0.0, 0.3, 0.0], width=width, height=height)
    # a pole leaning right (theta > 0) has its tip right of the cart's centre
    pole_cols = np.nonzero((leaning[: tip_row + 5] == (202, 152, 101)).all(axis=2))[1]
    assert pole_cols.min() > width // 2


def test_cartpole_frame_checks_arguments():
    with pytest.raises(ValueError, match="state"):
        cartpole_frame([0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="width"):
        cartpole_frame([0.0] * 4, width=100.0)
    with pytest.raises(ValueError, match="height"):
        cartpole_frame([0.0] * 4, height=5)


def _area_above(corners, line_v):
    """Area of a convex polygon (u, v corners in order) above the horizontal line v = line_v."""
    clipped = []
    for (u0, v0), (u1, v1) in zip(corners, corners[1:] + corners[:1], strict=True):
        if v0 >= line_v:
            clipped.append((u0, v0))
        if (v0 >= line_v) != (v1 >= line_v):  # the edge crosses the line
            t = (line_v - v0) / (v1 - v0)
            clipped.append((u0 + t * (u1 - u0), line_v))
    us, vs = np.array(clipped).T
    return 0.5 * abs(np.dot(us, np.roll(vs, -1)) - np.dot(vs, np.roll(us, -1)))  # shoelace


def test_cartpole_frame_colours_edge_pixels_by_their_coverage():
    width, height = 300, 200
    scale = width / 4.8
    track_y, cart_h = 0.25 * height, 0.24 * scale
    cart_top_row = height - int(np.ceil(track_y + cart_h / 2))  # rows above it: pole or white
    # upright pole: 5 px wide, centred on u = 150, so columns 147 and 152 are half covered
    upright = cartpole_frame([0.0, 0.0, 0.0, 0.0], width=width, height=height)
    half = np.rint((np.array([255, 255, 255]) + np.array([202, 152, 101])) / 2)
    for col in (147, 152):
        np.testing.assert_array_equal(upright[100, col], half)
    assert tuple(upright[100, 146]) == (255, 255, 255)
    # a leaning pole: summed coverage above the cart equals the exact area of the
    # rotated 5 x 62.5 px rectangle above that line (polygon clipping, shoelace formula)
    theta = 0.3
    leaning = cartpole_frame([0.0, 0.0, theta, 0.0], width=width, height=height)
    coverage = (255.0 - leaning[:cart_top_row, :, 2]) / (255 - 101)
    sin, cos = np.sin(theta), np.cos(theta)
    pivot = np.array([width / 2, track_y + cart_h / 4])
    along, across = np.array([sin, cos]), np.array([cos, -sin])
    half_w, length = 0.04 * scale, 1.0 * scale
    corners = [
        tuple(pivot + a * along + s * half_w * across)
        for a, s in ((0, -1), (length, -1), (length, 1), (0, 1))
    ]
    exact = _area_above(corners, float(height - cart_top_row))
    assert coverage.sum() == pytest.approx(exact, abs=1.0)
    partial = ((leaning[:cart_top_row, :, 2] > 101) & (leaning[:cart_top_row, :, 2] < 255)).sum()
    assert partial > 2 * 50  # both slanted edges are smoothed in every row they cross


def _reference_frame(state, width, height):
    """CartPole drawn from the docstring's geometry, in metres, one sub-pixel sample at a time.

    The picture spans x in [-2.4, 2.4] m; the track line is a quarter of the height up,
    with one pixel row of track below it; the cart is 0.4 m x 0.24 m centred on the
    line; the pole (1 m x 0.08 m) turns about a point 0.06 m above the line, leaning
    right for theta > 0. Each pixel averages a 4 x 4 grid of samples at sub-pixel centres.
    """
    x, _, theta, _ = (float(s) for s in state)
    metres_per_pixel = 4.8 / width
    line = 0.25 * height  # pixels up from the bottom edge
    image = np.full((height, width, 3), 255.0)
    layers = [(0, 0, 0), (0, 0, 0), (202, 152, 101)]  # track, cart, pole
    hits = np.zeros((3, height, width))
    for row in range(height):
        for sub_row in range(4):
            up = height - row - (sub_row + 0.5) / 4  # pixels from the bottom edge
            for sub_col in range(4):
                right = np.arange(width) + (sub_col + 0.5) / 4
                px = (right - width / 2) * metres_per_pixel - x  # metres right of the cart's centre
                py = (up - line) * metres_per_pixel  # metres above the track line
                hits[0, row] += line - 1 <= up <= line
                hits[1, row] += (np.abs(px) <= 0.2) & (abs(py) <= 0.12)
                along = px * np.sin(theta) + (py - 0.06) * np.cos(theta)
                across = np.abs(px * np.cos(theta) - (py - 0.06) * np.sin(theta))
                hits[2, row] += (along >= 0) & (along <= 1.0) & (across <= 0.04)
    for colour, count in zip(layers, hits, strict=True):
        coverage = count[..., None] / 16
        image = image * (1 - coverage) + np.array(colour, dtype=np.float64) * coverage
    return np.rint(image).astype(np.uint8)


@pytest.mark.parametrize(
    ("state", "width", "height"),
    [
        ([0.0, 0.0, 0.0, 0.0], 300, 200),
        ([0.7, 1.0, -0.35, 2.0], 120, 90),
        ([-1.9, 0.0, 0.2, 0.0], 97, 61),
        ([0.31, 0.0, 1.1, 0.0], 64, 150),
    ],
)
def test_cartpole_frame_matches_a_drawing_from_the_documented_geometry(state, width, height):
    got = cartpole_frame(state, width=width, height=height)
    expected = _reference_frame(state, width, height)
    assert got.shape == (height, width, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_cartpole_frame_defaults_to_300_by_200_and_takes_any_numbers():
    state = [Fraction(1, 2), 0, Fraction(3, 10), 0]  # exact fractions, not floats
    got = cartpole_frame(state)
    np.testing.assert_array_equal(got, cartpole_frame([0.5, 0.0, 0.3, 0.0], width=300, height=200))
    # the smallest picture allowed
    assert cartpole_frame([0.0] * 4, width=20, height=20).shape == (20, 20, 3)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: cartpole_frame([0.0] * 4, width=30.0), TypeError, "width must be an int, got float"),
        (lambda: cartpole_frame([0.0] * 4, height=True), TypeError, "height must be an int, got bool"),
        (lambda: cartpole_frame([0.0] * 4, width=19), ValueError, "width must be >= 20 pixels, got 19"),
        (lambda: cartpole_frame([0.0] * 4, height=19), ValueError, "height must be >= 20 pixels, got 19"),
        (
            lambda: cartpole_frame([0.0] * 5),
            ValueError,
            "state must hold 4 numbers (x, x_dot, theta, theta_dot), got shape (5,)",
        ),
        (lambda: discounted_returns([1.0], "0.9"), TypeError, "gamma must be a float, got str"),
        (lambda: discounted_returns([1.0], True), TypeError, "gamma must be a float, got bool"),
        (lambda: discounted_returns([1.0], -0.1), ValueError, "gamma must be in [0, 1], got -0.1"),
        (
            lambda: discounted_returns(3.0, 0.9),
            TypeError,
            "rewards must be a tensor or a sequence of numbers, got float",
        ),
        (
            lambda: discounted_returns(np.ones((2, 2)), 0.9),
            ValueError,
            "rewards must be 1-D (one episode), got shape (2, 2)",
        ),
        (
            lambda: discounted_returns([1.0], 0.9, bootstrap="1"),
            TypeError,
            "bootstrap must be a float, got str",
        ),
        (
            lambda: discounted_returns([1.0], 0.9, bootstrap=True),
            TypeError,
            "bootstrap must be a float, got bool",
        ),
        (
            lambda: discounted_returns([1.0], 0.9, bootstrap=float("inf")),
            ValueError,
            "bootstrap must be a finite number, got inf",
        ),
        (
            lambda: discounted_returns([2.0, float("-inf"), float("nan")], 0.9),
            ValueError,
            "rewards must be finite numbers, got -inf",
        ),
        (lambda: moving_average([1.0], 2.0), TypeError, "window must be an int, got float"),
        (lambda: moving_average([1.0], True), TypeError, "window must be an int, got bool"),
        (lambda: moving_average([1.0], 0), ValueError, "window must be >= 1, got 0"),
        (
            lambda: moving_average([[1.0, 2.0], [3.0, 4.0]], 2),
            ValueError,
            "values must be a non-empty 1-D sequence, got shape (2, 2)",
        ),
        (lambda: evaluate_policy(None, 2, seed="0"), TypeError, "seed must be an int, got str"),
        (lambda: evaluate_policy(None, 2, seed=True), TypeError, "seed must be an int, got bool"),
        (lambda: evaluate_policy(None, 2, seed=-1), ValueError, "seed must be in [0, 2**32), got -1"),
        (
            lambda: evaluate_policy(None, 2, seed=2**32),
            ValueError,
            "seed must be in [0, 2**32), got 4294967296",
        ),
        (lambda: evaluate_policy(None, 2.0, seed=0), TypeError, "n_episodes must be an int, got float"),
        (lambda: evaluate_policy(None, True, seed=0), TypeError, "n_episodes must be an int, got bool"),
        (lambda: evaluate_policy(None, 0, seed=0), ValueError, "n_episodes must be >= 1, got 0"),
        (
            lambda: evaluate_policy(lambda x: x, 2, seed=0),
            TypeError,
            "policy must be an nn.Module or None, got function",
        ),
        (
            lambda: evaluate_policy(None, 2, seed=0, device=0),
            TypeError,
            "device must be a str or torch.device, got int",
        ),
        (lambda: evaluate_policy(None, 2, seed=0, greedy=1), TypeError, "greedy must be a bool, got int"),
        (
            lambda: evaluate_policy(None, 2, seed=0, env_id=1),
            TypeError,
            "env_id must be a str such as 'CartPole-v1', got int",
        ),
        (
            lambda: evaluate_policy(None, 2, seed=0, time_limit=5.0),
            TypeError,
            "time_limit must be an int or None, got float",
        ),
        (
            lambda: evaluate_policy(None, 2, seed=0, time_limit=True),
            TypeError,
            "time_limit must be an int or None, got bool",
        ),
        (
            lambda: evaluate_policy(None, 2, seed=0, time_limit=0),
            ValueError,
            "time_limit must be >= 1, got 0",
        ),
        (lambda: play_episode(None, seed=0), TypeError, "policy must be an nn.Module, got None"),
        (lambda: play_episode(_Lean(), seed=0, render=1), TypeError, "render must be a bool, got int"),
    ],
)
def test_rl_error_messages_name_the_argument_and_what_was_given(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_discounted_returns_accept_any_real_numbers():
    # exact fractions and integers are numbers too; the sum is the same as for floats
    got = discounted_returns([Fraction(1, 2), 1, Fraction(1, 4)], 0.5)
    np.testing.assert_allclose(got.numpy(), [0.5 + 0.5 * 1 + 0.25 * 0.25, 1 + 0.5 * 0.25, 0.25])
    assert discounted_returns([], 0.9).shape == (0,)


def test_moving_average_of_one_value_and_of_integers():
    np.testing.assert_array_equal(moving_average([5.0], 3), [5.0])
    got = moving_average([Fraction(1, 2), 1, 2], 2)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [0.5, 0.75, 1.5])


def test_evaluate_policy_plays_one_episode_of_one_step():
    # the smallest job allowed: one copy, one step; a seed past 2**31 is still valid
    assert evaluate_policy(_Lean(), 1, seed=2**32 - 1, time_limit=1).tolist() == [1.0]
    assert evaluate_policy(None, 3, seed=64, time_limit=1).tolist() == [1.0, 1.0, 1.0]


def test_evaluate_policy_leaves_the_policy_in_eval_mode():
    policy = _Lean()
    policy.train()
    evaluate_policy(policy, 1, seed=0, time_limit=2)
    assert not policy.training


def test_evaluate_policy_needs_an_environment_with_a_vectorised_version():
    # the documented vectorisation mode: Acrobot has no vectorised environment in gymnasium
    with pytest.raises(gym.error.Error, match="vector entry point"):
        evaluate_policy(None, 2, seed=0, env_id="Acrobot-v1")


def test_play_episode_is_greedy_by_default_and_reports_how_it_ended():
    # logits (1, 0): greedy always pushes left; sampling would push right 27% of the time
    episode = play_episode(_Constant(action=0), seed=2)
    assert episode.actions.tolist() == [0] * len(episode.actions)
    assert episode.terminated is True and episode.truncated is False  # the pole fell
    assert episode.rewards.dtype == np.float64
    policy = _Lean()
    policy.train()
    long = play_episode(policy, seed=0)
    assert not policy.training
    assert long.terminated is False and long.truncated is True and long.total_reward == 500.0


class _DrawnCartPole(CartPoleEnv):
    """CartPole that draws with cartpole_frame (no pygame) and pays its reward as an int."""

    def render(self):
        assert self.render_mode == "rgb_array", self.render_mode
        return cartpole_frame(self.state)

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        return observation, int(reward), terminated, truncated, info


_DRAWN_ID = "BookDrawnCartPole-v0"
if _DRAWN_ID not in gym.registry:
    gym.register(id=_DRAWN_ID, entry_point=_DrawnCartPole, max_episode_steps=500)


def test_play_episode_renders_one_frame_per_state_of_the_chosen_environment():
    episode = play_episode(_Constant(action=1), seed=3, render=True, env_id=_DRAWN_ID)
    assert len(episode.frames) == len(episode.states) == len(episode.actions) + 1
    for frame, state in zip(episode.frames, episode.states, strict=True):
        np.testing.assert_array_equal(frame, cartpole_frame(state))
    # the same start as CartPole-v1, and float rewards even though this one pays ints
    expected_start, _ = gym.make("CartPole-v1").reset(seed=3)
    np.testing.assert_array_equal(episode.states[0], expected_start)
    assert episode.rewards.dtype == np.float64 and episode.total_reward == len(episode.actions)
    assert play_episode(_Constant(action=1), seed=3, env_id=_DRAWN_ID).frames == []


def _pygame_found(monkeypatch, found: bool) -> None:
    """Make ``importlib.util.find_spec("pygame")`` answer as if pygame were (not) installed."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "pygame":
            return real("math") if found else None  # any module's spec stands in for pygame's
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


_STATES = np.array([[0.5, 0.0, 0.3, 0.0], [-1.0, 0.1, -0.2, 0.0], [2.0, 0.0, 0.05, -0.1]], dtype=np.float32)


def test_draw_cartpole_without_pygame_draws_with_cartpole_frame_at_gymnasiums_size(monkeypatch):
    _pygame_found(monkeypatch, False)
    frames, drawn_by = draw_cartpole(_STATES)
    assert drawn_by == "cartpole_frame (no pygame)" and len(frames) == len(_STATES)
    for frame, state in zip(frames, _STATES, strict=True):
        np.testing.assert_array_equal(frame, cartpole_frame(state, width=600, height=400))


def test_draw_cartpole_with_pygame_has_the_environment_draw_each_state_in_turn(monkeypatch):
    # A test double for pygame: the environment's renderer is cartpole_frame (300 x 200) on
    # the state the environment holds, so each frame shows which state was set before it.
    _pygame_found(monkeypatch, True)
    frames, drawn_by = draw_cartpole(_STATES.tolist(), env_id=_DRAWN_ID)
    assert drawn_by == "gymnasium (pygame)" and len(frames) == len(_STATES)
    for frame, state in zip(frames, _STATES, strict=True):
        np.testing.assert_array_equal(frame, cartpole_frame(state))


def test_draw_cartpole_draws_cartpole_v1_unless_told_otherwise(monkeypatch):
    _pygame_found(monkeypatch, True)
    asked, real_make = [], gym.make

    def make(env_id, **kwargs):
        asked.append((env_id, kwargs))
        return real_make(_DRAWN_ID, **kwargs)  # the test double stands in for it

    monkeypatch.setattr(gym, "make", make)
    draw_cartpole(_STATES)
    assert asked == [("CartPole-v1", {"render_mode": "rgb_array"})]


@pytest.mark.parametrize("states", [np.zeros(4), np.zeros((2, 3)), np.zeros((1, 2, 4))])
def test_draw_cartpole_rejects_states_that_are_not_n_by_4(states):
    with pytest.raises(ValueError, match=r"states must have shape \(n, 4\)"):
        draw_cartpole(states)


def test_gymnasiums_renderer_and_cartpole_frame_draw_the_same_geometry():
    # Real pygame, where it is installed: it is not a dependency of this project (it comes
    # with gymnasium[classic-control]); the main lane runs the test double above, and the
    # Colab lane, whose stack has pygame, runs this too.
    pytest.importorskip("pygame", reason="pygame is not installed: gymnasium's own renderer is not compared")
    frames, drawn_by = draw_cartpole(_STATES)
    assert drawn_by == "gymnasium (pygame)"
    for frame, state in zip(frames, _STATES, strict=True):
        ours = cartpole_frame(state, width=600, height=400)
        assert frame.shape == ours.shape == (400, 600, 3)
        # pole (brown) and cart plus track (black): pixel centres agree to within 2.5 px
        for colour in ((202, 152, 101), (0, 0, 0)):
            theirs_yx, ours_yx = (np.argwhere((image == colour).all(-1)) for image in (frame, ours))
            assert abs(len(theirs_yx) - len(ours_yx)) < 0.15 * len(ours_yx), colour
            np.testing.assert_allclose(theirs_yx.mean(0), ours_yx.mean(0), atol=2.5)


def test_discounted_returns_are_float32_whatever_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        returns = discounted_returns([1.0, 1.0], 0.5)
    finally:
        torch.set_default_dtype(previous)
    assert returns.dtype == torch.float32


def test_play_episode_rejects_a_policy_that_is_not_a_module():
    with pytest.raises(TypeError, match=r"policy must be an nn\.Module"):
        play_episode(lambda x: x, seed=0)


class _AsTensorDevices(TorchFunctionMode):
    """Records the device each ``torch.as_tensor`` of a batch of observations (2-D) names."""

    def __init__(self):
        super().__init__()
        self.devices = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.as_tensor and np.ndim(args[0]) == 2:
            self.devices.append(kwargs.get("device"))
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "run",
    [
        lambda: play_episode(_Lean(), seed=0, device="cpu"),
        lambda: evaluate_policy(_Lean(), 2, seed=0, device="cpu", time_limit=20),
    ],
)
def test_observations_are_made_on_the_policys_device(run):
    # On a CPU-only machine an observation made without a device still works; on a GPU
    # it would not reach the policy's device, so the device each call names is checked.
    with _AsTensorDevices() as watch:
        run()
    assert watch.devices and set(watch.devices) == {torch.device("cpu")}
