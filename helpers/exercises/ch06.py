"""Checkers for chapter 06's exercises (generative models); see :mod:`helpers.exercises`.

Each checker runs the reader's code on fresh inputs from its own seeded generator,
against references written here from the formulas (log-densities written out, not
``torch.distributions``; the losses as softplus), and names the usual mistakes. The GAN
architecture (6.4) and the conditional VAE (6.5) have no single right output, so their
checkers probe what the exercise specifies; the draws from the conditional VAE's posterior
(6.5, :mod:`helpers.exercises.ch06_posterior`) are read back through a stub decoder.
Introduced in chapter 06.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from helpers.exercises import checker, expect, expect_tensor
from helpers.exercises.ch06_networks import conditional_vae_facts, conv_gan_facts, within
from helpers.exercises.ch06_posterior import check_posterior_samples

__all__ = [
    "check_conditional_vae",
    "check_generator_losses",
    "check_iwae_bound",
    "check_make_conv_gan",
    "check_mean_reconstruction_loss",
    "check_posterior_samples",
    "check_ratio_prediction",
    "check_vae_prediction",
]

PIXELS = 28 * 28


def _own_rng(check: Callable[..., str]) -> Callable[..., str]:
    """Run ``check`` on a forked CPU random state, so that the reader's session keeps its own."""

    @functools.wraps(check)
    def run(*args: object, **kwargs: object) -> str:
        with torch.random.fork_rng(devices=[]):
            return check(*args, **kwargs)

    return run


def _require_callable(value: object, name: str) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be a function (or class), got {type(value).__name__}")


class _TinyVAE(nn.Module):
    """The chapter's VAE interface on small random weights: encode, decode, forward."""

    def __init__(self, seed: int, latent_dim: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(PIXELS, 8), nn.Tanh())
        self.to_mu, self.to_logvar = nn.Linear(8, latent_dim), nn.Linear(8, latent_dim)
        self.decoder = nn.Linear(latent_dim, PIXELS)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # scales that make codes, variances and pixels vary
            for p, scale in zip(self.parameters(), (0.1, 0.5, 1.0, 0.5, 0.5, 0.5, 1.5, 1.0), strict=True):
                p.copy_(scale * torch.randn(p.shape, generator=g))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, 1, 28, 28)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)), mu, logvar


def _images(batch: int, g: torch.Generator) -> torch.Tensor:
    return torch.bernoulli(torch.full((batch, 1, 28, 28), 0.3), generator=g)


def _log_bernoulli(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits), summed over the pixels (the last three dimensions)."""
    return (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(dim=(-3, -2, -1))


def _log_normal(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(logvar)), summed over the last dimension."""
    return (-0.5 * ((z - mean) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))).sum(dim=-1)


def _log_mean_exp(values: torch.Tensor) -> torch.Tensor:
    top = values.max(dim=0).values
    return top + (values - top).exp().mean(dim=0).log()


@checker("6.1", "iwae_bound")
@_own_rng
def check_iwae_bound(iwae_bound: Callable[..., torch.Tensor]) -> str:
    """Exercise 6.1: ``iwae_bound(model, x, z)``, the K-sample bound per image, shape ``(B,)``."""
    _require_callable(iwae_bound, "iwae_bound")
    gaps = []
    for k, batch, seed in ((7, 5, 61), (12, 3, 62)):
        g = torch.Generator().manual_seed(seed)
        model, x = _TinyVAE(seed), _images(batch, g)
        with torch.no_grad():
            mu, logvar = model.encode(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(k, *mu.shape, generator=g)  # (K, B, D)
            log_px_z = _log_bernoulli(model.decode(z.flatten(0, 1)).view(k, batch, 1, 28, 28), x)
            log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))  # (K, B)
            log_qz = _log_normal(z, mu, logvar)  # (K, B)
            log_ratio = log_pz - log_qz
            got = iwae_bound(model, x, z)
        want = _log_mean_exp(log_px_z + log_ratio)  # (B,)
        expect(
            not (isinstance(got, torch.Tensor) and tuple(got.shape) == (k,)),
            f"the bound has shape ({k},), one number per code; expected ({batch},), one per image",
            "Average the weights over the K codes, dim 0 of z: torch.logsumexp(log_w, dim=0).",
        )
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=-1)
        gaps.append(
            expect_tensor(
                got,
                want,
                f"iwae_bound(model, x, z) with K = {k} codes for {batch} images",
                atol=1e-3,
                mistakes={
                    "You averaged the log-weights: that is the ELBO's estimate. The bound averages the "
                    "weights inside the log: torch.logsumexp(log_w, dim=0) - math.log(K).": (
                        log_px_z + log_ratio
                    ).mean(dim=0),
                    "Subtract log K: logsumexp adds the K weights, the bound needs their mean.": want
                    + math.log(k),
                    "The weight is p(x|z) p(z) / q(z|x): add log p(z) and subtract log q(z|x), each "
                    "summed over the latent dimensions.": _log_mean_exp(log_px_z),
                    "The weight needs log p(z), the standard normal prior's log-density of each code, "
                    "summed over the latent dimensions.": _log_mean_exp(log_px_z - log_qz),
                    "The weight needs - log q(z|x), the encoder's Gaussian log-density of each code, "
                    "summed over the latent dimensions.": _log_mean_exp(log_px_z + log_pz),
                    "Each code needs its own log p(z_k) - log q(z_k|x); subtracting the closed-form KL, "
                    "their average, gives a different (and not a valid) bound.": _log_mean_exp(log_px_z) - kl,
                    "Return the bound on log p(x) itself, a negative number; its negative is what "
                    "compares with negative_elbo.": -want,
                },
            )
        )
    return (
        f"matches an independent log-mean-exp of p(x|z) p(z) / q(z|x) {within(max(gaps))} "
        "nats on 2 random batches (K = 7 and 12)"
    )


