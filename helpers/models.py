"""Inspecting models: parameter counts and the output-size arithmetic of convolutions.

``count_parameters`` is introduced in chapter 03 (chapter 02 counted by hand);
``conv_output_size`` in chapter 03.
"""

from __future__ import annotations

from torch import nn

__all__ = ["conv_output_size", "count_parameters"]


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Length of a convolution's (or pooling layer's) output along one spatial dimension.

    ``floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1``, the formula
    in the documentation of ``nn.Conv2d`` and ``nn.MaxPool2d``. Raises if the kernel does
    not fit. Introduced in chapter 03.
    """
    _check_positive("size", size)
    _check_positive("kernel", kernel)
    _check_positive("stride", stride)
    _check_positive("padding", padding, minimum=0)
    _check_positive("dilation", dilation)
    span = dilation * (kernel - 1) + 1  # how many input positions one kernel application covers
    if size + 2 * padding < span:
        raise ValueError(
            f"a kernel spanning {span} positions does not fit an input of {size} with padding {padding}"
        )
    return (size + 2 * padding - span) // stride + 1


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters in ``model`` (only those with ``requires_grad`` by default).

    Introduced in chapter 03.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
