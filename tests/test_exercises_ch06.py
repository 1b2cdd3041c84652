"""Chapter 06's exercise checkers: right answers pass, the usual mistakes get their hints."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from exercise_cells import run_starter, starter_cells
from torch import nn

from helpers.exercises.ch06 import (
    check_conditional_vae,
    check_generator_losses,
    check_iwae_bound,
    check_make_conv_gan,
    check_mean_reconstruction_loss,
    check_posterior_samples,
    check_ratio_prediction,
    check_vae_prediction,
)
from helpers.exercises.ch06_networks import within

STARTERS = starter_cells("06")
NAMES = ["iwae_bound", "mean_reconstruction_loss", "generator_losses", "make_conv_gan", "ConditionalVAE"]


def test_the_chapter_has_one_starter_per_exercise_and_each_untouched_is_not_attempted():
    assert len(STARTERS) == len(NAMES)
    for k, (source, name) in enumerate(zip(STARTERS, NAMES, strict=True), start=1):
        out = run_starter(source, nn=nn, torch=torch)
        want = f"… Exercise 6.{k}: not attempted yet: fill in `{name}` above\n"
        if k == 2:  # the prediction comes first
            want = (
                "… Exercise 6.2: not attempted yet: fill in `predicted_kl and predicted_near` above\n" + want
            )
        if k == 3:  # the prediction comes first
            want = "… Exercise 6.3: not attempted yet: fill in `predicted_ratio` above\n" + want
        if k == 5:  # the draws from the posterior come second
            want += "… Exercise 6.5: not attempted yet: fill in `posterior_samples` above\n"
        assert out == want


def test_within_says_exactly_for_no_gap():
    assert within(0.0) == "exactly" and within(3e-7) == "to 3e-07"


def failed(verdict, hint: str | None = None, message: str | None = None) -> None:
    """``verdict`` failed, with a hint containing ``hint`` (or none) and a message with ``message``."""
    assert not verdict and verdict.status == "failed"
    if hint is None:
        assert verdict.hint is None, verdict.hint
    else:
        assert verdict.hint is not None and hint in verdict.hint, verdict
    assert message is None or message in verdict.message, verdict.message


@pytest.mark.parametrize(
    "check", [check_iwae_bound, check_mean_reconstruction_loss, check_generator_losses, check_make_conv_gan]
)
def test_an_argument_that_is_not_a_function_fails_with_a_message(check):
    failed(check(42), message="must be a function")


def test_the_checkers_leave_the_readers_random_state_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    check_make_conv_gan(conv_gan)
    check_conditional_vae(ConditionalVAE)
    assert torch.equal(torch.random.get_rng_state(), before)


# ---- 6.1 ----------------------------------------------------------------------------------


def iwae(model, x, z, *, mistake: str | None = None):
    """A right answer to exercise 6.1 (written with torch.distributions), or a usual mistake."""
    k, b = z.shape[:2]
    mu, logvar = model.encode(x)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    logits = model.decode(z.flatten(0, 1)).view(k, b, 1, 28, 28)
    log_px_z = -F.binary_cross_entropy_with_logits(logits, x.expand(k, -1, -1, -1, -1), reduction="none")
    log_px_z = log_px_z.sum(dim=(2, 3, 4))
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_w = log_px_z + log_pz - q.log_prob(z).sum(-1)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    return {
        None: torch.logsumexp(log_w, 0) - math.log(k),
        "elbo": log_w.mean(0),
        "no log K": torch.logsumexp(log_w, 0),
        "reconstruction only": torch.logsumexp(log_px_z, 0) - math.log(k),
        "no log p(z)": torch.logsumexp(log_px_z - q.log_prob(z).sum(-1), 0) - math.log(k),
        "no log q": torch.logsumexp(log_px_z + log_pz, 0) - math.log(k),
        "closed-form KL": torch.logsumexp(log_px_z, 0) - math.log(k) - kl,
        "negative": -(torch.logsumexp(log_w, 0) - math.log(k)),
        "wrong dim": torch.logsumexp(log_w, 1) - math.log(b),
        "mean over images": (torch.logsumexp(log_w, 0) - math.log(k)).mean(),
    }[mistake]


def test_iwae_right_answer_passes(capsys):
    assert check_iwae_bound(iwae)
    assert capsys.readouterr().out.startswith("✓ Exercise 6.1: matches an independent log-mean-exp")


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("elbo", "that is the ELBO's estimate"),
        ("no log K", "Subtract log K"),
        ("reconstruction only", "add log p(z) and subtract log q(z|x)"),
        ("no log p(z)", "needs log p(z), the standard normal prior's"),
        ("no log q", "needs - log q(z|x), the encoder's"),
        ("closed-form KL", "closed-form KL"),
        ("negative", "Return the bound on log p(x) itself"),
        ("wrong dim", "over the K codes, dim 0 of z"),
    ],
)
def test_iwae_usual_mistakes_get_their_hints(mistake, hint):
    failed(check_iwae_bound(lambda m, x, z: iwae(m, x, z, mistake=mistake)), hint)


def test_iwae_other_wrong_answers_fail_without_a_hint():
    failed(check_iwae_bound(lambda m, x, z: iwae(m, x, z, mistake="mean over images")), None, "shape ()")
    failed(check_iwae_bound(lambda m, x, z: iwae(m, x, z) + 0.5), None, "entries differ")


def test_iwae_untouched_starter_is_not_attempted():
    def skeleton(model, x, z):
        raise NotImplementedError

    assert check_iwae_bound(skeleton).status == "not attempted"


# ---- 6.2 ----------------------------------------------------------------------------------


def mean_loss(model, x, *, mistake: str | None = None):
    """A right answer to exercise 6.2 (BCE's own mean over the pixels), or a usual mistake."""
    logits, mu, logvar = model(x)
    per_pixel = F.binary_cross_entropy_with_logits(logits, x)  # mean over batch and pixels
    summed = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=(1, 2, 3))
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)
    return {
        None: per_pixel + kl.sum(1).mean(),
        "summed": (summed + kl.sum(1)).mean(),
        "both averaged": (summed / 784 + kl.mean(1)).mean(),
        "batch sum": (summed / 784 + kl.sum(1)).sum(),
        "per image": summed / 784 + kl.sum(1),
        "detached": (per_pixel + kl.sum(1).mean()).detach(),
        "decoder only": per_pixel + kl.sum(1).mean().detach() + 0 * mu.detach().sum(),
        "number": (per_pixel + kl.sum(1).mean()).item(),
    }[mistake]


