# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,jupyter,mystnb,-all
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. Reinforcement learning: policy gradients
#
# In the chapters so far every example came with its right answer. In reinforcement
# learning nobody says which action was right: an **agent** acts in an **environment**,
# receives **rewards**, and must find out by trial which behaviour earns the most. By the
# end of this chapter you will know the agent–environment loop of `gymnasium`, write the
# REINFORCE policy-gradient algorithm line by line (a policy network, sampled actions and
# their log-probabilities, discounted returns, the loss), add a learned value baseline
# and measure whether it helps, and train a network that balances a pole on a cart for
# the full 500 steps of `CartPole-v1`, checked on start states it never saw.
#
# **Prerequisites:** chapter 1 (tensors) and chapter 2 (modules, optimizers, the training
# loop, validation and test splits).

# %% tags=["hide-cell"]
# On Colab only: install this book's helpers package (Colab's own torch is kept).
import sys

if "google.colab" in sys.modules:
    import subprocess

    repository = "https://github.com/pytorch-book/pytorch-book"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", f"git+{repository}"], check=True
    )

# %% [markdown]
# The networks in this chapter are tiny (about 4,600 weights each) and are called
# thousands of times, on batches of 16 to a few thousand states. Work that small gives
# several CPU threads little to share, and on a machine whose cores are busy with other
# programs the threads can spend more time waiting for each other than computing. So the
# setup cell asks PyTorch for one thread. That setting does not affect work on a GPU.

# %%
import copy
import importlib.util
import math
from collections.abc import Callable

import gymnasium as gym
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from helpers.progress import tqdm
from helpers.results import record
from helpers.rl import (
    Episode,
    cartpole_frame,
    discounted_returns,
    evaluate_policy,
    moving_average,
    play_episode,
)
from helpers.runtime import describe_runtime, get_device, seed_everything
from torch import nn
from torch.distributions import Categorical

seed = seed_everything(0)
device = get_device()
torch.set_num_threads(1)  # tiny networks: one CPU thread
print(describe_runtime(device, seed), "| gymnasium", gym.__version__)

# %% [markdown]
# ## 7.1 The agent–environment loop
#
# `CartPole-v1` simulates a cart on a frictionless track with a pole hinged on top. At
# every step the agent pushes the cart left or right with a fixed force; the simulator
# advances 0.02 s and returns a reward of 1 for that step. The episode **terminates** when
# the pole tilts more than 12° from vertical or the cart leaves the track (|x| > 2.4 m),
# and is **truncated** after 500 steps, `CartPole-v1`'s time limit. So an episode's total
# reward, its **return**, is the number of steps the pole stayed up, at most 500.
#
# A `gymnasium` environment has two methods that matter. `reset(seed=...)` starts an
# episode (the seed fixes the random start state) and returns the first **observation**
# and an info dict. `step(action)` returns five things: the next observation, the reward,
# `terminated`, `truncated` and an info dict. The spaces say what observations and
# actions look like:

# %%
env = gym.make("CartPole-v1")
print("observation space:", env.observation_space)
print("action space:     ", env.action_space)
observation, info = env.reset(seed=seed)
print("first observation (x, x_dot, theta, theta_dot):", observation)
observation, reward, terminated, truncated, info = env.step(1)  # 1 = push right
print(f"after one push right: {observation}, reward {reward}")
print(f"terminated={terminated}, truncated={truncated}")

# %% [markdown]
# The observation is the cart's position `x` (m) and velocity, and the pole's angle
# `theta` (rad, positive when it leans right) and angular velocity. Every start state is
# drawn uniformly from ±0.05 in all four numbers. Pushing right accelerated the cart
# (`x_dot` rose) and, by reaction, turned the pole to the left (`theta_dot` fell).
#
# Here is the whole loop with a **policy** that ignores the observation and picks actions
# uniformly at random. The action space has its own random generator, seeded separately
# from the environment's: `env.action_space.seed(...)`.

# %%
env.action_space.seed(seed)
observation, _ = env.reset(seed=seed)
total_reward, steps = 0.0, 0
while True:
    action = env.action_space.sample()  # 0 = push left, 1 = push right
    observation, reward, terminated, truncated, _ = env.step(action)
    total_reward += reward
    steps += 1
    if terminated or truncated:
        break
print(f"random policy: {steps} steps, return {total_reward:.0f}")
print(
    f"terminated={terminated}, truncated={truncated}, final angle {observation[2]:+.3f}"
)
env.close()

# %% [markdown]
# The pole fell (`terminated=True`: the final angle is past 12° = 0.209 rad). The
# difference between the two flags matters as soon as we learn from returns:
#
# - **terminated**: the episode really ended. No more rewards will come, so the return
#   after the last step is exactly 0.
# - **truncated**: the clock ran out. The pole may be perfectly balanced and would have
#   earned many more rewards; the return after the last step is *unknown*, not 0.
#
# Older `gym` code had a single `done` flag for both (the time-out was reported only in
# `info["TimeLimit.truncated"]`, which most code ignored) and so treated a time-out as a
# fall; section 7.3 shows what that does to the learning signal.
#
# ### Seeds, and a baseline to beat
#
# Three things draw random numbers here: the environment (start states), the action space
# (random actions) and torch (network weights and sampled actions). Each gets a seed. For
# measuring a policy we use `evaluate_policy` from `helpers.rl`: it plays several
# episodes side by side in one vectorised CartPole (section 7.4 explains those), all start
# states drawn from one seed, and returns each episode's return. We fix three sets of
# start states now: training uses streams seeded from `seed` (one per training run of
# section 7.5: `seed`, `seed + 1`, `seed + 2`), **validation** episodes come from
# `val_seed` and **test** episodes from `test_seed`. Apart from the random policy
# measured right here, nothing touches the test episodes until section 7.6, so the final
# test is on start states that neither training nor any choice made on validation has
# seen.

# %%
val_seed, test_seed = seed + 1_000, seed + 2_000
n_eval = 20  # episodes per validation or test evaluation
solved_threshold = gym.spec("CartPole-v1").reward_threshold  # 475.0
random_returns = evaluate_policy(None, n_eval, test_seed)
random_mean = random_returns.mean().item()
record("random_mean", random_mean, fmt="{:.1f}")
print(f"CartPole-v1 is registered with reward_threshold={solved_threshold}")
print(
    f"random policy on the {n_eval} test episodes: mean return {random_mean:.1f}, "
    f"std {random_returns.std():.1f}, min {random_returns.min():.0f}, "
    f"max {random_returns.max():.0f}"
)

