"""Checkers for chapter 4's exercise 4.4 (exploding gradients, exact Jacobian products).

See :mod:`helpers.exercises`.

Split from :mod:`helpers.exercises.ch04`, which re-exports them; the shared helpers are in
:mod:`helpers.exercises.ch04_common`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from helpers.exercises import Mismatch, checker, expect, expect_close, expect_tensor
from helpers.exercises.ch04_common import _build, _number, _within, _without_grads

__all__ = ["check_jacobian_growth", "check_scaled_copy"]


class _Probe(nn.Module):
    """A small network shaped like chapter 4's Summariser: ``.rnn`` and ``.head``."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, 4, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1]).squeeze(1)


COPY = "copy.deepcopy(net), then scale the copy: scaling `net` changes what every later factor starts from"
SHALLOW = "copy.copy, or a new module around the same layers, shares `net`'s weights: use copy.deepcopy"
UNSCALED = "`w = w * k` makes a new tensor and leaves the layer as it was: scale in place, w.mul_(k)"
NO_GRAD = "an in-place change of a parameter must run under `with torch.no_grad():`"
REBUILT = "scaled_copy is checked on a smaller network: copy the one you are given (copy.deepcopy)"
EVERYTHING = "only the recurrent weights weight_hh_l0 are to be scaled, not all of the layer's parameters"


@checker("4.4", "scaled_copy")
def check_scaled_copy(scaled_copy: Any) -> str:
    """Exercise 4.4: a copy of the network whose ``rnn.weight_hh_l0`` is ``factor`` times larger."""
    net = _build(_Probe, "_Probe", seed=44)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, gap = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(44)), 0.0
    for factor in (2.5, 6.0):
        try:
            scaled = scaled_copy(net, factor)
        except NotImplementedError:  # a RuntimeError too: the skeleton, not a failure
            raise
        except RuntimeError as error:
            hint = (
                NO_GRAD
                if "leaf Variable" in str(error)
                else REBUILT
                if "size mismatch" in str(error)
                else None
            )
            raise Mismatch(f"your code raised RuntimeError: {error}", hint) from None
        expect(isinstance(scaled, nn.Module), f"scaled_copy returned a {type(scaled).__name__}")
        expect(scaled is not net, "scaled_copy returned `net` itself, not a copy", COPY)
        changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
        shared = {p.data_ptr() for p in net.parameters()} & {p.data_ptr() for p in scaled.parameters()}
        expect(
            not changed, f"the original network changed ({', '.join(changed)})", SHALLOW if shared else COPY
        )
        after = scaled.state_dict()
        expect(set(after) == set(before), f"the copy has the entries {sorted(after)}, not {sorted(before)}")
        key = "rnn.weight_hh_l0"
        mistakes = {UNSCALED: before[key]}
        gap = max(
            gap, expect_tensor(after[key], factor * before[key], f"the copy's {key}", mistakes=mistakes)
        )
        others = [k for k in before if k != key and not torch.equal(after[k], before[k])]
        every = {k for k in before if k.startswith("rnn.")} - {key} <= set(others)
        expect(not others, f"{', '.join(others)} changed too", EVERYTHING if every else None)
        weight = scaled.get_parameter(key)
        expect(weight.requires_grad, f"the copy's {key} no longer requires a gradient")
        scaled.zero_grad()
        scaled(x).sum().backward()
        missing = _without_grads(scaled)
        expect(not missing, f"no gradient reaches the copy's {', '.join(missing)}")
    return (
        f"copies the network and scales its weight_hh_l0 by 2.5 and by 6 {_within(gap)}; every other "
        "parameter and the original stay as they were, and gradients reach the copy"
    )


