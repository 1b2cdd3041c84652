"""How far apart two correct floating-point computations of the same thing may be.

Two programs that add the same numbers in a different order (a compiled kernel and an
eager one, AVX2 and AVX-512 kernels, two processes and one) round differently, so their
results differ even when both are right. A comparison between them needs a tolerance
that follows from the arithmetic, not the last difference someone happened to see.

The bound used here is the classical one for a floating-point sum (Higham, *Accuracy
and Stability of Numerical Algorithms*, 2nd ed., section 4.2): summing ``n`` terms in
any order, with unit roundoff ``u = eps / 2``, gives a result within
``(n - 1) u / (1 - (n - 1) u)`` times ``sum(|term|)`` of the exact sum. Two such
computations are therefore within twice that of each other. It is a worst case:
typical differences are far smaller, so a comparison that fails it is a real bug, not
bad luck. ``torch.testing.assert_close`` picks its default tolerances by dtype in the
same spirit. Introduced in chapter 08 (compiled vs eager); chapter 09 uses it for DDP.
"""

from __future__ import annotations

import torch

__all__ = ["sum_rounding_bound"]


def sum_rounding_bound(dtype: torch.dtype, terms: int) -> float:
    """Relative bound on the difference of two evaluations of a sum of ``terms`` terms.

    Multiply by the sum of the terms' absolute values to get an absolute tolerance:
    ``|a - b| <= sum_rounding_bound(dtype, n) * sum(|x_i|)`` for any two evaluations
    ``a`` and ``b`` of ``sum(x_i)`` in ``dtype``, whatever order each adds in.

    A dot product of ``n`` products counts as ``n + 1`` terms, since each product is
    rounded too (Higham's bound for it is the one for a sum of ``n + 1``), and a bias
    added to it is one more. For a chain of such sums, such as the layers of a network
    whose activations ``f`` satisfy ``|f(a)| <= |a|`` and are 1-Lipschitz (ReLU, tanh,
    dropout in eval mode; not batch norm, softmax or division), pass the total number
    of terms along the chain and scale by what the same network computes on absolute
    values (absolute weights and inputs). That holds to first order in the unit
    roundoff, which is what matters while ``terms * eps`` is small.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if isinstance(terms, bool) or not isinstance(terms, int):
        raise TypeError(f"terms must be an int, got {type(terms).__name__}")
    if terms < 1:
        raise ValueError(f"terms must be at least 1, got {terms}")
    unit_roundoff = torch.finfo(dtype).eps / 2
    growth = (terms - 1) * unit_roundoff
    if growth >= 1:
        raise ValueError(
            f"terms={terms} is too many for {dtype}: the bound is void when (terms - 1) * eps / 2 >= 1"
        )
    return 2 * growth / (1 - growth)
