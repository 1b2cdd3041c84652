# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,jupyter,mystnb,cellView,-all
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
# end of this chapter you will know the agent–environment loop of `gymnasium`, derive the
# policy gradient and write the REINFORCE algorithm line by line (a policy network,
# sampled actions and their log-probabilities, discounted returns, the loss), add a
# learned value baseline and measure what it changes, and train a network that balances
# a pole on a cart for (nearly) the full 500 steps of `CartPole-v1`, checked on start
# states it never saw.
#
# **Prerequisites:** chapter 1 (tensors, `gather`, and `torch.func.vmap`, which
# exercise 2 uses), chapter 2 (modules, optimizers, cross-entropy, the training loop,
# validation and test splits) and chapter 6 (`torch.distributions` and the KL
# divergence, which exercise 1 measures).

# %% tags=["hide-cell"]
# On Colab only: install this book's helpers package (pip keeps Colab's own
# torch when it meets the book's lowest declared version, and upgrades it if not).
import sys

if "google.colab" in sys.modules:
    import subprocess

    repository = "https://github.com/pytorch-book/pytorch-book"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", f"git+{repository}"],
        check=True,
    )

# %% [markdown]
# The networks in this chapter are tiny (about 4,600 weights each) and are called
# thousands of times, on batches of 16 to several thousand states. The setup cell asks
# PyTorch for one thread, so that a run does not depend on how many cores the machine
# has: the thread count can change the order in which a sum is added up, and so its last
# digits (chapter 1), and in reinforcement learning one changed digit can flip an action
# and with it every episode after. The price is speed where cores are free: section 7.9
# times one thread against PyTorch's default number (where that is more than one), on
# one step's work and on an update-sized batch. The setup cell also puts everything on
# the CPU, even on a machine with a GPU: the simulator runs in NumPy on the CPU, so
# every step of play would send the states to the GPU and wait for the actions to come
# back. Section 7.9 times the CPU's per-step work and, where the machine has an
# accelerator, the same work there. `get_device()`, which the other chapters use, is
# still called, to name the accelerator that timing compares with.

# %%
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import gymnasium as gym
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from helpers.progress import plain_progress, tqdm
from helpers.results import prose, record
from helpers.rl import (
    Episode,
    discounted_returns,
    draw_cartpole,
    evaluate_policy,
    moving_average,
    play_episode,
)
from helpers.runtime import describe_runtime, get_device, seed_everything
from helpers.timing import best_time
from scipy import stats
from torch import nn
from torch.distributions import Categorical

# BOOK_SEED=n runs the chapter with another seed. The comments beside the
# checks (assert) give the values measured when each margin was set, on x86 CPUs
# (AVX-512 kernels, and AVX2 for seed 0). On another CPU family (an ARM Mac, say)
# or torch, a run follows another path from the first rounding that differs; the
# margins were not measured there, and a thin one may fail with nothing wrong.
seed = seed_everything(0)
device = torch.device("cpu")  # this chapter's choice; section 7.9 says why
accelerator = get_device()  # what the other chapters would use here
default_threads = torch.get_num_threads()  # section 7.9 times this many too
torch.set_num_threads(1)  # runs repeat on any core count; 7.9 times it
print(describe_runtime(device, seed), "| gymnasium", gym.__version__)
print("accelerator found by get_device():", accelerator)

# %% [markdown]
# ## 7.1 The agent–environment loop
#
# `CartPole-v1` simulates a cart on a frictionless track with a pole hinged on top. At
# every step the agent pushes the cart left or right with a fixed force; the simulator
# advances 0.02 s and returns a reward of 1 for that step. The episode **terminates** when
# the pole tilts more than 12° from vertical or the cart leaves the track (|x| > 2.4 m),
# and is **truncated** after 500 steps, `CartPole-v1`'s time limit. The reward is 1 for
# every step taken, the step on which the pole falls included, so an episode's total
# reward, its **return**, is the number of steps it lasted, at most 500.
#
# A `gymnasium` environment has two methods that matter. `reset(seed=...)` starts an
# episode (the seed fixes the random start state) and returns the first **observation**
# and an info dict. `step(action)` returns five things: the next observation, the reward,
# `terminated`, `truncated` and an info dict. The spaces say what observations and
# actions look like:

# %%
env = gym.make("CartPole-v1")
fall_angle = env.unwrapped.theta_threshold_radians  # 12 degrees, in rad
track_end = env.unwrapped.x_threshold  # 2.4 m
print("observation space:", env.observation_space)
print("action space:     ", env.action_space)
first_observation, info = env.reset(seed=seed)
print("first observation (x, x_dot, theta, theta_dot):", first_observation)
observation, reward, terminated, truncated, info = env.step(1)  # 1 = push right
print(f"after one push right: {observation}, reward {reward}")
print(f"terminated={terminated}, truncated={truncated}")
# From any start state (all four numbers within +-0.05) a push right
# accelerates the cart to the right and swings the pole to the left.
assert observation[1] > first_observation[1]  # x_dot rose
assert observation[3] < first_observation[3]  # theta_dot fell

# %% [markdown]
# The observation is the cart's position `x` (m) and velocity, and the pole's angle
# `theta` (rad, positive when it leans right) and angular velocity. Every start state is
# drawn uniformly from ±0.05 in all four numbers. Pushing right accelerated the cart
# (`x_dot` rose) and turned the pole to the left (`theta_dot` fell): the pole's inertia
# holds its top back while the pivot at its foot accelerates to the right.
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
    f"terminated={terminated}, truncated={truncated}, "
    f"final angle {observation[2]:+.3f}"
)
env.close()
assert terminated and abs(observation[2]) > fall_angle  # the pole fell

# %% [markdown]
# The pole fell (`terminated=True`: the final angle is past 12° = 0.209 rad). The
# difference between the two flags matters as soon as we learn from returns:
#
# - **terminated**: the episode really ended. No more rewards will come, so the return
#   after the last step is exactly 0.
# - **truncated**: the clock ran out. The pole may be perfectly balanced and would have
#   earned many more rewards had the episode gone on; the return after the last step is
#   *unknown*, not 0 (section 7.3 says when that matters).
#
# Older `gym` code had a single `done` flag for both (the time-out was reported only in
# `info["TimeLimit.truncated"]`, which code often ignored; the REINFORCE of
# pytorch/examples is one case, see the box in section 7.4) and so treated a time-out
# as a fall; section 7.3 shows what that does to the learning signal.
#
# ### Seeds, and a random policy to beat
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
# seen. Each evaluation plays 20 episodes: few enough to run after every update, enough
# that one unlucky start state moves the mean by at most 25 steps, 5% of the maximum
# return of 500.

# %%
val_seed, test_seed = seed + 1_000, seed + 2_000
n_eval = 20  # episodes per validation or test evaluation
solved_threshold = gym.spec("CartPole-v1").reward_threshold  # 475.0
random_returns = evaluate_policy(None, n_eval, test_seed)
random_mean = random_returns.mean().item()
record("random_mean", random_mean, fmt="{:.1f}")
print(f"CartPole-v1 is registered with reward_threshold={solved_threshold}")
print(
    f"random policy on the {n_eval} test episodes: mean return "
    f"{random_mean:.1f}, std {random_returns.std():.1f}, min "
    f"{random_returns.min():.0f}, max {random_returns.max():.0f}"
)

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
A random policy keeps the pole up for {{random_mean}} steps on average.
`gymnasium` registers `CartPole-v1` with a `reward_threshold` of 475, and the classic
criterion calls the task **solved** when the average return over 100 consecutive
episodes reaches that threshold: the average may fall short of the 500-step maximum by
at most 25 steps. This chapter applies the threshold to the average of its 20 test
episodes, a smaller and so noisier sample than the classic 100.
"""
)


# %% [markdown]
# ## 7.2 A policy network that outputs logits
#
# Our agent's policy is a network $\pi_\theta(a \mid s)$: it maps the 4 numbers of a state
# to a probability for each of the 2 actions. As in a classifier, the network's last layer
# produces **logits**, unnormalised log-probabilities; the probabilities are their
# softmax. `torch.distributions.Categorical(logits=...)` turns them into a distribution
# that can `sample()` an action and give the `log_prob` of any action, the quantity
# policy gradients differentiate. Two hidden layers of 64 with `tanh` are the default
# policy network of OpenAI's Spinning Up, a common reference for these algorithms; this
# chapter did not tune them. For continuous actions (a force of any size, say) the
# network would output the mean of a `torch.distributions.Normal(mu, std)` instead, with
# `std` learned or fixed; `sample()` and `log_prob` work the same, and the loss below is
# unchanged as long as `log_prob` has shape (N,), one number per step. A
# `Linear(hidden, 1)` mean gives (N, 1), and `log_probs * weights` with weights of shape
# (N,) then silently broadcasts to (N, N). With one or several action dimensions, use
# `Independent(Normal(mu, std), 1)` (or `.sum(-1)` over the `log_prob`), and the greedy
# action becomes `mu` instead of the `argmax`.


# %%
# the sizes come from the environment's spaces, not typed in
state_size = env.observation_space.shape[0]  # 4: x, x_dot, theta, theta_dot
n_actions = int(env.action_space.n)  # 2: push left, push right


def make_policy(
    hidden: int = 64, inputs: int = state_size, outputs: int = n_actions
) -> nn.Module:
    """State (B, inputs) -> action logits (B, outputs): two tanh hidden
    layers.
    """
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, outputs),
    )


torch.manual_seed(seed)
policy = make_policy().to(device)
states = torch.as_tensor(first_observation, device=device)[None]  # (1, 4)
logits = policy(states)  # (1, 2)
dist = Categorical(logits=logits)
action = dist.sample()  # (1,): 0 or 1
print("logits       ", logits.detach().cpu().numpy())
print("probabilities", dist.probs.detach().cpu().numpy())
print(
    "sampled action", action.item(), " log_prob", dist.log_prob(action).item()
)
print(f"parameters: {sum(p.numel() for p in policy.parameters()):,}")
p_right_untrained = dist.probs[0, 1].item()
logit_gap_untrained = (logits[0, 1] - logits[0, 0]).item()
record("p_right_untrained", p_right_untrained, fmt="{:.2f}")
record("logit_gap_untrained", abs(logit_gap_untrained), fmt="{:.2f}")
# seeds 0-2 (seed 0 also at the avx2 CPU level): |gap| 0.19 / 0.03 / 0.04
assert abs(logit_gap_untrained) < 1, logit_gap_untrained

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
Untrained, the policy pushes right with probability {{p_right_untrained}} in
the start state: its two logits differ by only {{logit_gap_untrained}}, so
neither action is strongly preferred yet. Why logits and not probabilities? The same
distribution can be built as `Categorical(probs=F.softmax(logits, dim=-1))`, and many
tutorials do exactly that. It goes wrong when the policy becomes nearly deterministic in
some state, as long training towards a deterministic optimum can make it.
`Categorical(probs=...)` clamps every probability into $[\epsilon, 1 - \epsilon]$ with
$\epsilon \approx 1.2 \times 10^{-7}$ (float32's machine epsilon) before taking the log.
From logits it computes `logits - logsumexp(logits)` instead, where `logsumexp`
evaluates $\log \sum_j e^{z_j}$ without overflow or underflow by first taking out the
largest logit, so no probability is formed, rounded to 0 or clamped. Compare the
log-probability of the unlikely action, and its gradient, when the logits differ by 30.
`torch.autograd.grad(output, inputs)` returns the gradient of `output` with respect to
`inputs` directly, instead of adding it to their `.grad` as `backward()` does:
"""
)

# %%
gap_logits = torch.tensor([[0.0, 30.0]], requires_grad=True)
unlikely = torch.tensor([0])
for name, make in [
    ("logits=", lambda: Categorical(logits=gap_logits)),
    ("probs=softmax", lambda: Categorical(probs=F.softmax(gap_logits, dim=-1))),
]:
    log_prob = make().log_prob(unlikely)
    (grad,) = torch.autograd.grad(log_prob.sum(), gap_logits)
    print(
        f"{name:14} log_prob {log_prob.item():9.4f}   gradient {grad.tolist()}"
    )
clamp_gap = -math.log(torch.finfo(torch.float32).eps)  # ln(1 / eps) = 15.9

# %% [markdown]
# The exact log-probability is $-30$ (up to $e^{-30}$), and its gradient with respect to
# the logits is $(1, -1)$. Through softmax probabilities the log-probability is clamped
# to $\ln \epsilon \approx -15.9$ and the gradient is exactly zero: the clamp cuts it.
# That state's own samples would then give a policy-gradient update no push to make
# that action more likely again, however good it turned out to be (samples from other
# states can still move it, through the weights they share). The same clamp hits every
# probability below $\epsilon$, that is from a logit gap of $\ln(1/\epsilon) \approx 15.9$
# on. Whether a training run gets that far depends on the run; section 7.7 measures the
# largest gap of this chapter's trained policy, and exercise 1 that of any run whose
# policy collapses to a nearly deterministic one.
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
# $1/(1-\gamma)$ steps or so. This chapter uses $\gamma = 0.99$, a common default (Spinning
# Up's and pytorch/examples' too), untuned. Computing each sum directly costs $O(T^2)$;
# going backwards, $G_t = r_t + \gamma G_{t+1}$, costs $O(T)$. Written out and checked
# against the direct sum and against `discounted_returns` from `helpers.rl`, whose tests
# compare it with the direct sum too:

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
# by more than the usual return are made more likely, the others less likely. (Not an
# exact baseline: the batch mean includes the returns of the step's own episode, which
# its actions influenced; section 7.4, once it has the tools, says what that costs.)
# Dividing by the standard deviation gives every batch weights of the same
# scale; with plain SGD the step then no longer grows with the returns (it still scales
# with the gradients of the log-probabilities). The aside below explains why Adam's own
# rescaling does not cancel a scale that changes during training.

# %% [markdown] tags=["box-dropdown"]
# <details>
# <summary>Aside: normalised returns and Adam's own rescaling</summary>
#
# Adam divides its running average of the gradients by the root of an average of their
# past squares, so a *constant* scale would cancel anyway. But the returns' scale
# changes during training: with $\gamma = 0.99$ a discounted return is at most about
# 100, and it grows from below 20 (episodes of about 20 steps) towards 100 as episodes
# get longer. A run here lasts at most 63 updates (the budget of 1,000 episodes set
# below, in batches of 16; the last batch may take it to 1,008), far fewer than the
# 1,000 or so over which Adam's average of squares forgets (`beta2` = 0.999); its
# bias-corrected average therefore weights all updates so far almost equally, and lags
# behind that change.
#
# </details>

# %% [markdown]
# Now the terminated/truncated distinction in numbers. Take an episode that survived all
# 500 steps and was truncated. Treated as if it had terminated, the return after the last
# step is 0, so the last actions look worthless; yet the final state was as good as the
# first. `discounted_returns` accepts a `bootstrap` value: an estimate of the return
# after the last step (here the return of an endless run of 1s, $1/(1-\gamma) = 100$).

# %%
full_episode = [1.0] * 500
as_if_fell = discounted_returns(full_episode, gamma)
bootstrapped = discounted_returns(
    full_episode, gamma, bootstrap=1 / (1 - gamma)
)
normalised = (as_if_fell - as_if_fell.mean()) / (as_if_fell.std() + eps)
for t in (0, 250, 450, 499):
    print(
        f"t={t:3d}  G_t treated as terminated {as_if_fell[t]:6.2f} (normalised "
        f"{normalised[t]:+.2f})   bootstrapped {bootstrapped[t]:6.2f}"
    )

