"""Checkers for chapter 06's two network-building exercises (6.4, 6.5); see :mod:`helpers.exercises`.

A network the reader designs has no single right output, so these checkers probe what
the exercise specifies: shapes, ranges, kinds of layers, biases that a batch norm
cancels, which inputs the networks use, the reparameterised sample and where gradients
flow.
Re-exported by :mod:`helpers.exercises.ch06`; introduced in chapter 06.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from helpers.exercises import Mismatch, expect, expect_tensor

__all__ = ["conditional_vae_facts", "conv_gan_facts", "within"]

_NORM = nn.modules.batchnorm._BatchNorm


def within(gap: float) -> str:
    """'exactly' or 'to 3e-07': how close an attempt came to the reference."""
    return "exactly" if gap == 0 else f"to {gap:.1g}"


def _count(module: nn.Module, kind: type | tuple[type, ...] = nn.Module) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def _call_order(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[nn.Module]]:
    """``net(x)`` and the leaf modules it called, in the order it called them."""
    called: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda module, args, out: called.append(module))
        for m in net.modules()
        if not any(True for _ in m.children())
    ]
    try:
        return net(x), called
    finally:
        for hook in hooks:
            hook.remove()


def _redundant_bias(called: list[nn.Module]) -> nn.Module | None:
    """The first layer whose bias the batch norm called right after it cancels.

    A batch norm subtracts a mean per channel (per feature for ``BatchNorm1d``), so a
    convolution's bias, one per channel, is cancelled, and so is a ``Linear`` bias that
    goes straight into a ``BatchNorm1d``. A ``Linear`` reshaped to feature maps before a
    ``BatchNorm2d`` has a bias per position, which the norm only partly cancels (its
    per-channel mean).
    """
    for layer, after in itertools.pairwise(called):
        if getattr(layer, "bias", None) is None or not isinstance(after, _NORM):
            continue
        if isinstance(layer, nn.modules.conv._ConvNd) or (
            isinstance(layer, nn.Linear) and isinstance(after, nn.BatchNorm1d)
        ):
            return layer
    return None


_PLACEMENT = (
    "DCGAN puts a batch norm after every generator layer but the last and after every "
    "discriminator convolution but the first: a norm on the generator's output or on the "
    "discriminator's input made training unstable in the DCGAN paper's experiments."
)


def _numbers(layer: nn.Module | None) -> str:
    """'32 numbers' or '1 number': the size of ``layer``'s bias."""
    count = 0 if layer is None else layer.bias.numel()
    return f"{count} number{'' if count == 1 else 's'}"


def _normed(called: list[nn.Module], weights: tuple[type, ...]) -> list[tuple[nn.Module, bool]]:
    """Each weight layer ``net`` called, in order, and whether a batch norm came before the next."""
    found: list[tuple[nn.Module, bool]] = []
    for module in called:
        if isinstance(module, weights):
            found.append((module, False))
        elif isinstance(module, _NORM) and found:
            found[-1] = (found[-1][0], True)
    return found


