"""Chapter 8's exercise 4 checker: inference tensors in autograd, and what autograd saves.

Autograd itself is the reference: each combination of an inference tensor with a
trainable parameter either raises or works, and the reader's ``saves`` must say, from
``torch.autograd.graph.saved_tensors_hooks`` on a normal tensor, exactly where it
raises. Re-exported by :mod:`helpers.exercises.ch08`. Introduced with chapter 8's
exercises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from helpers.exercises import Mismatch, checker, expect, require_attempt

__all__ = ["check_inference_tensors"]

COMBINATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "features + w": lambda f, w, W: f + w,
    "features * w": lambda f, w, W: f * w,
    "relu(features + w)": lambda f, w, W: torch.relu(f + w),
    "features @ W": lambda f, w, W: f @ W,
}


def _expect_function(value: Any, name: str) -> None:
    expect(callable(value), f"{name} should be a function, got {type(value).__name__}")


EXTRA_COMBINATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "features.clone() * w": lambda f, w, W: f.clone() * w,
    "relu(features) * w": lambda f, w, W: torch.relu(f) * w,
    "(features + w) ** 2": lambda f, w, W: (f + w) ** 2,
    "w / features": lambda f, w, W: w / f,
    "maximum(features, w)": lambda f, w, W: torch.maximum(f, w),
    "sigmoid(w) * features": lambda f, w, W: torch.sigmoid(w) * f,
}
WRONG_PREDICTION = {
    "features + w": "the gradient of a sum is 1 for w's every entry: it saves nothing, so it works",
    "features * w": "the gradient of features * w for w is features itself, which autograd must "
    "save: that fails",
    "relu(features + w)": "relu saves its own output, a new and normal tensor, not features: it works",
    "features @ W": "the gradient of features @ W for W is features.T @ grad, so features is "
    "saved: that fails",
}


def _saved_tensors(compute: Callable[[], torch.Tensor]) -> list[torch.Tensor]:
    """Every tensor autograd saves for the backward pass while ``compute()`` runs."""
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return saved


# what the usual wrong versions of ``saves`` answer: compute ``compute`` and ...
SAVES_MISTAKES: dict[str, Callable[[torch.Tensor, Callable[[], torch.Tensor]], bool]] = {
    "relu(features + w) saves its own output, a new tensor: ask whether features itself is "
    "among the saved tensors, not whether anything is saved": lambda f, c: bool(_saved_tensors(c)),
    "a clone, or relu of positive features, has features' values but is another tensor: compare "
    "identity (`is`) or storage, not values": lambda f, c: any(
        t.shape == f.shape and torch.equal(t, f) for t in _saved_tensors(c)
    ),
    "every result requires grad when w does: the question is what autograd saves, which "
    "saved_tensors_hooks' pack function sees": lambda f, c: c().requires_grad,
    "nothing was saved: call compute() inside the saved_tensors_hooks block": lambda f, c: False,
}


@checker("8.4", "fails` and `saves")
def check_inference_tensors(fails: dict[str, Any], saves: Callable[..., Any]) -> str:
    """The predictions against autograd itself; then ``saves`` on ten combinations."""
    expect(
        isinstance(fails, dict) and set(fails) == set(COMBINATIONS),
        f"fails should be a dict with the keys {sorted(COMBINATIONS)}, got {fails!r}",
    )
    for name in COMBINATIONS:
        require_attempt(fails[name], "fails")
        expect(
            isinstance(fails[name], bool),
            f"fails[{name!r}] should be True or False, got {fails[name]!r}",
        )
    generator = torch.Generator().manual_seed(804)
    # positive, so that relu(features) has the same values as features
    values = torch.rand(5, 4, generator=generator) + 0.5
    w = torch.randn(4, generator=generator).requires_grad_()
    W = torch.randn(4, 3, generator=generator).requires_grad_()
    with torch.inference_mode():
        features = values * 1  # (5, 4), an inference tensor
    combinations = {**COMBINATIONS, **EXTRA_COMBINATIONS}
    truth = {}  # name -> whether using the inference tensor raises
    for name, combine in combinations.items():
        try:
            combine(features, w, W).sum().backward()
            truth[name] = False
        except RuntimeError:
            truth[name] = True
    for name in COMBINATIONS:
        expect(
            fails[name] is truth[name],
            f"fails[{name!r}] is {fails[name]!r}, but it {'fails' if truth[name] else 'works'}",
            WRONG_PREDICTION[name],
        )
    _expect_function(saves, "saves")
    got, mistaken = {}, {hint: {} for hint in SAVES_MISTAKES}
    for name, combine in combinations.items():
        answer = saves(values, lambda combine=combine: combine(values, w, W))
        expect(
            isinstance(answer, (bool, torch.Tensor)) and torch.as_tensor(answer).numel() == 1,
            f"saves should return True or False, got {answer!r}",
        )
        got[name] = bool(answer)
        for hint, mistake in SAVES_MISTAKES.items():
            mistaken[hint][name] = mistake(values, lambda combine=combine: combine(values, w, W))
    wrong = [name for name in combinations if got[name] is not truth[name]]
    if wrong:
        name = wrong[0]
        message = (
            f"saves is {got[name]} for {name}, but an inference tensor "
            f"{'fails' if truth[name] else 'works'} there"
        )
        for hint, answers in mistaken.items():
            if got == answers:
                raise Mismatch(message, hint)
        raise Mismatch(message)
    failing = [name for name in COMBINATIONS if truth[name]]
    return (
        f"predicts that {' and '.join(failing)} fail, as autograd does; and saves finds features "
        f"among the saved tensors exactly where an inference tensor fails, in all "
        f"{len(combinations)} combinations ({sum(truth.values())} of them fail)"
    )