# %% [markdown]
# Treated as terminated, the returns fall towards 1 at the end, and after normalisation
# every action in the last part of the episode gets a negative weight: the update would
# make the actions that kept the pole up *less* likely, only because they happened late.
# The policy cannot even see the time, so this is noise at best. With the bootstrap the
# returns are all 100, as they should be for a state that can be held forever.
#
# Which of the two is right depends on what the time limit means (Pardo et al.,
# [*Time Limits in Reinforcement Learning*](https://arxiv.org/abs/1712.00378), 2018):
#
# - If the task is to balance for 500 steps and no longer, the time-out is part of the
#   task: no rewards follow it, and 0 is exact. But then the same state is worth less
#   near the end than at the start, so the remaining time belongs in the observation.
# - If the goal is to balance indefinitely and the limit only keeps training episodes
#   short, a time-out is not an end: the episode was cut, not lost, so the return
#   after it should be estimated: bootstrapped.
#
#
# CartPole's observation has no clock, and this chapter takes the second view for
# learning: every training run below bootstraps a time-out with $1/(1-\gamma) = 100$,
# the return of balancing for ever. That is an assumption, and an upper bound: a policy
# still learning may drop the pole later. Its scores, the 475 threshold and the
# objective $J$ of section 7.4 count only the first 500 steps, for which 0 after a
# time-out is exact; exercise 4 looks past them.
#
# ## 7.4 REINFORCE: the gradient, derived and written out
#
# The goal is to maximise the expected return $J(\theta) = \mathbb{E}[R(\tau)]$ of
# episodes $\tau = (s_0, a_0, r_0, s_1, a_1, r_1, \dots)$ played with $\pi_\theta$, where
# $R(\tau) = \sum_t r_t$. The environment is random too: $\rho(s_0)$ draws the start
# state and $P(s_{t+1} \mid s_t, a_t)$ the next one, so an episode has probability
#
# $$ p_\theta(\tau) = \rho(s_0) \prod_t \pi_\theta(a_t \mid s_t)\, P(s_{t+1} \mid s_t, a_t). $$
#
# Five steps give the gradient of $J$ (sums over episodes become integrals for
# continuous states). CartPole's dynamics are deterministic: the next state is a fixed
# function of $s_t$ and $a_t$, so $P$ has no density to take the log of, but it does not
# depend on $\theta$ either. There $p_\theta(\tau)$ is $\rho(s_0)$ times the product of
# the $\pi_\theta$ factors for the episodes that function allows, and step 2 reads
# directly: the gradient of that product is the product times the sum of the factors'
# log-gradients.
#
# 1. **Log-derivative trick.** Since $\nabla p = p\, \nabla \log p$,
#    $\nabla_\theta J = \sum_\tau \nabla_\theta p_\theta(\tau) R(\tau)
#    = \mathbb{E}\big[R(\tau)\, \nabla_\theta \log p_\theta(\tau)\big]$.
# 2. **The dynamics drop out.** $\log p_\theta(\tau) = \log \rho(s_0) + \sum_t \log
#    \pi_\theta(a_t \mid s_t) + \sum_t \log P(s_{t+1} \mid s_t, a_t)$, and only the
#    middle sum depends on $\theta$. So
#    $\nabla_\theta \log p_\theta(\tau) = \sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)$:
#    no model of the environment is needed, only episodes played in it.
# 3. Together: $\nabla_\theta J = \mathbb{E}\big[\sum_t R(\tau)\, \nabla_\theta \log
#    \pi_\theta(a_t \mid s_t)\big]$.
# 4. **A score has mean zero.** In any state $s$,
#    $\mathbb{E}_{a \sim \pi_\theta}[\nabla_\theta \log \pi_\theta(a \mid s)]
#    = \sum_a \nabla_\theta \pi_\theta(a \mid s) = \nabla_\theta \sum_a \pi_\theta(a \mid s)
#    = \nabla_\theta 1 = 0$.
# 5. **Causality.** A reward $r_k$ with $k < t$ was fixed before $a_t$ was drawn:
#    given the history up to $s_t$, $r_k$ is a constant and step 4 gives
#    $\mathbb{E}[r_k \nabla_\theta \log \pi_\theta(a_t \mid s_t) \mid s_0, a_0, \ldots, s_t]
#    = 0$; averaging over histories (the law of total expectation) keeps it 0. Dropping
#    those terms from $R(\tau)$ leaves the **reward-to-go** $G_t = \sum_{k \ge t} r_k$:
#
#
# $$ \nabla_\theta J = \mathbb{E}\Big[\sum_t G_t \nabla_\theta \log \pi_\theta(a_t|s_t)\Big]. $$
#
# This is the **likelihood-ratio (trajectory) form of the policy gradient**, the form
# REINFORCE uses (the policy-gradient theorem proper writes the same gradient with
# action values $Q^\pi(s, a)$ and the distribution of visited states). Averaging
# $\sum_t G_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)$ over played episodes gives an
# unbiased estimate of $\nabla_\theta J$. The terms step 5 dropped have mean zero but not
# zero noise; exercise 2 measures how much noise they carry. Step 4 also shows that
# subtracting from $G_t$ anything that depends only on $s_t$ leaves the expectation
# unchanged, which section 7.5 uses. Practical REINFORCE, including this chapter, plugs
# in the discounted $G_t$ of section 7.3 instead. That estimate is biased. It is not
# the gradient of $J$, and not quite that of the discounted objective
# $J_\gamma = \mathbb{E}[\sum_t \gamma^t r_t]$ either: the same five steps applied to
# $J_\gamma$ weight step $t$ by $\gamma^t G_t$, and the practical estimate drops the
# factor $\gamma^t$, so late steps count as much as early ones (Sutton and Barto,
# *Reinforcement Learning: An Introduction*, 2nd ed., 2018, section 13.3, keep the
# factor; Nota and Thomas, [*Is the Policy Gradient a
# Gradient?*](https://arxiv.org/abs/1906.07073), 2020, show that without it the
# estimate is not the gradient of any function). Discounting $G_t$, in exchange, lowers
# the variance: rewards far in the future, which an action barely influenced, count for
# little. Normalising the returns is a trade of the same kind.
#
# The batch mean of section 7.3 has a cost too. The mean of a batch's returns includes
# each episode's own returns, which that episode's actions influenced, so it is not an
# exact baseline: in CartPole it adds a small push towards *shorter* episodes, which
# shrinks as the batch holds more episodes. The aside below derives its size; a
# **leave-one-out** mean, each episode's returns compared with the mean of the *other*
# episodes' returns, removes it exactly.

# %% [markdown] tags=["box-dropdown"]
# <details>
# <summary>Aside: what the batch mean costs, derived</summary>
#
# Treat the number $N$ of steps in a batch and the standard deviation as fixed, and
# write $\bar G$ for the mean of all $N$ returns of the batch. Up to that common scale,
# each episode contributes
# $\mathbb{E}\big[\sum_t (G_t - \bar G)\, \nabla_\theta \log \pi_\theta(a_t \mid s_t)\big]$.
# Its first part, with $G_t$, is the practical estimate described above. In
# the second, $\bar G$ multiplies the episode's summed score
# $\sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)$. The returns of the *other*
# episodes in $\bar G$ do not depend on this episode's actions, so by step 4 they add
# nothing on average. The episode's own returns make up a share
# $\frac{1}{N}\sum_t G_t$ of $\bar G$, a function of the whole episode, and by steps 1
# and 2 (with this function in place of $R$) that share adds
# $-\frac{1}{N}\nabla_\theta \mathbb{E}\big[\sum_t G_t\big]$: the gradient of a
# different quantity, the sum of all the episode's returns. In it a reward $r_k$ counts
# $\sum_{t \le k} \gamma^{k-t} = (1-\gamma^{k+1})/(1-\gamma)$ times, from 1 at the
# first step up to about $1/(1-\gamma) = 100$ by step 300 or so, so late rewards count
# most. The term is subtracted, so it pushes against reward: in CartPole, where every
# step earns 1, towards *shorter* episodes. It is not simply a slight shrink of the
# estimate. In an episode of $L$ steps a reward counts at most $\min(L, 100)$ times, so
# per reward its weight is at most $\min(L, 100)/N$. With $M$ episodes of similar
# length, $N \approx ML$: at most about $1/M$ while episodes last fewer than 100 steps,
# and at most $100/(ML)$, smaller, once they last longer. Those are the last rewards'
# weights: the reward $k$ steps in counts about $k + 1$ times, so the average over an
# episode is about half that. As an order-of-magnitude comparison only (the term
# multiplies the episode's summed score, the signal one step's score): the signal
# weighs a reward $d$ steps after the action by $\gamma^d$, so with this chapter's
# $M = 16$ the two are of similar size only for consequences a few hundred steps away
# ($0.99^d = 1/16$ at $d \approx 280$). More episodes per batch shrink the term; longer
# episodes of a fixed number do not, until they pass 100 steps. The **leave-one-out**
# mean removes the term: the other episodes' returns do not depend on this episode's
# actions, so by step 4 they add nothing on average.
#
# </details>

# %% [markdown]
# In PyTorch we write the **loss**
# $-\frac{1}{N}\sum_t \hat G_t \log \pi_\theta(a_t \mid s_t)$, with $\hat G_t$ the
# normalised returns treated as constants, over all $N$ steps of a batch of episodes.
# `loss.backward()` then stores in `.grad` minus this estimate (computed with the
# normalised returns) times a positive number, so an optimizer that goes downhill on the
# loss goes uphill on the estimated $J$. That is REINFORCE (Williams, 1992). Chapter 2's
# cross-entropy is hidden in it: $-\log \pi_\theta(a \mid s)$ is
# `F.cross_entropy(logits, a)` with the *sampled* action as the label (the cell below
# checks it). So REINFORCE is classification of the agent's own actions, each example
# weighted by how well things went after it.

# %% [markdown] tags=["box-note"]
# > **Compared with the REINFORCE of pytorch/examples**
# >
# > PyTorch's official examples include a short REINFORCE for CartPole,
# > [`reinforcement_learning/reinforce.py`](https://github.com/pytorch/examples/blob/89c7d7588dd96a6007750983054aa2980d1fa01e/reinforcement_learning/reinforce.py)
# > (version of August 2025). Where it differs from this chapter:
# > - It updates after every single episode and normalises that episode's returns with
# >   their own mean, so in every episode, even one that lasts all 500 steps, the late
# >   actions get negative weights (the printout in section 7.3).
# > - It computes the returns of a time-out as if the pole had fallen (section 7.3).
# >   Earlier versions (commit `2f5815e`, for one) went further: they ended an episode
# >   only on `terminated`, so episodes ran past the 500-step limit, up to the script's
# >   own cap of 9,999 steps (`for t in range(1, 10000)`).
# > - Its policy ends in `F.softmax` and samples from `Categorical(probs)` (section 7.2).
# > - Its policy has `Dropout(p=0.6)`, never switched off, so every action is sampled from a
# >   randomly thinned network.
# > - It calls the task solved when a running average of *training* returns passes 475:
# >   sampled actions on the training start states, with no separate validation or test.

# %% [markdown]
# ### Several episodes at once with `gymnasium.vector`
#
# One episode gives a very noisy gradient estimate, so each update here averages over a
# batch of `n_envs` = 16 episodes (an untuned round number). `gym.make_vec` builds 16
# copies of CartPole that step together; with `vectorization_mode="vector_entry_point"`
# CartPole's own NumPy implementation advances all 16 in one call, and the policy picks
# all 16 actions in one forward pass. Three details:
#
# - A vector environment **resets a finished copy by itself**, on the next call to
#   `step` (that call ignores the copy's action and returns its new start state). We keep
#   only each copy's first episode: `alive` marks the copies still in it, and the batch
#   ends when the longest episode does.
# - The rewards are the ones `step` returns, not assumed: CartPole's are all 1, but the
#   same loop works for an environment that pays differently.
# - Actions are sampled under `torch.no_grad()`: no graph is built during play. Afterwards
#   one batched forward pass recomputes the log-probabilities of every step with a graph.
#   The parameters did not change in between, so these are the log-probabilities of the
#   very distributions the actions were sampled from (up to floating-point rounding).

# %%
n_envs = 16  # episodes per update


def collect_episodes(
    envs: gym.vector.VectorEnv, policy: nn.Module, device: torch.device
) -> list[Episode]:
    """Play one episode in every copy of ``envs`` side by side, sampling
    actions.
    """
    observations, _ = envs.reset()  # (n, 4); the first reset was seeded
    n = envs.num_envs
    alive = np.ones(n, dtype=bool)
    lengths = np.zeros(n, dtype=int)
    terminated_at_end = np.zeros(n, dtype=bool)
    truncated_at_end = np.zeros(n, dtype=bool)
    final_states = np.zeros_like(observations)
    states, actions, rewards = [], [], []
    # no dropout or batch norm in these networks: train() and eval() change
    # nothing here, and are called as the habit that other networks need
    policy.eval()
    with torch.no_grad():
        while alive.any():
            # (n, 2)
            logits = policy(torch.as_tensor(observations, device=device))
            action = Categorical(logits=logits).sample().cpu().numpy()  # (n,)
            step = envs.step(action)
            next_observations, reward, terminated, truncated, _ = step
            states.append(observations)
            actions.append(action)
            rewards.append(reward)
            lengths += alive  # this step belongs to every episode still running
            ended = alive & (terminated | truncated)
            terminated_at_end |= ended & terminated
            truncated_at_end |= ended & truncated & ~terminated
            final_states[ended] = next_observations[ended]
            alive &= ~ended
            observations = next_observations
    states = np.stack(states)  # (longest episode, n, 4)
    actions = np.stack(actions)  # (longest episode, n)
    rewards = np.stack(rewards).astype(np.float64)  # (longest episode, n)
    return [
        Episode(
            # the final state: where the last action led
            states=np.concatenate([states[:length, i], final_states[i, None]]),
            actions=actions[:length, i],
            rewards=rewards[:length, i],
            terminated=bool(terminated_at_end[i]),
            truncated=bool(truncated_at_end[i]),
        )
        for i, length in enumerate(lengths)
    ]


envs = gym.make_vec(
    "CartPole-v1", num_envs=n_envs, vectorization_mode="vector_entry_point"
)
envs.reset(seed=seed)
batch = collect_episodes(envs, policy, device)
envs.close()
print("episode lengths:", [len(e.actions) for e in batch])
print(
    "first episode: states",
    batch[0].states.shape,
    "actions",
    batch[0].actions.shape,
)
received = {r for e in batch for r in e.rewards.tolist()}
print("rewards received:", sorted(received))

# %% [markdown]
# `Episode` (from `helpers.rl`) holds one more state than actions: the state the last
# action led to. Now one REINFORCE update on the batch collected above, step by step.

# %%
lr = 1e-2  # Adam's step size, as in pytorch/examples' REINFORCE; untuned here
optimizer = torch.optim.Adam(policy.parameters(), lr=lr)

policy.train()
batch_states = torch.as_tensor(
    np.concatenate([e.states[:-1] for e in batch]), device=device
)  # (N, 4): every step of every episode
batch_actions = torch.as_tensor(
    np.concatenate([e.actions for e in batch]), device=device
)  # (N,)
returns = torch.cat([discounted_returns(e.rewards, gamma) for e in batch]).to(
    device
)
# normalised returns
weights = (returns - returns.mean()) / (returns.std() + eps)
logits = policy(batch_states)  # (N, 2)
log_probs = Categorical(logits=logits).log_prob(batch_actions)  # (N,)
# chapter 2's cross-entropy, with the sampled actions as labels, is -log_probs
cross_entropy = F.cross_entropy(logits, batch_actions, reduction="none")  # (N,)
assert torch.allclose(cross_entropy, -log_probs, atol=1e-6)
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
# **One step per batch.** The expectation in the policy gradient is over episodes played
# by $\pi_\theta$ with the *current* $\theta$. After one optimizer step the batch was
# played by an older policy and no longer estimates the new gradient. Reusing it exactly
# would need importance sampling (the aside below), whose weights grow or shrink fast;
# methods that reuse batches, such as PPO, use an approximation that holds only while
# the new policy stays close to the old one.
# REINFORCE is **on-policy**: one gradient step per batch, then the batch is thrown
# away. Exercise 1 measures how far ten steps on each batch move the policy, as a KL
# divergence, and compares one step at a ten times larger learning rate.

# %% [markdown] tags=["box-dropdown"]
# <details>
# <summary>Aside: reusing a batch with importance sampling</summary>
#
# Reusing a batch exactly means weighting each reward $r_k$ in $G_t$ by the product of
# the probability ratios
# $\pi_{\theta_\text{new}}(a_j \mid s_j) / \pi_{\theta_\text{old}}(a_j \mid s_j)$
# over all steps $j \le k$ of the episode (per-decision importance sampling), which
# corrects the actions taken and, through them, the states visited and the rewards that
# followed. Weighting step $t$ by the ratios up to $t$ alone corrects where the episode
# was, not what the old policy did after it. Those products grow or shrink fast, so
# methods that reuse batches use the single ratio of step $t$ instead, which is accurate
# only while the two policies stay close; PPO's clipped loss removes the incentive to
# push that ratio far from 1. It does not bound the ratio (shared weights can still move
# the policy far), which is why some PPO implementations, Spinning Up's
# [PPO](https://spinningup.openai.com/en/latest/algorithms/ppo.html) for one, also stop
# a batch's steps early once an estimated KL divergence passes a target.
#
# </details>

# %% [markdown]
# ### The training loop, with validation
#
# `reinforce_update` packs the cell above into a function: `batch_tensors` gathers every
# step of a batch, `batch_returns` computes the returns and bootstraps a time-out with
# $1/(1-\gamma)$ (section 7.3), and `policy_step` normalises the weights and takes one
# gradient step (section 7.5 reuses all three). `train_reinforce` repeats collect →
# update. After every update it scores the **greedy** policy (always the most likely
# action) on the 20 validation episodes, keeps a copy of the best weights so far, and
# stops as soon as all 20 validation episodes last the full 500 steps, or when the
# budget of `max_episodes` training episodes is spent. The validation score decides when
# to stop and which weights to keep; the test episodes play no part. The update is an
# argument, so that section 7.5 can pass a different one. The weights after every update
# are kept too, for a measurement in section 7.5, and so is the mean entropy of the
# sampling policy on each batch's states (exercise 1).
#
# REINFORCE improves the *sampling* policy, whose expected return is $J$, yet we
# validate and test the greedy one. That is legitimate: sampling is how training
# explores and estimates its gradient, the greedy policy is the one we would deploy,
# and validation only has to choose the weights whose deployed policy does best. It is
# also common practice. Nothing guarantees that the two policies of the same weights
# score alike; exercise 3 measures the gap for the weights kept here.
#
# Keeping "a copy of the best weights" needs `copy.deepcopy(policy.state_dict())`:
# `state_dict()` returns the model's live parameter tensors, not copies, so without the
# deep copy the next `optimizer.step()` would change the "saved" weights as well.
#
# Every function takes the settings it uses as an argument, collected in a frozen
# `dataclass`, so that a later cell can change one with `dataclasses.replace` without
# touching the rest. Where the values come from:
#
# - $\gamma = 0.99$ and two hidden layers of 64: the defaults of
#   [Spinning Up's VPG](https://spinningup.openai.com/en/latest/algorithms/vpg.html).
# - Adam with `lr` = 0.01: what pytorch/examples' REINFORCE uses. The value network of
#   section 7.5 shares it, untuned (Spinning Up's VPG gives its value function 0.001).
# - 16 episodes per update, and the value network's 10 steps per batch of section 7.5:
#   untuned round numbers (Spinning Up's VPG takes 80 value steps per batch).
# - `max_episodes` = 1000: a budget, not a knob. Section 7.5 prints how many episodes
#   each of its six runs needed and asserts that all of them passed within it.
#
# None was tuned on validation for this chapter. The two versions that section 7.5
# compares share all of them; only the baseline version has `value_steps`. Choosing
# them on validation is more than this chapter can afford: the episodes a run needs
# vary from seed to seed, so section 7.5 spends six runs on comparing just two
# versions, and even that is thin evidence; ranking two or three candidate values of
# one setting would cost as much per setting. Nor could the validation score rank the
# finished runs: every run stops once all 20 validation episodes reach the maximum of
# 500. Validation does two smaller jobs here instead: it decides when a run stops and
# which weights it keeps.