def conv_gan_facts(make_conv_gan: Callable[[int], tuple[nn.Module, nn.Module]]) -> str:
    """Exercise 6.4's check (``helpers.exercises.ch06.check_make_conv_gan`` runs it).

    The channel counts are the reader's choice: this checks the shape plan (7 → 14 → 28
    with two transposed convolutions, 28 → 14 → 7 with two convolutions), the pixel
    range, the logits, a batch norm in each network, no bias that a batch norm cancels,
    and that gradients reach every generator weight. Raises
    :class:`helpers.exercises.Mismatch` on the first thing that is off; returns the
    sentence to print when nothing is.
    """
    noise_dim, batch = 12, 6  # not the chapter's 32: the networks must follow noise_dim
    torch.manual_seed(64)  # the caller forks the RNG: the reader's session keeps its state
    pair = make_conv_gan(noise_dim)
    expect(
        isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(n, nn.Module) for n in pair),
        f"make_conv_gan should return (generator, discriminator), two nn.Modules; got {pair!r:.80}",
    )
    generator, discriminator = pair
    # name: (network, its kind of convolution, what each must have)
    layers = {"generator": (generator, nn.ConvTranspose2d), "discriminator": (discriminator, nn.Conv2d)}
    for name, (net, conv) in layers.items():
        unregistered = (
            "Layers kept in a plain Python list are not registered: use nn.Sequential or nn.ModuleList."
            if not any(True for _ in net.parameters())
            else None
        )
        expect(
            _count(net, conv) >= 2,
            f"the {name} has {_count(net, conv)} {conv.__name__} layers, expected at least 2 "
            "(7 → 14 → 28 takes two)",
            unregistered,
        )
        expect(
            _count(net, _NORM) >= 1,
            f"the {name} has no batch-norm layer",
            "DCGAN puts a batch norm after every generator layer but the last and after every "
            "discriminator convolution but the first.",
        )
    z = torch.randn(batch, noise_dim, generator=torch.Generator().manual_seed(64))
    images, generator_calls = _call_order(generator, z)
    size = tuple(images.shape)
    expect(
        not (len(size) == 4 and size[:2] == (batch, 1) and size[2:] != (28, 28)),
        f"the generator's images have shape {size}, expected ({batch}, 1, 28, 28)",
        "ConvTranspose2d makes (n - 1)·stride - 2·padding + kernel pixels from n: with kernel 4, "
        "stride 2 and padding 1 each layer doubles the size, 7 → 14 → 28.",
    )
    expect(
        size == (batch, 1, 28, 28),
        f"the generator's images have shape {size}, expected ({batch}, 1, 28, 28)",
        "Reshape the Linear layer's output (B, C·7·7) to (B, C, 7, 7) before the first "
        "ConvTranspose2d (nn.Unflatten(1, (C, 7, 7))), and end with one channel.",
    )
    expect(
        images.abs().max() <= 1,
        f"the generator's pixels reach {images.abs().max().item():.3g}, outside [-1, 1]",
        "End the generator with nn.Tanh(): the real images it must imitate are scaled to [-1, 1].",
    )
    logits, discriminator_calls = _call_order(discriminator, images)
    expect(
        tuple(logits.shape) == (batch, 1),
        f"the discriminator returns shape {tuple(logits.shape)}, expected ({batch}, 1): one logit per image",
        "End with nn.Flatten() and nn.Linear(C * 7 * 7, 1), so that the logits match "
        "torch.ones_like(...) labels of shape (B, 1).",
    )
    expect(
        _count(discriminator, nn.Sigmoid) == 0,
        "the discriminator ends in a sigmoid",
        "Return the logit: nn.BCEWithLogitsLoss applies the sigmoid itself, more stably.",
    )
    placement = (
        ("generator", _normed(generator_calls, (nn.Linear, nn.ConvTranspose2d, nn.Conv2d))),
        ("discriminator", _normed(discriminator_calls, (nn.Conv2d, nn.Linear))),
    )
    for name, found in placement:
        # a norm after every weight layer but the last; for the discriminator, not after
        # the first convolution either
        want = [0 < i < len(found) - 1 or (name == "generator" and i == 0) for i in range(len(found))]
        for index, ((layer, normed), wanted) in enumerate(zip(found, want, strict=True)):
            where = f"the {name}'s {type(layer).__name__} (weight layer {index + 1} of {len(found)})"
            expect(
                normed == wanted,
                f"{where} {'has no' if wanted else 'is followed by a'} batch norm",
                _PLACEMENT,
            )
    for name, called in (("generator", generator_calls), ("discriminator", discriminator_calls)):
        layer = _redundant_bias(called)
        expect(
            layer is None,
            f"the {name}'s {type(layer).__name__} right before a batch norm has a bias "
            f"({_numbers(layer)}) that the norm cancels",
            "Use bias=False there: the batch norm subtracts each channel's mean, which cancels a "
            "per-channel bias, and adds its own shift.",
        )
    discriminator(generator(z)).mean().backward()
    missing = [n for n, p in generator.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    expect(not missing, f"no gradient reaches the generator's {', '.join(missing)} from the discriminator")
    counts = [sum(p.numel() for p in n.parameters()) for n in pair]
    return (
        f"the generator maps {noise_dim}-number noise to ({batch}, 1, 28, 28) images in [-1, 1] and the "
        f"discriminator to ({batch}, 1) logits, no bias before a batch norm is wasted, and gradients "
        f"reach every generator weight ({counts[0]:,} and {counts[1]:,} parameters)"
    )


def conditional_vae_facts(conditional_vae: type[nn.Module]) -> str:
    """Exercise 6.5's check (``helpers.exercises.ch06.check_conditional_vae`` runs it).

    ``conditional_vae`` is the reader's class, built here as
    ``conditional_vae(latent_dim=4, hidden=32)``; raises
    :class:`helpers.exercises.Mismatch` on the first thing that is off.
    """
    latent_dim, batch, seed = 4, 6, 65
    torch.manual_seed(seed)
    model = conditional_vae(latent_dim=latent_dim, hidden=32)
    expect(
        isinstance(model, nn.Module),
        f"ConditionalVAE(...) should be an nn.Module, got {type(model).__name__}",
    )
    one_number = [
        m.in_features
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.in_features in (785, latent_dim + 1)
    ]
    expect(
        not one_number,
        f"a Linear layer takes {one_number[0] if one_number else ''} inputs: the label enters as one number",
        "Give the label as a one-hot vector of 10, F.one_hot(y, 10).float(), not as y itself.",
    )
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((batch, 1, 28, 28), 0.3), generator=g)
    y, other = torch.arange(batch), torch.arange(batch) + 3  # every image gets another label too
    seen: list[torch.Tensor] = []
    decode = model.decode

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        """The model's decode, noting the code forward() passes to it."""
        seen.append(args[0] if args else next(iter(kwargs.values())))
        return decode(*args, **kwargs)

    model.decode = spy
    torch.manual_seed(seed)
    try:
        out = model(x, y)
    except RuntimeError as error:  # labels 0-5: is the one-hot's width max(y) + 1?
        try:
            model(x, y + 10 - batch)  # labels 4-9, with a 9
        except RuntimeError:
            raise error from None
        raise Mismatch(
            f"forward(x, y) fails for the labels 0-{batch - 1} ({error}) but runs when a 9 is among them",
            "Write F.one_hot(y, 10): without num_classes the width is max(y) + 1, so a batch without a 9 "
            "gets fewer than 10 columns.",
        ) from None
    del model.decode
    expect(isinstance(out, tuple) and len(out) == 3, "forward(x, y) should return (logits, mu, logvar)")
    logits, mu, logvar = out
    for name, value, shape in (
        ("logits", logits, (batch, 1, 28, 28)),
        ("mu", mu, (batch, latent_dim)),
        ("logvar", logvar, (batch, latent_dim)),
    ):
        expect(isinstance(value, torch.Tensor), f"{name} should be a tensor, got {type(value).__name__}")
        expect(tuple(value.shape) == shape, f"{name} has shape {tuple(value.shape)}, expected {shape}")
    encode = getattr(model, "encode", None)
    expect(
        callable(encode),
        "ConditionalVAE has no encode method",
        "Give it encode(x, y) -> (mu, logvar), as VAE.encode does, and let forward call it.",
    )
    with torch.no_grad():
        encoded = encode(x, y)
    expect(
        isinstance(encoded, tuple) and len(encoded) == 2,
        "encode(x, y) should return the pair (mu, logvar)",
    )
    expect(
        all(
            isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want.detach())
            for got, want in zip(encoded, (mu, logvar), strict=True)
        ),
        "encode(x, y) does not return the mu and logvar that forward(x, y) returns",
        "Let forward call self.encode(x, y), so that both give the same q(z | x, y).",
    )
    expect(
        not (logits.min() >= 0 and logits.max() <= 1),
        "the decoded values all lie in [0, 1]: they look like probabilities, not logits",
        "Return logits (no sigmoid): the loss F.binary_cross_entropy_with_logits applies it.",
    )
    torch.manual_seed(seed)
    eps = torch.randn_like(mu)  # the noise forward() drew, if it used randn_like (or rsample)
    z_ref = mu + torch.exp(0.5 * logvar) * eps
    mistakes = {
        "σ = exp(0.5 · logvar): the encoder returns a log-variance.": mu + torch.exp(logvar) * eps,
        "Scale the noise by σ = exp(0.5 · logvar), not by the log-variance itself.": mu + logvar * eps,
        "z has no noise: draw eps = torch.randn_like(mu) and use z = mu + σ · eps.": mu,
    }
    with torch.no_grad():
        if seen:
            gap = expect_tensor(seen[0], z_ref, "the code z that forward() decodes", mistakes=mistakes)
        else:  # forward() does not call self.decode: compare what it decodes to
            mistakes = {hint: model.decode(wrong, y) for hint, wrong in mistakes.items()}
            gap = expect_tensor(logits, model.decode(z_ref, y), "forward's logits", mistakes=mistakes)
        z = torch.randn(batch, latent_dim, generator=g)
        expect(
            not torch.allclose(model.decode(z, y), model.decode(z, other)),
            "decode(z, y) gives the same images for different labels",
            "Concatenate the one-hot label to the code before the decoder: torch.cat([z, one_hot], dim=1).",
        )
        torch.manual_seed(seed)
        mu_other = model(x, other)[1]
    expect(
        not torch.allclose(mu, mu_other),
        "the encoder's mu does not change with the label",
        "The encoder sees the label too, q(z | x, y): concatenate the one-hot label to the flattened image.",
    )
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    grads = torch.autograd.grad(reconstruction, (mu, logvar), allow_unused=True)
    expect(
        all(g_ is not None and g_.abs().sum() > 0 for g_ in grads),
        "no gradient flows from the reconstruction back to mu and logvar",
        "Sample with the reparameterisation z = mu + exp(0.5 * logvar) * torch.randn_like(mu); "
        ".sample() and torch.normal(mu, std) pass no gradient to the encoder.",
    )
    return (
        f"encode, forward and decode return the right shapes, both networks use the one-hot label, "
        f"z = μ + σ·ε {within(gap)}, and the reconstruction's gradient reaches μ and log σ²"
    )