def test_mean_loss_right_answer_passes(capsys):
    assert check_mean_reconstruction_loss(mean_loss)
    assert "averaged over the batch, to 1e-06 on 2 random batches" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("summed", "That is the chapter's correct loss"),
        ("both averaged", "Keep the KL summed"),
        ("batch sum", "Average over the batch, do not sum"),
        ("per image", "Average the per-image losses over the batch"),
    ],
)
def test_mean_loss_usual_mistakes_get_their_hints(mistake, hint):
    failed(check_mean_reconstruction_loss(lambda m, x: mean_loss(m, x, mistake=mistake)), hint)


def test_mean_loss_without_a_graph_or_off_by_a_constant_fails():
    failed(check_mean_reconstruction_loss(lambda m, x: mean_loss(m, x, mistake="number")), None, "a tensor")
    failed(check_mean_reconstruction_loss(lambda m, x: mean_loss(m, x, mistake="detached")), None, "no graph")
    failed(check_mean_reconstruction_loss(lambda m, x: mean_loss(m, x) + 1), None, "entries differ")


def test_mean_loss_whose_gradient_misses_the_encoder_fails():
    def decoder_only(model, x):
        # the right value, but only the decoder's bias is in the graph
        return mean_loss(model, x).detach() + 0 * model.decoder.bias.sum()

    failed(check_mean_reconstruction_loss(decoder_only), None, "no gradient reaches the encoder")