# %%
@dataclass(frozen=True)
class Settings:
    """Everything a training run needs besides its seed."""

    device: torch.device
    gamma: float  # discount factor
    eps: float  # added to the standard deviation when normalising
    lr: float  # Adam, for the policy and the value network
    n_envs: int  # episodes per update
    hidden: int  # width of the two hidden layers
    value_steps: int  # value-network steps per batch (section 7.5)
    max_episodes: int  # training budget per run, in episodes
    n_eval: int  # validation episodes after every update
    val_seed: int  # start states of the validation episodes


settings = Settings(
    device=device,
    gamma=gamma,
    eps=eps,
    lr=lr,
    n_envs=n_envs,
    hidden=64,
    value_steps=10,
    max_episodes=1000,
    n_eval=n_eval,
    val_seed=val_seed,
)
# an update function: update(batch, policy, optimizer, settings) returns nothing
Optimizer = torch.optim.Optimizer
Update = Callable[[list[Episode], nn.Module, Optimizer, Settings], None]


def batch_tensors(
    batch: list[Episode], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every step of a batch of episodes: states (N, 4) and actions (N,)."""
    # each episode's final state is dropped: no action was taken in it
    states = np.concatenate([e.states[:-1] for e in batch])  # (N, 4)
    actions = np.concatenate([e.actions for e in batch])  # (N,)
    return (
        torch.as_tensor(states, device=device),
        torch.as_tensor(actions, device=device),
    )


def batch_returns(batch: list[Episode], settings: Settings) -> torch.Tensor:
    """Discounted returns of every step (N,); a time-out bootstraps
    1 / (1 - gamma).
    """
    forever = 1 / (1 - settings.gamma)  # the return of balancing for ever
    returns = [
        discounted_returns(
            e.rewards, settings.gamma, bootstrap=forever if e.truncated else 0.0
        )
        for e in batch
    ]
    return torch.cat(returns).to(settings.device)


def policy_step(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    states: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    eps: float,
) -> None:
    """Normalise the per-step weights, then one gradient step on the
    REINFORCE loss.
    """
    policy.train()
    # (N,)
    weights = (advantages - advantages.mean()) / (advantages.std() + eps)
    log_probs = Categorical(logits=policy(states)).log_prob(actions)  # (N,)
    loss = -(log_probs * weights).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def reinforce_update(
    batch: list[Episode],
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: Settings,
) -> None:
    """One plain REINFORCE step on a batch of episodes."""
    states, actions = batch_tensors(batch, settings.device)
    advantages = batch_returns(batch, settings)
    policy_step(policy, optimizer, states, actions, advantages, settings.eps)


def train_reinforce(
    run_seed: int,
    settings: Settings,
    update: Update = reinforce_update,
    label: str = "plain",
) -> dict:
    """Train a fresh policy from ``run_seed`` with ``update``; return it and
    a history.
    """
    torch.manual_seed(run_seed)  # initial weights and sampled actions
    policy = make_policy(settings.hidden).to(settings.device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=settings.lr)
    envs = gym.make_vec(
        "CartPole-v1",
        num_envs=settings.n_envs,
        vectorization_mode="vector_entry_point",
    )
    # seeds the one stream that draws every training episode's start state
    envs.reset(seed=run_seed)
    history = {
        "episode_returns": [],
        "truncated": [],
        "episodes": [],
        "val_mean": [],
        "weights": [],
        "entropy": [],
    }
    best_val, best_weights, solved_at = -math.inf, None, None
    # wall-clock seconds: playing the training batches, the update itself,
    # and the greedy validation episodes after it (the entropy diagnostic,
    # one forward pass per batch, is left out)
    seconds = {"play": 0.0, "update": 0.0, "validate": 0.0}
    desc = f"{label}, seed {run_seed}"
    # a live bar while the run trains; in the built book's plain text a bar
    # would keep only its first state, so the line printed after the run
    # reports it instead
    bar = tqdm(
        total=settings.max_episodes,
        desc=desc,
        leave=False,
        disable=plain_progress(),
    )
    while len(history["episode_returns"]) < settings.max_episodes:
        start = time.perf_counter()
        batch = collect_episodes(envs, policy, settings.device)
        seconds["play"] += time.perf_counter() - start
        with torch.no_grad():  # how random the policy that played the batch was
            states, _ = batch_tensors(batch, settings.device)
            entropy = Categorical(logits=policy(states)).entropy().mean()
        history["entropy"].append(entropy.item())
        update_start = time.perf_counter()
        update(batch, policy, optimizer, settings)
        update_end = time.perf_counter()
        seconds["update"] += update_end - update_start
        history["episode_returns"] += [e.total_reward for e in batch]
        history["truncated"] += [e.truncated for e in batch]
        # a snapshot: state_dict() holds the live tensors the optimizer changes
        history["weights"].append(copy.deepcopy(policy.state_dict()))
        val_returns = evaluate_policy(
            policy, settings.n_eval, settings.val_seed, device=settings.device
        )
        val_mean = val_returns.mean().item()
        history["episodes"].append(len(history["episode_returns"]))
        history["val_mean"].append(val_mean)
        seconds["validate"] += time.perf_counter() - update_end
        bar.update(settings.n_envs)
        if val_mean >= best_val:  # ties go to the later, longer-trained weights
            best_val, best_weights = val_mean, history["weights"][-1]
        if val_mean == 500:
            solved_at = history["episodes"][-1]
            break
    bar.close()
    envs.close()
    policy.load_state_dict(best_weights)
    return {
        "policy": policy,
        "history": history,
        "solved_at": solved_at,
        "seconds": seconds,
    }


# %% [markdown]
# ## 7.5 A learned value baseline, measured
#
# Normalising subtracts one number, the batch's mean return, from every step's return.
# But how much return to expect depends on the state: with the pole almost horizontal,
# little; upright and centred, a lot. Three standard quantities name this, for a policy
# $\pi$ and the discounted return $G_t$ of section 7.3:
#
# - the **state value** $V^\pi(s) = \mathbb{E}_\pi[G_t \mid s_t = s]$, the return to
#   expect from state $s$ when acting with $\pi$;
# - the **action value** $Q^\pi(s, a) = \mathbb{E}_\pi[G_t \mid s_t = s, a_t = a]$, the
#   same after first taking action $a$;
# - the **advantage** $A^\pi(s, a) = Q^\pi(s, a) - V^\pi(s)$, how much better $a$ is
#   than the policy's average action in $s$; its average over $a \sim \pi(\cdot \mid s)$
#   is zero.
#
# (With CartPole's time limit the return to expect also depends on how many steps are
# left; the value network below sees no step count, so it learns the average over the
# steps at which a state is met.) A **value network** $V_\phi(s)$ learns an estimate
# of $V^\pi$ by regression on the observed returns. The observed $G_t$ is one sample
# of $Q^\pi(s_t, a_t)$, so $A_t = G_t - V_\phi(s_t)$ estimates the advantage: how much
# better than expected *from that state* things went, and the policy is weighted by
# it. By step 4 of the derivation in section 7.4, subtracting anything that depends
# only on the state leaves the gradient's expectation unchanged, while it
# can reduce the estimate's variance. Why the expected return is a good, not optimal,
# choice: each term is a score times $(G_t - b(s_t))$, and the noise in $G_t$ around its
# expectation given the state is untouched by any $b$; what $b$ can remove is the rest,
# which is least when $b(s_t)$ is that expectation, $\mathbb{E}[G_t \mid s_t]$. The
# argument ignores that the score and $G_t$ are correlated: the exact
# variance-minimising baseline also weights by the score's squared size. The expected
# return is the usual choice, simpler to learn. Normalisation already removed the batch
# mean; a state-dependent baseline can in addition remove the part of the return that
# the state predicts.
#
# Both versions bootstrap a time-out the same way, with $1/(1-\gamma)$ (section 7.3),
# so the training comparison below changes only the baseline. The value network could
# supply the bootstrap too, $V_\phi$ of the final state, as actor-critic methods do; in
# this comparison that would change a second thing at once. (The network predicts
# $(1 - \gamma)\,G$, a number of order one like the outputs of a freshly initialised
# network, rather than returns of up to 100; `make_baseline_update` multiplies back.)
#
# Within one update the advantages come first: the value network's current predictions,
# computed under `torch.no_grad()` because the baseline is a constant for the policy's
# gradient, and before the network has seen this batch's returns (a baseline fitted to
# the very returns it is subtracted from would cancel part of the signal). Then the value
# network takes `value_steps` = 10 Adam steps on the mean squared error to this batch's
# returns. Unlike the policy, it may take several steps on one batch: its targets are
# fixed numbers, and more steps only fit them more closely. They are the returns of the
# policy that played the batch, one update behind the policy the baseline is used for
# next. The value network gets its own seed, so that its first layers do not start as
# copies of the policy's. Everything else is the same as for plain REINFORCE: the same
# initial policy weights and the same first batch for each `run_seed` (its start states
# and its sampled actions), the same optimizer, batch size, validation rule and budget.
# Only the first batch is shared in full: the second starts from the same states but is
# played by policies that took different first updates, and from then on the two
# versions' episodes, of different lengths, draw their start states differently from
# the vector environment's one random stream.


# %%
def make_value(hidden: int, inputs: int = state_size) -> nn.Module:
    """State (B, inputs) -> (B, 1): the return expected from that state, times
    (1 - gamma).
    """
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 1),
    )


def make_baseline_update(
    run_seed: int,
    settings: Settings,
    advantages_from: Callable | None = None,
) -> Update:
    """A fresh value network and its optimizer, inside an update like
    reinforce_update. The advantages are the returns minus the value
    network's predictions, or `advantages_from(batch, returns, predicted,
    settings)` (exercise 5 passes one).
    """
    # the value network's own initial weights, from a forked generator so
    # that the global one is left as it was
    with torch.random.fork_rng(devices=[]):  # the CPU generator only
        torch.manual_seed(run_seed + 10_000)
        value = make_value(settings.hidden).to(settings.device)
    value_optimizer = torch.optim.Adam(value.parameters(), lr=settings.lr)
    scale = 1 / (1 - settings.gamma)  # the network predicts returns / scale

    def baseline_update(
        batch: list[Episode],
        policy: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: Settings,
    ) -> None:
        states, actions = batch_tensors(batch, settings.device)
        # the same returns as reinforce_update: a time-out bootstraps 1 / (1 -
        # gamma)
        returns = batch_returns(batch, settings)  # (N,)
        with torch.no_grad():  # a constant for the policy's gradient
            baseline = value(states).squeeze(1) * scale  # (N,)
        value.train()
        for _ in range(settings.value_steps):
            predicted = value(states).squeeze(1)  # (N,), in units of scale
            value_loss = F.mse_loss(predicted, returns / scale)
            value_optimizer.zero_grad()
            value_loss.backward()
            value_optimizer.step()
        if advantages_from is None:
            advantages = returns - baseline
        else:
            advantages = advantages_from(batch, returns, baseline, settings)
        eps = settings.eps
        policy_step(policy, optimizer, states, actions, advantages, eps)

    return baseline_update


# %% [markdown]
# One training run is one sample of a noisy process: the same code needs a different
# number of episodes with another seed. So we train both versions from three seeds each
# and compare the episodes each needed before all 20 validation episodes lasted 500
# steps. "Episodes needed" counts training episodes only; the 20 greedy validation
# episodes after every update are extra work that neither version learns from.

# %%
run_seeds = [seed, seed + 1, seed + 2]
runs = {}
for label in ("plain", "baseline"):
    for run_seed in run_seeds:
        if label == "plain":
            run = train_reinforce(run_seed, settings)
        else:
            update = make_baseline_update(run_seed, settings)
            run = train_reinforce(run_seed, settings, update, label)
        runs[label, run_seed] = run
        best = max(run["history"]["val_mean"])
        solved = run["solved_at"] or f"not within {settings.max_episodes}"
        print(
            f"{label:8}  seed {run_seed}: episodes to pass validation {solved}"
            f"  (best validation mean {best:.1f})"
        )

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharex=True, sharey=True)
for ax, label in zip(axes, ("plain", "baseline"), strict=True):
    for run_seed, style in zip(run_seeds, ("-", "--", ":"), strict=True):
        history = runs[label, run_seed]["history"]
        ax.plot(
            history["episodes"],
            history["val_mean"],
            style,
            lw=1.8,
            label=f"seed {run_seed}",
        )
    ax.set(
        title="With value baseline"
        if label == "baseline"
        else "Plain REINFORCE",
        xlabel="training episodes",
    )
    ax.axhline(500, color="grey", lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
axes[0].set_ylabel("greedy validation return (mean of 20)")
fig.tight_layout()
plt.show()


# %% [markdown]
# Both panels share both axes, so a curve that reaches 500 further left passed
# validation sooner. Besides the number of episodes a run needs, the curves show whether
# it falls back on the way: its validation score dropping below a value it had already
# reached. The cell below measures both for each version, and compares the mean number
# of episodes with its standard error.


# %%
def episodes_needed(
    runs: dict, label: str, run_seeds: list[int], budget: int
) -> list[int]:
    """Episodes each run needed to pass validation
    (the budget if it never did).
    """
    return [runs[label, s]["solved_at"] or budget for s in run_seeds]


def worst_fall_back(runs: dict, label: str, run_seeds: list[int]) -> float:
    """Largest drop of a run's validation mean below its best earlier value."""
    drops = []
    for s in run_seeds:
        val_mean = np.array(runs[label, s]["history"]["val_mean"])
        drops.append((np.maximum.accumulate(val_mean) - val_mean).max())
    return max(drops)


n_runs = len(run_seeds)
budget = settings.max_episodes
plain_needed = episodes_needed(runs, "plain", run_seeds, budget)
baseline_needed = episodes_needed(runs, "baseline", run_seeds, budget)
plain_passed = sum(runs["plain", s]["solved_at"] is not None for s in run_seeds)
baseline_passed = sum(
    runs["baseline", s]["solved_at"] is not None for s in run_seeds
)
# paired by seed: both versions start from the same weights and first batch
paired = np.array(baseline_needed) - np.array(plain_needed)  # (n_runs,)
difference = paired.mean()
difference_se = paired.std(ddof=1) / math.sqrt(n_runs)
# two-sided 5% for Student's t with n_runs - 1 degrees of freedom: 4.30 for 3
t_critical = stats.t.ppf(0.975, n_runs - 1)
significant = abs(difference) > t_critical * difference_se
truncated = {
    label: sum(sum(runs[label, s]["history"]["truncated"]) for s in run_seeds)
    for label in ("plain", "baseline")
}
played = {
    label: sum(len(runs[label, s]["history"]["truncated"]) for s in run_seeds)
    for label in ("plain", "baseline")
}
plain_fall_back = worst_fall_back(runs, "plain", run_seeds)
baseline_fall_back = worst_fall_back(runs, "baseline", run_seeds)
print(
    f"plain:    {plain_passed}/{n_runs} passed, episodes needed {plain_needed}"
)
print(
    f"baseline: {baseline_passed}/{n_runs} "
    f"passed, episodes needed {baseline_needed}"
)
print(
    f"baseline minus plain: {difference:+.0f} episodes on average "
    f"(standard error {difference_se:.0f}); significant at 5% "
    f"(|difference| > {t_critical:.2f} standard errors): "
    f"{'yes' if significant else 'no'}"
)
print(
    f"worst fall-back of validation: plain {plain_fall_back:.0f}, "
    f"baseline {baseline_fall_back:.0f}"
)
print(f"truncated training episodes: {truncated} of {played}")
# seeds 0-2 (seed 0 also at the avx2 CPU level): every run passed; the
# slowest needed 320 / 480 / 320 episodes (the budget is 1000)
assert plain_passed == baseline_passed == n_runs, (
    plain_needed,
    baseline_needed,
)

# %% tags=["remove-cell"] jupyter={"source_hidden": true} cellView="form"
# The comparison in words and numbers, for the paragraph below.
if significant:
    fewer_or_more = "fewer" if difference < 0 else "more"
    verdict = (
        f"the baseline needs {fewer_or_more} episodes at the 5% level, "
        "though three pairs are thin evidence"
    )
else:
    verdict = (
        "not significant at the 5% level, no clear evidence that the baseline "
        "changes the episodes needed"
    )
record("plain_mean_episodes", np.mean(plain_needed), fmt="{:.0f}")
record("baseline_mean_episodes", np.mean(baseline_needed), fmt="{:.0f}")
record("plain_max_episodes", max(plain_needed))
record("baseline_max_episodes", max(baseline_needed))
record("fewest_episodes", min(plain_needed + baseline_needed))
record("most_episodes", max(plain_needed + baseline_needed))
record("episodes_difference", difference, fmt="{:+.0f}")
record("episodes_difference_se", difference_se, fmt="{:.0f}")
record("t_critical", t_critical, fmt="{:.2f}")
record("baseline_verdict", verdict)
record("plain_fall_back", plain_fall_back, fmt="{:.0f}")
record("baseline_fall_back", baseline_fall_back, fmt="{:.0f}")
record("plain_truncated", truncated["plain"])
record("baseline_truncated", truncated["baseline"])
record("plain_played", played["plain"])
record("baseline_played", played["baseline"])
# where a training run's time goes, summed over the six runs
run_seconds = {
    part: sum(run["seconds"][part] for run in runs.values())
    for part in ("play", "validate", "update")
}
total_seconds = sum(run_seconds.values())
share = {part: t / total_seconds for part, t in run_seconds.items()}
print(
    f"training time: {run_seconds['play']:.1f} s playing the training "
    f"batches, {run_seconds['validate']:.1f} s validating, "
    f"{run_seconds['update']:.1f} s in the updates ({share['update']:.0%})"
)
record("train_seconds", total_seconds, fmt="{:.0f}")
record("play_share", share["play"], fmt="{:.0%}")
record("validate_share", share["validate"], fmt="{:.0%}")
record("update_share", share["update"], fmt="{:.0%}")
record(
    "time_verdict",
    "playing episodes, at each step a forward pass of the policy, the "
    "choice of an action and the simulator's step, not the update pass, sets "
    "how long a run takes"
    if share["update"] < 0.5
    else "the update pass, not playing episodes, sets how long a run takes",
)
record(
    "validation_cost",
    "more time than playing the training batches"
    if share["validate"] > share["play"]
    else "less time than playing the training batches",
)
record(
    "runs_passed",
    plain_passed + baseline_passed,
    headline=f"Training runs that passed validation (of {2 * n_runs})",
)

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
Every one of the six runs passed validation within the budget of 1,000 episodes (the
assert checks it). Plain REINFORCE needed {{plain_mean_episodes}} episodes on
average and {{plain_max_episodes}} at worst; with the value baseline it took
{{baseline_mean_episodes}} on average and {{baseline_max_episodes}} at worst.
The difference of the means, baseline minus plain, is {{episodes_difference}}
episodes, with a standard error of {{episodes_difference_se}}. The two versions
share each seed's initial weights and first batch, so the runs come in pairs (only
loosely: their later batches differ, see above), and pairs from different seeds are
independent. The standard error is $s_d/\sqrt{3}$, with $s_d$ the standard deviation
of the three per-seed differences. With so few runs the standard error is itself a rough estimate,
so the test is Student's t with 2 degrees of freedom rather than the normal
distribution: at the 5% level (two-sided) it asks for a difference of more than
{{t_critical}} standard errors, against 1.96 for the normal. The verdict of this run:
{{baseline_verdict}}.

The largest fall-back of the validation score was {{plain_fall_back}} for plain
REINFORCE and {{baseline_fall_back}} with the baseline. Each is one drop in one run
(it may build up over several updates); with three runs per version, neither number
says which version is more stable.
The bootstrap of a time-out, the same in both versions, acts only on truncated
training episodes: {{plain_truncated}} of the {{plain_played}} training
episodes of the plain runs and {{baseline_truncated}} of the
{{baseline_played}} of the baseline runs, since a run stops as soon as
validation passes.

Where the time of a run goes, measured with `time.perf_counter` inside
`train_reinforce`: of the {{train_seconds}} s that the six runs spent playing,
validating and updating,
{{play_share}} went to playing the training batches, {{validate_share}} to the
greedy validation episodes after every update (both are, at each step, a forward
pass of the policy, the choice of an action and the simulator's step; training draws
its action from a `Categorical`, whose construction and sampling cost more than the
greedy `argmax`, section 7.9) and {{update_share}} to the updates, the
baseline's value network included. So {{time_verdict}}. Validation, which training
does not learn from, took {{validation_cost}}: 20 greedy episodes after every
update against the 16 sampled ones of a batch, but each set of episodes runs side by
side until its longest one ends, so its time follows that episode's length more than
the count.
"""
)

# %% [markdown]
# All six runs scored the maximum, 500 on all 20 validation episodes, so validation
# cannot rank them. The policy this chapter keeps is the one chosen before training: the
# baseline version trained from the setup cell's `seed`, with the weights that passed
# validation. The test episodes played no part in that choice.
#
# ### What the baseline changes: the variance of the gradient estimate
#
# Episodes-to-pass over three runs is a noisy, downstream outcome. What the derivation
# says a baseline changes is the noise of the gradient estimate at a given policy, and
# that can be measured directly. We freeze one policy, the kept run's weights halfway
# through its training, play fresh episodes with it, and compute each episode's
# estimate $\sum_t w_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)$ with three
# weightings $w_t$: the return $G_t$ alone; $G_t - b$, with $b$ one constant; and
# $G_t - V(s_t)$, with a value network fitted to *other* episodes of the same policy.
# By step 4 all three have the same expectation; their **total variance** across
# episodes (the variances of all 4,610 gradient components, summed) says how noisy
# each is. `torch.autograd.grad(log_probs, params, grad_outputs=w)` gives one
# episode's estimate in one backward pass: it weights the gradient of each element of
# `log_probs` by the matching element of `w`. The function `probe_variance` below is
# one draw of the measurement; the dropdown gives its details.

# %% [markdown] tags=["box-dropdown"]
# <details>
# <summary>The measurement in detail</summary>
#
# Each draw plays 128 episodes in one vector environment of 128 copies (an untuned
# number: 64 to fit and 64 to measure). The value network is fitted to the returns of
# the first 64 (returns of this very policy, so its predictions do not lag), with 300
# Adam steps on minibatches of 256 states, an untuned amount; the cell prints how much
# of the returns' variance it explains on the 64 episodes it was not fitted to
# ($R^2$). The constant $b$ is the mean return of the fitting episodes, a stand-in for
# normalisation's mean subtraction (which subtracts the batch's own mean instead).
# Neither $b$ nor $V$ depends on the measured episodes, which is what step 4 needs. A
# ratio of two variances, each from 64 episodes, is itself noisy, so the cell repeats
# the whole measurement ten times at the same weights, each time with 128 fresh
# episodes and a fresh value network, and reports the median and the range.
#
# The episodes of a batch are independent (each has its own start state and its own
# action draws), so the mean of 16 per-episode estimates has exactly 1/16 of one
# episode's total variance. The chapter's update is that mean only up to a
# batch-dependent scale (it averages over steps and divides by the returns' standard
# deviation) and with the batch's own mean as $b$; the measurement is of the idealised
# estimate.
#
# </details>


# %%
def episode_gradients(
    policy: nn.Module,
    episodes: list[Episode],
    weights: list[torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """(M, P): for each episode, sum_t w_t * grad log pi(a_t | s_t)."""
    params = list(policy.parameters())
    rows = []
    for episode, w in zip(episodes, weights, strict=True):
        states = torch.as_tensor(episode.states[:-1], device=device)  # (T, 4)
        actions = torch.as_tensor(episode.actions, device=device)  # (T,)
        log_probs = Categorical(logits=policy(states)).log_prob(actions)  # (T,)
        grads = torch.autograd.grad(log_probs, params, grad_outputs=w)
        rows.append(torch.cat([g.flatten() for g in grads]))  # (P,)
    return torch.stack(rows)


def total_variance(rows: torch.Tensor) -> float:
    """Summed column variances: the mean squared distance to the mean row."""
    return rows.var(dim=0).sum().item()


def probe_variance(
    frozen: nn.Module, probe_seed: int, n_probe: int, settings: Settings
) -> dict:
    """One draw of the probe: 2 * n_probe fresh episodes of the frozen policy,
    a value network fitted to the first half, the three weightings measured
    on the second half.
    """
    probe_envs = gym.make_vec(
        "CartPole-v1",
        num_envs=2 * n_probe,
        vectorization_mode="vector_entry_point",
    )
    probe_envs.reset(seed=probe_seed)
    torch.manual_seed(probe_seed)  # sampled actions, then the value network
    probed = collect_episodes(probe_envs, frozen, settings.device)
    probe_envs.close()
    fit_episodes, measured = probed[:n_probe], probed[n_probe:]

    # A fresh value network, fitted to the returns of this policy's own
    # episodes, computed as in training: a time-out bootstraps 1 / (1 - gamma)
    # (batch_returns).
    unit = 1 / (1 - settings.gamma)  # the network predicts returns / unit
    fit_states, _ = batch_tensors(fit_episodes, settings.device)  # (M, 4)
    fit_returns = batch_returns(fit_episodes, settings)  # (M,)
    probe_value = make_value(settings.hidden).to(settings.device)
    probe_optimizer = torch.optim.Adam(probe_value.parameters(), lr=settings.lr)
    probe_value.train()
    for _ in range(300):
        # a minibatch of 256 states
        rows = torch.randint(len(fit_states), (256,), device=settings.device)
        predicted = probe_value(fit_states[rows]).squeeze(1)
        value_loss = F.mse_loss(predicted, fit_returns[rows] / unit)
        probe_optimizer.zero_grad()
        value_loss.backward()
        probe_optimizer.step()

    # Three weightings of the same n_probe measured episodes.
    probe_value.eval()
    # one episode at a time, so each keeps its own (T,) returns
    probe_returns = [batch_returns([e], settings) for e in measured]
    predictions = []  # V(s_t) for every step of every measured episode
    with torch.no_grad():
        for e in measured:
            # (T, 4)
            visited_states = torch.as_tensor(
                e.states[:-1], device=settings.device
            )
            predictions.append(probe_value(visited_states).squeeze(1) * unit)
    constant = fit_returns.mean()  # one number for every state
    pairs = zip(probe_returns, predictions, strict=True)
    weightings = {
        "G_t": probe_returns,
        "G_t - b": [g - constant for g in probe_returns],
        "G_t - V(s_t)": [g - v for g, v in pairs],
    }
    variance, mean_rows = {}, {}
    for name, weights in weightings.items():
        # (n_probe, 4610)
        rows = episode_gradients(frozen, measured, weights, settings.device)
        variance[name] = total_variance(rows)
        mean_rows[name] = rows.mean(dim=0)  # (4610,)
    # g, what every row estimates: E|mean row|^2 = |g|^2 + total variance /
    # n_probe, so subtracting the measured total variance / n_probe estimates
    # |g|^2 without bias. Measured on the least noisy of the three.
    least_noisy = "G_t - V(s_t)"
    mean_norm2 = mean_rows[least_noisy].square().sum().item()
    signal = mean_norm2 - variance[least_noisy] / n_probe
    all_returns = torch.cat(probe_returns)
    squared_error = ((all_returns - torch.cat(predictions)) ** 2).mean()
    return {
        "measured": measured,
        "variance": variance,
        # expected squared error of the mean of n_envs episodes, per |g|^2
        "noise_b": variance["G_t - b"] / settings.n_envs / signal,
        "noise_v": variance[least_noisy] / settings.n_envs / signal,
        "signal_share": signal / mean_norm2,
        "r2": (1 - squared_error / all_returns.var()).item(),
        "length": np.mean([len(e.actions) for e in measured]),
        "truncated": sum(e.truncated for e in probed),
        "constant_gain": variance["G_t"] / variance["G_t - b"],
        "value_share": variance[least_noisy] / variance["G_t - b"],
    }


kept_history = runs["baseline", seed]["history"]
halfway = len(kept_history["weights"]) // 2  # updates done at the snapshot
frozen = make_policy(settings.hidden).to(device)
frozen.load_state_dict(kept_history["weights"][halfway - 1])
# episodes to fit the value network on, and as many to measure on; untuned
n_probe = 64
# repeats of the whole probe at the same weights, each with fresh episodes
# and a fresh value network: a ratio of two variances measured on 64
# episodes is itself noisy. Untuned; about a second each.
n_draws = 10
draws = [
    probe_variance(frozen, seed + 5_000 + k, n_probe, settings)
    for k in range(n_draws)
]
measured = draws[0]["measured"]  # exercise 2 uses these 64 episodes
print(
    f"snapshot after update {halfway} of {len(kept_history['weights'])}; "
    f"{n_draws} draws of {2 * n_probe} episodes each"
)
print("first draw:")
for name, v in draws[0]["variance"].items():
    print(f"  total variance, weights {name:13}: {v:9.3f}")
probe_stats = {
    key: np.array([d[key] for d in draws])
    for key in (
        "constant_gain",
        "value_share",
        "r2",
        "noise_b",
        "noise_v",
        "signal_share",
        "length",
    )
}
print(f"over the {n_draws} draws, median (lowest-highest):")
labels = {
    "constant_gain": "variance of G_t / variance of G_t - b",
    "value_share": "variance of G_t - V(s_t) / variance of G_t - b",
    "r2": "value network R^2 on the measured episodes",
    "noise_b": f"noise/signal, batch of {settings.n_envs}, G_t - b",
    "noise_v": f"noise/signal, batch of {settings.n_envs}, G_t - V(s_t)",
    "signal_share": "|g|^2 estimate / mean row's squared length",
    "length": "mean length of the measured episodes",
}
for key, values in probe_stats.items():
    print(
        f"  {labels[key]:48}: {np.median(values):.2f} "
        f"({values.min():.2f}-{values.max():.2f})"
    )
probe_truncated = sum(d["truncated"] for d in draws)
print(
    f"{probe_truncated} of all {n_draws * 2 * n_probe} probe episodes "
    "were truncated"
)
probe_median = {key: np.median(values) for key, values in probe_stats.items()}
# Asserted on the medians, not on single draws: at seed 0 one draw's
# value_share was 1.04. Seeds 0-2, median (lowest-highest draw of 10):
# constant_gain 3.54 (2.72-4.72) / 2.62 (2.16-3.39) / 3.72 (2.29-4.76);
# value_share 0.64 (0.34-1.04) / 0.16 (0.14-0.28) / 0.61 (0.40-0.72).
assert probe_median["constant_gain"] > 1.5, probe_stats["constant_gain"]
# the text calls it a further cut: below 0.9, a cut of at least a tenth
assert probe_median["value_share"] < 0.9, probe_stats["value_share"]
# The noise-to-signal ratios need a signal estimate well above 0: medians at
# seeds 0-2: 0.70 / 0.98 / 0.72 of the mean row's squared length.
assert probe_median["signal_share"] > 0.25, probe_stats["signal_share"]

# %% tags=["remove-cell"] jupyter={"source_hidden": true} cellView="form"
# The measurement in words and numbers, for the paragraphs below.
record("snapshot_update", halfway)
record("kept_updates", len(kept_history["weights"]))
record("probe_length", probe_median["length"], fmt="{:.0f}")
n_probed = n_draws * 2 * n_probe
if probe_truncated:
    probe_bootstrap = (
        f"the time-out bootstrapped in the {probe_truncated} of the "
        f"{n_probed} probe episodes that reached 500 steps"
    )
else:
    probe_bootstrap = (
        f"none of the {n_probed} probe episodes reached 500 steps, so none "
        "needed the time-out's bootstrap"
    )
record("probe_bootstrap", probe_bootstrap)
record("n_draws", n_draws)
record("value_r2", probe_median["r2"], fmt="{:.2f}")
record("constant_gain", probe_median["constant_gain"], fmt="{:.1f}")
gains = probe_stats["constant_gain"]
record("constant_gain_range", f"{gains.min():.1f}-{gains.max():.1f}")
record(
    "value_share",
    probe_median["value_share"],
    fmt="{:.0%}",
    headline="Gradient variance left by V(s), relative to a constant baseline "
    f"(median of {n_draws} probe draws)",
)
shares = probe_stats["value_share"]
record("value_share_range", f"{shares.min():.0%}-{shares.max():.0%}")
record("value_gain", 1 / probe_median["value_share"], fmt="{:.1f}")
if shares.max() >= 1:
    value_spread = (
        f"In {np.sum(shares >= 1)} of the {n_draws} draws $V(s_t)$ did not "
        "cut the variance at all"
    )
else:
    value_spread = f"Every one of the {n_draws} draws showed a cut"
value_spread += (
    ": a ratio of two variances, each measured on 64 episodes, is itself "
    "noisy, which is why this is the median of several draws and not one."
)
record("value_spread", value_spread)
record("noise_b", probe_median["noise_b"], fmt="{:.1f}")
record("noise_v", probe_median["noise_v"], fmt="{:.1f}")

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
At the snapshot (after update {{snapshot_update}} of the kept run's
{{kept_updates}}, episodes of {{probe_length}} steps on average; the returns are
computed as in training: {{probe_bootstrap}}), the numbers below are medians over
the {{n_draws}} draws, with the lowest and highest draw in brackets. Subtracting
the one constant $b$ cut the total variance {{constant_gain}}-fold
({{constant_gain_range}}): a rough measure, at this policy, of what subtracting a mean
return buys. The value network explained a fraction $R^2$ = {{value_r2}} of
the returns' variance on episodes it had not seen, and subtracting $V(s_t)$ instead
of $b$ left {{value_share}} ({{value_share_range}}) of the variance that $b$ left, a
further {{value_gain}}-fold cut in the median. {{value_spread}} So at a fixed policy,
with a value network fitted to that policy, the baseline typically does what step 4
and the argument above promise: the same expectation, a smaller variance.
A value network that predicts badly would instead add its own errors to every
weight.

Whether a cut matters depends on how the remaining noise compares with what the
estimates estimate: their common expectation $g$ (with discounted returns, the
direction REINFORCE follows, not exactly $\nabla_\theta J$; section 7.4). The squared
length of the mean of a draw's 64 measured rows is on average $\lVert g\rVert^2$ plus the
variance of that mean, the total variance divided by 64; subtracting the measured
total variance over 64 gives an unbiased estimate of $\lVert g\rVert^2$. The expected
squared error of the mean of a batch of 16 episodes is the total variance divided by
16. Relative to $\lVert g\rVert^2$, that error was {{noise_b}} with $b$ and
{{noise_v}} with $V(s_t)$ (medians over the draws). A ratio above 1 means that a batch's gradient is
typically further from $g$ than $g$ is long.

How much a cut in variance speeds up training is another question, which this
measurement does not answer and the chapter does not test. During training the value
network is fitted to returns of earlier policies, and may predict the current
policy's returns worse than the network fitted here. And three runs per version can
only show a large difference; the verdict above was {{baseline_verdict}}.
"""
)

# %% [markdown]
# ### The kept run, episode by episode
#
# The training curve of the kept run shows what training saw: the return of every
# sampled training episode, and the greedy validation score after every update.

# %%
chosen = runs["baseline", seed]
policy = chosen["policy"]
history = chosen["history"]
episode_returns = np.array(history["episode_returns"])
# each batch was played by the weights after the previous update, whose greedy
# validation score is one entry earlier (the first batch has none)
per_update = settings.n_envs  # episodes per batch
# (episodes - 16,)
greedy_before = np.repeat(history["val_mean"][:-1], per_update)
share_below = np.mean(episode_returns[per_update:] < greedy_before)
record("share_below", share_below, fmt="{:.0%}")
window = 32  # two batches; untuned
fig, ax = plt.subplots(figsize=(8, 3.6))
ax.plot(episode_returns, ".", ms=3, alpha=0.6, label="each training episode")
ax.plot(
    moving_average(episode_returns, window),
    label=f"mean of the last {window} (fewer at the start)",
)
ax.plot(
    history["episodes"],
    history["val_mean"],
    "o-",
    ms=3,
    label="greedy validation",
)
ax.set(
    title=f"REINFORCE with value baseline, seed {seed}",
    xlabel="training episode",
    ylabel="return (steps balanced)",
)
ax.grid(alpha=0.3)
ax.legend()
plt.show()
print(
    f"{share_below:.0%} of the training episodes after the first batch "
    "returned less than the greedy validation score of the weights that "
    "played them"
)

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
The training episodes are played by the *sampling* policy, which, unlike the greedy
one, takes the less likely action with probability min(p, 1 − p) at every step, p
being its probability of pushing right (exercise 3 measures the average rate for the
final policy): {{share_below}} of
them (after the first batch)
returned less than the greedy validation score of the very weights that played them.
(The two are also measured on different start states.) That exploration is what lets
REINFORCE discover better actions at all. The trailing mean averages the last 32
episodes (two batches, an untuned choice), fewer in the first 31, and so lags behind
the latest returns.
"""
)

# %% [markdown]
# ## 7.6 Test: the greedy policy on fresh start states
#
# Evaluation is separate from training: no sampling, no updates. The 20 test episodes'
# start states come from `test_seed`, which nothing else used except the random policy of
# section 7.1, measured on these same 20 start states so that the two compare directly.

# %%
test_returns = evaluate_policy(policy, n_eval, test_seed, device=device)
test_mean = test_returns.mean().item()
record(
    "test_mean",
    test_mean,
    fmt="{:.1f}",
    headline="Greedy test return (mean of 20)",
)
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
# seeds 0-2 (seed 0 also at the avx2 CPU level): trained mean
# 500.0 / 496.3 / 500.0, random 22.0 / 22.5 / 23.6
assert test_mean >= solved_threshold and random_mean < 50, (
    test_mean,
    random_mean,
)

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
Over the 20 test episodes the trained policy, acting greedily (always its most
probable action), averages {{test_mean}} (standard deviation {{test_std}}, shortest
episode {{test_min}} steps), against {{random_test_mean}} for random actions: at
least the threshold of 475, so CartPole-v1 counts as solved by this chapter's
version of the criterion (20 episodes, not 100, and the greedy policy; the policy as
trained samples its actions, and exercise 3 measures whether it scores lower).
Training the kept policy took {{episodes_to_solve}} episodes.
"""
)


# %% [markdown]
# What this test shows is limited. Training, validation and test start states all come
# from the same ±0.05 box, so fresh start states guard against weights that were lucky
# on the validation episodes, not against a different task. And it tests one training
# run. Section 7.5 measured how the *training* differs from run to run; the choice of
# policy is made, so the test episodes can now also show how the six kept policies
# differ, without influencing anything. Each is scored on the same 20 test episodes.

# %%
six_test = {
    key: evaluate_policy(run["policy"], n_eval, test_seed, device=device)
    .mean()
    .item()
    for key, run in runs.items()
}
for (label, run_seed), mean in six_test.items():
    print(f"{label:8}  seed {run_seed}: test mean {mean:.1f}")
six_solved = sum(mean >= solved_threshold for mean in six_test.values())
record("six_test_min", min(six_test.values()), fmt="{:.1f}")
record("six_test_max", max(six_test.values()), fmt="{:.1f}")
record("six_solved", six_solved)

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
The six kept policies averaged between {{six_test_min}} and {{six_test_max}} on
the test episodes; {{six_solved}} of the 6 reached the threshold of 475. Every one
had scored 500 on all 20 validation episodes; where a test mean falls below 500, the
difference is what the validation episodes did not predict.
"""
)

# %% [markdown]
# ## 7.7 What the policy learned
#
# The policy is a function of four numbers. Holding the cart still at the centre (`x =
# x_dot = 0`), we can draw its probability of pushing right over a grid of pole angles
# and angular velocities, and overlay the states one greedy episode passes through
# (`play_episode` from `helpers.rl` records them), projected onto the angle and the
# angular velocity. The episode is the first, from fresh start states, that the policy
# balances to the time limit: this section and the next look at balancing, and section
# 7.6 has already counted how often it fails. First the map and a straight line fitted
# to its boundary: in each column of the map (one angle), the angular velocity at which
# P(push right) crosses 0.5, interpolated between two grid rows.


