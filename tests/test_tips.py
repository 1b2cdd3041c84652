import io
import math
import os
import pickle
import re
import time

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import tips
from helpers.tips import CostlyDataset, atomic_save, busy_work, separation, speed_verdict

# ---------------------------------------------------------------- busy_work


def test_busy_work_returns_the_checksum_of_its_rounds():
    expected = 0
    for i in range(1000):
        expected = (expected + i * i) % 1_000_003
    assert busy_work(1000) == expected
    # below the modulus the checksum is the sum of squares, n (n - 1) (2n - 1) / 6
    assert busy_work(100) == 99 * 100 * 199 // 6
    assert busy_work(0) == 0


@pytest.mark.parametrize("rounds", [1.5, True, "10"])
def test_busy_work_rejects_non_integers(rounds):
    with pytest.raises(TypeError, match="rounds"):
        busy_work(rounds)


def test_busy_work_names_the_wrong_type():
    with pytest.raises(TypeError, match="got float"):
        busy_work(1.5)


def test_busy_work_rejects_negative_rounds():
    with pytest.raises(ValueError, match="rounds"):
        busy_work(-1)


# ---------------------------------------------------------------- CostlyDataset


def _data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n * 3, dtype=torch.float32).reshape(n, 3), torch.arange(n)


def test_costly_dataset_returns_the_wrapped_pairs():
    x, y = _data()
    dataset = CostlyDataset(x, y)
    assert len(dataset) == 6
    item_x, item_y = dataset[4]
    assert torch.equal(item_x, x[4]) and item_y.item() == 4


def test_costly_dataset_sleeps_for_each_item():
    x, y = _data()
    dataset = CostlyDataset(x, y, sleep_s=0.02)
    start = time.perf_counter()
    dataset[0]
    assert time.perf_counter() - start >= 0.02


def test_costly_dataset_does_its_work_for_each_item(monkeypatch):
    calls = []
    monkeypatch.setattr(tips, "busy_work", lambda rounds: calls.append(rounds))
    x, y = _data()
    dataset = CostlyDataset(x, y, work=123)
    dataset[0]
    dataset[1]
    assert calls == [123, 123]


def test_costly_dataset_noise_comes_from_torchs_generator():
    x, y = _data()
    dataset = CostlyDataset(x, y, noise_std=0.5)
    torch.manual_seed(0)
    first = dataset[2][0]
    torch.manual_seed(0)
    again = dataset[2][0]
    torch.manual_seed(0)
    reference = x[2] + 0.5 * torch.randn(3)
    assert torch.equal(first, again) and torch.equal(first, reference)
    assert not torch.equal(first, x[2]) and first.dtype == x.dtype


def test_costly_dataset_by_default_neither_sleeps_works_nor_draws(monkeypatch):
    slept, worked = [], []
    monkeypatch.setattr(tips.time, "sleep", lambda s: slept.append(s))
    monkeypatch.setattr(tips, "busy_work", lambda rounds: worked.append(rounds))
    x, y = _data()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    item_x, _ = CostlyDataset(x, y)[1]
    # no sleep(0), no busy_work, and no draw that would move the global generator
    assert slept == [] and worked == []
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(item_x, x[1])
    CostlyDataset(x, y, work=1)[1]
    assert worked == [1]


def test_costly_dataset_draws_noise_in_the_inputs_dtype():
    x, y = _data()
    x = x.double()
    torch.manual_seed(0)
    noisy = CostlyDataset(x, y, noise_std=0.5)[2][0]
    torch.manual_seed(0)
    assert torch.equal(noisy, x[2] + 0.5 * torch.randn(3, dtype=torch.float64))