def test_collapse_prediction_right_answers_pass(capsys):
    assert check_vae_prediction(0.27, "independent pixels")
    assert check_vae_prediction(0, "independent pixels")
    assert check_vae_prediction(0.35, "independent pixels")
    assert "a KL term of 0.27 nats, within the derived bound" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kl", "near", "hint", "message"),
    [
        (25.0, "correct VAE", "Which term does the mistake make heavier", "far too high"),
        (-1.0, "independent pixels", "KL(q || p) >= 0", "never negative"),
        (0.1, "correct VAE", "What can a decoder do with a code", "not where this mistake leaves"),
        (2.0, "independent pixels", "Some model sets an upper limit", "is too high"),
        (0.9, "independent pixels", "put an exact number on the limit", "below 1 but still too high"),
        (0.5, "independent pixels", "put an exact number on the limit", "below 1 but still too high"),
        (0.36, "independent pixels", "put an exact number on the limit", "below 1 but still too high"),
        (0.1, "VAE", None, "predicted_near should be one of"),
        ("0.1", "independent pixels", None, "should be a number"),
        (True, "independent pixels", None, "should be a number"),
        (math.nan, "independent pixels", None, "not a finite number"),
    ],
)
def test_collapse_prediction_wrong_answers_fail(kl, near, hint, message):
    verdict = check_vae_prediction(kl, near)
    failed(verdict, hint, message)
    assert "1 nat" not in verdict.message and "independent-pixel model" not in verdict.message


def test_collapse_prediction_hints_nudge_without_giving_the_answer():
    hints = [check_vae_prediction(kl, "independent pixels").hint for kl in (25.0, 2.0, 0.5)]
    hints.append(check_vae_prediction(0.1, "correct VAE").hint)
    for hint in hints:
        assert hint is not None
        # neither the numbers of the derivation nor the model it leads to
        assert not any(
            word in hint for word in ("0.27", "210", "784", "independent", "prior", "carries nothing")
        )


def test_collapse_prediction_untouched_starter_is_not_attempted():
    assert check_vae_prediction(..., ...).status == "not attempted"
    assert check_vae_prediction(0.2, ...).status == "not attempted"


# ---- 6.3 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("losses", "hint"),
    [
        (lambda t: (F.logsigmoid(-t), -F.logsigmoid(t)), "pass"),
        (lambda t: (torch.log(1 - torch.sigmoid(t)), -torch.log(torch.sigmoid(t))), "F.logsigmoid"),
        (lambda t: (-F.logsigmoid(t), F.logsigmoid(-t)), "swapped"),
        (lambda t: (F.softplus(t), -F.logsigmoid(t)), "the discriminator's loss on fakes"),
        (lambda t: (F.logsigmoid(-t), F.logsigmoid(t)), "cross-entropy against label 1"),
        (
            lambda t: (F.logsigmoid(-t), F.binary_cross_entropy_with_logits(t, 0 * t, reduction="none")),
            "against label 0",
        ),
        (lambda t: (F.logsigmoid(-t).mean(), -F.logsigmoid(t).mean()), "no .mean()"),
    ],
)
def test_generator_losses_right_answer_and_usual_mistakes(losses, hint, capsys):
    verdict = check_generator_losses(losses)
    if hint == "pass":
        assert verdict and "gradients are -0.0067 and -0.9933" in capsys.readouterr().out
    else:
        failed(verdict, hint)


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        (lambda t: F.logsigmoid(-t), "should return a pair"),
        (lambda t: ([0.0], -F.logsigmoid(t)), "should be a tensor"),
        (lambda t: (F.logsigmoid(-t) + 0.1, -F.logsigmoid(t)), "entries differ"),
        (lambda t: (F.logsigmoid(-t).detach(), -F.logsigmoid(t)), "no gradient flows"),
        (lambda t: (F.logsigmoid(-t), -F.logsigmoid(t) + (t - t.detach()) ** 3), "pass"),
    ],
)
def test_generator_losses_other_wrong_answers_fail(losses, message):
    verdict = check_generator_losses(losses)
    if message == "pass":  # a term with zero value and zero gradient changes nothing
        assert verdict
    else:
        failed(verdict, None, message)


def test_generator_losses_with_a_wrong_gradient_fail():
    class Doubled(torch.autograd.Function):
        """The right value with twice its gradient."""

        @staticmethod
        def forward(ctx, value):
            return value.clone()

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    failed(
        check_generator_losses(lambda t: (F.logsigmoid(-Doubled.apply(t)), -F.logsigmoid(t))),
        None,
        "d(saturating loss)/d logit",
    )