# %%
def policy_logits_map(
    policy: nn.Module,
    angles: torch.Tensor,
    spins: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Logits at x = x_dot = 0 over a grid: (len(spins), len(angles), 2)."""
    # (S, A) each: rows are spins, columns are angles
    grid_theta, grid_omega = torch.meshgrid(angles, spins, indexing="xy")
    zeros = torch.zeros_like(grid_theta)
    grid_states = torch.stack([zeros, zeros, grid_theta, grid_omega], dim=-1)
    policy.eval()
    with torch.no_grad():
        logits = policy(grid_states.reshape(-1, 4).to(device))  # (S * A, 2)
    return logits.cpu().reshape(len(spins), len(angles), 2)


# the first of up to ten fresh start states that the policy balances to the
# time limit (at seeds 0-2 the first one tried)
starts = range(seed + 3_000, seed + 3_010)
for start in starts:
    episode = play_episode(policy, seed=start, device=device)
    if episode.truncated:
        break
print(f"start states tried: {starts.index(start) + 1}")
angles = torch.linspace(-0.21, 0.21, 121)  # the pole falls beyond +-0.2095 rad
spins = torch.linspace(-1.5, 1.5, 121)  # angular velocity, rad/s
map_logits = policy_logits_map(policy, angles, spins, device)  # (121, 121, 2)
p_right = F.softmax(map_logits, dim=-1)[..., 1]  # rows: spin, columns: angle

crossings = []
for j in range(len(angles)):
    # P(push right) from the lowest to highest spin
    column = p_right[:, j].numpy()
    # rows after which it crosses 0.5
    k = np.flatnonzero(np.diff(column >= 0.5))
    # exactly one crossing: interpolate linearly between two rows
    if len(k) == 1:
        k = k[0]
        step = (0.5 - column[k]) / (column[k + 1] - column[k])
        crossings.append(
            (angles[j].item(), (spins[k] + step * (spins[1] - spins[0])).item())
        )
boundary_theta, boundary_omega = np.array(crossings).T
slope, intercept = np.polyfit(boundary_theta, boundary_omega, 1)
omega_shift = abs(slope) * (angles[-1] - angles[0]).item()
visited = torch.as_tensor(episode.states[:-1], device=device)  # (T, 4)
with torch.no_grad():
    visited_logits = policy(visited).cpu()  # (T, 2)
p_visited = F.softmax(visited_logits, dim=-1)[:, 1].numpy()
unsure = np.mean((p_visited > 0.1) & (p_visited < 0.9))
switches = np.mean(episode.actions[1:] != episode.actions[:-1])
theta_seen, omega_seen = episode.states[:-1, 2], episode.states[:-1, 3]
# the boundary's tilt where the policy goes: the move of the switching omega
# across the episode's angles, against the spread of its angular velocities
visited_shift = abs(slope) * np.ptp(theta_seen)
omega_spread = np.ptp(omega_seen)
top_right, bottom_right = p_right[-1].min().item(), p_right[0].max().item()
print(f"columns with one crossing: {len(crossings)} of {len(angles)}")
print(
    f"P(right): at least {top_right:.4f} on the top row, "
    f"at most {bottom_right:.4f} on the bottom row"
)
print(f"boundary: omega = {intercept:+.3f} {slope:+.3f} * theta (rad/s)")
print(
    f"the switching omega moves by {omega_shift:.2f} "
    "rad/s across the angles shown"
)
print(
    f"across the episode's angles it moves by {visited_shift:.3f} rad/s; the "
    f"episode's angular velocities span {omega_spread:.2f} rad/s"
)
print(f"greedy episode: 0.1 < P(right) < 0.9 at {unsure:.0%} of its steps")
print(f"greedy episode: the action changes at {switches:.0%} of its steps")
# The prose below relies on these: one crossing per angle (the interpolation and
# "the boundary" need it), right above and left below, a boundary that moves by
# less than a quarter of the 3 rad/s of spins shown and, across the episode's
# angles, by less than a quarter of its angular velocities' spread, sloping
# down. Measured at seeds 0-2 (seed 0 also at CPU level avx2): 121 crossings of
# 121; P(right) >= 0.995 on the top row and <= 0.005 on the bottom row (1.00 and
# 0.00 to two places); shift 0.20 / 0.34 / 0.20 rad/s against the bound of 0.75;
# slope -0.471 / -0.802 / -0.470 against 0. Where the episode goes ("close to
# flat"): shift 0.037 / 0.045 / 0.047 rad/s against spreads of 0.62 / 0.60 /
# 0.69 (a quarter: 0.15 / 0.15 / 0.17; measured at the AVX-512 level only).
assert len(crossings) == len(angles) and top_right > 0.5 > bottom_right
span = (spins[-1] - spins[0]).item()
assert omega_shift < span / 4 and slope < 0, (omega_shift, slope)
assert visited_shift < omega_spread / 4, (visited_shift, omega_spread)

# %% [markdown]
# The left panel shows the whole map with the fitted boundary; the right panel zooms
# into the rectangle around the greedy episode's states, with the same markers. The
# dashed line in the zoom is the same straight line, fitted to the crossings of the
# whole map and continued into the rectangle, not a fit to the zoomed region.

# %%
theta_limit = 1.3 * np.abs(episode.states[:, 2]).max()
omega_limit = 1.3 * np.abs(episode.states[:, 3]).max()
zoom_angles = torch.linspace(-theta_limit, theta_limit, 101)
zoom_spins = torch.linspace(-omega_limit, omega_limit, 101)
zoom_logits = policy_logits_map(policy, zoom_angles, zoom_spins, device)
p_zoom = F.softmax(zoom_logits, dim=-1)[..., 1]  # (101, 101)

fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
ax_full, ax_zoom = axes
panels = [
    (ax_full, angles, spins, p_right),
    (ax_zoom, zoom_angles, zoom_spins, p_zoom),
]
for ax, a, s, p in panels:
    image = ax.pcolormesh(a, s, p, cmap="coolwarm", vmin=0, vmax=1)
    theta, omega = episode.states[:, 2], episode.states[:, 3]
    ax.plot(theta, omega, "k.", ms=2, label="greedy episode")
    line = intercept + slope * a.numpy()
    ax.plot(a, line, "k--", lw=1, label="fitted boundary")
    ax.set(
        xlabel="pole angle theta (rad, > 0 leans right)",
        ylabel="angular velocity (rad/s)",
        xlim=(a[0], a[-1]),
        ylim=(s[0], s[-1]),
    )
corner = (-theta_limit, -omega_limit)
zoomed = plt.Rectangle(corner, 2 * theta_limit, 2 * omega_limit, fill=False)
ax_full.add_patch(zoomed)
ax_full.set_title("Policy at x = 0, x_dot = 0")
ax_zoom.set_title("Zoom into the rectangle")
ax_full.legend(loc="upper left")
fig.colorbar(image, ax=[ax_full, ax_zoom], label="P(push right)")
plt.show()

gap_visited = (visited_logits[:, 1] - visited_logits[:, 0]).abs().max().item()
gap_map = (map_logits[..., 1] - map_logits[..., 0]).abs().max().item()
print(f"largest logit gap: {gap_visited:.1f} (episode), {gap_map:.1f} (map)")

# %% tags=["remove-cell"] jupyter={"source_hidden": true} cellView="form"
# The map and the episode in words and numbers, for the paragraphs below.
if max(gap_visited, gap_map) < clamp_gap / 2:
    gap_relation = "both far below"
elif max(gap_visited, gap_map) < clamp_gap:
    gap_relation = "both below"
else:
    gap_relation = "not both below"
record("boundary_slope", slope, fmt="{:+.2f}")
record("boundary_intercept", intercept, fmt="{:+.2f}")
record("boundary_shift", omega_shift, fmt="{:.2f}")
record("visited_shift", visited_shift, fmt="{:.2f}")
record("omega_spread", omega_spread, fmt="{:.2f}")
# the fitted line crosses omega = 0 at theta = -intercept / slope (slope < 0)
if intercept <= 0:
    lean_right = "a pole that leans right at all"
else:
    lean_right = (
        f"a pole that leans right by more than {-intercept / slope:.3f} rad "
        "(where the fitted line crosses zero angular velocity)"
    )
record("lean_right", lean_right)
record("episode_theta", np.abs(theta_seen).max(), fmt="{:.3f}")
record("episode_omega", np.abs(omega_seen).max(), fmt="{:.2f}")
record("unsure_fraction", unsure, fmt="{:.0%}")
record("switch_fraction", switches, fmt="{:.0%}")
# arcs and teeth only where the action switches at most steps
frequent_switching = switches > 0.5
record(
    "zoom_pattern",
    "so the points in the zoom lie on a few curved arcs rather than filling "
    "the rectangle, the angular velocity jumping back and forth between them"
    if frequent_switching
    else "with runs of the same action between switches, the points in the "
    "zoom drift rather than jump back and forth between a few arcs",
)
record(
    "angle_teeth",
    "the small teeth on the angle's curve are the action switching at "
    f"{switches:.0%} of the steps"
    if frequent_switching
    else f"the action switches at only {switches:.0%} of the steps",
)
record("gap_visited", gap_visited, fmt="{:.1f}")
record("gap_map", gap_map, fmt="{:.1f}")
record("gap_relation", gap_relation)
record(
    "clamp_verdict",
    "Training did not make this policy confident "
    "enough for the clamp to matter on these states"
    if max(gap_visited, gap_map) < clamp_gap
    else "On some of these states the clamp does matter",
)

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
The map is split into a red region above (push right) and a blue region below (push
left). The fitted boundary between them has a slope of {{boundary_slope}} rad/s per
rad and passes θ = 0 at an angular velocity of {{boundary_intercept}} rad/s. Where
the policy actually goes it is close to flat: across the angles the greedy episode
visits (the black points), the switching angular velocity moves by
{{visited_shift}} rad/s, while the episode's angular velocities spread over
{{omega_spread}} rad/s (across the whole map's ±0.21 rad it moves by
{{boundary_shift}} rad/s). So the decision depends mostly on the angular velocity:
push right when the pole swings to the right, left when it swings to the left, which
moves the cart under the falling pole. The angle shifts the switching point: the slope is
negative, so {{lean_right}} gets a push to the right even while it still swings
slightly to the left.

The greedy episode stays within {{episode_theta}} rad of vertical and
{{episode_omega}} rad/s of angular velocity (the right panel's rectangle, drawn
30% larger). It switches action at {{switch_fraction}} of its steps, and each
push changes the angular velocity by about 0.3 rad/s (compare the two observations
printed in section 7.1);
{{zoom_pattern}}. Its own probability of pushing right, computed on the full
states, lay between 0.1 and 0.9 at {{unsure_fraction}} of them. The map shows only the slice
`x = x_dot = 0`: the policy also sees the cart's position and velocity, which can move
the boundary.

Section 7.2's concern about confident policies, measured: the largest logit gap is
{{gap_visited}} on the greedy episode's states and {{gap_map}} anywhere on
the map, {{gap_relation}} the 15.9 from which `Categorical(probs=...)` clamps.
{{clamp_verdict}}. Logits do not rescue a policy that has collapsed to a nearly
deterministic one, taking one of the actions with probability close to 1 in most
states (not necessarily the same action everywhere): there the other action is almost
never sampled, and its logit gets almost no gradient either way (the gradient of
$\log \pi(a \mid s)$ with respect to the other action's logit is
$-\pi(\text{other} \mid s)$, tiny when that probability is). What logits buy is exact
log-probabilities, and so exact ratios, for rare actions that *are* sampled, where
clamped probabilities would give a wrong value and a zero gradient. The standard remedy
against collapse is an entropy bonus, a term $+\beta H(\pi(\cdot \mid s))$ in the
objective that rewards keeping both actions possible (A3C, Mnih et al.,
[2016](https://arxiv.org/abs/1602.01783), used $\beta = 0.01$; PPO's loss has such a
term too).
"""
)