# %% [markdown]
# A random policy keeps the pole up for {glue:}`random_mean` steps on average.
# `gymnasium` registers `CartPole-v1` with a `reward_threshold` of 475, and the classic
# criterion calls the task **solved** when the average return over 100 consecutive
# episodes reaches that threshold: almost every episode must last all 500 steps. This
# chapter applies the threshold to the average of its 20 test episodes, a smaller and so
# noisier sample than the classic 100.
#
# ## 7.2 A policy network that outputs logits
#
# Our agent's policy is a network $\pi_\theta(a \mid s)$: it maps the 4 numbers of a state
# to a probability for each of the 2 actions. As in a classifier, the network's last layer
# produces **logits**, unnormalised log-probabilities; the probabilities are their
# softmax. `torch.distributions.Categorical(logits=...)` turns them into a distribution
# that can `sample()` an action and give the `log_prob` of any action, the quantity
# policy gradients differentiate.


# %%
def make_policy(hidden: int = 64) -> nn.Module:
    """State (B, 4) -> action logits (B, 2): two tanh hidden layers."""
    return nn.Sequential(
        nn.Linear(4, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 2),
    )


torch.manual_seed(seed)
policy = make_policy().to(device)
states = torch.as_tensor(observation, device=device)[None]  # (1, 4): a batch of one
logits = policy(states)  # (1, 2)
dist = Categorical(logits=logits)
action = dist.sample()  # (1,): 0 or 1
print("logits       ", logits.detach().cpu().numpy())
print("probabilities", dist.probs.detach().cpu().numpy())
print("sampled action", action.item(), " log_prob", dist.log_prob(action).item())
print(f"parameters: {sum(p.numel() for p in policy.parameters()):,}")

# %% [markdown]
# Untrained, the policy is close to a fair coin. Why logits and not probabilities? The
# same distribution can be built as `Categorical(probs=F.softmax(logits, dim=-1))`, and
# many tutorials do exactly that. It goes wrong once the policy becomes confident, which
# is what training does to it. In float32, softmax rounds a probability below about
# $10^{-45}$ to 0, and `Categorical(probs=...)` then clamps every probability into
# $[\epsilon, 1 - \epsilon]$ with $\epsilon \approx 1.2 \times 10^{-7}$ (float32's
# machine epsilon) before taking the log. From logits it computes
# `logits - logsumexp(logits)` instead, where `logsumexp` evaluates
# $\log \sum_j e^{z_j}$ without overflow or underflow by first taking out the largest
# logit, so no probability is ever rounded or clamped. Compare the log-probability of the
# unlikely action, and its gradient, when the logits differ by 30:

# %%
gap_logits = torch.tensor([[0.0, 30.0]], requires_grad=True)
unlikely = torch.tensor([0])
for name, make in [
    ("logits=", lambda: Categorical(logits=gap_logits)),
    ("probs=softmax", lambda: Categorical(probs=F.softmax(gap_logits, dim=-1))),
]:
    log_prob = make().log_prob(unlikely)
    (grad,) = torch.autograd.grad(log_prob.sum(), gap_logits)
    print(f"{name:14} log_prob {log_prob.item():9.4f}   gradient {grad.tolist()}")

# %% [markdown]
# The exact log-probability is $-30$ (up to $e^{-30}$), and its gradient with respect to
# the logits is $(1, -1)$. Through softmax probabilities the log-probability is clamped
# to $\ln \epsilon \approx -15.9$ and the gradient is exactly zero: the clamp cuts it. A
# policy-gradient update would then have no way to make that action more likely again,
# however good it turned out to be. The same clamp hits every probability below
# $\epsilon$, so from a logit gap of about 16 on.
#
# ## 7.3 Discounted returns
#
# REINFORCE judges each action by what followed it. The **discounted return** from step
# $t$ of an episode with rewards $r_0, \dots, r_{T-1}$ is
#
# $$ G_t = r_t + \gamma r_{t+1} + \gamma^2 r_{t+2} + \dots = \sum_{k=t}^{T-1} \gamma^{k-t} r_k, $$
#
# with a discount factor $\gamma$ slightly below 1: a reward $k$ steps later counts
# $\gamma^k$ as much, so an action gets credit mostly for what happens in the next
# $1/(1-\gamma)$ steps or so. Computing each sum directly costs $O(T^2)$; going backwards,
# $G_t = r_t + \gamma G_{t+1}$, costs $O(T)$. Written out and checked against the direct
# sum and against `discounted_returns` from `helpers.rl`, whose tests compare it with
# the direct sum too:

# %%
gamma = 0.99  # discount factor
eps = 1e-8  # keeps the normalisation below finite when all returns are equal

rewards = [1.0, 0.0, 2.0, -1.0, 3.0]
returns_by_hand = [0.0] * len(rewards)
running = 0.0
for t in reversed(range(len(rewards))):
    running = rewards[t] + gamma * running  # G_t = r_t + gamma * G_{t+1}
    returns_by_hand[t] = running
direct = [
    sum(gamma ** (k - t) * rewards[k] for k in range(t, len(rewards)))
    for t in range(len(rewards))
]
print("backwards:", np.round(returns_by_hand, 4))
print("direct:   ", np.round(direct, 4))
assert np.allclose(returns_by_hand, direct)
assert np.allclose(discounted_returns(rewards, gamma).numpy(), direct)

# %% [markdown]
# Raw returns make poor weights for a gradient: in CartPole they are all positive and
# their scale grows as the agent improves. REINFORCE implementations therefore usually
# **normalise** them over a batch, subtracting the mean and dividing by the standard
# deviation (plus `eps`). Subtracting the mean acts as a simple baseline: actions followed
# by more than the usual return are made more likely, the others less likely. Dividing
# by the standard deviation keeps the step size independent of the return's scale.
#
# Now the terminated/truncated distinction in numbers. Take an episode that survived all
# 500 steps and was truncated. Treated as if it had terminated, the return after the last
# step is 0, so the last actions look worthless; yet the final state was as good as the
# first. `discounted_returns` accepts a `bootstrap` value: an estimate of the return
# after the last step (here the return of an endless run of 1s, $1/(1-\gamma) = 100$).

# %%
full_episode = [1.0] * 500
as_if_fell = discounted_returns(full_episode, gamma)
bootstrapped = discounted_returns(full_episode, gamma, bootstrap=1 / (1 - gamma))
normalised = (as_if_fell - as_if_fell.mean()) / (as_if_fell.std() + eps)
for t in (0, 250, 450, 499):
    print(
        f"t={t:3d}  G_t treated as terminated {as_if_fell[t]:6.2f} "
        f"(normalised {normalised[t]:+.2f})   bootstrapped {bootstrapped[t]:6.2f}"
    )