@checker("6.2", "mean_reconstruction_loss")
@_own_rng
def check_mean_reconstruction_loss(mean_reconstruction_loss: Callable[..., torch.Tensor]) -> str:
    """Exercise 6.2: the batch loss with the reconstruction averaged over pixels, the KL summed."""
    _require_callable(mean_reconstruction_loss, "mean_reconstruction_loss")
    gaps = []
    for batch, seed in ((6, 71), (4, 72)):
        model, x = _TinyVAE(seed), _images(batch, torch.Generator().manual_seed(seed))
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the same eps for the reader's pass and the reference's
            got = mean_reconstruction_loss(model, x)
            torch.manual_seed(seed)
            logits, mu, logvar = model(x)
        reconstruction = -_log_bernoulli(logits, x).detach()  # (B,) summed over pixels
        kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).detach()  # (B, D)
        want = (reconstruction / PIXELS + kl.sum(dim=1)).mean()
        expect(isinstance(got, torch.Tensor), f"the loss should be a tensor, got {type(got).__name__}")
        expect(
            got.ndim != 1,
            f"the loss has shape {tuple(got.shape)}, one number per image; expected a scalar",
            "Average the per-image losses over the batch with .mean().",
        )
        gaps.append(
            expect_tensor(
                got,
                want,
                "the loss",
                mistakes={
                    "That is the chapter's correct loss, summed over the pixels. The exercise makes the "
                    "mistake on purpose: divide the reconstruction by 784 (the pixels), keep the KL "
                    "summed.": (reconstruction + kl.sum(dim=1)).mean(),
                    "Keep the KL summed over the latent dimensions; only the reconstruction is averaged, "
                    "over the pixels.": (reconstruction / PIXELS + kl.mean(dim=1)).mean(),
                    "Average over the batch, do not sum: a sum makes the loss (and the step) grow with "
                    "the batch size.": (reconstruction / PIXELS + kl.sum(dim=1)).sum(),
                },
            )
        )
        expect(got.grad_fn is not None, "the loss has no graph: backward() cannot train the model")
        (grad,) = torch.autograd.grad(got, model.to_mu.weight, allow_unused=True)
        expect(grad is not None and grad.abs().sum() > 0, "no gradient reaches the encoder's mean layer")
    return (
        f"matches reconstruction / 784 + summed KL, averaged over the batch, {within(max(gaps))} "
        "on 2 random batches, and its gradient reaches the encoder"
    )


# What exercise 6.2's training shows (the chapter asserts both): the KL term ends below
# 1 nat per image, and the negative ELBO near the independent-pixel model's.
COLLAPSED_KL = 1.0
# What the derivation bounds it by: the independent-pixel model's ~208.5 nats / 784 =
# 0.27 nats, accepted up to 0.35 (a bound of 274 nats, above any reading of section 6.4).
DERIVED_KL_BOUND = 0.35
NEAR_CHOICES = ("correct VAE", "independent pixels")


