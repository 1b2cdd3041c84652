"""Helpers shared by chapter 4's exercise checkers (:mod:`helpers.exercises.ch04`).

Build a reader's module without touching the global random state, find its layers, and
word how closely an attempt matched.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

from helpers.exercises import expect

__all__ = ["UNREGISTERED"]

UNREGISTERED = (
    "a layer kept in a plain list, dict or local variable is not registered: assign it "
    "to an attribute (self.rnn = ...) or use nn.ModuleList, or .parameters() misses it"
)


def _build(cls: Any, name: str, *args: Any, seed: int, **kwargs: Any) -> nn.Module:
    """``cls(*args, **kwargs)``, initialised from ``seed`` without touching the global RNG."""
    expect(
        isinstance(cls, type) and issubclass(cls, nn.Module),
        f"{name} should be an nn.Module subclass (the class itself), got {type(cls).__name__}",
    )
    with torch.random.fork_rng(devices=[]):  # layers initialise from the CPU generator alone
        torch.random.default_generator.manual_seed(seed)
        return cls(*args, **kwargs)


def _only(model: nn.Module, kind: type[nn.Module]) -> Any:
    """The one registered submodule of type ``kind`` in ``model``."""
    found = [module for module in model.modules() if type(module) is kind]
    expect(bool(found), f"found no nn.{kind.__name__} registered in the model", UNREGISTERED)
    expect(len(found) == 1, f"found {len(found)} nn.{kind.__name__} layers, expected one")
    return found[0]


def _number(value: Any, what: str) -> float:
    """``value`` as a float: a real number or a one-element tensor."""
    if isinstance(value, torch.Tensor):
        expect(value.numel() == 1, f"{what} should be one number, got shape {tuple(value.shape)}")
        value = value.item()
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    expect(real, f"{what} should be a real number, got {type(value).__name__}")
    return float(value)


def _within(gap: float) -> str:
    """How closely an attempt matched: "exactly", or "to 3e-7" (not Python's 3e-07)."""
    if gap == 0:
        return "exactly"
    mantissa, exponent = f"{gap:.0e}".split("e")
    return f"to {mantissa}e{int(exponent)}"


def _without_grads(model: nn.Module) -> list[str]:
    """Names of ``model``'s parameters that got no (or an all-zero) gradient."""
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
