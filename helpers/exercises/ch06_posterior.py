"""Checker for the second part of chapter 06's exercise 6.5: draws from q(z | x, y), decoded.

``posterior_samples(model, x, y, n)`` must draw ``n`` codes per image from the conditional
VAE's Gaussian ``q(z | x, y)`` (mean ``mu``, log-variance ``logvar``, as ``model(x, y)``
returns them), decode each with its image's own label and return pixel probabilities of
shape ``(n, B, 1, 28, 28)``. The checker hands it a stub model whose decoder writes the
code and the label into the first pixels' logits, so the draws can be read back from any
output, however the reader batched the calls to ``decode``, and tested: centred on ``mu``,
spread by ``exp(0.5 * logvar)``, fresh noise for every draw and image.
Re-exported by :mod:`helpers.exercises.ch06`; introduced in chapter 06.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from helpers.exercises import checker, expect

__all__ = ["check_posterior_samples"]

_LATENT, _IMAGES, _DRAWS = 3, 6, 400
# the encoder's outputs for the six test images: |logvar| of 1 or more, so that sigma,
# sigma squared and the log-variance itself differ by far more than sampling noise
_MU = torch.tensor(
    [
        [-1.5, 0.0, 1.0],
        [0.5, -1.0, 1.5],
        [1.2, 0.8, -0.6],
        [0.0, 1.5, -1.2],
        [-0.8, -0.3, 0.4],
        [1.0, -1.4, 0.2],
    ]
)
_LOGVAR = torch.tensor(
    [
        [1.0, -1.2, 1.1],
        [-1.0, 1.2, -1.1],
        [1.1, 1.0, -1.2],
        [-1.1, -1.0, 1.2],
        [1.2, -1.1, -1.0],
        [-1.2, 1.1, 1.0],
    ]
)
_LABELS = torch.tensor([3, 7, 0, 9, 3, 5])


class _StubConditionalVAE(nn.Module):
    """``encode(x, y) -> (mu, logvar)``, ``forward(x, y) -> (logits, mu, logvar)`` and
    ``decode(z, y) -> logits`` of the exercise.

    The encoder reads ``mu`` and ``logvar`` from the first six pixels of ``x``; the decoder
    writes the code into the first three logits and the label into the fourth.
    """

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not (isinstance(z, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise TypeError("decode(z, y) takes two tensors")
        if z.ndim != 2 or z.shape[1] != _LATENT or y.shape != (len(z),):
            raise ValueError(
                f"decode(z, y) takes (N, latent_dim) codes and (N,) labels, got shapes "
                f"{tuple(z.shape)} and {tuple(y.shape)}"
            )
        logits = torch.zeros(len(z), 28 * 28, dtype=z.dtype, device=z.device)
        logits[:, :_LATENT] = z
        logits[:, _LATENT] = (y.to(z.dtype) - 4.5) / 2  # the label, in a mild logit
        return logits.view(-1, 1, 28, 28)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(1)
        return flat[:, :_LATENT], flat[:, _LATENT : 2 * _LATENT]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, y)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decode(z, y), mu, logvar


def _inputs() -> torch.Tensor:
    x = torch.zeros(_IMAGES, 1, 28, 28)
    x.view(_IMAGES, -1)[:, : 2 * _LATENT] = torch.cat([_MU, _LOGVAR], dim=1)
    return x


def _ratio_hint(ratio: torch.Tensor, sigma: torch.Tensor) -> str | None:
    """A hint when the spread of the draws matches a usual wrong scale of the noise."""
    if ((ratio - sigma).abs() < 0.25 * sigma).all():
        return "σ = exp(0.5 · logvar): exp(logvar) is the variance, not the standard deviation."
    if ((ratio - _LOGVAR.abs() / sigma).abs() < 0.25 * _LOGVAR.abs() / sigma).all():
        return "Scale ε by σ = exp(0.5 · logvar), not by the log-variance itself."
    return None


@checker("6.5", "posterior_samples")
def check_posterior_samples(posterior_samples: Callable[..., torch.Tensor]) -> str:
    """Exercise 6.5, second part: ``posterior_samples(model, x, y, n)`` returns ``(n, B, 1, 28, 28)``
    pixel probabilities of ``n`` codes drawn from ``q(z | x, y)`` per image, each decoded with
    its image's label."""
    if not callable(posterior_samples):
        raise TypeError(f"posterior_samples must be a function, got {type(posterior_samples).__name__}")
    with torch.random.fork_rng(devices=[]):  # the reader's random state is left alone
        torch.manual_seed(65)
        got = posterior_samples(_StubConditionalVAE(), _inputs(), _LABELS.clone(), _DRAWS)
    expect(
        isinstance(got, torch.Tensor), f"posterior_samples should return a tensor, got {type(got).__name__}"
    )
    want_shape = (_DRAWS, _IMAGES, 1, 28, 28)
    hint = None
    if tuple(got.shape) == (_IMAGES, _DRAWS, 1, 28, 28):
        hint = "Put the draws first: (n, B, 1, 28, 28), draw k of image b at [k, b]."
    elif got.numel() == _DRAWS * _IMAGES * 28 * 28:
        hint = "View the decoded batch as (n, B, 1, 28, 28): one leading dimension for the n draws."
    expect(
        tuple(got.shape) == want_shape,
        f"for n = {_DRAWS} draws of {_IMAGES} images the result has shape {tuple(got.shape)}, "
        f"not {want_shape}",
        hint,
    )
    got = got.detach().cpu().double()
    expect(
        bool(((got >= 0) & (got <= 1)).all()),
        f"the result has values from {got.min():.3g} to {got.max():.3g}: not pixel probabilities",
        "Return probabilities: torch.sigmoid of the decoder's logits, as the chapter's figures show them.",
    )
    logits = torch.logit(got.flatten(2)[..., : _LATENT + 1])  # (n, B, 4): the codes and the label
    z, labels = logits[..., :_LATENT], (logits[..., _LATENT] * 2 + 4.5).round().long()
    wrong = (labels != _LABELS).nonzero()
    if len(wrong):
        k, b = wrong[0].tolist()
        expect(
            False,
            f"draw {k} of image {b} was decoded with the label {labels[k, b].item()}, not the image's "
            f"own {_LABELS[b].item()}",
            "Decode every draw of image b with y[b]: repeat the labels exactly as you repeat the codes, "
            "and view the result in the same order.",
        )
    sigma = torch.exp(0.5 * _LOGVAR).double()
    mu = _MU.double()
    if (z - z[0]).abs().max() < 1e-4:  # every draw the same code
        expect(
            (z[0] - mu).abs().max() >= 1e-4,
            "all n draws of each image decode its mean μ: they show no spread at all",
            "You decoded μ only. Draw the codes from q(z|x, y): z = μ + σ·ε with a fresh "
            "ε ~ N(0, I) for each of the n draws, σ = exp(0.5 · logvar).",
        )
        expect(
            False,
            "all n draws of each image are the same code: one draw, repeated",
            "Draw a fresh ε for each of the n draws, e.g. torch.randn(n, *mu.shape).",
        )
    eps = (z - mu) / sigma  # (n, B, latent): the standardised noise of every draw
    expect(
        (eps[:, 0] - eps[:, 1]).abs().max() > 1e-4,
        "images 0 and 1 got the same noise ε in every draw",
        "Draw a fresh ε for every image as well as every draw: shape (n, B, latent_dim).",
    )
    # in standard errors of the mean, from the draws' own spread
    centred = (z.mean(dim=0) - mu).abs() / (z.std(dim=0) / _DRAWS**0.5)
    ratio = z.std(dim=0) / sigma  # (B, latent): 1 for the right spread
    if centred.max() > 5:
        prior_like = (z.mean(dim=0).abs().max() < 0.3) and ((z.std(dim=0) - 1).abs().max() < 0.2)
        expect(
            False,
            f"the draws of an image are not centred on its μ ({centred.max():.0f} standard errors off)",
            "These look like draws from the prior N(0, I): a posterior draw starts from the encoder's μ."
            if prior_like
            else "z = μ + σ·ε: the draws of image b are centred on μ[b].",
        )
    expect(
        bool(((ratio - 1).abs() < 0.25).all()),
        f"the draws' standard deviation is {ratio.min():.2f} to {ratio.max():.2f} times "
        "σ = exp(0.5 · logvar)",
        _ratio_hint(ratio, sigma),
    )
    return (
        f"{_DRAWS} draws for each of {_IMAGES} images: centred on μ (within {centred.max():.1f} standard "
        f"errors), spread σ = exp(0.5 · logvar) (std ratio {ratio.min():.2f}–{ratio.max():.2f}), fresh ε for "
        "every draw and image, each decoded with its own label"
    )