# %% [markdown]
# ## 7.8 Watching it balance
#
# `gymnasium` draws CartPole frames when the environment is made with
# `render_mode="rgb_array"`: each `env.render()` returns an `(H, W, 3)` image. It draws
# them with `pygame`, which comes with `pip install "gymnasium[classic-control]"`. Where
# `pygame` is missing, `cartpole_frame` from `helpers.rl` draws the same geometry with
# NumPy (smoothing the edges by averaging 4 × 4 sub-pixels per pixel; where pygame is
# installed, `tests/test_rl.py` checks that the two place pole and cart within 2.5
# pixels of each other). `draw_cartpole`, also from `helpers.rl`, uses whichever is
# there, so the cell below runs either way. gymnasium draws the state its environment
# holds, so on that path the helper sets each recorded state into the environment
# before rendering it. The frames show recorded states of the greedy episode of
# section 7.7: its start, the step at which the pole leaned furthest, the step at
# which the cart was furthest from the centre, and the last state (fewer frames where
# two of these are the same step). A lean of a few degrees moves the top of the pole by
# only a few pixels, so the frames draw the pole at five times its true angle, next to
# a dashed vertical; the titles give the true angle. Each frame shows the same stretch
# of track around the centre, with the cart's position in metres on its axis.
#
# Where `pygame` is installed, the cell below shows gymnasium's own call; the frames
# cell after it goes through `draw_cartpole` either way.