# %% [markdown]
# Treated as terminated, the returns fall towards 1 at the end, and after normalisation
# every action in the last part of the episode gets a negative weight: the update would
# make the actions that kept the pole up *less* likely, only because they happened late.
# The policy cannot even see the time, so this is noise at best. With the bootstrap the
# returns are all 100, as they should be for a state that can be held forever. Section
# 7.5 learns the bootstrap value instead of assuming it.
#
# ## 7.4 REINFORCE, written out
#
# The goal is to maximise the expected return $J(\theta) = \mathbb{E}[\sum_t r_t]$ of
# episodes played with $\pi_\theta$. The **policy-gradient theorem** gives its gradient as
# an expectation over such episodes,
#
# $$ \nabla_\theta J = \mathbb{E}\Big[\sum_t G_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)\Big] $$
#
# where $G_t$ is the *undiscounted* return from step $t$ ($\gamma = 1$). Averaging
# $\sum_t G_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)$ over played episodes therefore
# gives an unbiased estimate of $\nabla_\theta J$. Practical REINFORCE, including this
# chapter, plugs in the discounted $G_t$ with $\gamma < 1$ instead. That estimate is
# biased (it is not exactly the gradient of $J$, nor of the discounted objective), but
# it has lower variance, because rewards far in the future, which an action barely
# influenced, count for little. Normalising the returns is a trade of the same kind.
#
# In PyTorch we write the **loss**
# $-\frac{1}{N}\sum_t \hat G_t \log \pi_\theta(a_t \mid s_t)$, with $\hat G_t$ the
# normalised returns treated as constants, over all $N$ steps of a batch of episodes.
# `loss.backward()` then stores in `.grad` minus this estimate (computed with the
# normalised returns) times a positive number, so an optimizer that goes downhill on the
# loss goes uphill on the estimated $J$. That is REINFORCE (Williams, 1992).
#
# ```{admonition} If you have seen the classic short version of this code
# :class: note
# A widely copied snippet has `select_action` and `finish_episode` functions that use
# `policy`, `gamma`, `eps` and `optimizer` without ever defining them, and append to
# `policy.rewards` and `policy.saved_log_probs`, lists its `Policy` class never creates.
# Here all four are defined (`gamma` and `eps` in section 7.3, `policy` in section 7.2,
# `optimizer` below). That snippet also ends its network with `F.softmax` and builds
# `Categorical(probs)`; section 7.2 showed why `Categorical(logits=...)` is the stable
# choice.
# ```
#
# ### Several episodes at once with `gymnasium.vector`
#
# One episode gives a very noisy gradient estimate, so each update here averages over a
# batch of `n_envs` = 16 episodes. `gym.make_vec` builds 16 copies of CartPole that step
# together; with `vectorization_mode="vector_entry_point"` CartPole's own NumPy
# implementation advances all 16 in one call, and the policy picks all 16 actions in one
# forward pass. Two details:
#
# - A vector environment **resets a finished copy by itself**, on the next call to
#   `step` (that call ignores the copy's action and returns its new start state). We keep
#   only each copy's first episode: `alive` marks the copies still in it, and the batch
#   ends when the longest episode does.
# - Actions are sampled under `torch.no_grad()`: no graph is built during play. Afterwards
#   one batched forward pass recomputes the log-probabilities of every step with a graph.
#   The parameters did not change in between, so these are the log-probabilities of the
#   very distributions the actions were sampled from (up to floating-point rounding).

# %%
n_envs = 16  # episodes per update


def collect_episodes(envs: gym.vector.VectorEnv, policy: nn.Module) -> list[Episode]:
    """Play one episode in every copy of ``envs`` side by side, sampling actions."""
    observations, _ = envs.reset()  # (n_envs, 4); the first reset was seeded
    n = envs.num_envs
    alive = np.ones(n, dtype=bool)
    lengths = np.zeros(n, dtype=int)
    terminated_at_end = np.zeros(n, dtype=bool)
    truncated_at_end = np.zeros(n, dtype=bool)
    final_states = np.zeros_like(observations)
    states, actions = [], []
    policy.eval()
    with torch.no_grad():
        while alive.any():
            logits = policy(torch.as_tensor(observations, device=device))  # (n, 2)
            action = Categorical(logits=logits).sample().cpu().numpy()  # (n,)
            next_observations, _, terminated, truncated, _ = envs.step(action)
            states.append(observations)
            actions.append(action)
            lengths += alive  # this step belongs to every episode still running
            ended = alive & (terminated | truncated)
            terminated_at_end |= ended & terminated
            truncated_at_end |= ended & truncated & ~terminated
            final_states[ended] = next_observations[ended]
            alive &= ~ended
            observations = next_observations
    states = np.stack(states)  # (longest episode, n, 4)
    actions = np.stack(actions)  # (longest episode, n)
    episodes = []
    for i, length in enumerate(lengths):
        episodes.append(
            Episode(
                states=np.concatenate([states[:length, i], final_states[i : i + 1]]),
                actions=actions[:length, i],
                rewards=np.ones(length),  # CartPole pays 1 for every step
                terminated=bool(terminated_at_end[i]),
                truncated=bool(truncated_at_end[i]),
            )
        )
    return episodes


envs = gym.make_vec(
    "CartPole-v1", num_envs=n_envs, vectorization_mode="vector_entry_point"
)
envs.reset(seed=seed)
batch = collect_episodes(envs, policy)
print("episode lengths:", [len(e.actions) for e in batch])
print("first episode: states", batch[0].states.shape, "actions", batch[0].actions.shape)

# %% [markdown]
# `Episode` (from `helpers.rl`) holds one more state than actions: the state the last
# action led to. Now one REINFORCE update on this batch, step by step.

# %%
lr = 1e-2
optimizer = torch.optim.Adam(policy.parameters(), lr=lr)

policy.train()
batch_states = torch.as_tensor(
    np.concatenate([e.states[:-1] for e in batch]), device=device
)  # (N, 4): every step of every episode
batch_actions = torch.as_tensor(
    np.concatenate([e.actions for e in batch]), device=device
)  # (N,)
returns = torch.cat([discounted_returns(e.rewards, gamma) for e in batch]).to(device)
weights = (returns - returns.mean()) / (returns.std() + eps)  # normalised returns
log_probs = Categorical(logits=policy(batch_states)).log_prob(batch_actions)  # (N,)
loss = -(log_probs * weights).mean()
optimizer.zero_grad()
loss.backward()
optimizer.step()
print(f"{len(batch_states)} steps, loss {loss.item():+.4f}")

# %% [markdown]
# The loss value itself means little: unlike a supervised loss it does not fall steadily
# as the policy improves, because the episodes it is computed on change with the policy.
# Progress is measured by returns.
#
# ### The training loop, with validation
#
# `reinforce_update` packs the cell above into a function: `batch_tensors` gathers every
# step of a batch, and `policy_step` normalises the weights and takes one gradient step
# (section 7.5 reuses both). `train_reinforce` repeats collect → update. After every
# update it scores the **greedy** policy (always the most likely action) on the 20
# validation episodes, keeps a copy of the best weights so far, and stops as soon as all
# 20 validation episodes last the full 500 steps, or when the budget of `max_episodes`
# training episodes is spent. The validation score decides when to stop and which
# weights to keep; the test episodes play no part. The update is an argument, so that
# section 7.5 can pass a different one.
#
# Keeping "a copy of the best weights" needs `copy.deepcopy(policy.state_dict())`:
# `state_dict()` returns the model's live parameter tensors, not copies, so without the
# deep copy the next `optimizer.step()` would change the "saved" weights as well.