# ---- 6.4 ----------------------------------------------------------------------------------


def conv_gan(noise_dim, *, mistake: str | None = None, channels: int = 32):
    """A right answer to exercise 6.4 (a module class, not nn.Sequential), or a usual mistake.

    ``channels`` is the reader's choice: the checker must accept any.
    """
    c, half = channels, channels // 2

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(noise_dim, c * 7 * 7)  # a bias per position: the norm keeps it
            self.bn1, self.bn2 = nn.BatchNorm2d(c), nn.BatchNorm2d(half)
            kernel, pad = (3, 1) if mistake == "kernel 3" else (4, 1)
            self.up1 = nn.ConvTranspose2d(c, half, kernel, 2, pad, bias=mistake == "bias")
            self.up2 = nn.ConvTranspose2d(half, 1, kernel, 2, pad)

        def forward(self, z):
            h = self.fc(z).detach() if mistake == "detach" else self.fc(z)
            h = F.relu(self.bn1(h.view(-1, c, 7, 7)))
            out = self.up2(F.relu(self.bn2(self.up1(h))))
            if mistake == "flat":
                out = out.flatten(1)
            return out if mistake == "no tanh" else torch.tanh(out)

    head = {
        "conv head": [nn.Conv2d(c, 1, 7)],
        "sigmoid": [nn.Flatten(), nn.Linear(c * 7 * 7, 1), nn.Sigmoid()],
    }.get(mistake, [nn.Flatten(), nn.Linear(c * 7 * 7, 1)])
    discriminator = nn.Sequential(
        nn.Conv2d(1, half, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(half, c, 4, 2, 1, bias=mistake == "bias D"),
        nn.BatchNorm2d(c),
        nn.LeakyReLU(0.2),
        *head,
    )
    return Generator(), discriminator


@pytest.mark.parametrize("channels", [32, 8, 64])
def test_conv_gan_right_answers_pass_whatever_the_channels(channels, capsys):
    assert check_make_conv_gan(lambda n: conv_gan(n, channels=channels))
    out = capsys.readouterr().out
    assert "(6, 1, 28, 28) images in [-1, 1]" in out and "no bias before a batch norm" in out


def test_conv_gan_reports_the_parameter_counts(capsys):
    assert check_make_conv_gan(conv_gan)
    assert "(28,929 and 10,097 parameters)" in capsys.readouterr().out


def linear_bn1d_generator(noise_dim, *, bias: bool):
    """A generator that starts Linear -> BatchNorm1d -> reshape (its bias would be cancelled)."""
    return nn.Sequential(
        nn.Linear(noise_dim, 8 * 7 * 7, bias=bias),
        nn.BatchNorm1d(8 * 7 * 7),
        nn.ReLU(),
        nn.Unflatten(1, (8, 7, 7)),
        nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 1, 4, 2, 1),
        nn.Tanh(),
    )


def test_conv_gan_linear_into_batchnorm1d_must_have_no_bias():
    assert check_make_conv_gan(lambda n: (linear_bn1d_generator(n, bias=False), conv_gan(n)[1]))
    failed(
        check_make_conv_gan(lambda n: (linear_bn1d_generator(n, bias=True), conv_gan(n)[1])),
        "Use bias=False there",
        "the generator's Linear right before a batch norm has a bias (392 numbers)",
    )


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("kernel 3", "each layer doubles the size, 7 → 14 → 28"),
        ("flat", "Reshape the Linear layer's output"),
        ("no tanh", "End the generator with nn.Tanh()"),
        ("conv head", "End with nn.Flatten() and nn.Linear(C * 7 * 7, 1)"),
        ("sigmoid", "BCEWithLogitsLoss applies the sigmoid"),
        ("bias", "Use bias=False there"),
        ("bias D", "Use bias=False there"),
    ],
)
def test_conv_gan_usual_mistakes_get_their_hints(mistake, hint):
    failed(check_make_conv_gan(lambda n: conv_gan(n, mistake=mistake)), hint)