# %%
from importlib.util import find_spec

if find_spec("pygame") is not None:
    render_env = gym.make("CartPole-v1", render_mode="rgb_array")
    render_env.reset(seed=seed)
    print("env.render():", render_env.render().shape)  # (H, W, 3)
    render_env.close()
else:
    print("pygame is not installed: frames come from cartpole_frame")

# %%
# start, furthest lean, furthest cart, end: sorted, each step once
furthest_lean = int(np.abs(episode.states[:, 2]).argmax())
furthest_cart = int(np.abs(episode.states[:, 0]).argmax())
last_step = len(episode.states) - 1
shown = sorted({0, furthest_lean, furthest_cart, last_step})
exaggerate = 5  # the pole is drawn at 5 times its true angle
drawn_states = episode.states[shown].astype(np.float64)  # (len(shown), 4)
drawn_states[:, 2] *= exaggerate
# gymnasium's renderer (pygame) where it is installed, cartpole_frame elsewhere;
# both draw 600 x 400 frames
frames, drawn_by = draw_cartpole(drawn_states)
# both renderers: the track spans +-2.4 m across the width, its line lies at a
# quarter of the height from the bottom, the pole is 1 m long and pivots 0.06 m
# above it. Show the same stretch of track, in metres, in every frame.
half = min(2.4, np.abs(episode.states[shown, 0]).max() + 0.7)  # metres
fig, axes = plt.subplots(
    1,
    len(shown),
    figsize=(3.2 * len(shown), 3.0),
    sharey=True,
    layout="constrained",
)
for ax, t, frame in zip(np.atleast_1d(axes), shown, frames, strict=True):
    height, width = frame.shape[:2]  # (H, W, 3) image
    px_per_m = width / 4.8  # pixels per metre
    track_row = 0.75 * height
    top = int(track_row - 1.3 * px_per_m)
    bottom = int(track_row + 0.25 * px_per_m)
    left = int(width / 2 - half * px_per_m)
    right = int(width / 2 + half * px_per_m)
    # (left, right, bottom, top) in metres: x, and height above the track
    extent = (
        (left - width / 2) / px_per_m,
        (right - width / 2) / px_per_m,
        (track_row - bottom) / px_per_m,
        (track_row - top) / px_per_m,
    )
    ax.imshow(frame[top:bottom, left:right], extent=extent)
    x, theta = episode.states[t, 0], episode.states[t, 2]
    ax.plot([x, x], [0.06, 1.06], "--", color="grey", lw=1)  # the vertical
    ax.set_yticks([])
    ax.set_xlabel("cart position x (m)")
    ax.set_title(
        f"step {t}: theta {theta:+.3f} rad\n"
        f"(drawn at {exaggerate * theta:+.2f} rad)",
        fontsize=9,
    )
plt.show()
print(
    f"frames drawn by {drawn_by}; the pole at {exaggerate}x its true angle, "
    "dashed: vertical"
)

# %% [markdown]
# A few frames show where the cart went and which way the pole leaned, not the motion
# between them. The trace of the whole episode shows more: the angle and the cart's
# position at every step.

# %%
steps_axis = np.arange(len(episode.states))
fig, (ax_theta, ax_x) = plt.subplots(2, 1, figsize=(8, 4.4), sharex=True)
ax_theta.plot(steps_axis, np.degrees(episode.states[:, 2]), lw=0.7)
ax_theta.axhline(0, color="grey", lw=0.6)
ax_theta.set(ylabel="pole angle (degrees)", title="The same greedy episode")
ax_x.plot(steps_axis, episode.states[:, 0], lw=1.2)
ax_x.axhline(0, color="grey", lw=0.6)
ax_x.set(xlabel="step", ylabel="cart position x (m)")
for ax in (ax_theta, ax_x):
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()
largest_angle = np.degrees(np.abs(episode.states[:, 2]).max())
largest_x = np.abs(episode.states[:, 0]).max()
final_x = episode.states[-1, 0]
print(
    f"{len(episode.actions)} steps, truncated by the time limit: "
    f"{episode.truncated}"
)
print(
    f"largest |theta| {largest_angle:.1f} "
    f"degrees, largest |x| {largest_x:.2f} m"
)
print(f"final x {final_x:+.2f} m")
# The text below describes a balanced episode, the first of up to ten start
# states that lasted (section 7.7): seeds 0-2 (seed 0 also at the avx2 CPU
# level) balanced the first one tried, the pole within 2.3 / 1.7 / 2.9 degrees.
# (truncated implies it never fell: the pole stayed within 12 degrees)
assert episode.truncated, (len(episode.actions), largest_angle)

# %% tags=["remove-cell"] jupyter={"source_hidden": true} cellView="form"
# The episode in words and numbers, for the paragraph below.
# the assert above guarantees a time-out
episode_end = f"cut off by the time limit after {len(episode.actions)} steps"
record("largest_angle", largest_angle, fmt="{:.1f}")
record("largest_x", largest_x, fmt="{:.2f}")
record("final_x", final_x, fmt="{:+.2f}")
record("episode_end", episode_end)

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
The episode was {{episode_end}}. The pole never leaned more than
{{largest_angle}}° from vertical (it falls at 12°);
{{angle_teeth}}. The lower panel shows where the cart went: it never went further than
{{largest_x}} m from the centre (the track ends at 2.4 m) and ended at
x = {{final_x}} m.
"""
)

# %% tags=["remove-input", "box-warning"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
> **Common pitfalls**
>
> - **Softmax probabilities into `Categorical(probs=...)`**: confident policies get
>   clamped log-probabilities and zero gradients (section 7.2). Pass `logits=`.
> - **Treating truncation as termination** (the old single `done` flag): returns of a
>   time-out look like a fall, and late actions get punished (section 7.3).
> - **Forgetting `-`** in the loss: minimising $\sum G \log \pi$ makes good actions *less*
>   likely.
> - **Several gradient steps on one REINFORCE batch**: the batch estimates the
>   gradient at the policy that played it, and nothing in plain REINFORCE stops
>   further steps from moving far from that policy (section 7.4, with PPO's answer;
>   exercise 1 measures how far ten steps move it, and what that does to training).
> - **Letting the policy loss reach the value network**: compute the baseline under
>   `torch.no_grad()` (or `.detach()` it). In `baseline_update` forgetting that raises an
>   error ("one of the variables needed for gradient computation has been modified by an
>   inplace operation"), because the value network's optimizer changed the weights the
>   graph saved (a value network of one `Linear` layer would not raise: its backward
>   pass needs the states, not the weights). Code that adds the policy and value losses
>   and calls `backward()` once runs without complaint, and the policy loss then trains
>   the value network as well.
> - **Normalising a single return**: `std()` of one number is NaN (Bessel's correction
>   divides by n − 1 = 0); with batches of whole episodes this cannot happen.
> - **Judging a policy by its training curve**: training returns come from the sampling
>   policy on the training start states. Evaluate the greedy policy on fresh ones.
> - **Trusting one seed**: the number of episodes REINFORCE needs changes from seed to
>   seed (section 7.5's six runs needed between {{fewest_episodes}} and
>   {{most_episodes}}), so one run says little. Measure across seeds.
"""
)


# %% [markdown]
# ## 7.9 Why this chapter runs on the CPU
#
# Every step of `collect_episodes` (section 7.4) sends the 16 observations to the
# policy's device and needs the actions back in NumPy before the simulator can take the
# next step. On a GPU that means a copy to the device, several tiny kernel launches and
# a copy back that waits for them, at every step, for a network whose whole forward pass
# is a few small matrix products. The cell below times that per-step work (states in,
# logits, the greedy action out) on the CPU and, where this machine has one, on the
# accelerator that `get_device()` found. The expectation: a GPU pays off when the
# environment runs there too, as in simulators written in PyTorch or JAX; with a NumPy
# simulator and a network this small it gets little work per step to make up for the
# round trip. The same cell tests the setup cell's choice of one CPU thread: it times
# the per-step work, and the forward and backward pass of an update on 4,000 states, at
# one thread and at PyTorch's default number.


# %%
def seconds_per_step(
    net: nn.Module,
    device: torch.device,
    n: int,
    steps: int = 20,
    sample: bool = False,
) -> float:
    """One step's torch work (states in, logits, actions out), in seconds:
    the greedy action, or with `sample` one drawn from a Categorical, as
    training draws it.

    The fastest of 10 timed blocks of `steps` steps (chapter 1's best_time):
    slower blocks measure the step plus whatever else the machine was doing.
    """
    net = copy.deepcopy(net).to(device)
    observations = np.zeros((n, state_size), dtype=np.float32)

    @torch.no_grad()
    def block() -> None:
        for _ in range(steps):
            logits = net(torch.as_tensor(observations, device=device))  # (n, 2)
            actions = (
                Categorical(logits=logits).sample()  # as training draws it
                if sample
                else logits.argmax(dim=1)  # greedy
            )
            # .cpu() waits until the device has finished: the round trip
            actions.cpu().numpy()

    return best_time(block, repeat=10, warmup=2) / steps


def seconds_per_update_pass(net: nn.Module, n: int) -> float:
    """The fastest of 5 forward and backward passes on n states, on the CPU."""
    net = copy.deepcopy(net)
    states = torch.zeros(n, state_size)  # the values do not change the time
    actions = torch.zeros(n, dtype=torch.long)

    def update_pass() -> None:
        log_probs = Categorical(logits=net(states)).log_prob(actions)  # (n,)
        net.zero_grad()
        log_probs.mean().backward()

    return best_time(update_pass, repeat=5, warmup=2)


update_states = 4_000  # a batch of 16 episodes of 250 steps
cpu_step = seconds_per_step(policy, torch.device("cpu"), n_envs)
cpu_sample_step = seconds_per_step(
    policy, torch.device("cpu"), n_envs, sample=True
)
cpu_update = seconds_per_update_pass(policy, update_states)
print(
    f"one thread: {cpu_step * 1e6:.0f} µs per step ({cpu_sample_step * 1e6:.0f}"
    f" µs sampling the action), {cpu_update * 1e3:.1f} ms per update pass on "
    f"{update_states:,} states"
)
if default_threads > 1:
    torch.set_num_threads(default_threads)
    threads_step = seconds_per_step(policy, torch.device("cpu"), n_envs)
    threads_update = seconds_per_update_pass(policy, update_states)
    torch.set_num_threads(1)  # back to the chapter's choice
    print(
        f"{default_threads} threads: {threads_step * 1e6:.0f} µs per step, "
        f"{threads_update * 1e3:.1f} ms per update pass"
    )
if accelerator.type != "cpu":
    accelerator_step = seconds_per_step(policy, accelerator, n_envs)
    print(f"{accelerator.type}: {accelerator_step * 1e6:.0f} µs per step")


# %% tags=["remove-cell"] jupyter={"source_hidden": true} cellView="form"
# The timings above in words, for the paragraph below.
def compared(threads_time: float, one_time: float) -> str:
    """How long the default thread count took against one thread, in words."""
    ratio = threads_time / one_time
    if ratio >= 10:
        # far beyond what splitting this little work could cost
        return (
            f"{ratio:.0f} times as long as (a gap this large is most likely "
            "threads waiting for cores that other programs held)"
        )
    if ratio >= 1.5:
        return f"{ratio:.1f} times as long as"
    if abs(ratio - 1) < 0.005:  # rounds to 0 %
        return "within 1% of the time of"
    if ratio > 1:
        return f"{ratio - 1:.0%} longer than"
    return f"{1 - ratio:.0%} less time than"


if default_threads > 1:
    thread_note = (
        f"PyTorch's default of {default_threads} CPU threads took "
        f"{threads_step * 1e6:.0f} µs per step, "
        f"{compared(threads_step, cpu_step)} one thread "
        f"({cpu_step * 1e6:.0f} µs), and {threads_update * 1e3:.1f} ms for "
        f"the forward and backward pass of an update on {update_states:,} "
        f"states, {compared(threads_update, cpu_update)} one thread "
        f"({cpu_update * 1e3:.1f} ms)"
    )
else:
    thread_note = (
        "PyTorch's default here is already one thread, so no other thread "
        f"count was timed: {cpu_step * 1e6:.0f} µs per step, "
        f"{cpu_update * 1e3:.1f} ms for the forward and backward pass of an "
        f"update on {update_states:,} states"
    )
if accelerator.type == "cpu":
    device_note = (
        "The chapter's get_device() found no GPU or MPS device (or "
        "BOOK_DEVICE pinned the CPU), so no accelerator was timed. On a GPU "
        "we expect no gain (not measured here): every environment step would "
        "add a host-device round trip (a copy in, kernel launches, a copy back "
        "that waits for them) to a few small matrix products"
    )
else:
    ratio = accelerator_step / cpu_step
    comparison = (
        f"{ratio:.1f} times as long as"
        if ratio >= 1
        else f"{1 / ratio:.1f} times faster than"
    )
    device_note = (
        f"The {accelerator.type} device took {accelerator_step * 1e6:.0f} µs "
        f"per step, {comparison} one CPU thread ({cpu_step * 1e6:.0f} µs)"
    )
