import time

import pytest
import torch

from helpers.timing import best_time


def test_best_time_returns_the_fastest_run_and_counts_calls():
    calls = []
    durations = iter([0.0, 0.03, 0.01, 0.02])  # warm-up, then three timed runs

    def work():
        calls.append(1)
        time.sleep(next(durations))

    best = best_time(work, repeat=3, warmup=1)
    assert len(calls) == 4
    assert 0.01 <= best < 0.02


def test_best_time_synchronizes_a_cpu_device_without_error():
    assert best_time(lambda: torch.ones(10).sum(), repeat=2, device=torch.device("cpu")) >= 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"repeat": 0}, "repeat"), ({"repeat": 1.5}, "repeat"), ({"warmup": -1}, "warmup")],
)
def test_best_time_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        best_time(lambda: None, **kwargs)


def test_best_time_rejects_non_callables():
    with pytest.raises(TypeError, match="callable"):
        best_time(42)