def generator_norms(noise_dim, *, first: bool, output: bool):
    """The right generator's layers with its first norm kept or dropped, and a norm on the output."""
    return nn.Sequential(
        nn.Linear(noise_dim, 8 * 7 * 7),
        nn.Unflatten(1, (8, 7, 7)),
        *([nn.BatchNorm2d(8)] if first else []),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 1, 4, 2, 1, bias=not output),
        *([nn.BatchNorm2d(1)] if output else []),
        nn.Tanh(),
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda n: (generator_norms(n, first=False, output=False), conv_gan(n)[1]),
            "the generator's Linear (weight layer 1 of 3) has no batch norm",
        ),
        (
            lambda n: (generator_norms(n, first=True, output=True), conv_gan(n)[1]),
            "the generator's ConvTranspose2d (weight layer 3 of 3) is followed by a batch norm",
        ),
        (
            lambda n: (
                conv_gan(n)[0],
                discriminator_with((1, nn.Sequential(nn.BatchNorm2d(16), nn.LeakyReLU(0.2)))),
            ),
            "the discriminator's Conv2d (weight layer 1 of 3) is followed by a batch norm",
        ),
    ],
)
def test_conv_gan_batch_norms_must_follow_the_plan(make, message):
    failed(check_make_conv_gan(make), "DCGAN puts a batch norm after every generator layer", message)


def test_conv_gan_bias_message_names_the_layer():
    failed(
        check_make_conv_gan(lambda n: conv_gan(n, mistake="bias D")),
        "Use bias=False there",
        "the discriminator's Conv2d right before a batch norm has a bias (32 numbers)",
    )


class Unregistered(nn.Module):
    """The right generator kept in a plain list: none of its parameters is registered."""

    def __init__(self, noise_dim):
        super().__init__()
        self.parts = [conv_gan(noise_dim)[0]]

    def forward(self, z):
        return self.parts[0](z)


def discriminator_with(*changes):
    """The right discriminator with layers replaced: (index, new layer) pairs."""
    layers = list(conv_gan(12)[1])
    for index, layer in changes:
        layers[index] = layer
    return nn.Sequential(*layers)


def one_upsampling_generator(noise_dim):
    """14 × 14 maps and one ConvTranspose2d: the right size, but not the plan."""
    return nn.Sequential(
        nn.Linear(noise_dim, 8 * 14 * 14),
        nn.Unflatten(1, (8, 14, 14)),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 1, 4, 2, 1),
        nn.Tanh(),
    )


@pytest.mark.parametrize(
    ("make", "hint", "message"),
    [
        (lambda n: conv_gan(n)[0], None, "should return (generator, discriminator)"),
        (lambda n: (Unregistered(n), conv_gan(n)[1]), "not registered", "0 ConvTranspose2d"),
        (lambda n: (one_upsampling_generator(n), conv_gan(n)[1]), None, "1 ConvTranspose2d layers"),
        (
            lambda n: (conv_gan(n)[0], discriminator_with((3, nn.Identity()))),
            "DCGAN puts a batch norm",
            "the discriminator has no batch-norm layer",
        ),
        (lambda n: (conv_gan(n)[0], discriminator_with((6, nn.Linear(32 * 7 * 7, 2)))), "End with", "(6, 2)"),
        (lambda n: conv_gan(n, mistake="detach"), None, "no gradient reaches the generator's fc.weight"),
        (lambda n: conv_gan(32), None, "mat1 and mat2 shapes cannot be multiplied"),
    ],
)
def test_conv_gan_other_wrong_answers_fail(make, hint, message):
    failed(check_make_conv_gan(make), hint, message)


# ---- 6.5 ----------------------------------------------------------------------------------


