import pytest
import torch

from helpers.numerics import sum_rounding_bound


def test_bound_is_twice_highams_gamma_for_the_dtype():
    u32 = torch.finfo(torch.float32).eps / 2
    assert sum_rounding_bound(torch.float32, 1) == 0.0  # one term: nothing is rounded
    assert sum_rounding_bound(torch.float32, 101) == pytest.approx(2 * 100 * u32 / (1 - 100 * u32), rel=1e-12)
    u64 = torch.finfo(torch.float64).eps / 2
    assert sum_rounding_bound(torch.float64, 101) == pytest.approx(2 * 100 * u64 / (1 - 100 * u64), rel=1e-12)
    u16 = torch.finfo(torch.bfloat16).eps / 2
    assert sum_rounding_bound(torch.bfloat16, 11) == pytest.approx(2 * 10 * u16 / (1 - 10 * u16), rel=1e-12)


def test_two_orders_of_a_real_float32_sum_stay_within_the_bound():
    generator = torch.Generator().manual_seed(0)
    for n in (10, 1000, 100_000):
        x = torch.randn(n, generator=generator) * 10 ** torch.randint(-3, 4, (n,), generator=generator)
        forward = torch.zeros((), dtype=torch.float32)
        for chunk in x.split(1000):  # left to right, chunk by chunk
            forward = forward + chunk.sum()
        backward = x.flip(0).cumsum(0)[-1]  # a strictly sequential sum, other order
        pairwise = x.sum()
        limit = sum_rounding_bound(torch.float32, n) * x.abs().sum().item()
        for a, b in ((forward, backward), (forward, pairwise), (backward, pairwise)):
            assert abs(a.item() - b.item()) <= limit
        exact = x.double().sum().item()
        # each evaluation alone is within half the bound of the exact sum
        assert abs(backward.item() - exact) <= limit / 2


def test_float32_order_effects_exceed_the_float64_bound():
    # The bound must depend on the dtype: float32 sums differ by far more than float64's.
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    gap = abs(x.sum().item() - x.flip(0).cumsum(0)[-1].item())
    assert gap > sum_rounding_bound(torch.float64, 10_000) * x.abs().sum().item()


@pytest.mark.parametrize(
    ("dtype", "terms", "error"),
    [
        (torch.int64, 10, TypeError),
        ("float32", 10, TypeError),
        (torch.float32, 0, ValueError),
        (torch.float32, 2.5, TypeError),
        (torch.float32, True, TypeError),
        (torch.float16, 5000, ValueError),  # (n - 1) u >= 1: no bound
    ],
)
def test_bad_arguments_are_errors_that_name_them(dtype, terms, error):
    with pytest.raises(error, match=r"dtype|terms"):
        sum_rounding_bound(dtype, terms)