# %%
max_episodes = 800  # training budget per run, in episodes
# the type of an update function: update(batch, policy, optimizer) returns nothing
Update = Callable[[list[Episode], nn.Module, torch.optim.Optimizer], None]


def batch_tensors(batch: list[Episode]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every step of a batch of episodes: states (N, 4) and actions (N,)."""
    # each episode's final state is dropped: no action was taken in it
    states = np.concatenate([e.states[:-1] for e in batch])  # (N, 4)
    actions = np.concatenate([e.actions for e in batch])  # (N,)
    return torch.as_tensor(states).to(device), torch.as_tensor(actions).to(device)


def policy_step(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    states: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
) -> None:
    """Normalise the per-step weights, then one gradient step on the REINFORCE loss."""
    policy.train()
    weights = (advantages - advantages.mean()) / (advantages.std() + eps)  # (N,)
    log_probs = Categorical(logits=policy(states)).log_prob(actions)  # (N,)
    loss = -(log_probs * weights).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def reinforce_update(
    batch: list[Episode], policy: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """One plain REINFORCE step on a batch of episodes."""
    states, actions = batch_tensors(batch)
    # Bootstrap 0 for every episode: right for a terminated one; for a truncated one
    # there is no value network to estimate what the time-out cut off (section 7.5).
    returns = torch.cat([discounted_returns(e.rewards, gamma) for e in batch])
    policy_step(policy, optimizer, states, actions, returns.to(device))


def train_reinforce(
    run_seed: int, update: Update = reinforce_update, label: str = "plain"
) -> dict:
    """Train a fresh policy from ``run_seed`` with ``update``; return it and a history."""
    torch.manual_seed(run_seed)  # initial weights and sampled actions
    policy = make_policy().to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    envs = gym.make_vec(
        "CartPole-v1", num_envs=n_envs, vectorization_mode="vector_entry_point"
    )
    envs.reset(seed=run_seed)  # start states of all training episodes
    history = {"episode_returns": [], "truncated": [], "episodes": [], "val_mean": []}
    best_val, best_weights, solved_at = -math.inf, None, None
    bar = tqdm(total=max_episodes, desc=f"{label}, seed {run_seed}", leave=False)
    while len(history["episode_returns"]) < max_episodes:
        batch = collect_episodes(envs, policy)
        update(batch, policy, optimizer)
        history["episode_returns"] += [e.total_reward for e in batch]
        history["truncated"] += [e.truncated for e in batch]
        val_mean = (
            evaluate_policy(policy, n_eval, val_seed, device=device).mean().item()
        )
        history["episodes"].append(len(history["episode_returns"]))
        history["val_mean"].append(val_mean)
        bar.update(n_envs)
        if val_mean >= best_val:  # ties go to the later, longer-trained weights
            # a snapshot: state_dict() holds the live tensors the optimizer changes
            best_val, best_weights = val_mean, copy.deepcopy(policy.state_dict())
        if val_mean == 500:
            solved_at = history["episodes"][-1]
            break
    bar.close()
    envs.close()
    policy.load_state_dict(best_weights)
    return {"policy": policy, "history": history, "solved_at": solved_at}


# %% [markdown]
# ## 7.5 A learned value baseline, measured
#
# Normalising subtracts one number, the batch's mean return, from every step's return.
# But how much return to expect depends on the state: with the pole almost horizontal,
# little; upright and centred, a lot. A **value network** $V_\phi(s)$ learns that
# expectation by regression on the observed returns, and the policy is then weighted by
# the **advantage** $A_t = G_t - V_\phi(s_t)$: how much better than expected *from that
# state* things went. Subtracting anything that depends only on the state leaves the
# gradient's expectation unchanged, because $\mathbb{E}_{a \sim \pi}[\nabla_\theta \log
# \pi_\theta(a \mid s)] = 0$, while it can reduce the estimate's variance. Normalisation
# already removed the batch mean; a state-dependent baseline can in addition remove the
# part of the return that the state predicts.
#
# For a truncated episode the value network also provides the bootstrap value of
# section 7.3, $V_\phi$ of the final state, where plain REINFORCE above uses 0. So the
# comparison below changes two things at once, the baseline and the bootstrap, and cannot
# tell their effects apart. (The network predicts $(1 - \gamma)\,G$, a number of order
# one, because networks learn outputs of that size most easily; `make_baseline_update`
# multiplies back.)
#
# Within one update the advantages come first: the value network's current predictions,
# computed under `torch.no_grad()` because the baseline is a constant for the policy's
# gradient, and before the network has seen this batch's returns (a baseline fitted to
# the very returns it is subtracted from would cancel part of the signal). Then the value
# network takes `value_steps` = 10 Adam steps on the mean squared error to this batch's
# returns: more than one step per batch lets the regression go further on each batch, so
# its predictions trail a quickly improving policy less. The value network gets its own
# seed, so that its first layers do not start as copies of the policy's. Everything else
# is the same as for plain REINFORCE: the same initial policy weights and training start
# states for each `run_seed`, the same optimizer, batch size, validation rule and budget.

# %%
value_steps = 10  # value-network steps per batch


def make_value(hidden: int = 64) -> nn.Module:
    """State (B, 4) -> (B, 1): the return expected from that state, times (1 - gamma)."""
    return nn.Sequential(
        nn.Linear(4, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 1),
    )


def make_baseline_update(run_seed: int) -> Update:
    """A fresh value network and its optimizer, inside an update like reinforce_update."""
    torch.manual_seed(run_seed + 10_000)  # the value network's own initial weights
    value = make_value().to(device)
    value_optimizer = torch.optim.Adam(value.parameters(), lr=lr)

    def baseline_update(
        batch: list[Episode], policy: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        states, actions = batch_tensors(batch)
        returns = []
        for e in batch:
            bootstrap = 0.0  # terminated: nothing follows the last reward
            if e.truncated:  # cut by the time limit: estimate what would have followed
                with torch.no_grad():
                    final = torch.as_tensor(e.states[-1:], device=device)  # (1, 4)
                    bootstrap = value(final).item() / (1 - gamma)
            returns.append(discounted_returns(e.rewards, gamma, bootstrap=bootstrap))
        returns = torch.cat(returns).to(device)  # (N,)
        with torch.no_grad():  # a constant for the policy's gradient
            baseline = value(states).squeeze(1) / (1 - gamma)  # (N,)
        value.train()
        for _ in range(value_steps):
            predicted = value(states).squeeze(1)  # (N,), in units of 1 / (1 - gamma)
            value_loss = F.mse_loss(predicted, returns * (1 - gamma))
            value_optimizer.zero_grad()
            value_loss.backward()
            value_optimizer.step()
        policy_step(policy, optimizer, states, actions, returns - baseline)

    return baseline_update


# %% [markdown]
# One training run is one sample of a noisy process: the same code needs a different
# number of episodes with another seed. So we train both versions from three seeds each and
# compare the episodes each needed before all 20 validation episodes lasted 500 steps.

# %%
run_seeds = [seed, seed + 1, seed + 2]
runs = {}
for label in ("plain", "baseline"):
    for run_seed in run_seeds:
        if label == "plain":
            run = train_reinforce(run_seed)
        else:
            run = train_reinforce(run_seed, make_baseline_update(run_seed), label)
        runs[label, run_seed] = run
        best = max(run["history"]["val_mean"])
        solved = run["solved_at"] or f"not within {max_episodes}"
        print(
            f"{label:8}  seed {run_seed}: episodes to pass validation {solved}"
            f"  (best validation mean {best:.1f})"
        )

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, label in zip(axes, ("plain", "baseline"), strict=True):
    for run_seed in run_seeds:
        history = runs[label, run_seed]["history"]
        ax.plot(history["episodes"], history["val_mean"], label=f"seed {run_seed}")
    ax.set(
        title="With value baseline" if label == "baseline" else "Plain REINFORCE",
        xlabel="training episodes",
        ylabel="greedy validation return (mean of 20)",
    )
    ax.axhline(500, color="grey", linestyle=":")
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()


# %% [markdown]
# Both panels share the y axis. Besides the number of episodes a run needs, the curves
# show whether it falls back on the way: its validation score dropping below a value it
# had already reached. The cell below measures both for each version, and compares the
# mean number of episodes with its standard error.


# %%
def episodes_needed(label: str) -> list[int]:
    """Episodes each run needed to pass validation (the budget if it never did)."""
    return [runs[label, s]["solved_at"] or max_episodes for s in run_seeds]


def worst_fall_back(label: str) -> float:
    """Largest drop of a run's validation mean below its best earlier value."""
    drops = []
    for s in run_seeds:
        val_mean = np.array(runs[label, s]["history"]["val_mean"])
        drops.append((np.maximum.accumulate(val_mean) - val_mean).max())
    return max(drops)


n_runs = len(run_seeds)
plain_needed, baseline_needed = episodes_needed("plain"), episodes_needed("baseline")
plain_passed = sum(runs["plain", s]["solved_at"] is not None for s in run_seeds)
baseline_passed = sum(runs["baseline", s]["solved_at"] is not None for s in run_seeds)
difference = np.mean(baseline_needed) - np.mean(plain_needed)
difference_se = math.sqrt(
    np.var(plain_needed, ddof=1) / n_runs + np.var(baseline_needed, ddof=1) / n_runs
)
if abs(difference) < 2 * difference_se:
    verdict = "no clear evidence that the baseline changes the episodes needed"
elif difference < 0:
    verdict = "weak evidence (three runs each) that the baseline needs fewer episodes"
else:
    verdict = "weak evidence (three runs each) that the baseline needs more episodes"
truncated = {
    label: sum(sum(runs[label, s]["history"]["truncated"]) for s in run_seeds)
    for label in ("plain", "baseline")
}
played = {
    label: sum(len(runs[label, s]["history"]["truncated"]) for s in run_seeds)
    for label in ("plain", "baseline")
}
record("plain_mean_episodes", np.mean(plain_needed), fmt="{:.0f}")
record("baseline_mean_episodes", np.mean(baseline_needed), fmt="{:.0f}")
record("plain_max_episodes", max(plain_needed))
record("baseline_max_episodes", max(baseline_needed))
record("fewest_episodes", min(plain_needed + baseline_needed))
record("most_episodes", max(plain_needed + baseline_needed))
record("episodes_difference", difference, fmt="{:+.0f}")
record("episodes_difference_se", difference_se, fmt="{:.0f}")
record("baseline_verdict", verdict)
record("plain_fall_back", worst_fall_back("plain"), fmt="{:.0f}")
record("baseline_fall_back", worst_fall_back("baseline"), fmt="{:.0f}")
record("plain_truncated", truncated["plain"])
record("baseline_truncated", truncated["baseline"])
record("plain_played", played["plain"])
record("baseline_played", played["baseline"])
record(
    "runs_passed",
    plain_passed + baseline_passed,
    headline=f"Training runs that passed validation (of {2 * n_runs})",
)
print(f"plain:    {plain_passed}/{n_runs} passed, episodes needed {plain_needed}")
print(f"baseline: {baseline_passed}/{n_runs} passed, episodes needed {baseline_needed}")
print(
    f"baseline minus plain: {difference:+.0f} episodes on average "
    f"(standard error {difference_se:.0f}): {verdict}"
)
print(
    f"worst fall-back of validation: plain {worst_fall_back('plain'):.0f}, "
    f"baseline {worst_fall_back('baseline'):.0f}"
)
print(f"truncated training episodes: {truncated} of {played}")
# every run solved CartPole at CPU levels default, avx2, avx512 x seeds 0-2, within
# 320 to 336 episodes at most (the budget is 800)
assert plain_passed == baseline_passed == n_runs, (plain_needed, baseline_needed)

# %% [markdown]
# Every one of the six runs passed validation within the budget of 800 episodes (the
# assert checks it). Plain REINFORCE needed {glue:}`plain_mean_episodes` episodes on
# average and {glue:}`plain_max_episodes` at worst; with the value baseline it took
# {glue:}`baseline_mean_episodes` on average and {glue:}`baseline_max_episodes` at worst.
# The difference of the means, baseline minus plain, is {glue:}`episodes_difference`
# episodes, with a standard error of {glue:}`episodes_difference_se`
# ($\sqrt{s_p^2/3 + s_b^2/3}$ from the two samples' variances). As a rough rule, a
# difference smaller than about two standard errors is what chance alone often produces;
# and with only three runs per version the standard error is itself a rough estimate, so
# even a larger difference would be weak evidence. The verdict of this run:
# {glue:}`baseline_verdict`.
# The largest fall-back of the validation score was {glue:}`plain_fall_back` for plain
# REINFORCE and {glue:}`baseline_fall_back` with the baseline.
#
# Two things limit what a learned baseline can add here. Normalisation already subtracts
# the batch's mean return, so plain REINFORCE has a baseline too, one that ignores the
# state. And the value network learns from episodes of earlier policies: while the policy
# improves quickly, its predictions lag behind, and the error of a lagging prediction is
# noise added to every advantage. The second change, the bootstrap, only acts on
# truncated training episodes: {glue:}`plain_truncated` of the {glue:}`plain_played`
# training episodes of the plain runs and {glue:}`baseline_truncated` of the
# {glue:}`baseline_played` of the baseline runs, since a run stops as soon as validation
# passes.
#
# All six runs scored the maximum, 500 on all 20 validation episodes, so validation
# cannot rank them. The policy this chapter keeps is the one chosen before training: the
# baseline version trained from the setup cell's `seed`, with the weights that passed
# validation. The test episodes played no part in that choice.

# %%
chosen = runs["baseline", seed]
policy = chosen["policy"]
history = chosen["history"]
episode_returns = np.array(history["episode_returns"])
window = 32
fig, ax = plt.subplots(figsize=(8, 3.6))
ax.plot(episode_returns, ".", ms=2, alpha=0.4, label="return of each training episode")
ax.plot(moving_average(episode_returns, window), label=f"mean of the last {window}")
ax.plot(history["episodes"], history["val_mean"], "o-", ms=3, label="greedy validation")
ax.set(
    title=f"REINFORCE with value baseline, seed {seed}",
    xlabel="training episode",
    ylabel="return (steps balanced)",
)
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# The training episodes are played by the *sampling* policy, which keeps trying the less
# likely action now and then, so their returns mostly lie below the greedy validation
# score, and their moving average lags further behind. That exploration is what lets
# REINFORCE discover better actions at all.
#
# ## 7.6 Test: the greedy policy on fresh start states
#
# Evaluation is separate from training: no sampling, no updates. The 20 test episodes'
# start states come from `test_seed`, which nothing else used except the random policy of
# section 7.1, measured on these same 20 start states so that the two compare directly.

# %%
test_returns = evaluate_policy(policy, n_eval, test_seed, device=device)
test_mean = test_returns.mean().item()
record("test_mean", test_mean, fmt="{:.1f}", headline="Greedy test return (mean of 20)")
record(
    "random_test_mean",
    random_mean,
    fmt="{:.1f}",
    headline="Random policy return (same 20 episodes)",
)
record("test_std", test_returns.std().item(), fmt="{:.1f}")
record("test_min", test_returns.min().item(), fmt="{:.0f}")
record(
    "episodes_to_solve",
    chosen["solved_at"],
    headline="Training episodes until validation passed",
)
print(
    f"trained policy: mean {test_mean:.1f}, std {test_returns.std():.1f}, "
    f"min {test_returns.min():.0f}, max {test_returns.max():.0f}"
)
print(f"random policy:  mean {random_mean:.1f}")
# CPU levels default, avx2, avx512 x seeds 0-2: trained mean 499.5 to 500, random
# 22.0 to 23.6
assert test_mean >= solved_threshold and random_mean < 50, (test_mean, random_mean)

# %% [markdown]
# Over the 20 test episodes the trained policy averages {glue:}`test_mean` (standard
# deviation {glue:}`test_std`, shortest episode {glue:}`test_min` steps), against
# {glue:}`random_test_mean` for random actions: at least the threshold of 475, so
# CartPole-v1 counts as solved by this chapter's 20-episode version of the criterion.
# Training the kept policy took {glue:}`episodes_to_solve` episodes.
#
# ## 7.7 What the policy learned
#
# The policy is a function of four numbers. Holding the cart still at the centre
# (`x = x_dot = 0`), we can draw its probability of pushing right over a grid of pole
# angles and angular velocities, and overlay the states one greedy episode passes
# through (`play_episode` from `helpers.rl` records them), projected onto the angle and
# the angular velocity.

# %%
episode = play_episode(policy, seed=seed + 3_000, device=device)
angles = torch.linspace(-0.21, 0.21, 121)  # the pole falls beyond +-0.2095 rad
spins = torch.linspace(-1.5, 1.5, 121)  # angular velocity, rad/s
grid_theta, grid_omega = torch.meshgrid(angles, spins, indexing="xy")  # (121, 121) each
grid_states = torch.stack(
    [
        torch.zeros_like(grid_theta),
        torch.zeros_like(grid_theta),
        grid_theta,
        grid_omega,
    ],
    dim=-1,
).reshape(-1, 4)  # (121 * 121, 4)
policy.eval()
with torch.no_grad():
    p_right = F.softmax(policy(grid_states.to(device)), dim=-1)[:, 1].cpu()
p_right = p_right.reshape(121, 121)  # rows: angular velocity, columns: angle

fig, ax = plt.subplots(figsize=(6.5, 4.5))
image = ax.pcolormesh(angles, spins, p_right, cmap="coolwarm", vmin=0, vmax=1)
fig.colorbar(image, label="P(push right)")
ax.plot(episode.states[:, 2], episode.states[:, 3], "k.", ms=2, label="greedy episode")
ax.set(
    title="Policy at x = 0, x_dot = 0",
    xlabel="pole angle theta (rad, > 0 leans right)",
    ylabel="angular velocity (rad/s)",
)
ax.legend(loc="upper left")
plt.show()

# %% [markdown]
# To describe the boundary in numbers, the next cell finds, in each column of the map
# (one angle), the angular velocity at which P(push right) crosses 0.5, and fits a
# straight line through these points.

# %%
crossings = []
for j in range(len(angles)):
    column = p_right[:, j].numpy()  # P(push right) from the lowest to highest spin
    k = np.flatnonzero(np.diff(column >= 0.5))  # rows after which it crosses 0.5
    if len(k) == 1:  # exactly one crossing: interpolate linearly between two rows
        k = k[0]
        step = (0.5 - column[k]) / (column[k + 1] - column[k])
        crossings.append(
            (angles[j].item(), (spins[k] + step * (spins[1] - spins[0])).item())
        )
boundary_theta, boundary_omega = np.array(crossings).T
slope, intercept = np.polyfit(boundary_theta, boundary_omega, 1)
omega_shift = abs(slope) * (angles[-1] - angles[0]).item()
with torch.no_grad():
    visited = torch.as_tensor(episode.states[:-1], device=device)  # (T, 4)
    p_visited = F.softmax(policy(visited), dim=-1)[:, 1].cpu().numpy()
unsure = np.mean((p_visited > 0.1) & (p_visited < 0.9))
switches = np.mean(episode.actions[1:] != episode.actions[:-1])
record("boundary_slope", slope, fmt="{:+.2f}")
record("boundary_intercept", intercept, fmt="{:+.2f}")
record("boundary_shift", omega_shift, fmt="{:.2f}")
record("unsure_fraction", unsure, fmt="{:.0%}")
record("switch_fraction", switches, fmt="{:.0%}")
print(f"columns with one crossing: {len(crossings)} of {len(angles)}")
print(f"boundary: omega = {intercept:+.3f} {slope:+.3f} * theta (rad/s)")
print(f"the switching omega moves by {omega_shift:.2f} rad/s across the angles shown")
print(f"greedy episode: 0.1 < P(right) < 0.9 at {unsure:.0%} of its steps")
print(f"greedy episode: the action changes at {switches:.0%} of its steps")
top_right, bottom_right = p_right[-1].min().item(), p_right[0].max().item()
# The prose below relies on these: one crossing per angle, right above and left below,
# a boundary that moves less across the angles than the spins shown, sloping down.
assert len(crossings) == len(angles) and top_right > 0.5 > bottom_right
assert omega_shift < (spins[-1] - spins[0]).item() / 2 and slope < 0, slope

# %% [markdown]
# The map is split into a red region above (push right) and a blue region below (push
# left). The boundary between them is close to horizontal: the fitted line has a slope
# of {glue:}`boundary_slope` rad/s per rad and passes θ = 0 at an angular velocity of
# {glue:}`boundary_intercept` rad/s. Across the whole range of angles shown, ±0.21 rad,
# the switching angular velocity moves by only {glue:}`boundary_shift` rad/s, while the
# map spans 3 rad/s. So the decision depends mostly on the angular velocity: push right
# when the pole swings to the right, left when it swings to the left, which moves the
# cart under the falling pole. The angle shifts the switching point: the slope is
# negative, so a pole that leans right gets a push to the right even while it still
# swings slightly to the left.
#
# The greedy episode keeps the angular velocity close to the boundary, switching action
# at {glue:}`switch_fraction` of its steps; its own probability of pushing right, computed
# on the full states, lay between 0.1 and 0.9 at {glue:}`unsure_fraction` of them. The
# map shows only the slice `x = x_dot = 0`: the policy also sees the cart's position and
# velocity, which can move the boundary.
#
# ## 7.8 Watching it balance
#
# `gymnasium` draws CartPole frames when the environment is made with
# `render_mode="rgb_array"`: each `env.render()` returns an `(H, W, 3)` image. It draws
# them with `pygame`, which comes with `pip install "gymnasium[classic-control]"`. Where
# `pygame` is missing, `cartpole_frame` from `helpers.rl` draws the same geometry from
# the recorded states with NumPy (smoothing the edges by averaging 4 × 4 sub-pixels per
# pixel), so the cell below works either way; it then draws only the eight frames shown.

# %%
shown = np.linspace(0, len(episode.states) - 1, 8).round().astype(int)
has_pygame = importlib.util.find_spec("pygame") is not None
if has_pygame:
    rendered = play_episode(policy, seed=seed + 3_000, device=device, render=True)
    frames = [rendered.frames[t] for t in shown]
else:
    frames = [cartpole_frame(episode.states[t]) for t in shown]
fig, axes = plt.subplots(2, 4, figsize=(12, 4.2))
for ax, t, frame in zip(axes.flat, shown, frames, strict=True):
    ax.imshow(frame)
    ax.set_title(f"step {t}, theta {episode.states[t, 2]:+.3f} rad", fontsize=9)
    ax.axis("off")
drawn_by = "gymnasium (pygame)" if has_pygame else "cartpole_frame (no pygame found)"
fig.suptitle(f"One greedy episode of the trained policy, drawn by {drawn_by}")
fig.tight_layout()
plt.show()
largest_angle = np.degrees(np.abs(episode.states[:, 2]).max())
largest_x = np.abs(episode.states[:, 0]).max()
if episode.truncated:
    episode_end = f"cut off by the time limit after {len(episode.actions)} steps"
else:
    episode_end = f"ended by a fall after {len(episode.actions)} steps"
record("largest_angle", largest_angle, fmt="{:.1f}")
record("largest_x", largest_x, fmt="{:.2f}")
record("episode_end", episode_end)
print(f"the episode was {episode_end}")
print(f"largest |theta| {largest_angle:.1f} degrees, largest |x| {largest_x:.2f} m")

# %% [markdown]
# Eight evenly spaced frames of the same episode, which was {glue:}`episode_end`. Over
# all of its steps, not only the eight drawn, the pole never leaned more than
# {glue:}`largest_angle`° from vertical (it falls at 12°) and the cart never went further
# than {glue:}`largest_x` m from the centre (the track ends at 2.4 m).
#
# ```{admonition} Common pitfalls
# :class: warning
# - **Softmax probabilities into `Categorical(probs=...)`**: confident policies get
#   clamped log-probabilities and zero gradients (section 7.2). Pass `logits=`.
# - **Treating truncation as termination** (the old single `done` flag): returns of a
#   time-out look like a fall, and late actions get punished (section 7.3).
# - **Forgetting `-`** in the loss: minimising $\sum G \log \pi$ makes good actions *less*
#   likely.
# - **Letting the policy loss reach the value network**: compute the baseline under
#   `torch.no_grad()` (or `.detach()` it). In `baseline_update` forgetting that raises an
#   error ("one of the variables needed for gradient computation has been modified by an
#   inplace operation"), because the value network's optimizer changed the weights the
#   graph saved. Code that adds the policy and value losses and calls `backward()` once
#   runs without complaint, and the policy loss then trains the value network as well.
# - **Normalising a single return**: `std()` of one number is NaN (Bessel's correction
#   divides by n − 1 = 0); with batches of whole episodes this cannot happen.
# - **Judging a policy by its training curve**: training returns come from the sampling
#   policy on the training start states. Evaluate the greedy policy on fresh ones.
# - **Trusting one seed**: the number of episodes REINFORCE needs changes from seed to
#   seed (section 7.5's six runs needed between {glue:}`fewest_episodes` and
#   {glue:}`most_episodes`), so one run says little. Measure across seeds.
# ```
#
# ## Exercises
#
# **Exercise 1.** From which logit gap on does `Categorical(probs=F.softmax(logits))`
# give a zero gradient for the log-probability of the unlikely action? Find the smallest
# integer gap, and explain the number.


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 1: scan integer gaps; compare with ln(1 / float32 eps).
def probs_gradient(gap: float) -> torch.Tensor:
    z = torch.tensor([[0.0, gap]], requires_grad=True)
    lp = Categorical(probs=F.softmax(z, dim=-1)).log_prob(torch.tensor([0]))
    return torch.autograd.grad(lp.sum(), z)[0]


first_zero = next(g for g in range(1, 60) if probs_gradient(float(g)).abs().max() == 0)
limit = -math.log(torch.finfo(torch.float32).eps)
print(
    f"The gradient is zero from a gap of {first_zero} on: the unlikely action's "
    f"probability exp(-gap) falls below float32's eps there (ln(1/eps) = {limit:.2f}), "
    "and Categorical(probs=...) clamps it."
)
assert first_zero == math.ceil(limit), (first_zero, limit)

# %% [markdown]
# **Exercise 2.** With $\gamma = 0.99$, what is $G_0$ of a CartPole episode that lasts
# all 500 steps? Compute it with `discounted_returns`, and compare with the geometric
# series $\sum_{k<500} \gamma^k = (1 - \gamma^{500})/(1 - \gamma)$. How much would
# $G_0$ grow if the episode could go on forever?

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 2: the series sums to (1 - gamma^500) / (1 - gamma);
# going on forever adds gamma^500 / (1 - gamma).
g0 = discounted_returns([1.0] * 500, gamma)[0].item()
closed_form = (1 - gamma**500) / (1 - gamma)
print(
    f"G_0 = {g0:.3f} and the closed form gives {closed_form:.3f}. An endless episode "
    f"would be worth 1/(1 - gamma) = {1 / (1 - gamma):.1f}, only {100 - g0:.2f} more: "
    "rewards more than a few hundred steps ahead barely count."
)
assert abs(g0 - closed_form) < 1e-3 and 99 < g0 < 100

# %% [markdown]
# **Exercise 3.** Section 7.6 tested the greedy policy. Evaluate the *sampling* policy
# (`greedy=False`) on 20 fresh episodes from seed `seed + 4_000`, and the greedy one on
# the same start states. Which is better, and why would that be? (Hint: how often does
# sampling take the action the greedy policy would not?)

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 3: same start states for both; sampling is seeded through torch.
torch.manual_seed(seed)
sampled = evaluate_policy(policy, n_eval, seed + 4_000, device=device, greedy=False)
greedy = evaluate_policy(policy, n_eval, seed + 4_000, device=device)
gap = (greedy.mean() - sampled.mean()).item()
gap_se = math.sqrt((greedy.var() + sampled.var()).item() / n_eval)
# p_visited (section 7.7): P(push right) on the greedy episode's states; sampling takes
# the other action than greedy with probability min(p, 1 - p)
off_greedy = np.minimum(p_visited, 1 - p_visited).mean()
if abs(gap) <= 2 * gap_se:
    which = "Neither is clearly better"
else:
    which = (
        "The greedy policy is better" if gap > 0 else "The sampling policy is better"
    )
print(
    f"{which}: greedy mean {greedy.mean():.1f}, sampling mean {sampled.mean():.1f} "
    f"(difference {gap:+.1f}, standard error {gap_se:.1f}). On the states of the greedy "
    f"episode of section 7.7, sampling takes the other action at {off_greedy:.0%} of "
    "the steps on average: each time the push it rates worse. Training needs that "
    "exploration; at test time it helps only where the action the policy prefers is "
    "in fact the worse one."
)
assert sampled.mean() > 5 * random_mean and off_greedy > 0.05, (sampled, off_greedy)

# %% [markdown]
# **Exercise 4.** Change a setting and measure its effect: the time limit. The policy
# was trained and chosen on episodes cut at 500 steps. Evaluate it on the 20 validation
# start states with `time_limit=2000` (an argument of `evaluate_policy`). Does it keep
# balancing four times as long? Do the same for the random policy. If some episodes end
# early, find out how: write the evaluation loop yourself (a vector environment made
# with `max_episode_steps=2000`) and record where the cart is when each episode ends.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 4: same start states, only the time limit changes.
long_limit = 2_000
long_returns = evaluate_policy(
    policy, n_eval, val_seed, device=device, time_limit=long_limit
)
long_random = evaluate_policy(None, n_eval, val_seed, time_limit=long_limit)
# The same greedy episodes by hand, keeping the cart's position at each one's end.
long_envs = gym.make_vec(
    "CartPole-v1",
    num_envs=n_eval,
    vectorization_mode="vector_entry_point",
    max_episode_steps=long_limit,
)
observations, _ = long_envs.reset(seed=val_seed)
alive = np.ones(n_eval, dtype=bool)
lengths = np.zeros(n_eval)
final_x = np.zeros(n_eval)
policy.eval()
with torch.no_grad():
    while alive.any():
        logits = policy(torch.as_tensor(observations, device=device))  # (n_eval, 2)
        actions = logits.argmax(dim=1).cpu().numpy()
        observations, _, terminated, truncated, _ = long_envs.step(actions)
        lengths += alive
        ended = alive & (terminated | truncated)
        final_x[ended] = observations[ended, 0]
        alive &= ~ended
long_envs.close()
early = lengths < long_limit
near_end = int((early & (np.abs(final_x) > 1.9)).sum())  # within 0.5 m of the end
if not early.any():
    answer = f"Yes: all {n_eval} episodes lasted {long_limit} steps"
else:
    shortest, longest = lengths[early].min(), lengths[early].max()
    span = (
        f"{shortest:.0f}" if shortest == longest else f"{shortest:.0f} to {longest:.0f}"
    )
    answer = (
        f"No: {early.sum()} of {n_eval} episodes ended early (after {span} steps); at "
        f"the end of {near_end} of them the cart was within 0.5 m of the track's end"
    )
print(
    f"{answer}. The trained policy averages {long_returns.mean():.0f} steps. Training "
    "never rewarded anything after step 500, such as keeping the cart from drifting "
    f"over a longer time. The random policy averages {long_random.mean():.1f}, the "
    "same as with the old limit, which it never came near."
)
assert np.array_equal(lengths, long_returns.numpy())  # the loop matches the helper
assert torch.equal(long_random, evaluate_policy(None, n_eval, val_seed))

# %% [markdown]
# **Exercise 5.** A hand-made controller: push right when
# $\theta + 0.5\,\dot\theta > 0$, else left. Write it as an `nn.Module` that returns
# logits, evaluate it on the 20 validation episodes, and measure how often the trained
# policy's greedy action agrees with it on the states of the greedy episode from
# section 7.7.


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 5: the logits (-score, score) are small (|score| stays well below 1 here),
# but greedy evaluation takes the argmax, which follows the sign of the score alone.
class LeanRule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, 2] + 0.5 * x[:, 3]  # (B,)
        return torch.stack([-score, score], dim=1)  # (B, 2) logits