class ConditionalVAE(nn.Module):
    """A right answer to exercise 6.5 (one-hot labels by indexing an identity), with mistakes."""

    mistake: str | None = None

    def __init__(self, latent_dim=16, hidden=256):
        super().__init__()
        label_size = 1 if self.mistake == "one number" else 10
        self.encoder = nn.Linear(784 + label_size, hidden)
        self.to_mu, self.to_logvar = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + label_size, hidden), nn.ReLU(), nn.Linear(hidden, 784)
        )

    def label(self, y, used=True):
        if self.mistake == "one number":
            return y[:, None].float()
        if self.mistake == "one_hot width":
            return F.one_hot(y).float()  # max(y) + 1 columns
        code = torch.eye(10)[y]
        return code if used else torch.zeros_like(code)

    def decode(self, z, y):
        out = self.decoder(torch.cat([z, self.label(y, self.mistake != "decoder ignores")], 1))
        return (
            torch.sigmoid(out).view(-1, 1, 28, 28) if self.mistake == "sigmoid" else out.view(-1, 1, 28, 28)
        )

    def encode(self, x, y):
        xy = torch.cat([x.flatten(1), self.label(y, self.mistake != "encoder ignores")], 1)
        h = torch.relu(self.encoder(xy))
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        return (mu, logvar.exp()) if self.mistake == "encode variance" else (mu, logvar)

    def forward(self, x, y):
        xy = torch.cat([x.flatten(1), self.label(y, self.mistake != "encoder ignores")], 1)
        h = torch.relu(self.encoder(xy))
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        std = torch.exp(0.5 * logvar)
        draw = {  # each draws its noise only when called, as the first draw of forward()
            "exp(logvar)": lambda: mu + torch.exp(logvar) * torch.randn_like(mu),
            "logvar": lambda: mu + logvar * torch.randn_like(mu),
            "no noise": lambda: mu,
            ".sample()": lambda: torch.distributions.Normal(mu, std).sample(),
            "torch.normal": lambda: torch.normal(mu, std),
            "rsample": lambda: torch.distributions.Normal(mu, std).rsample(),
            "one eps": lambda: mu + std * torch.randn(mu.shape[1]),
        }
        z = draw.get(self.mistake, lambda: mu + std * torch.randn_like(mu))()
        if self.mistake == "inline decoder":
            return self.decoder(torch.cat([z, self.label(y)], 1)).view(-1, 1, 28, 28), mu, logvar
        return self.decode(z, y), mu, logvar


def with_mistake(mistake):
    return type("Attempt", (ConditionalVAE,), {"mistake": mistake})


@pytest.mark.parametrize("variant", [None, "rsample", "inline decoder"])
def test_conditional_vae_right_answers_pass(variant, capsys):
    assert check_conditional_vae(with_mistake(variant))
    assert "z = μ + σ·ε exactly" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("one number", "F.one_hot(y, 10).float()"),
        ("one_hot width", "without num_classes the width is max(y) + 1"),
        ("decoder ignores", "Concatenate the one-hot label to the code"),
        ("encoder ignores", "The encoder sees the label too"),
        ("exp(logvar)", "σ = exp(0.5 · logvar)"),
        ("logvar", "not by the log-variance itself"),
        ("no noise", "z has no noise"),
        (".sample()", ".sample() and torch.normal(mu, std) pass no gradient"),
        ("torch.normal", ".sample() and torch.normal(mu, std) pass no gradient"),
        ("sigmoid", "Return logits (no sigmoid)"),
        ("encode variance", "Let forward call self.encode(x, y)"),
    ],
)
def test_conditional_vae_usual_mistakes_get_their_hints(mistake, hint):
    failed(check_conditional_vae(with_mistake(mistake)), hint)


def test_conditional_vae_without_encode_gets_its_hint():
    class NoEncode(ConditionalVAE):
        encode = None

    failed(check_conditional_vae(NoEncode), "Give it encode(x, y) -> (mu, logvar)")


def test_conditional_vae_inline_decoder_mistakes_are_caught_through_the_logits():
    class Inline(ConditionalVAE):
        def forward(self, x, y):
            xy = torch.cat([x.flatten(1), self.label(y)], 1)
            h = torch.relu(self.encoder(xy))
            mu, logvar = self.to_mu(h), self.to_logvar(h)
            z = mu + torch.exp(logvar) * torch.randn_like(mu)
            return self.decoder(torch.cat([z, self.label(y)], 1)).view(-1, 1, 28, 28), mu, logvar

    failed(check_conditional_vae(Inline), "σ = exp(0.5 · logvar)")