def test_costly_dataset_names_the_wrong_types():
    x, y = _data()
    with pytest.raises(TypeError, match="got list and Tensor"):
        CostlyDataset(x.tolist(), y)
    with pytest.raises(TypeError, match="got Tensor and list"):
        CostlyDataset(x, y.tolist())
    with pytest.raises(TypeError, match="work must be an int, got float"):
        CostlyDataset(x, y, work=2.0)
    with pytest.raises(TypeError, match="sleep_s must be a number, got str"):
        CostlyDataset(x, y, sleep_s="1")
    with pytest.raises(ValueError, match=r"^noise_std must be"):
        CostlyDataset(x, y, noise_std=math.inf)


def test_costly_dataset_survives_pickling_and_workers():
    x, y = _data(8)
    dataset = CostlyDataset(x, y)
    copy = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(copy[3][0], x[3])
    batches = list(DataLoader(dataset, batch_size=4, num_workers=1))
    assert torch.equal(torch.cat([b[0] for b in batches]), x)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)


def test_costly_dataset_rejects_bad_tensors():
    x, y = _data()
    with pytest.raises(TypeError, match="inputs and targets"):
        CostlyDataset(x.tolist(), y)
    with pytest.raises(TypeError, match="inputs and targets"):
        CostlyDataset(x, y.tolist())
    with pytest.raises(ValueError, match="same length"):
        CostlyDataset(x, y[:-1])
    with pytest.raises(ValueError, match="same length"):
        CostlyDataset(torch.tensor(1.0), y)
    with pytest.raises(ValueError, match="same length"):
        CostlyDataset(x[:1], torch.tensor(1))
    with pytest.raises(ValueError, match="floating point"):
        CostlyDataset(x.long(), y)


@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"sleep_s": -0.1}, ValueError, "sleep_s"),
        ({"sleep_s": math.inf}, ValueError, "sleep_s"),
        ({"sleep_s": math.nan}, ValueError, "sleep_s"),
        ({"sleep_s": "1"}, TypeError, "sleep_s"),
        ({"sleep_s": True}, TypeError, "sleep_s"),
        ({"work": 2.0}, TypeError, "work"),
        ({"work": False}, TypeError, "work"),
        ({"work": -1}, ValueError, "work"),
        ({"noise_std": -1.0}, ValueError, "noise_std"),
    ],
)
def test_costly_dataset_rejects_bad_options(options, error, name):
    x, y = _data()
    with pytest.raises(error, match=name):
        CostlyDataset(x, y, **options)


# ---------------------------------------------------------------- separation


def test_separation_needs_every_reading_apart():
    assert separation([0.136, 0.148], [0.353, 0.880]) == "lower"
    assert separation([0.353, 0.880], [0.136, 0.148]) == "higher"
    # the means differ a lot, but one reading of a lies among b's
    assert separation([0.1, 0.5], [0.4, 0.6]) == "overlapping"
    assert separation([1.0], [1.0]) == "overlapping"  # equal is not below


def test_separation_margin_is_a_share_of_the_larger_side():
    assert separation([1.0, 1.05], [1.2]) == "lower"
    assert separation([1.0, 1.05], [1.2], margin=0.1) == "lower"  # 1.155 < 1.2
    assert separation([1.0, 1.1], [1.2], margin=0.1) == "overlapping"  # 1.21 > 1.2
    assert separation([1.72, 1.6], [1.73, 1.9], margin=0.05) == "overlapping"
    assert separation([2.0], [1.0], margin=0.5) == "higher"
    assert separation([1.4], [1.0], margin=0.5) == "overlapping"


def test_separation_is_transitive():
    import random

    rng = random.Random(8)
    arms = [[rng.uniform(0.1, 3.0) for _ in range(rng.randint(1, 3))] for _ in range(30)]
    for margin in (0.0, 0.1):
        for a in arms:
            for b in arms:
                for c in arms:
                    if separation(a, b, margin=margin) == separation(b, c, margin=margin) == "lower":
                        assert separation(a, c, margin=margin) == "lower"