@checker("6.2", "predicted_kl and predicted_near")
def check_vae_prediction(predicted_kl: float, predicted_near: str) -> str:
    """Exercise 6.2's prediction, committed before training: the KL term per image in nats,
    and which negative ELBO the mistaken loss's will be near."""
    expect(
        isinstance(predicted_kl, (int, float)) and not isinstance(predicted_kl, bool),
        f"predicted_kl should be a number of nats, got {type(predicted_kl).__name__}",
    )
    expect(math.isfinite(predicted_kl), f"predicted_kl is {predicted_kl}, not a finite number")
    expect(
        predicted_kl >= 0,
        f"predicted_kl is {predicted_kl:g}: a KL divergence is never negative",
        "KL(q || p) >= 0, with 0 only when q(z|x) is the prior itself.",
    )
    expect(
        predicted_near in NEAR_CHOICES,
        f"predicted_near should be one of {NEAR_CHOICES}, got {predicted_near!r}",
    )
    # Nudges, not the derivation: far off, compare with a code that carries nothing; closer,
    # put a number on that code's mistaken loss.
    expect(
        predicted_kl < 5 * COLLAPSED_KL,
        f"your predicted KL, {predicted_kl:g} nats, is far too high",
        "That is the size of a correctly trained VAE's KL term. Which term does the mistake make "
        "heavier against the other, and how much could a model afford to spend on it?",
    )
    expect(
        predicted_kl < COLLAPSED_KL,
        f"your predicted KL, {predicted_kl:g} nats, is too high",
        "Some model sets an upper limit on the best model's mistaken loss, and you know its terms "
        "from section 6.4. Which model, and what is its mistaken loss?",
    )
    expect(
        predicted_kl <= DERIVED_KL_BOUND,
        f"your predicted KL, {predicted_kl:g} nats, is below 1 but still too high",
        "The right order of size. Now put an exact number on the limit: what is that model's "
        "mistaken loss per image, and why can the best model's KL term not exceed it?",
    )
    expect(
        predicted_near == "independent pixels",
        f"predicted_near is {predicted_near!r}: not where this mistake leaves the negative ELBO",
        "Your KL prediction says how much the code can tell the decoder about each image. What "
        "can a decoder do with a code that tells it that much?",
    )
    return (
        f"prediction committed: a KL term of {predicted_kl:g} nats, within the derived bound "
        "(about 0.27 nats), and a "
        "negative ELBO near the independent-pixel model's; the training below measures both"
    )