class Pair(ConditionalVAE):
    def forward(self, x, y):
        return super().forward(x, y)[:2]


class Flat(ConditionalVAE):
    def forward(self, x, y):
        logits, mu, logvar = super().forward(x, y)
        return logits.flatten(1), mu, logvar


class NotAModule:
    def __init__(self, latent_dim, hidden):
        pass


class Keywords(ConditionalVAE):
    """Right, with decode called by keyword."""

    def forward(self, x, y):
        xy = torch.cat([x.flatten(1), self.label(y)], 1)
        h = torch.relu(self.encoder(xy))
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        return self.decode(z=mu + torch.exp(0.5 * logvar) * torch.randn_like(mu), y=y), mu, logvar


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        (with_mistake("one eps"), "entries differ"),
        (Pair, "should return (logits, mu, logvar)"),
        (Flat, "logits has shape (6, 784)"),
        (NotAModule, "should be an nn.Module"),
        (type("Listy", (Pair,), {"forward": lambda self, x, y: ([0.0], 0, 0)}), "logits should be a tensor"),
    ],
)
def test_conditional_vae_other_wrong_answers_fail(attempt, message):
    failed(check_conditional_vae(attempt), None, message)


class Broken(ConditionalVAE):
    """Raises a RuntimeError whatever the labels."""

    def forward(self, x, y):
        raise RuntimeError("broken for every batch")


def test_conditional_vae_error_for_every_label_set_is_reported_without_a_hint():
    failed(check_conditional_vae(Broken), None, "raised RuntimeError: broken for every batch")


def test_conditional_vae_decode_called_by_keyword_passes():
    assert check_conditional_vae(Keywords)


def test_conditional_vae_untouched_starter_is_not_attempted():
    namespace = {"nn": nn, "torch": torch}
    source = STARTERS[4].split("from helpers.exercises")[0]
    exec(source, namespace)
    assert check_conditional_vae(namespace["ConditionalVAE"]).status == "not attempted"


# ---- 6.5, second part: draws from q(z | x, y) ----------------------------------------------


def posterior(model, x, y, n, *, mistake: str | None = None):
    """A right answer to the second part of exercise 6.5, or a usual mistake."""
    _, mu, logvar = model(x, y)  # (B, latent) each
    std = torch.exp(0.5 * logvar)
    draws = {  # each draws its noise only when called
        "mu only": lambda: mu.expand(n, -1, -1),
        "one draw": lambda: (mu + std * torch.randn_like(mu)).expand(n, -1, -1),
        "one eps per draw": lambda: mu + std * torch.randn(n, 1, mu.shape[1]),
        "exp(logvar)": lambda: mu + torch.exp(logvar) * torch.randn(n, *mu.shape),
        "logvar": lambda: mu + logvar * torch.randn(n, *mu.shape),
        "prior": lambda: torch.randn(n, *mu.shape),
        "distributions": lambda: torch.distributions.Normal(mu, std).sample((n,)),
    }
    z = draws.get(mistake, lambda: mu + std * torch.randn(n, *mu.shape))()  # (n, B, latent)
    labels = y.expand(n, -1)
    if mistake == "labels out of order":
        labels = y.repeat_interleave(n).view(n, -1)
    logits = model.decode(z.flatten(0, 1), labels.flatten())
    if mistake == "logits":
        return logits.view(n, *x.shape)
    probs = torch.sigmoid(logits)
    if mistake == "images first":
        return probs.view(n, *x.shape).transpose(0, 1)
    if mistake == "flat":
        return probs
    return probs.view(n, *x.shape)


def posterior_by_forward(model, x, y, n):
    """Right too: forward(x, y) already decodes one draw from q(z | x, y)."""
    return torch.stack([torch.sigmoid(model(x, y)[0]) for _ in range(n)])


