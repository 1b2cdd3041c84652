import pytest
import torch
from torch import nn

from helpers.models import conv_output_size, count_parameters


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [
        (28, 3, 1, 0, 1),
        (28, 3, 1, 1, 1),
        (28, 5, 2, 2, 1),
        (27, 3, 2, 0, 1),
        (32, 3, 1, 2, 2),
        (7, 7, 1, 0, 1),
    ],
)
def test_conv_output_size_matches_pytorch(size, kernel, stride, padding, dilation):
    conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation)
    pool = nn.MaxPool2d(kernel, stride=stride, padding=min(padding, kernel // 2), dilation=dilation)
    x = torch.zeros(1, 1, size, size)
    assert conv(x).shape[-1] == conv_output_size(size, kernel, stride, padding, dilation)
    assert pool(x).shape[-1] == conv_output_size(size, kernel, stride, min(padding, kernel // 2), dilation)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 3), "size"),
        ((5, 0), "kernel"),
        ((5, 3, 0), "stride"),
        ((5, 3, 1, -1), "padding"),
        ((5, 3, 1, 0, 0), "dilation"),
        ((4, 3, 1, 0, 2), "does not fit"),
    ],
)
def test_conv_output_size_rejects_bad_values(args, message):
    with pytest.raises(ValueError, match=message):
        conv_output_size(*args)


@pytest.mark.parametrize(
    ("args", "message"), [((5, 3, 1.0), "stride"), ((5.0, 3), "size"), ((5, True), "kernel")]
)
def test_conv_output_size_rejects_non_int_arguments(args, message):
    with pytest.raises(TypeError, match=message):
        conv_output_size(*args)


def test_count_parameters_matches_a_hand_count_and_respects_frozen_weights():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
    expected = (8 * 9 + 8) + (8 + 8) + (8 * 26 * 26 * 10 + 10)
    assert count_parameters(model) == expected
    model[0].requires_grad_(False)
    assert count_parameters(model) == expected - 80
    assert count_parameters(model, trainable_only=False) == expected
    with pytest.raises(TypeError, match=r"nn\.Module"):
        count_parameters([torch.zeros(3)])