REVERSED = (
    "the product runs the other way: going back from step T, the chain rule multiplies "
    "J_T first, J_T @ J_(T-1) @ ... @ J_2, the latest step's Jacobian on the left"
)
W_FIRST = "∂h_t/∂h_(t-1) is diag(1 - h_t²) @ W_hh: the slopes scale the rows, not the columns"
SLOPE_BEFORE = "the slope in J_t is tanh's at step t, 1 - h_t², not at the step before"
NO_ROOT = "take each sequence's largest singular value to the power 1 / (T - 1): a rate per step"
EIGEN = (
    "that is the product's spectral radius: the gradient's growth is bounded by its largest "
    "singular value, torch.linalg.matrix_norm(P, ord=2) or torch.linalg.svdvals(P)[0]"
)
ALL_STEPS = (
    "h_0 is a fixed zero state: the gradient from step T back to step 1 passes the T - 1 "
    "Jacobians of steps 2 to T"
)
CRUDE = (
    "that is the crude estimate, spectral radius x mean slope: multiply the actual "
    "Jacobians of each sequence instead"
)


def _eigen_probe(factor: float) -> nn.Module:
    """A _Probe whose W_hh has eigenvalues ±0.9i, 0.5 and -0.3, times ``factor``."""
    net = _build(_Probe, "_Probe", seed=44)
    block = torch.tensor([[0, -0.9, 0, 0], [0.9, 0, 0, 0], [0, 0, 0.5, 0.1], [0, 0, 0, -0.3]])
    change = torch.eye(4) + 0.3 * torch.randn(4, 4, generator=torch.Generator().manual_seed(44))
    with torch.no_grad():  # the same eigenvalues in a basis that hides them
        net.rnn.weight_hh_l0.copy_(factor * change @ block @ torch.linalg.inv(change))
    return net


def _growth_rates(net: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The exact per-step growth on ``x`` and what each known mistake gives."""
    rnn = copy.deepcopy(net.rnn).double()
    w = rnn.weight_hh_l0.detach()
    with torch.no_grad():
        h_all, _ = rnn(x.double())  # (B, T, H)
    slope = 1 - h_all.pow(2)  # (B, T, H)
    steps = x.shape[1] - 1
    rates: dict[str, list[float]] = {}
    for b in range(x.shape[0]):
        jac = [s[:, None] * w for s in slope[b]]  # diag(1 - h_t²) @ W, t = 1..T
        variants = {
            "exact": (jac[1:], False, steps),
            REVERSED: (jac[1:], True, steps),
            W_FIRST: ([w * s[None, :] for s in slope[b]][1:], False, steps),
            SLOPE_BEFORE: (jac[:-1], False, steps),
            ALL_STEPS: (jac, False, steps + 1),
        }
        for key, (factors, reverse, root) in variants.items():
            product = torch.eye(len(w), dtype=w.dtype)
            for j in factors:
                product = product @ j if reverse else j @ product
            sigma = torch.linalg.matrix_norm(product, ord=2).item()
            rates.setdefault(key, []).append(sigma ** (1 / root))
            if key == "exact":
                rates.setdefault(NO_ROOT, []).append(sigma)
                radius = torch.linalg.eigvals(product).abs().max().item()
                rates.setdefault(EIGEN, []).append(radius ** (1 / root))
    mean = {key: sum(values) / len(values) for key, values in rates.items()}
    mean[CRUDE] = torch.linalg.eigvals(w).abs().max().item() * slope.mean().item()
    return mean


@checker("4.4", "jacobian_growth")
def check_jacobian_growth(jacobian_growth: Any) -> str:
    """Exercise 4.4: the largest singular value of each sequence's Jacobian product, per step."""
    x, facts = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(45)), []
    for factor in (1.0, 3.0):
        net = _eigen_probe(factor)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        got = _number(jacobian_growth(net, x.clone()), "the growth per step")
        changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
        expect(not changed, f"jacobian_growth changed the network ({', '.join(changed)})")
        rates = _growth_rates(net, x)
        want = rates.pop("exact")
        tol = 1e-4 * max(1.0, abs(want))
        hint = next((h for h, value in rates.items() if abs(got - value) <= tol), None)
        expect_close(got, want, f"the growth per step for W_hh x {factor:g}", tol=tol, hint=hint)
        facts.append(f"{want:.3f}")
    return (
        "gives the mean per-step bound sigma_max(P)^(1/(T-1)) of the exact Jacobian products "
        f"({' and '.join(facts)}) "
        "for a W_hh with complex leading eigenvalues, scaled by 1 and by 3, and leaves the network "
        "as it was"
    )