@pytest.mark.parametrize(
    ("a", "b", "margin", "error"),
    [
        ([], [1.0], 0.0, TypeError),
        (1.0, [1.0], 0.0, TypeError),
        ([True], [1.0], 0.0, TypeError),
        ([1.0], [0.0], 0.0, ValueError),
        ([1.0], [float("nan")], 0.0, ValueError),
        ([1.0], [1.0], -0.1, ValueError),
    ],
)
def test_separation_rejects_bad_input(a, b, margin, error):
    with pytest.raises(error):
        separation(a, b, margin=margin)


# ---------------------------------------------------------------- speed_verdict


def test_separation_names_the_bad_argument():
    with pytest.raises(TypeError, match=r"^a must be a non-empty sequence"):
        separation([], [1.0])
    with pytest.raises(TypeError, match=r"^b must be a non-empty sequence"):
        separation([1.0], [])
    # a set is not a sequence, even a non-empty one of numbers
    with pytest.raises(TypeError, match=r"^a must be a non-empty sequence"):
        separation({1.0}, [2.0])
    with pytest.raises(TypeError, match=r"^b must hold numbers, got str"):
        separation([1.0], ["2"])
    with pytest.raises(ValueError, match=r"^a must hold positive finite numbers, got inf"):
        separation([math.inf], [1.0])
    with pytest.raises(ValueError, match=r"^margin"):
        separation([1.0], [2.0], margin=-0.1)


def test_speed_verdict_names_the_direction_and_the_ratio():
    assert speed_verdict(2.0, 1.0) == "2.0 times faster than"
    assert speed_verdict(1.0, 3.0) == "3.0 times slower than"
    assert speed_verdict(1.1, 1.0) == "1.1 times faster than"  # exactly at the margin


def test_speed_verdict_rounds_the_ratio_down_never_up():
    # "N times" is a lower bound: 1.89 and 1.46 are not yet 1.9 and 1.5
    assert speed_verdict(1.89, 1.0) == "1.8 times faster than"
    assert speed_verdict(1.0, 1.46) == "1.4 times slower than"
    assert speed_verdict(9444.5, 6456.1) == "1.4 times faster than"
    # a ratio that is a tenth in exact arithmetic stays at it, though 0.3 / 0.2 computes
    # 1.4999999999999998 and 0.42 / 0.2 computes 2.0999999999999996
    assert speed_verdict(0.3, 0.2) == "1.5 times faster than"
    assert speed_verdict(0.2, 0.42) == "2.1 times slower than"


def test_speed_verdict_calls_small_differences_equal():
    assert speed_verdict(1.05, 1.0) == "as fast as (within 10%)"
    assert speed_verdict(1.0, 1.05) == "as fast as (within 10%)"
    assert speed_verdict(1.3, 1.0, tolerance=0.5) == "as fast as (within 50%)"
    assert speed_verdict(1.0, 1.6, tolerance=0.5) == "1.6 times slower than"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("1", 1.0), TypeError),
        ((1.0, True), TypeError),
        ((0.0, 1.0), ValueError),
        ((1.0, -2.0), ValueError),
        ((math.inf, 1.0), ValueError),
        ((1.0, math.nan), ValueError),
    ],
)
def test_speed_verdict_rejects_bad_times(args, error):
    with pytest.raises(error, match="_s must be"):
        speed_verdict(*args)


def test_speed_verdict_calls_a_ratio_of_exactly_one_plus_tolerance():
    # 1.0 / (1.0 / 1.1) is exactly 1.1 in floating point: on the band's edge
    assert speed_verdict(1.0, 1.1) == "1.1 times slower than"
    assert speed_verdict(1.1, 1.0) == "1.1 times faster than"


def test_speed_verdict_names_the_bad_argument():
    with pytest.raises(TypeError, match=r"^candidate_s must be a number, got str"):
        speed_verdict(1.0, "1")
    with pytest.raises(ValueError, match=r"^tolerance"):
        speed_verdict(1.0, 1.0, tolerance=math.inf)


def test_speed_verdict_rejects_a_bad_tolerance():
    with pytest.raises(ValueError, match="tolerance"):
        speed_verdict(1.0, 1.0, tolerance=0.0)