record("sample_step_us", cpu_sample_step * 1e6, fmt="{:.0f}")
record("greedy_step_us", cpu_step * 1e6, fmt="{:.0f}")
record(
    "sample_words",
    "building the distribution and drawing from it cost more than the whole "
    "greedy step, forward pass included"
    if cpu_sample_step - cpu_step > cpu_step
    else "building the distribution and drawing from it cost less than the "
    "whole greedy step",
)
record("thread_note", thread_note)
record("device_note", device_note)

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
On this run: {{thread_note}}. {{device_note}}. Each time is the fastest of several
repeats, as chapter 1 timed code, and they are timings of one machine at one moment:
which thread count wins depends on how many cores are free while the chapter runs, and
the chapter keeps one thread, whichever wins, so that its runs repeat on any number of
cores. (An update on 4,000 states is a mid-sized one: a batch holds from a few hundred
states early in training to 8,000 when all 16 episodes last 500 steps.) The simulator's
own step, which runs on the CPU in every case, comes on top. Training draws its actions
from a `Categorical` instead of taking the greedy one: on one CPU thread that step took
{{sample_step_us}} µs against the greedy {{greedy_step_us}} µs: {{sample_words}}.
Part of that cost is the distribution checking its arguments on every construction;
`Categorical(logits=..., validate_args=False)` skips the checks once the code is
known to be right.
"""
)


# %% [markdown]
# ## Exercises
#
# Each exercise has a starter cell: fill it in and run it, and its last line checks your
# attempt on fresh inputs against a reference and says what is off, with a hint for the
# usual mistakes. The solution follows, collapsed.
#
# **Exercise 1.** Measure how far one batch may move the policy, and what moving it far
# does to training.
#
# 1. **Build.** Fill in the starter below: an update that takes `steps` policy steps
#    (`policy_step`) on each batch and, after every update, appends to `log` two
#    floats, both on the batch's states: the mean KL divergence from the policy that
#    played the batch to the updated one (`torch.distributions.kl_divergence` of two
#    `Categorical`s), and the mean entropy of the policy that played it.
# 2. **Run three arms** from the three seeds of section 7.5, with a budget of 160
#    episodes (`dataclasses.replace(settings, max_episodes=160)`):
#    - control: section 7.5's plain runs (one step per batch at the chapter's `lr`);
#    - ten steps per batch at the chapter's `lr`;
#    - one step per batch at a ten times larger learning rate (`lr=0.1`).
# 3. **Measure.** Compare each arm's KL on the first update with that of one step at the
#    chapter's `lr` on the same first batch. So short a budget is not meant for passing
#    validation: count as a failure a run whose policy collapses (entropy below 5% of a
#    fair coin's at the last batch: in nearly every state it takes one action almost
#    surely, which need not be the same action in every state). A run within 10% of
#    that threshold, on either side, is too close to call: report it apart.
# 4. **Answer.** What happens to the runs, and does it matter whether the policy moves
#    far by reusing the batch or by one large step?
#
# The KL divergence of two action distributions (chapter 6),
# $\sum_a \pi_\text{old}(a)\ln\frac{\pi_\text{old}(a)}{\pi_\text{new}(a)}$, is 0 when they
# agree and grows as they part; the entropy $-\sum_a \pi(a)\ln\pi(a)$ of a two-action
# policy is ln 2 ≈ 0.69 for a fair coin and 0 for a policy that always takes one action.


# %% tags=["exercise-starter"]
# Fill in multi_step_update: `steps` calls of policy_step on the batch, then
# log.append({"kl": ..., "entropy": ...}) with the mean KL divergence from the
# policy that played the batch to the updated one and the mean entropy of the
# policy that played it, both on the batch's states (floats).
def make_multi_step_update(steps: int, log: list[dict]) -> Update:
    """Like reinforce_update, but ``steps`` policy steps per batch; logs KL."""

    def multi_step_update(
        batch: list[Episode],
        policy: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: Settings,
    ) -> None:
        raise NotImplementedError  # your code here

    return multi_step_update


from helpers.exercises.ch07 import check_multi_step_update

check_multi_step_update(make_multi_step_update)


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 1: the same first batch for 1 and 10 steps (same seed, same start
# states).
def make_multi_step_update(steps: int, log: list[dict]) -> Update:
    """Like reinforce_update, but ``steps`` policy steps per batch; logs KL."""

    def multi_step_update(
        batch: list[Episode],
        policy: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: Settings,
    ) -> None:
        states, actions = batch_tensors(batch, settings.device)
        advantages = batch_returns(batch, settings)
        with torch.no_grad():  # the policy that played the batch
            before = Categorical(logits=policy(states))
        for _ in range(steps):
            eps = settings.eps
            policy_step(policy, optimizer, states, actions, advantages, eps)
        with torch.no_grad():
            after = Categorical(logits=policy(states))
            kl = torch.distributions.kl_divergence(before, after).mean().item()
        log.append({"kl": kl, "entropy": before.entropy().mean().item()})

    return multi_step_update


assert check_multi_step_update(make_multi_step_update)
one_update = replace(settings, max_episodes=settings.n_envs)  # one batch
short = replace(settings, max_episodes=160)  # at most 10 updates
big_lr = 0.1  # ten times the chapter's lr: one step that moves the policy far
fair_coin = math.log(2)  # entropy of a 50/50 choice, in nats
arms = {
    "ten steps": (short, 10),
    f"one step at lr {big_lr}": (replace(short, lr=big_lr), 1),
}
first_kl = {"one step": [], **{arm: [] for arm in arms}}
arm_runs = {arm: [] for arm in arms}  # (run, log) of every seed
for run_seed in run_seeds:
    one_log = []
    one_step_update = make_multi_step_update(1, one_log)
    train_reinforce(run_seed, one_update, one_step_update, "1 step")
    first_kl["one step"].append(one_log[0]["kl"])
    for arm, (arm_settings, steps) in arms.items():
        log = []
        update = make_multi_step_update(steps, log)
        run = train_reinforce(run_seed, arm_settings, update, arm)
        first_kl[arm].append(log[0]["kl"])
        arm_runs[arm].append((run, log))

ten, big = arms  # the two arms' names
first_kl_ratio = [
    t / o for t, o in zip(first_kl[ten], first_kl["one step"], strict=True)
]
big_ratio = [
    b / o for b, o in zip(first_kl[big], first_kl["one step"], strict=True)
]
one_step_kl = ", ".join(f"{kl:.2g}" for kl in first_kl["one step"])
print(f"one step at lr {settings.lr}, first-update KL: {one_step_kl}")
collapse_at = 0.05 * fair_coin  # entropy below this on the last batch
print(f"collapse threshold: entropy {collapse_at:.4f} nats (5% of ln 2)")
for arm in arms:
    for run_seed, (run, log) in zip(run_seeds, arm_runs[arm], strict=True):
        passed = run["solved_at"]
        print(
            f"{arm}, seed {run_seed}: first-update KL {log[0]['kl']:.2g}, "
            + (f"passed after {passed} episodes" if passed else "did not pass")
            + f", entropy on the last batch {log[-1]['entropy']:.4f} "
            f"(threshold {collapse_at:.4f})"
        )
# BOOK_SEED 0/1/2 (run seeds 0-4; seed 0 also at the avx2 CPU level): KL
# ratios, ten steps: 43-59 / 49-61 / 51-61; lr 0.1: 13-25 / 17-28 / 17-28
assert min(first_kl_ratio) > 10, first_kl_ratio
assert min(big_ratio) > 5, big_ratio


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Exercise 1's answer in words, from the runs above: how each run ended here,
# the sentences in helpers/exercises/ch07_words.py.
from helpers.exercises.ch07_words import RunEnd, multi_step_answer

ends = {arm: [] for arm in arms}
for arm, (arm_settings, _) in arms.items():
    for run, log in arm_runs[arm]:
        final = make_policy(arm_settings.hidden).to(device)
        final.load_state_dict(run["history"]["weights"][-1])
        # section 7.7's grid of angles and spins, at x = x_dot = 0
        final_logits = policy_logits_map(final, angles, spins, device)
        gap = (final_logits[..., 1] - final_logits[..., 0]).abs().max()
        end = RunEnd(
            solved_at=run["solved_at"],
            last_val=run["history"]["val_mean"][-1],
            entropy=log[-1]["entropy"],  # the policy that played the last batch
            gap=gap.item(),
        )
        ends[arm].append(end)
# the control, section 7.5's plain runs (one step at lr), at the last batch
# within the arms' budget of episodes
control_updates = short.max_episodes // short.n_envs
control_entropy = [
    runs["plain", s]["history"]["entropy"][:control_updates][-1]
    for s in run_seeds
]
answer = multi_step_answer(
    lr=settings.lr,
    big_lr=big_lr,
    ten=ten,
    big=big,
    run_seeds=run_seeds,
    first_kl=first_kl,
    ends=ends,
    control_needed=plain_needed,  # section 7.5's plain runs: one step
    control_entropy=control_entropy,
    budget=short.max_episodes,
    collapse_at=collapse_at,
    fair_coin=fair_coin,
    clamp_gap=clamp_gap,
)
print("\n".join(answer))

# %% [markdown]
# **Exercise 2.** Step 5 of the derivation in section 7.4 replaced the whole return
# $R(\tau)$ by the reward-to-go $G_t$; with $\gamma = 1$ both weightings give unbiased
# estimates of $\nabla_\theta J$. Measure what the step buys, and compute the
# per-episode estimates without a Python loop over episodes. Pad the 64 measured
# episodes of section 7.5's first draw to the longest one, with weight 0 on the padded
# steps. Write a function of the parameters and one padded episode that returns
# $\sum_t w_t \log \pi_\theta(a_t \mid s_t)$, and let `torch.func` do the rest:
# `functional_call(module, params, args)` runs the frozen policy with the parameters
# given in a dict, `grad(f)` returns a function that computes the gradient of `f` with
# respect to its first argument, and `vmap` maps a function over a batch dimension.
# Fill in `batched_episode_gradients` in the starter below, with the arguments and the
# (M, P) result of `episode_gradients`. Then compare the total variance of the
# estimate weighted by $R(\tau)$ at every step with that weighted by the undiscounted
# reward-to-go (`discounted_returns(e.rewards, 1.0)`).


# %% tags=["exercise-starter"]
# Fill in: pad the episodes (weight 0 on padded steps), then one
# torch.func.vmap over torch.func.grad of sum_t w_t log pi(a_t | s_t); return
# the (M, P) rows of episode_gradients, parameters in parameters() order.
def batched_episode_gradients(
    policy: nn.Module,
    episodes: list[Episode],
    weights: list[torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """(M, P) as episode_gradients, in one vmap call over padded episodes."""
    raise NotImplementedError  # your code here


from helpers.exercises.ch07 import check_batched_episode_gradients

check_batched_episode_gradients(batched_episode_gradients)


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 2: R(tau) is G_0, the first reward-to-go, repeated at every step.
def pad_episodes(
    episodes: list[Episode], weights: list[torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """States (M, T, 4), actions (M, T), weights (M, T), zero-padded to the
    longest episode: a padded step has weight 0 and adds nothing.
    """
    m, longest = len(episodes), max(len(e.actions) for e in episodes)
    states = torch.zeros(m, longest, 4, device=device)
    actions = torch.zeros(m, longest, dtype=torch.long, device=device)
    padded_w = torch.zeros(m, longest, device=device)
    for i, (e, w) in enumerate(zip(episodes, weights, strict=True)):
        n = len(e.actions)
        states[i, :n] = torch.as_tensor(e.states[:-1], device=device)
        actions[i, :n] = torch.as_tensor(e.actions, device=device)
        padded_w[i, :n] = w
    return states, actions, padded_w


def batched_episode_gradients(
    policy: nn.Module,
    episodes: list[Episode],
    weights: list[torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """(M, P) as episode_gradients, in one vmap call over padded episodes."""
    params = {k: v.detach() for k, v in policy.named_parameters()}

    def weighted_log_prob(params, states, actions, w):
        logits = torch.func.functional_call(policy, params, (states,))
        log_probs = F.log_softmax(logits, dim=-1)  # (T, 2)
        taken = log_probs.gather(1, actions[:, None]).squeeze(1)  # (T,)
        return (w * taken).sum()

    # the parameters are shared; states, actions and weights are mapped over
    per_episode = torch.func.vmap(
        torch.func.grad(weighted_log_prob), in_dims=(None, 0, 0, 0)
    )
    grads = per_episode(params, *pad_episodes(episodes, weights, device))
    # named_parameters() has the order of parameters(), as episode_gradients
    return torch.cat([grads[k].flatten(1) for k in params], dim=1)


assert check_batched_episode_gradients(batched_episode_gradients)
to_go = [discounted_returns(e.rewards, 1.0).to(device) for e in measured]
whole = [torch.full_like(g, g[0].item()) for g in to_go]
rows_to_go = batched_episode_gradients(frozen, measured, to_go, device)
rows_whole = batched_episode_gradients(frozen, measured, whole, device)
reference = episode_gradients(frozen, measured, to_go, device)  # (64, 4610)
largest = reference.abs().max().item()
print(
    "largest difference from episode_gradients: "
    f"{(rows_to_go - reference).abs().max().item():.2e} (largest entry "
    f"{largest:.2e})"
)
# seeds 0-2: largest difference 3.7e-4 / 3.1e-4 / 2.4e-4, 2e-7 to 5e-7 of the
# largest entry (float32 rounding); the tolerance allows 1e-5 of it
assert torch.allclose(rows_to_go, reference, rtol=1e-4, atol=1e-5 * largest)
var_to_go = total_variance(rows_to_go)
var_whole = total_variance(rows_whole)
causality_gain = var_whole / var_to_go
print(
    f"Weighting every step by the whole return gave {causality_gain:.1f} times "
    "the total variance of the reward-to-go. The rewards earned before step t, "
    "which a_t cannot change, add noise to the estimate and nothing to its "
    "expectation."
)
# seeds 0-2 (seed 0 also at the avx2 CPU level): 4.0 / 4.7 / 4.2
assert causality_gain > 2, causality_gain

# %% [markdown]
# **Exercise 3.** Section 7.6 tested the greedy policy. Evaluate the *sampling* policy
# (`greedy=False`) on 20 fresh episodes from seed `seed + 4_000`, and the greedy one on
# the same start states. Is one of them better? Both play the same 20 start states, so
# compare them pair by pair: give the mean difference with its paired standard error,
# and say how many episodes per policy a two-sided test at the 5% level would need to
# detect a difference of the measured size with 80% power. The starter below asks for
# these three numbers as a function of the two policies' returns. (Hint for the why:
# how often does sampling take the action the greedy policy would not?)
#
# *Power* is the probability that a test detects a difference that is really there.
# In the normal approximation, the mean of $n$ paired differences with true mean
# $\delta$ and standard deviation $\sigma_d$ is normal with mean $\delta$ and standard
# error $\sigma_d/\sqrt{n}$, and the two-sided 5% test declares a difference when that
# mean lies more than $z_{0.975} = 1.96$ standard errors from 0. Derive from this the
# $n$ at which the test declares a difference with probability exactly 0.8 (a plan
# rounds it up to whole episodes; the
# standard normal's 0.8 quantile is $z_{0.8} = 0.84$; ignore the negligible chance of
# landing beyond the threshold on the other side). Take the measured mean difference
# for $\delta$ and the standard deviation of one difference for $\sigma_d$, both
# estimated from your 20 pairs. That number is a figure for planning a *new* experiment,
# taking the measured difference as if it were the true one. It says nothing about the
# test you just ran: computed from the same 20 pairs, this "observed power" is a
# function of the test's own p-value (Hoenig and Heisey, *The Abuse of Power*, The
# American Statistician, 2001), and the measured difference is itself uncertain.


# %% tags=["exercise-starter"]
# Fill in: the mean of greedy - sampled (episode i of both started from the same
# state), its paired standard error, and the episodes per policy that a
# two-sided test at 5% with 80% power needs for a difference of that size
# (derive it from the definition of power above).
def paired_test(
    greedy: torch.Tensor, sampled: torch.Tensor
) -> tuple[float, float, float]:
    """Mean difference, paired standard error, episodes needed."""
    raise NotImplementedError  # your code here


from helpers.exercises.ch07 import check_paired_test

check_paired_test(paired_test)


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 3: same start states for both; sampling is seeded through torch.
def paired_test(
    greedy: torch.Tensor, sampled: torch.Tensor
) -> tuple[float, float, float]:
    """Mean difference, paired standard error, episodes needed."""
    # paired: episode i of both policies starts from the same state
    differences = (greedy - sampled).numpy()  # (n,)
    n = len(differences)
    gap = differences.mean().item()
    gap_se = differences.std(ddof=1).item() / math.sqrt(n)
    # 80% power: the mean difference, normal around delta with standard error
    # sd / sqrt(n), lands beyond 1.96 standard errors with probability 0.8
    # when |delta| >= (1.96 + 0.84) * sd / sqrt(n) (0.84: the 0.8 quantile),
    # so n = ((1.96 + 0.84) * sd / delta)^2 episodes per policy. Student's t
    # with n - 1 degrees of freedom asks a little more.
    z_sum = 1.96 + 0.84
    needed = (
        (z_sum * gap_se * math.sqrt(n) / abs(gap)) ** 2 if gap else math.inf
    )
    return gap, gap_se, needed


assert check_paired_test(paired_test)
torch.manual_seed(seed)
sampled = evaluate_policy(
    policy, n_eval, seed + 4_000, device=device, greedy=False
)
greedy = evaluate_policy(policy, n_eval, seed + 4_000, device=device)
gap, gap_se, needed = paired_test(greedy, sampled)
# p_visited (section 7.7): P(push right) on the greedy episode's states;
# sampling takes the other action than greedy with probability min(p, 1 - p)
off_greedy = np.minimum(p_visited, 1 - p_visited).mean()
means = f"greedy mean {greedy.mean():.1f}, sampling mean {sampled.mean():.1f}"
if gap_se == 0 or gap == 0:
    which = f"{means}: a difference of {gap:+.1f} with no spread to test"
else:
    # the verdict itself: Student's t with n - 1 degrees of freedom, not the
    # normal's 1.96, as in section 7.5 and exercise 5
    df = len(greedy) - 1
    t_crit = stats.t.ppf(0.975, df)
    # the planning figure at the measured difference plus or minus one
    # standard error: the effect size itself is uncertain
    sd = gap_se * math.sqrt(len(greedy))  # of one difference
    larger, smaller = abs(gap) + gap_se, abs(gap) - gap_se
    n_larger = (2.8 * sd / larger) ** 2  # 2.8 = 1.96 + 0.84, as in the solution
    planning = f"about {n_larger:.0f} for a difference of {larger:.0f}"
    if smaller > 0:
        n_smaller = (2.8 * sd / smaller) ** 2
        planning += f", about {n_smaller:.0f} for one of {smaller:.0f}"
    found = abs(gap) > t_crit * gap_se
    if found:
        better = "greedy" if gap > 0 else "sampling"
        verdict = f"the {better} policy is better at the 5% level"
    else:
        verdict = "the difference is not significant at the 5% level"
    which = (
        f"{means}: a difference of {gap:+.1f}, paired standard error "
        f"{gap_se:.1f}; against t with {df} degrees of freedom (two-sided 5%: "
        f"{t_crit:.2f} standard errors) {verdict}. For planning a new "
        "experiment (not evidence about this one): a true difference of this "
        f"size would need about {needed:.0f} episodes per policy for 80% power "
        f"({planning}, one standard error either side)"
    )
print(
    f"{which}. On the states of the greedy episode of section 7.7, sampling "
    f"takes the other action at {off_greedy:.0%} of the steps on average, each "
    "time the push the policy rates worse. Training needs that exploration; at "
    "test time it can only help where the policy's preferred action is in fact "
    "the worse one."
)
# seeds 0-2 (seed 0 also at the avx2 CPU level): 0.24 / 0.26 / 0.21
assert off_greedy > 0.05, off_greedy

# %% [markdown]
# **Exercise 4.** Change a setting and measure its effect: the time limit. The policy
# was trained and chosen on episodes cut at 500 steps. Does it keep balancing four times
# as long, and when an episode ends early, how does it end: does the pole fall or does
# the cart leave the track? `evaluate_policy(..., time_limit=2000)` answers the first
# question with lengths only. For the second, write `long_episodes` in the starter
# below. It plays `n_episodes` greedy episodes from exactly the start states that
# `evaluate_policy(policy, n_episodes, seed)` uses, each cut at `time_limit` steps, and
# returns for each episode its length, the largest |x| its cart reached (the start
# state included) and the state in which it ended. Section 7.4's `collect_episodes`
# is a place to start, but not all of it carries over: work out what has to change.
# Then run it for the trained policy on the validation start states with a limit of
# 2,000 steps, and compare with what `evaluate_policy` gives the random policy there.


# %% tags=["exercise-starter"]
# Fill in: greedy episodes from the start states evaluate_policy(policy,
# n_episodes, seed) uses, each cut at time_limit steps. Return, as NumPy
# arrays: each episode's length (n,), the largest |x| of its cart, start
# state included (n,), and the state it ended in (n, 4).
def long_episodes(
    policy: nn.Module,
    n_episodes: int,
    seed: int,
    time_limit: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lengths, furthest |x| and final states of greedy episodes."""
    raise NotImplementedError  # your code here