rule_returns = evaluate_policy(LeanRule(), n_eval, val_seed, device=device)
with torch.no_grad():
    agree = (
        (policy(visited).argmax(1) == LeanRule()(visited).argmax(1))
        .float()
        .mean()
        .item()
    )
print(
    f"The rule averages {rule_returns.mean():.1f} on the validation episodes; the trained "
    f"policy takes the rule's action in {agree:.0%} of the greedy episode's states. "
    "So a two-term linear rule also balances the pole: once the state is observed, "
    "CartPole-v1 is easy to control. What REINFORCE adds is that it found a similar "
    "controller from rewards alone, with nobody writing the rule down."
)
# measured over setup seeds 0-4: the rule scored 500 every time, agreement 81% to 94%
assert rule_returns.mean() >= solved_threshold and agree > 0.7, (rule_returns, agree)

# %% [markdown]
# ## Summary
#
# - A `gymnasium` environment is driven by `reset(seed=...)` and `step(action)`;
#   `terminated` means the episode really ended, `truncated` that a time limit cut it,
#   and only the first makes the return after the last step zero.
# - A policy network outputs logits; `Categorical(logits=...)` samples actions and gives
#   exact log-probabilities, where softmax probabilities clamp them and kill gradients.
# - REINFORCE weights each action's log-probability by the (normalised) discounted return
#   that followed it, computed backwards in one pass; batches of 16 episodes from
#   `gym.make_vec` average the noisy estimate and are simulated in one NumPy call per
#   step.
# - A learned value baseline turns returns into advantages and bootstraps truncated
#   episodes. Measured over three seeds per version, the result was
#   {glue:}`baseline_verdict` (baseline minus plain: {glue:}`episodes_difference`
#   episodes, standard error {glue:}`episodes_difference_se`).
# - The greedy policy kept after validation averaged {glue:}`test_mean` on 20 fresh test
#   episodes, against {glue:}`random_test_mean` for random actions.
#
# **Next:** chapter 8 turns to performance: when a GPU, more data-loader workers or a
# learning-rate schedule pays, measured.