# ---------------------------------------------------------------- atomic_save


def test_atomic_save_writes_what_torch_load_reads(tmp_path):
    state = {"weight": torch.randn(3, 2), "step": 7}
    path = atomic_save(state, tmp_path / "checkpoint.pt")
    assert path == tmp_path / "checkpoint.pt"
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["weight"], state["weight"]) and loaded["step"] == 7
    atomic_save({"step": 8}, str(path))  # a str path, replacing the old file
    assert torch.load(path, weights_only=True) == {"step": 8}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_failed_atomic_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"step": 1}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        atomic_save({"step": 2, "bad": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_save_killed_halfway_keeps_the_old_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"step": 1, "w": torch.ones(4)}, path)
    real_save = torch.save

    def write_half_then_die(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        file.flush()
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 2, "w": torch.zeros(4)}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_atomic_save_rejects_bad_paths(tmp_path):
    with pytest.raises(TypeError, match="path must be a str or Path, got int"):
        atomic_save({}, 3)
    with pytest.raises(ValueError, match="existing folder"):
        atomic_save({}, tmp_path / "missing" / "checkpoint.pt")


def test_atomic_save_flushes_the_file_and_then_its_folder(tmp_path, monkeypatch):
    flushed = []
    real_fsync = os.fsync

    def spy(handle):
        flushed.append(os.path.realpath(f"/proc/self/fd/{handle}"))
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_save({"step": 1}, tmp_path / "checkpoint.pt")
    if os.name == "posix" and os.path.isdir("/proc/self/fd"):
        # first the temporary file's contents, then the folder holding the rename
        assert len(flushed) == 2
        assert flushed[0].startswith(str(tmp_path / ".checkpoint.pt."))
        assert flushed[0].endswith(".tmp")
        assert flushed[1] == os.path.realpath(tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_save_gives_the_permissions_torch_save_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_save({"step": 1}, tmp_path / "atomic.pt")
        torch.save({"step": 1}, tmp_path / "plain.pt")
    finally:
        os.umask(previous)
    mode = (tmp_path / "atomic.pt").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.pt").stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- timing rounds


def ticking_clock():
    """A fake clock that advances one second every time it is read."""
    ticks = iter(range(1000))
    return lambda: float(next(ticks))


def recording_fns(calls: list) -> dict:
    """Two functions, "a" and "b", that note their calls in `calls`."""
    return {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}


def duration_clock(durations: dict):
    """Functions that each take the next of their `durations` (fake seconds),
    and the fake clock that sees them pass."""
    now, pending = [0.0], []

    def clock():
        if pending:
            now[0] += pending.pop()
        return now[0]

    fns = {name: (lambda n=name: pending.append(next(durations[n]))) for name in durations}
    return fns, clock


def test_timed_rounds_interleaves_and_reverses_every_other_round():
    calls = []
    fns = recording_fns(calls)
    readings = tips.timed_rounds(fns, rounds=3, repeat=1, warmup=0, clock=ticking_clock())
    assert calls == ["a", "b", "b", "a", "a", "b"]
    # each best_time with repeat=1 reads the clock twice: one tick per reading
    assert readings == {"a": [1.0, 1.0, 1.0], "b": [1.0, 1.0, 1.0]}
    assert len(tips.timed_rounds(fns, rounds=4, repeat=1, warmup=0)["a"]) == 4


def test_timed_rounds_returns_each_functions_own_fastest_run():
    fns, clock = duration_clock({"slow": iter([5.0, 3.0]), "fast": iter([1.0, 2.0])})
    readings = tips.timed_rounds(fns, rounds=1, repeat=1, warmup=0, clock=clock)
    assert readings == {"slow": [5.0], "fast": [1.0]}


@pytest.mark.parametrize("fns, rounds", [({}, 3), ({"a": 1}, 3), ({"a": print}, 0), ({"a": print}, True)])
def test_timed_rounds_rejects_bad_input(fns, rounds):
    with pytest.raises((TypeError, ValueError), match=r"^(fns|rounds) must be"):
        tips.timed_rounds(fns, rounds=rounds)


def test_timed_rounds_takes_three_rounds_by_default(monkeypatch):
    monkeypatch.setattr(tips, "best_time", lambda fn, **options: 1.0)
    assert tips.timed_rounds({"a": lambda: None}) == {"a": [1.0, 1.0, 1.0]}


def test_paired_rounds_alternates_calls_and_reverses_every_other_call():
    calls = []
    fns = recording_fns(calls)
    readings = tips.paired_rounds(fns, rounds=2, repeat=3, warmup=1, clock=ticking_clock())
    # each round: one warm-up call each, then a, b / b, a / a, b
    round_calls = ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert calls == round_calls * 2
    # every timed call reads the clock twice, one tick apart
    assert readings == {"a": [1.0, 1.0], "b": [1.0, 1.0]}


def test_paired_rounds_keeps_each_functions_fastest_call_per_round():
    durations = {"a": iter([5.0, 2.0, 4.0, 9.0, 3.0, 7.0]), "b": iter([1.0, 6.0, 8.0, 2.5, 4.5, 0.5])}
    fns, clock = duration_clock(durations)
    readings = tips.paired_rounds(fns, rounds=2, repeat=3, warmup=0, clock=clock)
    # round 1: a takes 5, 2, 4 and b 1, 6, 8; round 2: a 9, 3, 7 and b 2.5, 4.5, 0.5
    assert readings == {"a": [2.0, 3.0], "b": [1.0, 0.5]}
    assert list(tips.paired_rounds({"x": print}, repeat=1, warmup=0, clock=lambda: 0.0)["x"]) == [0.0] * 3


def test_paired_rounds_waits_for_the_device_after_every_call(monkeypatch):
    waits = []
    monkeypatch.setattr(tips, "_synchronize", waits.append)
    tips.paired_rounds({"a": lambda: None, "b": lambda: None}, rounds=1, repeat=2, warmup=1, device="cpu")
    # once after the warm-up, then after each of the four timed calls
    assert waits == [torch.device("cpu")] * 5


@pytest.mark.parametrize(
    "fns, options, message",
    [
        ({}, {}, "fns must be"),
        ({"a": 1}, {}, "fns must be"),
        ({"a": print}, {"rounds": 0}, "rounds must be"),
        ({"a": print}, {"rounds": True}, "rounds must be"),
        ({"a": print}, {"repeat": 0}, "repeat must be"),
        ({"a": print}, {"warmup": -1}, "warmup must be"),
        ({"a": print}, {"device": 0}, "device must be a str, torch.device or None, got int"),
    ],
)
def test_paired_rounds_rejects_bad_input(fns, options, message):
    kwargs = {"repeat": 1, "warmup": 0} | options
    with pytest.raises((TypeError, ValueError), match=f"^{message}"):
        tips.paired_rounds(fns, **kwargs)


def test_rounds_verdict_needs_a_ten_percent_gap_and_quotes_the_worst_case():
    # candidate wholly faster: quoted as slowest base-side min over candidate's max
    assert tips.rounds_verdict([3.0, 2.4, 2.6], [1.0, 1.2, 1.1]) == "2.0 times faster than"
    assert tips.rounds_verdict([1.0, 1.2, 1.1], [3.0, 2.4, 2.6]) == "2.0 times slower than"
    # one overlapping reading is enough for no verdict
    assert tips.rounds_verdict([3.0, 1.0], [1.0, 1.2]) == tips.NOISE
    # apart, but by less than 10 %: a steady lead the rule does not call, either way
    assert tips.rounds_verdict([1.08, 1.09], [1.0, 1.01]) == tips.NEAR == "close to"
    assert tips.rounds_verdict([1.0, 1.01], [1.08, 1.09]) == tips.NEAR
    # touching readings are not apart
    assert tips.rounds_verdict([1.0, 1.05], [1.0, 0.99]) == tips.NOISE
    assert tips.NOISE == "within the noise of"
    assert tips.rounds_verdict([1.2, 1.3], [1.0, 1.05]) == "1.1 times faster than"


def test_paired_verdict_needs_every_round_beyond_the_band_on_one_side():
    assert tips.paired_verdict([2.0, 3.0, 1.5], [1.0, 1.0, 1.0]) == "1.5 times faster than"
    assert tips.paired_verdict([1.0, 1.0, 1.0], [2.0, 3.0, 1.5]) == "1.5 times slower than"
    # pairing matters: the same sets, paired differently, straddle the band
    assert tips.paired_verdict([2.0, 1.0], [1.0, 2.0]) == tips.NOISE
    # every round one way, one of them within the band: near, either way
    assert tips.paired_verdict([1.05, 2.0], [1.0, 1.0]) == tips.NEAR
    assert tips.paired_verdict([1.0, 1.0], [1.05, 2.0]) == tips.NEAR
    # a round exactly even is on neither side
    assert tips.paired_verdict([1.0, 2.0], [1.0, 1.0]) == tips.NOISE
    assert tips.paired_verdict([1.0, 1.0], [1.0, 2.0]) == tips.NOISE
    assert tips.paired_verdict([1.1, 2.0], [1.0, 1.0]) == "1.1 times faster than"
    # on the band's edge: 1.0 / 1.1 is exactly 1 / 1.1 in floating point
    assert tips.paired_verdict([1.0], [1.1]) == "1.1 times slower than"
    with pytest.raises(ValueError, match="pair"):
        tips.paired_verdict([1.0, 2.0], [1.0])


def test_one_way_needs_every_reading_on_one_side_but_no_margin():
    assert tips.one_way([2.0, 2.1], [1.9, 1.95]) == "faster"
    assert tips.one_way([1.9, 1.95], [2.0, 2.1]) == "slower"
    assert tips.one_way([2.0, 1.9], [1.95, 2.1]) == ""


def test_rounds_note_flags_a_pass_with_under_five_percent_to_spare():
    # candidate faster: the nearest readings 1.0 and 1.12 clear 1.1 by under 5 %
    assert tips.rounds_verdict([1.12, 1.3], [1.0, 0.95]) == "1.1 times faster than"
    assert tips.rounds_note([1.12, 1.3], [1.0, 0.95]) == "narrowly"
    # ... and by more than 5 % (1.1 x 1.05 = 1.155 < 1.16): no bracket
    assert tips.rounds_note([1.16, 1.3], [1.0, 0.95]) == ""
    # the same, candidate slower: judged on the base's slowest reading
    assert tips.rounds_note([0.95, 1.0], [1.12, 1.3]) == "narrowly"
    assert tips.rounds_note([0.95, 1.0], [1.16, 1.3]) == ""
    # exactly 5 % beyond the 10 % is no longer narrow
    assert tips.rounds_note([1.1 * 1.05], [1.0]) == ""
    assert tips.rounds_note([1.0], [1.1 * 1.05]) == ""


def test_rounds_note_names_noise_that_fell_one_way():
    # apart in every reading, but by under 10 %: the rule says near
    assert tips.rounds_verdict([1.05, 1.08], [1.0, 1.01]) == tips.NEAR
    assert tips.rounds_note([1.05, 1.08], [1.0, 1.01]) == "though faster in every round"
    assert tips.rounds_note([1.0, 1.01], [1.05, 1.08]) == "though slower in every round"
    assert tips.rounds_note([1.0, 1.01], [1.05, 1.08], unit="epoch") == "though slower in every epoch"
    # overlapping readings: nothing to flag
    assert tips.rounds_note([1.0, 1.08], [1.05, 1.01]) == ""
    # a clear pass: nothing to flag either
    assert tips.rounds_note([2.0, 2.1], [1.0, 1.1]) == ""


def test_paired_note_judges_the_round_nearest_to_even():
    # every round beyond 1.1, the nearest (1.12) within a further 5 %
    assert tips.paired_note([1.12, 2.0], [1.0, 1.0]) == "narrowly"
    assert tips.paired_note([1.16, 2.0], [1.0, 1.0]) == ""
    # slower: the ratios are below 1 / 1.1, the nearest 1 / 1.12
    assert tips.paired_note([1.0, 1.0], [1.12, 2.0]) == "narrowly"
    assert tips.paired_note([1.0, 1.0], [1.16, 2.0]) == ""
    # one round inside the band, every round on one side
    assert tips.paired_note([1.05, 2.0], [1.0, 1.0]) == "though faster in every round"
    assert tips.paired_note([1.0, 1.0], [1.05, 2.0]) == "though slower in every round"
    # rounds on both sides of even
    assert tips.paired_note([0.95, 2.0], [1.0, 1.0]) == ""
    # pairing, not the sets, decides: the same sets paired otherwise
    assert tips.paired_note([2.0, 1.05], [1.0, 2.0]) == ""
    # a round at exactly even falls neither way
    assert tips.paired_note([1.0, 1.05], [1.0, 1.0]) == ""
    assert tips.paired_note([1.0, 1.0], [1.0, 1.05]) == ""
    assert tips.paired_note([0.95, 1.05], [1.0, 1.0]) == ""
    # exactly 5 % beyond the 10 % is no longer narrow
    assert tips.paired_note([1.1 * 1.05], [1.0]) == ""


@pytest.mark.parametrize(
    "base, candidate, error",
    [([], [1.0], TypeError), ([1.0], [0.0], ValueError), ([1.0], ["1"], TypeError)],
)
def test_rounds_note_rejects_bad_readings(base, candidate, error):
    with pytest.raises(error):
        tips.rounds_note(base, candidate)


def test_paired_note_rejects_rounds_that_do_not_pair():
    with pytest.raises(ValueError, match="pair"):
        tips.paired_note([1.0, 2.0], [1.0])


def test_as_printed_rounds_like_the_text_and_keeps_a_reading_that_prints_as_zero():
    assert tips.as_printed([0.00123, 0.0045678], 1e3, 2) == [1.23, 4.57]
    assert tips.as_printed([1.26e-05], 1e6, 0) == [13.0]
    # 0.4 µs prints as 0: kept as it is, so a ratio of it stays defined
    assert tips.as_printed([4e-07, 2e-06], 1e6, 0) == [pytest.approx(0.4), 2.0]
    # 0.5 prints as "0" at no decimals (half to even), and rounds to 0: kept
    assert f"{0.5:.0f}" == "0" and tips.as_printed([0.5, 1.5], 1, 0) == [0.5, 2.0]
    assert tips.as_printed([], 1e3, 1) == []


@pytest.mark.parametrize(
    ("scale", "decimals", "message"),
    [
        (1e3, -1, "decimals must be an int >= 0, got -1"),
        (1e3, 1.0, "decimals must be an int >= 0, got 1.0"),
        (1e3, True, "decimals must be an int >= 0, got True"),
        (0, 1, "scale must be a number > 0, got 0"),
        (-1e3, 1, "scale must be a number > 0, got -1000.0"),
        (float("nan"), 1, "scale must be a number > 0, got nan"),
        ("1e3", 1, "scale must be a number > 0, got '1e3'"),
        (True, 1, "scale must be a number > 0, got True"),
    ],
)
def test_as_printed_rejects_a_bad_scale_or_decimals(scale, decimals, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tips.as_printed([0.001], scale, decimals)


def test_rounds_range_and_list_print_the_extremes_and_the_order():
    assert tips.rounds_range([0.003, 0.001, 0.002], 1e3, ".1f") == "1.0–3.0"
    assert tips.rounds_range([0.00101, 0.00102], 1e3, ".1f") == "1.0"
    assert tips.rounds_list([0.003, 0.001, 0.002], 1e3, ".0f") == "3, 1, 2"