@checker("6.3", "generator_losses")
@_own_rng
def check_generator_losses(generator_losses: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> str:
    """Exercise 6.3: the saturating and non-saturating generator losses, one per logit."""
    _require_callable(generator_losses, "generator_losses")
    g = torch.Generator().manual_seed(63)
    logits = torch.cat([torch.tensor([-120.0, -30.0, -5.0, 0.0, 30.0]), 4 * torch.randn(11, generator=g)])
    ell = logits.clone().requires_grad_(True)
    got = generator_losses(ell)
    expect(
        isinstance(got, tuple) and len(got) == 2,
        f"generator_losses should return a pair (saturating, non_saturating), got {type(got).__name__}",
    )
    wide = logits.double()
    saturating, non_saturating = -F.softplus(wide), F.softplus(-wide)  # log(1 - σ), -log σ
    for value, name in zip(got, ("saturating", "non-saturating"), strict=True):
        expect(isinstance(value, torch.Tensor), f"the {name} loss should be a tensor")
        expect(
            value.shape == logits.shape,
            f"the {name} loss has shape {tuple(value.shape)}, expected {tuple(logits.shape)}",
            "Return one loss per logit (no .mean()), so that each logit's gradient can be read.",
        )
        bad = logits[~value.detach().isfinite()].tolist()
        expect(
            not bad,
            f"the {name} loss is not finite at l = {bad}",
            "log(sigmoid(l)) and log(1 - sigmoid(l)) round to log(0) far from 0 in float32: "
            "write them as F.logsigmoid(l) and F.logsigmoid(-l).",
        )
    swapped = "The two are swapped: return (saturating, non_saturating)."
    minimax = (
        "The minimax generator minimises log(1 - σ(l)), a loss that falls as the fakes "
        "fool D; -log(1 - σ(l)) is the discriminator's loss on fakes."
    )
    sign = "The non-saturating loss is -log σ(l), the cross-entropy against label 1 ('real')."
    label0 = (
        "-log(1 - σ(l)), the cross-entropy against label 0, is the discriminator's loss on fakes; "
        "the non-saturating generator loss uses label 1: -log σ(l)."
    )
    gap = expect_tensor(
        got[0],
        saturating.float(),
        "the saturating loss",
        mistakes={swapped: non_saturating, minimax: -saturating},
    )
    gap = max(
        gap,
        expect_tensor(
            got[1],
            non_saturating.float(),
            "the non-saturating loss",
            mistakes={swapped: saturating, sign: -non_saturating, label0: -saturating},
        ),
    )
    closed_forms = (-torch.sigmoid(logits), torch.sigmoid(logits) - 1)  # d/dl of each loss
    for value, want, name in zip(got, closed_forms, ("saturating", "non-saturating"), strict=True):
        expect(
            value.grad_fn is not None, f"the {name} loss has no graph: no gradient flows back to the logits"
        )
        (grad,) = torch.autograd.grad(value.sum(), ell, retain_graph=True)
        gap = max(gap, expect_tensor(grad, want, f"d({name} loss)/d logit", atol=1e-6))
    small, full = torch.sigmoid(torch.tensor(-5.0)).item(), 1 - torch.sigmoid(torch.tensor(-5.0)).item()
    return (
        f"both losses and their autograd gradients match the closed forms {within(gap)} on 16 logits "
        f"from -120 to 30; at l = -5 the gradients are -{small:.4f} and -{full:.4f}"
    )


@checker("6.3", "predicted_ratio")
@_own_rng
def check_ratio_prediction(
    predicted_ratio: Callable[[torch.Tensor], float], after_measuring: bool = False
) -> str:
    """Exercise 6.3's prediction, written before any gradient is measured: for a batch of
    logits, the mean size of the saturating loss's gradient over that of the non-saturating
    loss's, from the derived derivatives (sigmoid(l) and 1 - sigmoid(l)).

    Before the measurement (``after_measuring=False``) any finite number per batch is
    accepted: the prediction is only committed, so that no hint gives the answer away.
    With ``after_measuring=True`` it is judged, with a hint for each usual mistake.
    """
    _require_callable(predicted_ratio, "predicted_ratio")
    if not isinstance(after_measuring, bool):
        raise TypeError(f"after_measuring must be True or False, got {after_measuring!r}")
    g = torch.Generator().manual_seed(64)
    spread = -6 + 8 * torch.rand(64, generator=g)  # logits from -6 to +2
    far = -7 - 3 * torch.rand(64, generator=g)  # logits from -10 to -7
    for logits, label in ((spread, "logits from -6 to 2"), (far, "logits from -10 to -7")):
        got = predicted_ratio(logits.clone())
        got = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        expect(
            isinstance(got, (int, float)) and not isinstance(got, bool),
            f"predicted_ratio should return one number for the batch, got {type(got).__name__}",
            "One ratio for the whole batch: the mean of one gradient size over the mean of the other.",
        )
        expect(math.isfinite(got), f"on {label}: predicted {got}, not a finite number")
        if not after_measuring:
            continue
        m = torch.sigmoid(logits.double()).mean().item()
        want = m / (1 - m)
        mistakes = {
            "That is the mean of the per-logit ratios exp(l). The question is the ratio of the two "
            "mean sizes: average each gradient's size over the batch first, then divide.": (
                logits.double().exp().mean().item()
            ),
            "That is exp of the mean logit: the ratio at an average logit, not of the averages.": (
                math.exp(logits.double().mean().item())
            ),
            "The ratio is upside down: the saturating loss's gradient goes on top.": 1 / want,
        }
        if not math.isclose(got, want, rel_tol=1e-3):
            for hint, wrong in mistakes.items():
                expect(
                    not math.isclose(got, wrong, rel_tol=1e-3),
                    f"on {label}: predicted {got:.4g}, not the ratio of the mean sizes",
                    hint,
                )
            expect(False, f"on {label}: predicted {got:.4g}, not the ratio of the mean gradient sizes")
    if not after_measuring:
        return (
            "prediction committed on two batches of logits; measure, then judge it with "
            "check_ratio_prediction(predicted_ratio, after_measuring=True)"
        )
    return "the prediction matches the ratio of the mean gradient sizes to 0.1 % on both batches"


@checker("6.4", "make_conv_gan")
@_own_rng
def check_make_conv_gan(make_conv_gan: Callable[[int], tuple[nn.Module, nn.Module]]) -> str:
    """Exercise 6.4: ``make_conv_gan(noise_dim)`` returns a (generator, discriminator) pair that
    follows the shape plan (the channel counts are the reader's)."""
    _require_callable(make_conv_gan, "make_conv_gan")
    return conv_gan_facts(make_conv_gan)


@checker("6.5", "ConditionalVAE")
@_own_rng
def check_conditional_vae(conditional_vae: type[nn.Module]) -> str:
    """Exercise 6.5: ``ConditionalVAE(latent_dim, hidden)`` with ``encode(x, y)``, ``forward(x, y)``,
    ``decode(z, y)``."""
    _require_callable(conditional_vae, "ConditionalVAE")
    return conditional_vae_facts(conditional_vae)
