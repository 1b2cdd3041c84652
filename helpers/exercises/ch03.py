"""Checkers for chapter 3's exercises (convolutional networks).

Each runs the reader's attempt on fresh inputs from its own seeded generator, against
a reference: ``F.conv2d`` itself, an independent training loop with ``torch.optim``,
or a functional recomputation. Every check runs inside ``torch.random.fork_rng``, so
calling it leaves the chapter's global random state as it was. The training checker of
3.3 lives in :mod:`helpers.exercises.ch03_models`, its learning-rate sweep in
:mod:`helpers.exercises.ch03_sweep`, and the head checker of 3.5 in
:mod:`helpers.exercises.ch03_heads`; all are re-exported here. Introduced with chapter 3's
exercises.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F

from helpers.exercises import Mismatch, checker, expect, expect_close, expect_tensor
from helpers.exercises.ch03_heads import check_pooled_head
from helpers.exercises.ch03_models import check_short_run, keep_random_state
from helpers.exercises.ch03_sweep import check_rate_sweep

__all__ = [
    "check_accuracy_by_confidence",
    "check_conv2d_by_unfold",
    "check_diagonal_kernel",
    "check_pooled_head",
    "check_rate_sweep",
    "check_short_run",
]

OTHER_DIAGONAL = (
    "your kernel responds to edges from the top left to the bottom right, the other "
    "diagonal: its weights must change across the wanted edge, along (down, right), "
    "e.g. negative at the top left and positive at the bottom right"
)
BOTH_DIAGONALS = (
    "it responds about as much to both diagonals, as a vertical or horizontal edge "
    "kernel (Sobel) does: turn it by 45°, so that its weights are constant along the "
    "bottom-left-to-top-right direction and change across it"
)
LINE_KERNEL = (
    "your kernel equals itself turned by 180°, like a line detector: it answers a thin line, "
    "and a step only with ridges on both sides of it. An edge kernel changes sign when turned "
    "by 180°: negative on one side of the wanted edge, positive on the other"
)
OUTPUT_SIZE = (
    "with padding p a 3 x 3 convolution gives (H + 2p - 2) x (W + 2p - 2) values (section 3.2), "
    "which is H x W only for padding 1: compute H_out and W_out from the padding"
)
NONZERO_SUM = (
    "an edge kernel's weights sum to zero, so that flat regions give no response; subtract their mean"
)


def _filter(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """A (H, W) image filtered with a 3 x 3 kernel, edges replicated; (H, W) out."""
    padded = F.pad(image[None, None], (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernel[None, None].to(image.dtype))[0, 0]


@checker("3.1", "diagonal")
@keep_random_state
def check_diagonal_kernel(diagonal: Any) -> str:
    """Exercise 3.1: a 3 x 3 kernel for edges from the bottom left to the top right."""
    expect(isinstance(diagonal, torch.Tensor), f"diagonal should be a tensor, got {type(diagonal).__name__}")
    expect(tuple(diagonal.shape) == (3, 3), f"diagonal has shape {tuple(diagonal.shape)}, expected (3, 3)")
    expect(diagonal.is_floating_point(), f"diagonal has dtype {diagonal.dtype}, expected a float dtype")
    kernel = diagonal.detach().cpu().double()
    expect(bool(kernel.isfinite().all()), "diagonal contains NaN or infinite weights")
    scale = kernel.abs().sum().item()
    expect(scale > 0, "diagonal is all zeros, so it responds to nothing")
    total = kernel.sum().item()
    expect(abs(total) <= 1e-6 * scale, f"diagonal's weights sum to {total:.3g}, not 0", NONZERO_SUM)
    generator = torch.Generator().manual_seed(31)
    size = 24
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    responses = {"along": 0.0, "across": 0.0}
    for _ in range(4):
        offset = int(torch.randint(-5, 6, (1,), generator=generator))
        dark, bright = sorted(torch.rand(2, generator=generator).tolist())
        images = {  # a step from dark to bright across each kind of edge
            "along": rows + cols > size - 1 + offset,  # bottom left to top right
            "across": cols - rows > offset,  # top left to bottom right
        }
        for name, step in images.items():
            image = dark + (bright - dark) * step.double()
            # away from the corners, where the edge meets the replicated border
            responses[name] += _filter(image, kernel)[2:-2, 2:-2].abs().sum().item()
    along, across = responses["along"], responses["across"]
    if across >= 10 * along:
        raise Mismatch(
            f"diagonal responds {across:.3g} in total to 4 edges from the top left to the bottom "
            f"right and only {along:.3g} to 4 from the bottom left to the top right",
            OTHER_DIAGONAL,
        )
    ratio = along / across if across > 0 else math.inf
    symmetric = torch.allclose(kernel, kernel.flip(0, 1), rtol=0, atol=1e-6 * scale)
    expect(
        ratio >= 10,
        f"diagonal responds only {ratio:.2g} times as much to edges from the bottom left to the "
        f"top right ({along:.3g} in total on 4 random images) as to the perpendicular ones "
        f"({across:.3g}); it should be at least 10 times",
        LINE_KERNEL if symmetric else BOTH_DIAGONALS if 0.5 <= ratio <= 2 else None,
    )
    others = (
        "and not at all to 4 perpendicular ones or to flat regions"
        if across == 0
        else f"{ratio:.0f} times more than to 4 perpendicular ones, and not at all to flat regions"
    )
    return f"responds to 4 random bottom-left-to-top-right edges (total |response| {along:.3g}) {others}"


def _forbid_conv(*args: Any, **kwargs: Any) -> None:
    raise Mismatch(
        "your function called a convolution (F.conv2d, torch.conv2d or nn.Conv2d)",
        "the exercise rebuilds F.conv2d: use F.unfold and one matrix product instead",
    )


@checker("3.2", "conv2d_by_unfold")
@keep_random_state
def check_conv2d_by_unfold(conv2d_by_unfold: Callable[..., Any]) -> str:
    """Exercise 3.2: ``F.conv2d`` rebuilt from ``F.unfold`` and a matrix product."""
    expect(callable(conv2d_by_unfold), "conv2d_by_unfold should be a function")
    generator = torch.Generator().manual_seed(32)
    largest = 0.0
    cases = [(2, 3, 5, 7, 4, 1), (1, 2, 6, 4, 3, 0)]  # (B, C_in, H, W, C_out, padding)
    for b, c_in, h, w, c_out, padding in cases:
        x = torch.randn(b, c_in, h, w, generator=generator)
        weight = torch.randn(c_out, c_in, 3, 3, generator=generator, requires_grad=True)
        bias = torch.randn(c_out, generator=generator)
        want = F.conv2d(x, weight, bias, padding=padding)
        h_out, w_out = want.shape[-2:]
        columns = F.unfold(x, 3, padding=padding)  # (B, C_in*9, L)
        flat = weight.detach().flatten(1)
        what = f"conv2d_by_unfold on a ({b}, {c_in}, {h}, {w}) batch with padding={padding}"
        mistakes = {
            "the bias is missing: add one value per output channel, bias.view(1, -1, 1)": F.conv2d(
                x, weight, None, padding=padding
            ),
            "F.unfold's columns run along each row first: view the (B, C_out, L) product as "
            "(B, C_out, H_out, W_out), height first, with H_out and W_out computed from H, W "
            "and the padding (section 3.2), not from L": want.flatten(2).view(b, c_out, w_out, h_out),
            "F.unfold's columns run along each row first: view the (B, C_out, L) product as "
            "(B, C_out, H_out, W_out) directly; viewing it width first and then transposing "
            "puts the values in the wrong positions": (
                want.flatten(2).view(b, c_out, w_out, h_out).transpose(2, 3)
            ),
            "the product (B, L, C_out) must be transposed to (B, C_out, L) before it is viewed "
            "as an image; a view alone mixes channels and positions": (
                columns.transpose(1, 2) @ flat.T + bias
            ).reshape(b, c_out, h_out, w_out),
            "F.unfold stacks each patch channel first, then kernel row, then kernel column, the "
            "order of weight.flatten(1): do not permute the weight": (
                weight.detach().permute(0, 2, 3, 1).flatten(1) @ columns + bias.view(1, -1, 1)
            ).view(b, c_out, h_out, w_out),
        }
        with (
            mock.patch.object(F, "conv2d", _forbid_conv),
            mock.patch.object(torch, "conv2d", _forbid_conv),
        ):
            try:
                got = conv2d_by_unfold(x, weight, bias, padding)
            except NotImplementedError:  # the untouched starter (a RuntimeError too)
                raise
            except RuntimeError as error:  # typically a view to the wrong output size
                hint = OUTPUT_SIZE if padding != 1 else None
                raise Mismatch(f"{what}: your code raised RuntimeError: {error}", hint) from None
        try:
            largest = max(largest, expect_tensor(got, want, what, mistakes=mistakes))
        except Mismatch as wrong:  # an H x W output where padding 1 is not given
            ignored_padding = padding != 1 and tuple(getattr(got, "shape", ())[-2:]) == (h, w)
            if wrong.hint is None and ignored_padding:
                raise Mismatch(wrong.message, OUTPUT_SIZE) from None
            raise
        expect(
            got.requires_grad,
            f"{what}: no gradient flows back to weight",
            "compute it with torch operations on weight itself, not on .detach(), .numpy() "
            "or under torch.no_grad()",
        )
        readout = torch.randn(want.shape, generator=generator)
        (grad,) = torch.autograd.grad((got * readout).sum(), weight)
        (want_grad,) = torch.autograd.grad((want * readout).sum(), weight)
        largest = max(largest, expect_tensor(grad, want_grad, f"{what}: the gradient for weight"))
    return (
        f"matches F.conv2d to {largest:.0e} on 2 random batches (padding 1 and 0, "
        "non-square images), gradients for the weight included"
    )


def _split_accuracies(
    confidence: torch.Tensor, correct: torch.Tensor, fraction: float, *, least: bool = True
) -> tuple[float, float]:
    order = confidence.argsort(descending=not least)
    k = round(fraction * len(correct))
    return correct[order[:k]].double().mean().item(), correct[order[k:]].double().mean().item()


@checker("3.4", "accuracy_by_confidence")
@keep_random_state
def check_accuracy_by_confidence(accuracy_by_confidence: Callable[..., Any]) -> str:
    """Exercise 3.4: accuracy on the least confident images and on the rest."""
    expect(callable(accuracy_by_confidence), "accuracy_by_confidence should be a function")
    generator = torch.Generator().manual_seed(34)
    n, classes = 400, 10
    # rows on different scales and offsets, so that ranking by the largest logit
    # differs from ranking by the largest probability
    scale = 0.5 + 3.5 * torch.rand(n, 1, generator=generator)
    logits = torch.randn(n, classes, generator=generator) * scale + 6 * torch.rand(n, 1, generator=generator)
    # labels drawn from the softmax: unsure predictions are more often wrong
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator)[:, 0]
    confidence, guess = logits.softmax(dim=1).max(dim=1)
    correct = guess == labels
    column_softmax = logits.softmax(dim=0).max(dim=1)
    facts = []
    for fraction in (0.05, 0.25):
        want = _split_accuracies(confidence, correct, fraction)
        mistakes = {
            "the softmax runs over dim=1, each image's 10 classes, not over the images (dim=0)": (
                _split_accuracies(column_softmax.values, column_softmax.indices == labels, fraction)
            ),
            "sort the confidences in increasing order: the least confident come first": (
                _split_accuracies(confidence, correct, fraction, least=False)
            ),
            "rank by the softmax probability of the predicted class, not by the largest logit: "
            "a large logit is not confident when the others are large too": (
                _split_accuracies(logits.max(dim=1).values, correct, fraction)
            ),
        }
        got = accuracy_by_confidence(logits.clone(), labels.clone(), fraction)
        expect(
            isinstance(got, tuple) and len(got) == 2,
            f"accuracy_by_confidence should return a tuple of two accuracies, got {type(got).__name__}",
        )
        hint = next(
            (
                text
                for text, pair in mistakes.items()
                if all(isinstance(g, (int, float, torch.Tensor)) for g in got)
                and all(abs(float(g) - p) <= 1e-6 for g, p in zip(got, pair, strict=True))
            ),
            None,
        )
        k = round(fraction * n)
        unsure = expect_close(
            got[0], want[0], f"the accuracy on the {k} least confident", tol=1e-6, hint=hint
        )
        rest = expect_close(got[1], want[1], f"the accuracy on the other {n - k}", tol=1e-6, hint=hint)
        facts.append(f"{unsure:.2f} on the {k} least confident and {rest:.2f} on the rest")
    return f"matches the reference on {n} random images: accuracy {'; '.join(facts)}"