@pytest.mark.parametrize(
    "attempt", [posterior, posterior_by_forward, partial(posterior, mistake="distributions")]
)
def test_posterior_samples_right_answers_pass(attempt, capsys):
    assert check_posterior_samples(attempt)
    assert "centred on μ" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("mu only", "You decoded μ only"),
        ("one draw", "fresh ε for each of the n draws"),
        ("one eps per draw", "for every image as well"),
        ("exp(logvar)", "exp(logvar) is the variance"),
        ("logvar", "not by the log-variance itself"),
        ("prior", "draws from the prior"),
        ("labels out of order", "repeat the labels exactly as you repeat the codes"),
        ("logits", "torch.sigmoid of the decoder's logits"),
        ("images first", "Put the draws first"),
        ("flat", "one leading dimension for the n draws"),
    ],
)
def test_posterior_samples_usual_mistakes_get_their_hints(mistake, hint):
    failed(check_posterior_samples(partial(posterior, mistake=mistake)), hint)


def test_posterior_samples_other_wrong_answers_fail():
    failed(check_posterior_samples(lambda model, x, y, n: [0.5]), None, "should return a tensor")
    failed(check_posterior_samples(42), message="must be a function")


def test_posterior_samples_leaves_the_readers_random_state_alone_and_repeats():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = check_posterior_samples(posterior)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert first.message == check_posterior_samples(posterior).message


def test_posterior_samples_untouched_starter_is_not_attempted():
    namespace = {"nn": nn, "torch": torch}
    exec(STARTERS[4].split("from helpers.exercises")[0], namespace)
    source = STARTERS[4].split("check_conditional_vae(ConditionalVAE)")[1].split("from helpers.exercises")[0]
    exec(source, namespace)
    assert check_posterior_samples(namespace["posterior_samples"]).status == "not attempted"


def _ratio_of_means(t):
    m = torch.sigmoid(t).mean().item()
    return m / (1 - m)


@pytest.mark.parametrize(
    ("prediction", "hint"),
    [
        (_ratio_of_means, "pass"),
        (lambda t: torch.tensor(_ratio_of_means(t)), "pass"),
        (lambda t: t.exp().mean().item(), "mean of the per-logit ratios"),
        (lambda t: math.exp(t.mean().item()), "exp of the mean logit"),
        (lambda t: 1 / _ratio_of_means(t), "upside down"),
        (lambda t: t.exp(), "One ratio for the whole batch"),
    ],
)
def test_ratio_prediction_after_measuring_right_answer_and_usual_mistakes(prediction, hint, capsys):
    verdict = check_ratio_prediction(prediction, after_measuring=True)
    if hint == "pass":
        assert verdict and "matches the ratio of the mean gradient sizes" in capsys.readouterr().out
    else:
        failed(verdict, hint)


def test_ratio_prediction_after_measuring_other_wrong_answers_fail_without_a_hint():
    judge = partial(check_ratio_prediction, after_measuring=True)
    failed(judge(lambda t: 0.5), None, "not the ratio of the mean gradient sizes")
    failed(judge(lambda t: torch.sigmoid(t).mean().item()), None, "not the ratio")


@pytest.mark.parametrize(
    "prediction",
    [
        _ratio_of_means,
        lambda t: t.exp().mean().item(),
        lambda t: math.exp(t.mean().item()),
        lambda t: 1 / _ratio_of_means(t),
        lambda t: 0.5,
    ],
)
def test_ratio_prediction_before_measuring_commits_any_finite_number_without_a_hint(prediction, capsys):
    verdict = check_ratio_prediction(prediction)
    out = capsys.readouterr().out
    assert verdict and "prediction committed" in out
    assert "per-logit" not in out and "upside down" not in out


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        (lambda t: t.exp(), "should return one number"),
        (lambda t: True, "should return one number"),
        (lambda t: float("nan"), "not a finite number"),
        (lambda t: math.inf, "not a finite number"),
    ],
)
def test_ratio_prediction_before_measuring_still_needs_one_finite_number(prediction, message):
    failed(check_ratio_prediction(prediction), None if "finite" in message else "One ratio", message)


def test_ratio_prediction_after_measuring_must_be_a_bool():
    verdict = check_ratio_prediction(_ratio_of_means, after_measuring="yes")
    failed(verdict, None, "TypeError")


def test_ratio_prediction_untouched_starter_is_not_attempted():
    def untouched(t):
        raise NotImplementedError

    assert check_ratio_prediction(untouched).status == "not attempted"
