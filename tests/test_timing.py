import pytest
import torch

from helpers import timing
from helpers.timing import best_time, one_thread


class FakeClock:
    """A clock that advances only when the timed function says how long it 'took'."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_best_time_returns_the_fastest_timed_run_and_skips_warmup():
    clock = FakeClock()
    durations = iter([5.0, 0.3, 0.1, 0.2])  # the warm-up is slowest and must not count
    calls = []

    def work():
        calls.append(1)
        clock.now += next(durations)

    best = best_time(work, repeat=3, warmup=1, clock=clock)
    assert len(calls) == 4
    assert best == pytest.approx(0.1)


def test_each_timed_run_waits_for_the_device(monkeypatch):
    clock = FakeClock()
    events = []
    monkeypatch.setattr(timing, "_synchronize", lambda device: events.append(("sync", device)))

    def work():
        events.append(("run", None))
        clock.now += 1.0

    best_time(work, repeat=2, warmup=1, device="cpu", clock=clock)
    cpu = torch.device("cpu")
    # warm-up, one sync before timing, then every timed run followed by its own sync
    assert events == [
        ("run", None),
        ("sync", cpu),
        ("run", None),
        ("sync", cpu),
        ("run", None),
        ("sync", cpu),
    ]


def test_synchronize_ignores_the_cpu_and_none():
    timing._synchronize(None)
    timing._synchronize(torch.device("cpu"))  # no CUDA/MPS call is made, so nothing raises here


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"repeat": 0}, ValueError, "repeat"),
        ({"repeat": 1.5}, TypeError, "repeat"),
        ({"warmup": -1}, ValueError, "warmup"),
        ({"warmup": True}, TypeError, "warmup"),
        ({"device": 0}, TypeError, "device"),
        ({"clock": 1.0}, TypeError, "clock"),
    ],
)
def test_best_time_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        best_time(lambda: None, **kwargs)


def test_best_time_rejects_non_callables():
    with pytest.raises(TypeError, match="callable"):
        best_time(42)


def test_one_thread_sets_one_thread_and_restores_the_count_even_after_an_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), one_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