from helpers.exercises.ch07 import check_long_episodes

check_long_episodes(long_episodes)


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 4: same start states, only the time limit changes.
def long_episodes(
    policy: nn.Module,
    n_episodes: int,
    seed: int,
    time_limit: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lengths, furthest |x| and final states of greedy episodes."""
    # evaluate_policy's mode, so that reset(seed=seed) gives its start states
    # ("sync" would seed each copy differently); max_episode_steps replaces the
    # environment's own limit of 500
    long_envs = gym.make_vec(
        "CartPole-v1",
        num_envs=n_episodes,
        vectorization_mode="vector_entry_point",
        max_episode_steps=time_limit,
    )
    observations, _ = long_envs.reset(seed=seed)
    # a copy whose episode ended restarts by itself on its next step: as in
    # collect_episodes, alive marks the copies still in their first episode
    alive = np.ones(n_episodes, dtype=bool)
    lengths = np.zeros(n_episodes)
    furthest = np.abs(observations[:, 0])  # largest |x| so far, per episode
    last_states = np.zeros((n_episodes, 4))
    policy.eval()
    with torch.no_grad():
        while alive.any():
            # (n_episodes, 2)
            logits = policy(torch.as_tensor(observations, device=device))
            actions = logits.argmax(dim=1).cpu().numpy()
            observations, _, terminated, truncated, _ = long_envs.step(actions)
            lengths += alive
            x = np.abs(observations[:, 0])
            furthest = np.where(alive, np.maximum(furthest, x), furthest)
            ended = alive & (terminated | truncated)
            last_states[ended] = observations[ended]  # where each one ended
            alive &= ~ended
    long_envs.close()
    return lengths, furthest, last_states


assert check_long_episodes(long_episodes)
long_limit = 2_000
long_returns = evaluate_policy(
    policy, n_eval, val_seed, device=device, time_limit=long_limit
)
long_random = evaluate_policy(None, n_eval, val_seed, time_limit=long_limit)
# The same greedy episodes by hand, keeping each one's final state.
lengths, furthest, last_states = long_episodes(
    policy, n_eval, val_seed, long_limit, device
)
early = lengths < long_limit
off_track = early & (np.abs(last_states[:, 0]) > track_end)
pole_fell = early & (np.abs(last_states[:, 2]) > fall_angle)
horizon_300 = gamma**300 / (1 - gamma)  # discounted rewards from 300 steps on
horizon_500 = gamma**500 / (1 - gamma)
forever = 1 / (1 - gamma)  # G_t of balancing for ever; the time-out bootstrap
near_end = (1 - gamma**100) / (1 - gamma)  # G_t 100 steps before the end
# The same greedy episodes within the training limit of 500 steps (greedy
# play is deterministic, so these are their first 500 steps).
_, furthest_500, _ = long_episodes(policy, n_eval, val_seed, 500, device)
edge = 1.5  # metres: nearer the end of the track (2.4 m) than the centre
near_edge = int((furthest_500 > edge).sum())
# the loop matches the helper
assert np.array_equal(lengths, long_returns.numpy())
assert torch.equal(long_random, evaluate_policy(None, n_eval, val_seed))
# "far from either limit": the longest random episode at seeds 0-2 lasted
# 50 / 60 / 52 steps (NumPy's generator only, no torch kernels involved)
assert long_random.max() < 250, long_random.max()
assert np.all(early == (off_track | pole_fell))  # every early end is explained

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Exercise 4's answer in words, from the episodes above.
if not early.any():
    answer = (
        f"Yes: all {n_eval} episodes lasted {long_limit} steps, and no cart "
        f"got further than {furthest.max():.2f} m from the centre"
    )
else:
    shortest, longest = lengths[early].min(), lengths[early].max()
    span = f"{shortest:.0f}"
    if longest > shortest:
        span += f"-{longest:.0f}"
    n_off, n_fell = off_track.sum() or "none", pole_fell.sum() or "none"
    answer = (
        f"No: {early.sum()} of {n_eval} episodes ended early (after {span} "
        f"steps). In {n_off} of them the cart left the track "
        f"(|x| > {track_end} m)"
    )
    if off_track.any():
        upright = np.degrees(np.abs(last_states[off_track, 2]).max())
        answer += f" with the pole at most {upright:.1f} degrees from vertical"
    answer += f"; in {n_fell} the pole fell"
diagnosis = (
    f"With gamma = {gamma}, an episode end 300 steps ahead lowers G_t by only "
    f"{horizon_300:.1f} of the {forever:.0f} that balancing for ever is "
    f"worth, and one 500 steps ahead by {horizon_500:.2f}: discounting hides "
    "the end from the actions that start a slow drift. "
)
if off_track.any():
    diagnosis += (
        "Near the edge, though, the end is well within the horizon (an action "
        f"100 steps before it gets G_t = {near_end:.0f} instead of "
        f"{forever:.0f}), and the policy sees x and its velocity, so it could "
        "learn to push back there. Three things in training may have hidden "
        "that, and this run does not tell them apart: training stopped as "
        "soon as validation passed, so it learned only from the episodes "
        "played before; the 500-step cap (in their first 500 steps these "
        "greedy episodes took "
        f"the cart a median {np.median(furthest_500):.2f} m from the centre, "
        f"and {near_edge} of {n_eval} got past {edge} m); and the constant "
        f"bootstrap of {forever:.0f} at the cap, which scores a state about to "
        "leave the track as worth balancing for ever, like one at the centre. "
        "A bootstrap with V(s_500), as in actor-critic methods, could see the "
        "danger, but only if the value network had seen episodes fail at the "
        "edge. "
    )
print(
    f"{answer}. The trained policy averages {long_returns.mean():.0f} "
    f"steps. {diagnosis}The random policy averages "
    f"{long_random.mean():.1f}, the same as with the old limit: its longest "
    f"episode lasted {long_random.max():.0f} steps, far from either limit."
)

# %% [markdown]
# **Exercise 5.** Section 7.5's baseline weighs each action by $G_t - V(s_t)$: a whole
# discounted return, minus a prediction. The value network can do more. Its one-step
# **temporal-difference error** $\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$ is itself
# an estimate of the advantage, with the noise of one reward instead of a whole
# episode's, but biased by whatever $V$ gets wrong. **Generalised advantage
# estimation** (GAE; Schulman et al., [*High-Dimensional Continuous Control Using
# Generalized Advantage Estimation*](https://arxiv.org/abs/1506.02438), 2016) blends
# the two with one number $\lambda \in [0, 1]$:
#
# $$ \hat A_t = \sum_{k \ge 0} (\gamma\lambda)^k\, \delta_{t+k}, $$
#
# summed to the end of the episode, with $V$ after the last step taken as 0 after a fall
# and as the bootstrap after a time-out. Spinning Up's VPG, whose network and discount
# this chapter borrowed, uses $\lambda = 0.97$; PPO implementations use GAE too.
#
# 1. Show that $\lambda = 0$ gives $\delta_t$ and $\lambda = 1$ gives $G_t - V(s_t)$,
#    and find a recursion that computes every $\hat A_t$ in one backward pass.
# 2. Fill in `gae_advantages` in the starter below, for one episode: `rewards` and
#    `values` hold one number per step (the value network's estimate of each visited
#    state) and `last_value` the value after the last step. The checker compares it
#    with the definition on made-up episodes.
# 3. Write `make_gae_update(run_seed, settings, lam)`: section 7.5's
#    `make_baseline_update` with these advantages in place of $G_t - V(s_t)$ (its
#    argument `advantages_from` takes a function of the batch, its returns, the
#    values predicted before the value network's steps on it, and the settings),
#    and after a time-out the $1/(1-\gamma)$ the returns bootstrap with. Check it:
#    with $\lambda = 1$ it must take the baseline's step, to float rounding.
# 4. Train it from the three seeds of section 7.5 with $\lambda = 0.97$ and compare
#    the episodes needed to pass validation with the baseline runs of section 7.5,
#    paired by seed and judged as that section judged plain against baseline.


# %% tags=["exercise-starter"]
# Fill in gae_advantages: one episode's advantages, in one backward pass.
def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    last_value: float,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """(T,) advantages sum_k (gamma lam)^k delta_{t+k} of one episode."""
    raise NotImplementedError  # your code here


from helpers.exercises.ch07 import check_gae_advantages

check_gae_advantages(gae_advantages)


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 5: with lam = 0 only k = 0 is left, delta_t; with lam = 1 the
# deltas telescope, sum_k gamma^k (r_{t+k} + gamma V_{t+k+1} - V_{t+k}) =
# G_t - V_t. The recursion: A_t = delta_t + gamma * lam * A_{t+1}, A_T = 0.
def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    last_value: float,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """(T,) advantages sum_k (gamma lam)^k delta_{t+k} of one episode."""
    next_values = torch.cat([values[1:], values.new_tensor([last_value])])
    deltas = (rewards + gamma * next_values - values).tolist()  # floats: fast
    advantages, running = [0.0] * len(deltas), 0.0
    for t in range(len(deltas) - 1, -1, -1):
        running = deltas[t] + gamma * lam * running
        advantages[t] = running
    return torch.tensor(advantages, dtype=values.dtype, device=values.device)


assert check_gae_advantages(gae_advantages)


def gae_from(lam: float) -> Callable:
    """make_baseline_update's `advantages_from`: each episode's GAE
    advantages from the value network's predictions.
    """

    def advantages_from(
        batch: list[Episode],
        returns: torch.Tensor,
        predicted: torch.Tensor,
        settings: Settings,
    ) -> torch.Tensor:
        # after a time-out, the bootstrap the returns use: 1 / (1 - gamma)
        forever = 1 / (1 - settings.gamma)
        pieces, start = [], 0
        for episode in batch:
            end = start + len(episode.actions)
            rewards = torch.as_tensor(
                episode.rewards, dtype=predicted.dtype, device=predicted.device
            )
            last_value = forever if episode.truncated else 0.0
            pieces.append(
                gae_advantages(
                    rewards,
                    predicted[start:end],
                    last_value,
                    settings.gamma,
                    lam,
                )
            )
            start = end
        return torch.cat(pieces)  # (N,)

    return advantages_from


def make_gae_update(run_seed: int, settings: Settings, lam: float) -> Update:
    """Section 7.5's baseline update, its actions weighed by GAE advantages."""
    return make_baseline_update(run_seed, settings, gae_from(lam))


# lam = 1 is the baseline's G_t - V(s_t): one update on section 7.4's batch,
# from the same policy, with plain SGD so that a gradient's last digits show
step_results = []
for update in (
    make_baseline_update(seed, settings),
    make_gae_update(seed, settings, lam=1.0),
):
    stepped_policy = copy.deepcopy(policy)
    sgd = torch.optim.SGD(stepped_policy.parameters(), lr=settings.lr)
    update(batch, stepped_policy, sgd, settings)
    step_results.append(
        torch.cat([p.flatten() for p in stepped_policy.parameters()])
    )
lam_one_gap = (step_results[0] - step_results[1]).abs().max().item()
print(
    f"lam = 1 against the baseline's update: parameters within {lam_one_gap:.1e}"
)
# float32 rounding only, G_t - V(s_t) summed two ways: 7.5e-9 / 1.5e-8 /
# 1.5e-8 at seeds 0-2
assert lam_one_gap < 1e-6, lam_one_gap

lam = 0.97  # Spinning Up's VPG default; untuned here
gae_runs = [
    train_reinforce(
        run_seed, settings, make_gae_update(run_seed, settings, lam)
    )
    for run_seed in run_seeds
]
gae_needed = [run["solved_at"] or budget for run in gae_runs]
gae_paired = np.array(gae_needed) - np.array(baseline_needed)  # (n_runs,)
gae_se = gae_paired.std(ddof=1) / math.sqrt(n_runs)
gae_significant = abs(gae_paired.mean()) > t_critical * gae_se
print(f"episodes needed, GAE (lam {lam}): {gae_needed}")
print(f"episodes needed, G_t - V(s_t) (section 7.5): {baseline_needed}")
direction = "fewer" if gae_paired.mean() < 0 else "more"
print(
    f"Answer: paired by seed, GAE needed {abs(gae_paired.mean()):.0f} {direction}"
    f" episodes on average (standard error {gae_se:.0f}; differences "
    f"{gae_paired.tolist()}): "
    + (
        f"beyond {t_critical:.2f} standard errors, significant at the 5% level"
        if gae_significant
        else f"within {t_critical:.2f} standard errors, not significant with "
        f"{n_runs} pairs"
    )
    + f". Lowering lam from 1 to {lam} shrinks a TD error's weight 3% per step"
    f" ahead (gamma * lam = {settings.gamma * lam:.4f} against {settings.gamma})"
    ", so the noise of distant rewards counts less and the errors of V count"
    " more: a bias-variance trade whose best lam depends on how good V is"
    + (
        "."
        if gae_significant
        else f"; with {n_runs} pairs this run cannot tell on which side of it"
        f" lam = {lam} landed."
    )
)


# %% [markdown]
# ## Summary

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
- A `gymnasium` environment is driven by `reset(seed=...)` and `step(action)`;
  `terminated` means the episode really ended, `truncated` that a time limit cut it.
  Whether the return after a time-out is 0 or must be bootstrapped depends on whether
  the limit is part of the task.
- The policy gradient follows in five lines from the log-derivative trick: the
  dynamics drop out, and causality leaves each action weighted by the reward-to-go.
  It holds for the current policy only, so REINFORCE takes one step per batch.
- A policy network outputs logits; `Categorical(logits=...)` samples actions and gives
  exact log-probabilities, where softmax probabilities are clamped at float32's eps
  (logit gaps above about 16) and their gradients vanish.
  $-\log \pi(a \mid s)$ is chapter 2's cross-entropy with the sampled action as label.
- REINFORCE weights each action's log-probability by the (normalised) discounted return
  that followed it; batches of 16 episodes from `gym.make_vec` average the noisy
  estimate and are simulated in one NumPy call per step, on the CPU.
- At a fixed policy a fitted value baseline left a median {{value_share}} of the
  gradient variance that a constant baseline left ({{value_share_range}} over
  {{n_draws}} draws). Over three training runs per version the
  result was {{baseline_verdict}} (baseline minus plain:
  {{episodes_difference}} episodes, paired standard error
  {{episodes_difference_se}}).
- The greedy policy kept after validation averaged {{test_mean}} on 20 fresh test
  episodes, against {{random_test_mean}} for random actions.
"""
)

# %% [markdown]
# **Where to go from here.** Actor-critic methods use the value network for more than a
# baseline: they replace the rest of the episode by $r_t + \gamma V(s_{t+1})$
# (bootstrapping at every step), trading variance for bias; exercise 5 builds
# generalised advantage estimation, which blends such estimates over all horizons with
# one parameter $\lambda$, as Spinning Up's VPG and most PPO implementations do. PPO
# (Schulman et al., [2017](https://arxiv.org/abs/1707.06347)) reuses each batch for
# several steps and clips the probability ratio in its loss, which discourages the
# policy from moving far from the one that played the batch; exercise 1 measured how far
# such moves go. DQN and its successors learn action values instead of a policy and can
# learn from old experience.
# [TorchRL](https://docs.pytorch.org/rl/stable/), PyTorch's own reinforcement-learning
# library, has loss modules for all of these (`ReinforceLoss`, `A2CLoss`,
# `ClipPPOLoss`, `DQNLoss`), environments, collectors and tutorials.
#
# **Next:** chapter 8 turns to performance: when a GPU, more data-loader workers or a
# learning-rate schedule pays, measured.
