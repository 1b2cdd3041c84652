"""In-process tests of the chapter 09 scripts' functions (helpers/distributed/*.py).

tests/test_distributed.py launches the scripts with torchrun, which checks them end to
end but runs them in fresh processes. Here the same functions run inside the test
process: collectives.main with every rank a thread of this process and the collectives
computed by a small stand-in, and the pieces of train_ddp.py called directly.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from helpers.distributed import DistributedContext, collectives, lines_by_rank, train_ddp

# ---------------------------------------------------------------- collectives.py


class _ThreadWorld:
    """Ranks as threads of this process: torch.distributed's collectives, written out here."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=20)
        self.slots: list = [None] * size
        self.local = threading.local()
        self.destroyed = [0] * size

    def _exchange(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of ``tensor``, in rank order (all ranks must call it)."""
        self.slots[self.local.rank] = tensor.clone()
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()
        return values

    def all_reduce(self, tensor, op=dist.ReduceOp.SUM):
        assert op == dist.ReduceOp.SUM, op
        tensor.copy_(torch.stack(self._exchange(tensor)).sum(dim=0))

    def broadcast(self, tensor, src):
        tensor.copy_(self._exchange(tensor)[src])

    def all_gather(self, tensor_list, tensor):
        assert len(tensor_list) == self.size
        for out, value in zip(tensor_list, self._exchange(tensor), strict=True):
            out.copy_(value)

    def reduce_scatter_tensor(self, output, input):
        total = torch.stack(self._exchange(input)).sum(dim=0)
        output.copy_(total.chunk(self.size)[self.local.rank])

    def destroy_process_group(self, group=None):
        self.destroyed[self.local.rank] += 1


def _run_collectives(monkeypatch, size: int) -> tuple[str, _ThreadWorld]:
    world = _ThreadWorld(size)
    for name in ("all_reduce", "broadcast", "all_gather", "reduce_scatter_tensor", "destroy_process_group"):
        monkeypatch.setattr(dist, name, getattr(world, name))

    def setup_distributed():
        rank = world.local.rank
        return DistributedContext(rank, rank, size, size, "gloo", torch.device("cpu"))

    monkeypatch.setattr(collectives, "setup_distributed", setup_distributed)
    errors = []

    def rank_main(rank):
        world.local.rank = rank
        # Tensors made without device= would land on "meta" and fail: every tensor
        # must be made on the context's device (a GPU under nccl).
        torch.set_default_device("meta")
        try:
            collectives.main()
        except BaseException as error:  # reported below, with the rank
            errors.append((rank, error))
            world.barrier.abort()
        finally:
            torch.set_default_device(None)

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return world


@pytest.mark.parametrize(("size", "node"), [(2, None), (3, "5")])
def test_collectives_script_prints_what_each_rank_holds(monkeypatch, capsys, size, node):
    if node is None:
        monkeypatch.delenv("GROUP_RANK", raising=False)
    else:
        monkeypatch.setenv("GROUP_RANK", node)
    world = _run_collectives(monkeypatch, size)
    by_rank = lines_by_rank(capsys.readouterr().out)
    assert list(by_rank) == list(range(size))
    host = __import__("socket").gethostname()
    ranks = range(size)
    for r in ranks:
        full = [float(i + 100 * r) for i in range(2 * size)]
        piece = [float(sum(2 * r + j + 100 * q for q in ranks)) for j in range(2)]
        assert by_rank[r] == [
            f"of world size {size}, local rank {r} on node {node or '?'} ({host}), backend gloo, device cpu",
            f"all_reduce(SUM):  had {r + 1.0}, now holds {float(sum(q + 1 for q in ranks))}",
            f"average:          had {[1.0 * (r + 1), -2.0 * (r + 1)]}, now holds "
            f"{[sum(q + 1 for q in ranks) / size, -2 * sum(q + 1 for q in ranks) / size]}",
            f"broadcast(src=0): had {[0.0, 1.0, 2.0, 3.0] if r == 0 else [0.0] * 4}, "
            "now holds [0.0, 1.0, 2.0, 3.0]",
            f"all_gather:       had {[10.0 * r] * 2}, now holds {[[10.0 * q] * 2 for q in ranks]}",
            f"reduce_scatter:   had {full}, now holds {piece}",
        ]
    assert world.destroyed == [1] * size  # every rank leaves the group once


# ---------------------------------------------------------------- train_ddp.py pieces


def test_build_parser_reads_every_option_with_its_type():
    parser = train_ddp.build_parser()
    assert parser.description == "Data-parallel training of a digit classifier with DistributedDataParallel."
    defaults = vars(parser.parse_args(["--data", "d.pt", "--out-dir", "runs"]))
    assert defaults == {
        "data": Path("d.pt"),
        "out_dir": Path("runs"),
        "epochs": 6,
        "batch_size": 32,
        "lr": 0.05,
        "momentum": 0.9,
        "seed": 0,
        "dtype": "float32",
        "backend": None,
        "micro_batches": 1,
        "crash_at_epoch": None,
        "crash_rank": 1,
    }
    words = "--epochs 3 --batch-size 8 --lr 0.5 --momentum 0 --seed 7 --dtype float64 --backend nccl"
    words += " --micro-batches 2 --crash-at-epoch 2 --crash-rank 0"
    given = vars(parser.parse_args(["--data=d.pt", "--out-dir=runs", *words.split()]))
    assert given == {
        "data": Path("d.pt"),
        "out_dir": Path("runs"),
        "epochs": 3,
        "batch_size": 8,
        "lr": 0.5,
        "momentum": 0.0,
        "seed": 7,
        "dtype": "float64",
        "backend": "nccl",
        "micro_batches": 2,
        "crash_at_epoch": 2,
        "crash_rank": 0,
    }
    assert [type(given[k]) for k in ("epochs", "lr", "momentum", "crash_rank")] == [int, float, float, int]
    assert isinstance(given["data"], Path) and isinstance(given["out_dir"], Path)
    assert (
        parser.parse_args(["--data=d", "--out-dir=o", "--dtype=float32", "--backend=gloo"]).backend == "gloo"
    )
    text = " ".join(parser.format_help().split())
    for phrase in (
        "tensors (torch.save)",
        "checkpoints, logs",
        "per process",
        "gradient accumulation pieces",
    ):
        assert phrase in text


@pytest.mark.parametrize(
    "words",
    [
        ["--out-dir=o"],  # --data is required
        ["--data=d"],  # --out-dir is required
        ["--data=d", "--out-dir=o", "--dtype=float16"],
        ["--data=d", "--out-dir=o", "--backend=mpi"],
        ["--data=d", "--out-dir=o", "--epochs=1.5"],
    ],
)
def test_build_parser_rejects_what_the_script_cannot_run(words, capsys):
    with pytest.raises(SystemExit):
        train_ddp.build_parser().parse_args(words)
    assert "error:" in capsys.readouterr().err


def test_build_parser_without_the_fault_demo_has_no_crash_options(capsys):
    parser = train_ddp.build_parser(fault_demo=False)
    args = vars(parser.parse_args(["--data=d", "--out-dir=o"]))
    assert "crash_at_epoch" not in args and "crash_rank" not in args
    with pytest.raises(SystemExit):
        parser.parse_args(["--data=d", "--out-dir=o", "--crash-at-epoch=1"])


def test_make_model_is_a_784_128_10_perceptron_with_a_relu():
    model = train_ddp.make_model()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {"0.weight": (128, 784), "0.bias": (128,), "2.weight": (10, 128), "2.bias": (10,)}
    assert isinstance(model[1], nn.ReLU)
    x = torch.randn(3, 784)
    with torch.no_grad():
        expected = model[2](torch.relu(model[0](x)))
    torch.testing.assert_close(model(x), expected)


class _Note:
    """An object that is not a tensor: weights_only loading must refuse it."""


def test_load_data_converts_the_inputs_and_loads_only_tensors(tmp_path):
    x = torch.arange(12.0).reshape(6, 2)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    path = tmp_path / "data.pt"
    torch.save({"x_train": x[:4], "y_train": y[:4], "x_val": x[4:], "y_val": y[4:]}, path)
    train_set, x_val, y_val = train_ddp.load_data(path, torch.float64)
    assert train_set.tensors[0].dtype == torch.float64 and x_val.dtype == torch.float64
    assert torch.equal(train_set.tensors[0], x[:4].double()) and torch.equal(train_set.tensors[1], y[:4])
    assert torch.equal(x_val, x[4:].double()) and torch.equal(y_val, y[4:])
    assert train_ddp.load_data(path)[1].dtype == torch.float32  # the default
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"x_train": x, "y_train": y, "x_val": x, "y_val": y, "note": _Note()}, unsafe)
    with pytest.raises(pickle.UnpicklingError):
        train_ddp.load_data(unsafe)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: train_ddp.make_loader([1], 2, 0), TypeError, "dataset must be a TensorDataset, got list"),
        (
            lambda: train_ddp.make_loader(torch.utils.data.TensorDataset(torch.zeros(2)), 1.0, 0),
            TypeError,
            "batch_size must be an int, got float",
        ),
        (
            lambda: train_ddp.make_loader(torch.utils.data.TensorDataset(torch.zeros(2)), True, 0),
            TypeError,
            "batch_size must be an int, got bool",
        ),
        (
            lambda: train_ddp.make_loader(torch.utils.data.TensorDataset(torch.zeros(2)), 0, 0),
            ValueError,
            "batch_size must be >= 1, got 0",
        ),
        (
            lambda: train_ddp.make_loader(torch.utils.data.TensorDataset(torch.zeros(2)), 2, "0"),
            TypeError,
            "seed must be an int, got str",
        ),
        (
            lambda: train_ddp.make_loader(torch.utils.data.TensorDataset(torch.zeros(2)), 2, -1),
            ValueError,
            "seed must be >= 0, got -1",
        ),
        (lambda: train_ddp.save_atomically({}, "m.pt"), TypeError, "path must be a pathlib.Path, got str"),
        (
            lambda: train_ddp.save_atomically({}, Path("/no/such/folder/m.pt")),
            ValueError,
            "path must be in an existing folder, got /no/such/folder/m.pt",
        ),
    ],
)
def test_train_ddp_error_messages_name_the_argument(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_make_loader_takes_batch_size_1_and_seed_0():
    dataset = torch.utils.data.TensorDataset(torch.arange(4))
    loader = train_ddp.make_loader(dataset, 1, 0, num_replicas=1, rank=0)
    loader.sampler.set_epoch(0)
    batches = [batch[0].tolist() for batch in loader]
    generator = torch.Generator()
    generator.manual_seed(0)  # seed 0 + epoch 0
    assert batches == [[i] for i in torch.randperm(4, generator=generator).tolist()]


def test_save_atomically_writes_beside_the_target_and_keeps_the_first_error(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    written = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: (written.append(Path(f)), real_save(obj, f)))
    train_ddp.save_atomically({"w": torch.ones(1)}, path)
    # the temporary file sits in the same folder: os.replace is then an atomic rename
    assert written == [tmp_path / "checkpoint.tmp"]
    assert torch.load(path, weights_only=True)["w"].item() == 1.0

    def fail_before_writing(obj, f):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_before_writing)
    with pytest.raises(OSError, match="disk full"):  # not a FileNotFoundError from the clean-up
        train_ddp.save_atomically({"w": torch.zeros(1)}, path)
    assert torch.load(path, weights_only=True)["w"].item() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def _batches(n_batches: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * size, 784, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 10, (n_batches * size,), generator=generator)
    return list(zip(x.split(size), y.split(size), strict=True))


def _reference_steps(model: nn.Module, batches, lr: float) -> float:
    """Plain SGD, one step per batch, written out; returns the sample-weighted loss sum."""
    total = 0.0
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= lr * g
        total += loss.item() * len(y)
    return total


def _two_models():
    torch.manual_seed(0)
    model = train_ddp.make_model().double()
    reference = train_ddp.make_model().double()
    reference.load_state_dict(model.state_dict())
    return model, reference


def test_train_one_epoch_steps_per_batch_and_returns_loss_sum_and_count():
    batches = _batches(3, 5) + _batches(1, 2, seed=1)  # a shorter last batch
    model, reference = _two_models()
    model.eval()  # the state an evaluation leaves behind: training must switch it back
    totals = train_ddp.train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), "cpu")
    expected = _reference_steps(reference, batches, lr=0.1)
    assert model.training
    assert totals.dtype == torch.float64 and totals.shape == (2,)
    assert totals[0].item() == pytest.approx(expected, rel=1e-12) and totals[1].item() == 17
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_train_one_epoch_crashes_after_the_given_number_of_steps():
    batches = _batches(4, 3)
    model, reference = _two_models()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError) as info:
        train_ddp.train_one_epoch(model, batches, optimizer, "cpu", crash_after_steps=2)
    assert str(info.value) == "simulated failure: this worker dies mid-epoch"
    _reference_steps(reference, batches[:2], lr=0.1)  # exactly two steps were taken
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("accumulating", [False, True])
def test_training_runs_on_the_device_it_is_given(accumulating):
    """The batches come on the CPU; the model, the sums and the steps are on device."""
    device = torch.device("meta")  # no values, but every tensor must be on it
    model = _NoSync(train_ddp.make_model()).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(x.float(), y) for x, y in _batches(2, 4)]
    if accumulating:
        totals = train_ddp.train_one_epoch_accumulating(model, batches, optimizer, device, 2)
    else:
        totals = train_ddp.train_one_epoch(model, batches, optimizer, device)
    assert totals.device == device and totals.dtype == torch.float64 and totals.shape == (2,)


class _NoSync(nn.Module):
    """Stands in for DDP: records, for every backward, whether it ran inside no_sync()."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.syncing = True
        self.backward_synced: list[bool] = []
        first = next(module.parameters())
        first.register_hook(lambda grad: self.backward_synced.append(self.syncing))

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def forward(self, x):
        return self.module(x)


@pytest.mark.parametrize(("batch", "micro_batches"), [(6, 3), (7, 3), (2, 3)])
def test_accumulating_equals_one_step_per_whole_batch_and_syncs_only_the_last_piece(batch, micro_batches):
    batches = _batches(3, batch)
    model, reference = _two_models()
    wrapped = _NoSync(model)
    model.eval()
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    totals = train_ddp.train_one_epoch_accumulating(wrapped, batches, optimizer, "cpu", micro_batches)
    expected = _reference_steps(reference, batches, lr=0.1)
    assert model.training
    assert totals[0].item() == pytest.approx(expected, rel=1e-10) and totals[1].item() == 3 * batch
    assert totals.dtype == torch.float64
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    # per batch: the non-empty pieces, of which only the last backward all-reduces
    pieces = min(batch, micro_batches)
    assert wrapped.backward_synced == ([False] * (pieces - 1) + [True]) * 3
