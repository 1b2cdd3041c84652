"""Tests for helpers.distributed (chapter 09).

The helpers are tested in this process; the scripts are run for real, as torchrun jobs of
two gloo processes on the CPU, and their results are checked against a single-process
computation written out here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.run import get_args_parser
from torch.utils.data import TensorDataset

import helpers.distributed as distributed
from helpers.distributed import (
    PACKAGE_DIR,
    DistributedContext,
    choose_backend,
    failed_inside_torch,
    failure_text,
    free_port,
    lines_by_rank,
    rank_print,
    run_commands,
    run_commands_with_rerun,
    setup_distributed,
    shared_gpus,
    torchrun_command,
    train_ddp,
)

# A launch starts three or four Python processes that each import torch: allow for a
# slow, shared machine.
LAUNCH_TIMEOUT = 400
# One thread per worker; a fresh rendezvous store per restart attempt (chapter 09, 9.6).
LAUNCH_ENV = {"OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------- command lines


def test_single_node_command_parses_with_torchruns_own_parser():
    command = torchrun_command("helpers.distributed.collectives", ["--x", "1"], nproc_per_node=3)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    args = get_args_parser().parse_args(command[3:])
    assert args.standalone and args.module
    assert (args.nnodes, args.nproc_per_node, args.max_restarts) == ("1", "3", 0)
    assert args.training_script == "helpers.distributed.collectives"
    assert args.training_script_args == ["--x", "1"]


def test_multi_node_command_names_the_rendezvous():
    command = torchrun_command(
        "helpers.distributed.train_ddp",
        nnodes=2,
        nproc_per_node=4,
        rdzv_endpoint="node0:29500",
        rdzv_id="job7",
        max_restarts=3,
        local_addr="10.0.0.5",
    )
    args = get_args_parser().parse_args(command[3:])
    assert not args.standalone
    assert (args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == ("c10d", "node0:29500", "job7")
    assert (args.nnodes, args.nproc_per_node, args.max_restarts) == ("2", "4", 3)
    assert args.local_addr == "10.0.0.5"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"module": "not a module"}, ValueError, "module"),
        ({"module": 3}, TypeError, "module"),
        ({"args": "--epochs 3"}, TypeError, "args"),
        ({"nproc_per_node": 0}, ValueError, "nproc_per_node"),
        ({"nproc_per_node": 2.0}, TypeError, "nproc_per_node"),
        ({"nnodes": 2}, ValueError, "rdzv_endpoint"),
        ({"rdzv_endpoint": "no-port"}, ValueError, "rdzv_endpoint"),
        ({"rdzv_endpoint": ("node0", 29500)}, TypeError, "rdzv_endpoint"),
        ({"max_restarts": -1}, ValueError, "max_restarts"),
        ({"max_restarts": 1.0}, TypeError, "max_restarts"),
    ],
)
def test_torchrun_command_rejects_bad_arguments(kwargs, error, message):
    kwargs = {"module": "helpers.distributed.collectives", **kwargs}
    with pytest.raises(error, match=message):
        torchrun_command(**kwargs)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: torchrun_command("m", rdzv_endpoint="n0:1", rdzv_id=None),
            TypeError,
            "rdzv_id must be a str",
        ),
        (
            lambda: torchrun_command("m", rdzv_endpoint="n0:1", rdzv_id=""),
            ValueError,
            "rdzv_id must be a non-empty",
        ),
        (
            lambda: torchrun_command("m", rdzv_endpoint="n0:1", local_addr=5),
            TypeError,
            "local_addr must be a str",
        ),
        (
            lambda: torchrun_command("m", rdzv_endpoint="n0:1", local_addr=" "),
            ValueError,
            "local_addr must be a host",
        ),
        (lambda: choose_backend(None, 0.0, 2, 0), TypeError, "local_rank must be an int"),
        (lambda: choose_backend(None, 0, "2", 0), TypeError, "local_world_size must be an int"),
        (lambda: choose_backend(None, 0, 2, -1), ValueError, "gpu_count must be >= 0"),
        (lambda: choose_backend(None, 0, 2, 1.0), TypeError, "^gpu_count must be an int"),
        (lambda: shared_gpus("vm"), TypeError, "placements must be a sequence"),
        (lambda: shared_gpus([("vm",)]), TypeError, r"placements\[0\] must be a \(host, GPU UUID\) pair"),
        (lambda: rank_print(True, "x"), TypeError, "rank must be an int"),
        (lambda: train_ddp.make_loader([1, 2], 2, 0), TypeError, "dataset must be a TensorDataset"),
        (
            lambda: train_ddp.make_loader(TensorDataset(torch.zeros(2)), 0, 0),
            ValueError,
            "batch_size must be >= 1",
        ),
        (
            lambda: train_ddp.make_loader(TensorDataset(torch.zeros(2)), 2, None),
            TypeError,
            "seed must be an int",
        ),
        (lambda: train_ddp.evaluate("m", torch.zeros(2, 784), torch.zeros(2)), TypeError, "model must be"),
        (
            lambda: train_ddp.evaluate(
                train_ddp.make_model(), torch.zeros(2, 784), torch.zeros(3, dtype=torch.long)
            ),
            ValueError,
            "y must be 1-D class indices, one per row of x",
        ),
        (
            lambda: train_ddp.evaluate(train_ddp.make_model(), torch.zeros(2, 784), torch.tensor([0.5, 1.0])),
            ValueError,
            "y must hold int64 class indices",
        ),
        (lambda: train_ddp.save_atomically({}, "model.pt"), TypeError, "path must be a pathlib.Path"),
        (lambda: train_ddp.save_atomically({}, Path("/no/such/folder/m.pt")), ValueError, "existing folder"),
    ],
)
def test_distributed_helpers_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_free_port_can_be_bound():
    import socket

    port = free_port()
    assert 1024 <= port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    with pytest.raises(ValueError, match="host"):
        free_port("")
    with pytest.raises(TypeError, match="host"):
        free_port(None)


# ---------------------------------------------------------------- output handling


def test_lines_by_rank_groups_tagged_lines_in_rank_order():
    text = "[rank 1] b1\nlauncher noise\n[rank 0] a1\n[rank 1] b2\n[rank 10] z\n[rank0]: not ours"
    assert lines_by_rank(text) == {0: ["a1"], 1: ["b1", "b2"], 10: ["z"]}
    assert list(lines_by_rank(text)) == [0, 1, 10]
    with pytest.raises(TypeError, match="output"):
        lines_by_rank(b"[rank 0] x")


def test_rank_print_tags_and_round_trips(capsys):
    rank_print(3, "loss", 0.5)
    out = capsys.readouterr().out
    assert out == "[rank 3] loss 0.5\n"
    assert lines_by_rank(out) == {3: ["loss 0.5"]}
    with pytest.raises(ValueError, match="rank"):
        rank_print(-1, "x")
    with pytest.raises(TypeError, match="rank"):
        rank_print("0", "x")


def test_run_commands_runs_commands_at_the_same_time(tmp_path):
    flag = tmp_path / "flag"
    # The first command waits for a file that only the second creates: run one after
    # the other, the first would give up after 60 s and exit with code 1.
    waiter = (
        "import pathlib, sys, time\n"
        "for _ in range(600):\n"
        f"    if pathlib.Path({str(flag)!r}).exists():\n"
        "        print('saw it')\n"
        "        sys.exit(0)\n"
        "    time.sleep(0.1)\n"
        "sys.exit(1)\n"
    )
    maker = (
        f"import pathlib, sys; pathlib.Path({str(flag)!r}).touch(); "
        "print('oops', file=sys.stderr); sys.exit(3)"
    )
    first, second = run_commands([[sys.executable, "-c", waiter], [sys.executable, "-c", maker]], timeout=120)
    assert (first.returncode, first.stdout) == (0, "saw it\n")
    assert (second.returncode, second.stderr) == (3, "oops\n")


def test_run_commands_stops_a_command_at_its_timeout(monkeypatch):
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # run_commands must set it
    # no flush: the output so far reaches the error only because the commands run
    # unbuffered (a Python writing to a file buffers, and SIGTERM loses the buffer)
    sleeper = "import time; print('started'); time.sleep(120)"
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run_commands([[sys.executable, "-c", sleeper]], timeout=1)
    assert time.monotonic() - start < 40
    assert "started" in info.value.output


@pytest.mark.parametrize(
    ("commands", "kwargs", "error", "message"),
    [
        ([], {}, ValueError, "commands"),
        ("python -V", {}, TypeError, "commands"),
        (["python", "-V"], {}, TypeError, "commands"),
        ([["python", "-V"]], {"timeout": 0}, ValueError, "timeout"),
        ([["python", "-V"]], {"timeout": "60"}, TypeError, "timeout"),
    ],
)
def test_run_commands_rejects_bad_arguments(commands, kwargs, error, message):
    with pytest.raises(error, match=message):
        run_commands(commands, **kwargs)


# ---------------------------------------------------------------- process group setup


def test_setup_distributed_needs_torchruns_environment(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        setup_distributed()
    with pytest.raises(ValueError, match="backend"):
        setup_distributed("mpi")
    with pytest.raises(TypeError, match="backend"):
        setup_distributed(3)


@pytest.mark.parametrize(
    ("backend", "local_rank", "local_world_size", "gpus", "expected"),
    [
        (None, 0, 2, 0, ("gloo", "cpu")),  # no GPU: the CPU
        (None, 1, 2, 1, ("gloo", "cpu")),  # Colab: one GPU, two processes
        (None, 1, 2, 2, ("nccl", "cuda:1")),  # one GPU each, by local rank
        (None, 3, 4, 8, ("nccl", "cuda:3")),  # more GPUs than processes
        ("gloo", 1, 2, 2, ("gloo", "cpu")),  # asked for: the CPU even with GPUs
        ("nccl", 0, 1, 1, ("nccl", "cuda:0")),
    ],
)
def test_choose_backend_gives_each_local_process_its_own_gpu_or_the_cpu(
    backend, local_rank, local_world_size, gpus, expected
):
    chosen, device = choose_backend(backend, local_rank, local_world_size, gpus)
    assert (chosen, str(device)) == expected


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("nccl", 1, 2, 1), ValueError, "2 processes, 1 GPUs"),
        (("nccl", 0, 1, 0), ValueError, "nccl"),
        ((None, 2, 2, 4), ValueError, "LOCAL_RANK"),
        ((None, -1, 2, 4), ValueError, "LOCAL_RANK"),
        (("mpi", 0, 1, 0), ValueError, "backend"),
    ],
)
def test_choose_backend_rejects_what_cannot_work(args, error, message):
    with pytest.raises(error, match=message):
        choose_backend(*args)


def test_shared_gpus_names_the_ranks_that_would_share_a_gpu():
    # two simulated nodes on one machine: both local rank 0, both on its GPU 0
    assert shared_gpus([("vm", "GPU-a"), ("vm", "GPU-a")]) == {("vm", "GPU-a"): [0, 1]}
    # two real nodes, each on its own GPU 0 (UUIDs differ; host names too)
    assert shared_gpus([("n0", "GPU-a"), ("n1", "GPU-b")]) == {}
    assert shared_gpus([("n0", "GPU-a"), ("n0", "GPU-b"), ("n0", "GPU-a")]) == {("n0", "GPU-a"): [0, 2]}


class _FakeCluster:
    """Stands in for CUDA and the process group so setup_distributed can run as any rank."""

    def __init__(self, monkeypatch, gpus: int, host: str = "node1", usable: bool = True) -> None:
        self.calls: list[tuple] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0 and usable)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: self.calls.append(("set_device", str(d))))
        monkeypatch.setattr(
            torch.cuda,
            "get_device_properties",
            lambda d: type("Props", (), {"uuid": f"GPU-{host}-{torch.device(d).index}"})(),
        )
        monkeypatch.setattr(dist, "init_process_group", lambda backend: self.calls.append(("init", backend)))
        monkeypatch.setattr(
            dist, "new_group", lambda backend: (self.calls.append(("new_group", backend)), "cpu-group")[1]
        )
        monkeypatch.setattr(
            dist, "destroy_process_group", lambda group=None: self.calls.append(("destroy", group))
        )
        monkeypatch.setattr(socket, "gethostname", lambda: host)

        def all_gather_object(out, obj, group=None):
            self.calls.append(("all_gather_object", group))
            # every rank reports its own (host, GPU): distinct unless the test says otherwise
            for rank in range(len(out)):
                out[rank] = obj if rank == int(os.environ["RANK"]) else (f"other{rank}", f"GPU-x{rank}")

        monkeypatch.setattr(dist, "all_gather_object", all_gather_object)


@pytest.mark.parametrize(
    ("rank", "local_rank", "gpus", "expected"),
    [
        # two nodes of two processes each: this is node 1, holding ranks 2 and 3
        (2, 0, 2, ("nccl", "cuda:0")),
        (3, 1, 2, ("nccl", "cuda:1")),  # the GPU is chosen by the local rank, not the rank
        (3, 1, 8, ("nccl", "cuda:1")),
        (3, 1, 1, ("gloo", "cpu")),  # fewer GPUs than local processes: the CPU
        (2, 0, 0, ("gloo", "cpu")),
    ],
)
def test_setup_distributed_on_the_second_of_two_nodes(monkeypatch, rank, local_rank, gpus, expected):
    env = {"RANK": rank, "LOCAL_RANK": local_rank, "WORLD_SIZE": 4, "LOCAL_WORLD_SIZE": 2}
    for name, value in {**env, "MASTER_ADDR": "node0", "MASTER_PORT": 29500}.items():
        monkeypatch.setenv(name, str(value))
    cluster = _FakeCluster(monkeypatch, gpus)
    ctx = setup_distributed()
    backend, device = expected
    assert ctx == DistributedContext(rank, local_rank, 4, 2, backend, torch.device(device))
    if backend == "nccl":
        # the GPU check runs over a gloo group of its own, which is then released
        assert cluster.calls == [
            ("set_device", device),
            ("init", "nccl"),
            ("new_group", "gloo"),
            ("all_gather_object", "cpu-group"),
            ("destroy", "cpu-group"),
        ]
    else:
        assert cluster.calls == [("init", "gloo")]


@pytest.mark.parametrize(("gpus", "usable"), [(0, True), (2, False)])
def test_setup_distributed_uses_gloo_for_one_process_without_a_usable_gpu(monkeypatch, gpus, usable):
    """One process per machine, no GPU torch can use (none, or CUDA unavailable): the CPU."""
    for name, value in zip(TORCHRUN_ENV, ("0", "0", "1", "1", "127.0.0.1", "29500"), strict=True):
        monkeypatch.setenv(name, value)
    cluster = _FakeCluster(monkeypatch, gpus, usable=usable)
    assert setup_distributed() == DistributedContext(0, 0, 1, 1, "gloo", torch.device("cpu"))
    assert cluster.calls == [("init", "gloo")]


def test_setup_distributed_names_ranks_that_would_share_a_gpu(monkeypatch):
    for name, value in zip(TORCHRUN_ENV, ("1", "0", "2", "1", "vm", "29500"), strict=True):
        monkeypatch.setenv(name, value)
    _FakeCluster(monkeypatch, gpus=1, host="vm")
    # both simulated nodes are one machine: rank 0 reports the same host and GPU
    monkeypatch.setattr(
        dist, "all_gather_object", lambda out, obj, group=None: out.__setitem__(slice(None), [obj, obj])
    )
    with pytest.raises(RuntimeError) as info:
        setup_distributed()
    assert str(info.value) == (
        "ranks [0, 1] would share one GPU (cuda:0) on vm: give each process its own GPU "
        "(CUDA_VISIBLE_DEVICES) or use backend='gloo'"
    )


def test_setup_distributed_names_a_variable_that_is_not_a_number(monkeypatch):
    _single_process_env(monkeypatch)
    monkeypatch.setenv("RANK", "abc")
    with pytest.raises(ValueError, match="RANK must be an integer, got 'abc'"):
        setup_distributed("gloo")


def _single_process_env(monkeypatch):
    values = dict(zip(TORCHRUN_ENV, ("0", "0", "1", "1", "127.0.0.1", str(free_port())), strict=True))
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_setup_distributed_refuses_nccl_without_gpus(monkeypatch):
    _single_process_env(monkeypatch)
    with pytest.raises(ValueError, match="nccl"):
        setup_distributed("nccl")


def test_setup_distributed_joins_a_one_process_gloo_group(monkeypatch):
    _single_process_env(monkeypatch)
    ctx = setup_distributed("gloo")
    try:
        assert ctx == DistributedContext(0, 0, 1, 1, "gloo", torch.device("cpu"))
        assert dist.get_world_size() == 1 and dist.get_backend() == "gloo"
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- pieces of train_ddp.py


def _distributed_order(n: int, world_size: int, seed: int, epoch: int) -> list[list[int]]:
    """What DistributedSampler documents: shuffle with seed + epoch, pad, deal out."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    total = math.ceil(n / world_size) * world_size
    order += order[: total - n]
    return [order[r::world_size] for r in range(world_size)]


def test_make_loader_deals_out_the_shuffled_indices():
    dataset = TensorDataset(torch.arange(11))
    for epoch in (1, 2):
        expected = _distributed_order(11, 3, seed=5, epoch=epoch)
        for rank in range(3):
            loader = train_ddp.make_loader(dataset, batch_size=2, seed=5, num_replicas=3, rank=rank)
            loader.sampler.set_epoch(epoch)
            batches = [batch[0] for batch in loader]
            assert [len(b) for b in batches] == [2, 2]  # 4 of the 11 (padded to 12) per rank
            assert torch.cat(batches).tolist() == expected[rank]
    assert _distributed_order(11, 3, 5, 1) != _distributed_order(11, 3, 5, 2)


def test_save_atomically_leaves_only_the_finished_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    train_ddp.save_atomically({"epoch": 3, "w": torch.ones(2)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], torch.ones(2))


def test_a_crash_inside_save_atomically_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    train_ddp.save_atomically({"epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def save_half_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as file:  # the process dies halfway through the write
            file.truncate(Path(f).stat().st_size // 2)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", save_half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_ddp.save_atomically({"epoch": 2, "w": torch.zeros(3)}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def _val_scores(state: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Validation loss and accuracy of saved weights, computed here, not by the script."""
    model = train_ddp.make_model().double()
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model(x.double())
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    return loss, (logits.argmax(dim=1) == y).double().mean().item()


def test_train_ddp_reports_its_models_scores_and_keeps_the_first_best(tmp_path, monkeypatch):
    """One process in this test's own gloo group: main() runs here, its saves observed."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(104, 784, generator=generator)
    y = (x @ torch.randn(784, 10, generator=generator)).argmax(dim=1)
    data = tmp_path / "data.pt"
    torch.save({"x_train": x[:64], "y_train": y[:64], "x_val": x[64:], "y_val": y[64:]}, data)
    saved: list[tuple[str, dict]] = []
    real_save_atomically = train_ddp.save_atomically

    def spy(obj, path):
        saved.append((path.name, {k: v.clone() for k, v in obj.items()} if path.name == "best.pt" else {}))
        real_save_atomically(obj, path)

    monkeypatch.setattr(train_ddp, "save_atomically", spy)
    _single_process_env(monkeypatch)
    # A tiny rate: the weights move, the 40 validation predictions do not, so every
    # epoch ties on accuracy and the first one must stay the best.
    args = [f"--data={data}", f"--out-dir={tmp_path / 'run'}", "--epochs=3", "--batch-size=16"]
    try:
        train_ddp.main([*args, "--lr=1e-6", "--momentum=0", "--dtype=float64", "--backend=gloo"])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    run = tmp_path / "run"
    last = torch.load(run / "model.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)
    history = json.loads((run / "history.json").read_text())["history"]
    loss, accuracy = _val_scores(last, x[64:], y[64:])
    assert history[-1]["val_loss"] == pytest.approx(loss, rel=1e-12)
    assert history[-1]["val_accuracy"] == pytest.approx(accuracy)
    assert _val_scores(best, x[64:], y[64:])[1] == accuracy  # a tie, as intended
    assert [name for name, _ in saved].count("best.pt") == 1
    assert saved[0][0] == "best.pt" and _max_difference(best, saved[0][1]) == 0.0
    assert _max_difference(best, last) > 0.0  # the weights did move after epoch 1


def test_make_model_maps_784_pixels_to_10_scores():
    assert train_ddp.make_model()(torch.zeros(5, 784)).shape == (5, 10)


# ---------------------------------------------------------------- cluster files


def _torchrun_words(script: str) -> list[str]:
    joined = script.replace("\\\n", " ")
    lines = [
        li for li in joined.splitlines() if re.search(r"\btorchrun\b", li) and not li.lstrip().startswith("#")
    ]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0])
    return words[words.index("torchrun") + 1 :]


def test_slurm_script_launches_train_ddp_with_one_process_per_gpu():
    text = (PACKAGE_DIR / "slurm_train_ddp.sbatch").read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.M))
    assert sbatch["ntasks-per-node"] == "1"  # one torchrun agent per node
    assert re.search(r"^srun torchrun", text.replace("\\\n", " "), flags=re.M)
    args = get_args_parser().parse_args(_torchrun_words(text))
    assert args.module and args.training_script == "helpers.distributed.train_ddp"
    assert args.nnodes == "$SLURM_NNODES" and int(sbatch["nodes"]) >= 2
    # Defaults, which the environment may override: one process per GPU, port 29500.
    gpus = sbatch["gpus-per-node"]
    assert args.nproc_per_node == f"${{NPROC_PER_NODE:-{gpus}}}"
    assert args.rdzv_backend == "c10d"
    assert args.rdzv_endpoint == "$head_node:${RDZV_PORT:-29500}"
    assert args.training_script_args[-1] == "$@"  # sbatch's extra arguments
    script_args = train_ddp.build_parser().parse_args(args.training_script_args[:-1])
    assert str(script_args.out_dir).startswith("${OUT_DIR:-$HOME/")  # a shared file system
    # a job that restarts gives its workers a rendezvous store of their own (section 9.6)
    assert int(args.max_restarts) > 0
    assert re.search(r"^export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1$", text, flags=re.M)


def test_trainjob_manifest_launches_train_ddp_and_torchrun_reads_pet_variables(monkeypatch):
    job = yaml.safe_load((PACKAGE_DIR / "trainjob_train_ddp.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert trainer["numNodes"] >= 2
    assert trainer["numProcPerNode"] == trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]
    command = trainer["command"]
    assert command[0] == "torchrun"
    # What the runtime sets in each pod: torchrun must pick it up without flags.
    monkeypatch.setenv("PET_NNODES", str(trainer["numNodes"]))
    monkeypatch.setenv("PET_NPROC_PER_NODE", str(trainer["numProcPerNode"]))
    args = get_args_parser().parse_args(command[1:])
    assert (args.nnodes, args.nproc_per_node) == (str(trainer["numNodes"]), str(trainer["numProcPerNode"]))
    assert args.module and args.training_script == "helpers.distributed.train_ddp"
    train_ddp.build_parser().parse_args(args.training_script_args)


# ---------------------------------------------------------------- real launches


def _launch(commands: list[list[str]], *, out_dir: Path | None = None) -> list[subprocess.CompletedProcess]:
    """Run the commands together (once more, from an emptied ``out_dir``, if torch failed)."""
    results, first = run_commands_with_rerun(
        commands, timeout=LAUNCH_TIMEOUT, env=LAUNCH_ENV, out_dirs=[out_dir] if out_dir else []
    )
    if first and any(r.returncode != 0 for r in results):
        print("the first run failed in torch too:\n" + first)
    for result in results:
        assert result.returncode == 0, result.stdout + failure_text(result.stderr)
    return results


RACED = subprocess.CompletedProcess(
    [], 1, "", "    self.error_file_data = json.load(fp)\njson.decoder.JSONDecodeError: Expecting value"
)
SEGFAULT = subprocess.CompletedProcess(
    [],
    1,
    "",
    "Fatal Python error: Segmentation fault\n...\ntraceback : Signal 11 (SIGSEGV) received by PID 7",
)
ABORTED = subprocess.CompletedProcess(
    [],
    1,
    "",
    "terminate called without an active exception\ntraceback : Signal 6 (SIGABRT) received by PID 9",
)
KILLED = subprocess.CompletedProcess([], 1, "", "traceback : Signal 9 (SIGKILL) received by PID 9")
HALF_RACED = subprocess.CompletedProcess([], 1, "", "JSONDecodeError: Expecting value")
CRASHED = subprocess.CompletedProcess([], 1, "", "RuntimeError: simulated failure")
FINE = subprocess.CompletedProcess([], 0, "ok", "")


@pytest.mark.parametrize(
    ("result", "inside"),
    [
        (RACED, True),
        (SEGFAULT, True),
        (ABORTED, True),
        (KILLED, False),
        (HALF_RACED, False),
        (CRASHED, False),
        (FINE, False),
    ],
)
def test_failed_inside_torch_names_the_agent_race_and_native_crashes_only(result, inside):
    assert failed_inside_torch(result) is inside
    # the same text from a command that succeeded is not a failure
    assert not failed_inside_torch(subprocess.CompletedProcess([], 0, "", result.stderr))


def test_failed_inside_torch_refuses_what_is_not_a_completed_process():
    with pytest.raises(TypeError, match="CompletedProcess, got str"):
        failed_inside_torch("Signal 11 (SIGSEGV) received by PID 7")


@pytest.mark.parametrize(
    ("first", "runs"),
    [(RACED, 2), (SEGFAULT, 2), (ABORTED, 2), (KILLED, 1), (HALF_RACED, 1), (CRASHED, 1), (FINE, 1)],
)
def test_run_commands_with_rerun_reruns_from_clean_folders_only_after_torch_itself_failed(
    monkeypatch, tmp_path, first, runs
):
    out, other = tmp_path / "out", tmp_path / "other"
    for folder in (out, other):
        (folder / "dcp").mkdir(parents=True)
        (folder / "model.pt").write_text("from the first run")
    calls, replies = [], iter([first, FINE])

    def fake_run(commands, **options):
        calls.append((commands, options))
        return [next(replies)]

    monkeypatch.setattr(distributed, "run_commands", fake_run)
    results, first_failure = run_commands_with_rerun(
        [["torchrun"]], timeout=7, env={"A": "1"}, out_dirs=[out, tmp_path / "missing"]
    )
    assert results == [first if runs == 1 else FINE]
    assert len(calls) == runs
    assert all(
        options == {"timeout": 7, "env": {"PYTHONFAULTHANDLER": "1", "A": "1"}} for _, options in calls
    )
    # the first run's failure is returned only when there was a second run
    assert first_failure == (failure_text(first.stderr) if runs == 2 else "")
    # a rerun starts from empty output folders; a folder not named keeps its files
    assert (not any(out.iterdir())) == (runs == 2)
    assert sorted(p.name for p in other.iterdir()) == ["dcp", "model.pt"]


def test_run_commands_with_rerun_lets_env_turn_the_fault_handler_off_and_checks_out_dirs(
    monkeypatch, tmp_path
):
    seen = []
    monkeypatch.setattr(
        distributed, "run_commands", lambda commands, **options: seen.append(options) or [FINE]
    )
    run_commands_with_rerun([["torchrun"]], env={"PYTHONFAULTHANDLER": ""})
    assert seen == [{"timeout": 120.0, "env": {"PYTHONFAULTHANDLER": ""}}]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file is not a folder"):
        run_commands_with_rerun([["torchrun"]], out_dirs=[tmp_path / "file"])
    assert len(seen) == 1  # refused before anything ran


def test_launch_that_fails_in_torch_twice_fails_with_both_runs_stacks(monkeypatch, capsys):
    second = subprocess.CompletedProcess([], 1, "", SEGFAULT.stderr.replace("PID 7", "PID 8"))
    replies = iter([SEGFAULT, second])
    monkeypatch.setattr(distributed, "run_commands", lambda commands, **options: [next(replies)])
    with pytest.raises(AssertionError, match=r"(?s)Fatal Python error.*PID 8") as failure:
        _launch([["torchrun"]])
    assert "PID 7" not in str(failure.value)
    printed = capsys.readouterr().out
    assert printed.startswith("the first run failed in torch too:\nFatal Python error") and "PID 7" in printed


def test_failure_text_keeps_the_crashed_workers_stacks_and_the_end_of_stderr():
    stderr = "start\nFatal Python error: Segmentation fault\n  File x.py, line 3\n" + "." * 5000 + "END"
    text = failure_text(stderr)
    assert text.startswith("Fatal Python error: Segmentation fault\n  File x.py, line 3")
    assert text.endswith("." * 2997 + "END") and len(text) == 4000 + len("\n[...]\n") + 3000
    assert failure_text("plain failure") == "plain failure"
    assert failure_text("ab" * 10, tail=3) == "bab"
    with pytest.raises(TypeError, match="stderr must be a str, got bytes"):
        failure_text(b"x")


def _endpoint() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.mark.integration
def test_collectives_script_gives_both_ranks_the_expected_tensors():
    command = torchrun_command("helpers.distributed.collectives", rdzv_endpoint=_endpoint())
    (result,) = _launch([command])
    by_rank = lines_by_rank(result.stdout)
    assert list(by_rank) == [0, 1]
    for rank, lines in by_rank.items():
        assert f"local rank {rank}" in lines[0] and "backend gloo" in lines[0]
        text = "\n".join(lines)
        assert "all_reduce(SUM):  had %.1f, now holds 3.0" % (rank + 1) in text
        assert "now holds [1.5, -3.0]" in text  # ([1, -2] + [2, -4]) / 2
        assert "now holds [0.0, 1.0, 2.0, 3.0]" in text
        assert "now holds [[0.0, 0.0], [10.0, 10.0]]" in text
        assert f"now holds {[[100.0, 102.0], [104.0, 106.0]][rank]}" in text


EPOCHS, BATCH, LR, MOMENTUM, SEED = 3, 16, 0.1, 0.9, 4


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """201 training examples (odd: the sampler must pad), labels from a random teacher."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(241, 784, generator=generator)
    y = (x @ torch.randn(784, 10, generator=generator)).argmax(dim=1)
    path = tmp_path_factory.mktemp("data") / "data.pt"
    torch.save({"x_train": x[:201], "y_train": y[:201], "x_val": x[201:], "y_val": y[201:]}, path)
    return path


def _one_process_reference(path: Path, epochs: int) -> dict[str, torch.Tensor]:
    """One process, float64, on the concatenation of both ranks' batches in every step."""
    data = torch.load(path, weights_only=True)
    x, y = data["x_train"].double(), data["y_train"]
    torch.manual_seed(SEED)
    model = train_ddp.make_model().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    for epoch in range(1, epochs + 1):
        shards = _distributed_order(len(y), 2, SEED, epoch)
        for start in range(0, len(shards[0]), BATCH):
            index = shards[0][start : start + BATCH] + shards[1][start : start + BATCH]
            loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.state_dict()


def _training_args(epochs: int) -> list[str]:
    """The script's options that _one_process_reference reproduces."""
    return [
        f"--epochs={epochs}",
        f"--batch-size={BATCH}",
        f"--lr={LR}",
        f"--momentum={MOMENTUM}",
        f"--seed={SEED}",
        "--dtype=float64",
    ]


def _script_args(path: Path, out_dir: Path, epochs: int) -> list[str]:
    return [f"--data={path}", f"--out-dir={out_dir}", *_training_args(epochs)]


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].cpu() - b[k].cpu()).abs().max().item() for k in a)


@pytest.mark.integration
def test_ddp_run_that_crashes_restarts_and_matches_one_process(data_file, tmp_path):
    args = [*_script_args(data_file, tmp_path, EPOCHS), "--crash-at-epoch=2"]
    command = torchrun_command(
        "helpers.distributed.train_ddp", args, rdzv_endpoint=_endpoint(), max_restarts=1
    )
    (result,) = _launch([command], out_dir=tmp_path)
    assert "simulated failure" in result.stderr
    by_rank = lines_by_rank(result.stdout)
    for rank in (0, 1):
        starts = [line for line in by_rank[rank] if line.startswith("attempt")]
        assert [s.split(":")[0] for s in starts] == ["attempt 0", "attempt 1"]
        assert starts[1].endswith("starting at epoch 2")
    summary = json.loads((tmp_path / "history.json").read_text())
    assert [h["attempt"] for h in summary["history"]] == [0, 1, 1]
    assert summary["world_size"] == 2 and summary["steps_per_epoch"] == math.ceil(101 / BATCH)
    ddp = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert _max_difference(ddp, _one_process_reference(data_file, EPOCHS)) < 1e-10
    # the reported scores are those of the saved model, recomputed here
    data = torch.load(data_file, weights_only=True)
    loss, accuracy = _val_scores(ddp, data["x_val"], data["y_val"])
    assert summary["history"][-1]["val_loss"] == pytest.approx(loss, rel=1e-9)
    assert summary["history"][-1]["val_accuracy"] == pytest.approx(accuracy)
    # best.pt holds the weights of the first epoch with the best validation accuracy
    accuracies = [h["val_accuracy"] for h in summary["history"]]
    best_epoch = accuracies.index(max(accuracies)) + 1
    best = torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=True)
    assert _max_difference(best, _one_process_reference(data_file, best_epoch)) < 1e-10
    # and the training did change the parameters
    torch.manual_seed(SEED)
    assert _max_difference(ddp, train_ddp.make_model().double().state_dict()) > 1e-3


@pytest.mark.integration
def test_ddp_run_with_micro_batches_matches_whole_batches(data_file, tmp_path):
    # Batches of 16 in 3 pieces (6, 5, 5); each epoch's last batch of 5 gives 2, 2, 1.
    args = [*_script_args(data_file, tmp_path, 2), "--micro-batches=3"]
    command = torchrun_command("helpers.distributed.train_ddp", args, rdzv_endpoint=_endpoint())
    _launch([command], out_dir=tmp_path)
    ddp = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert _max_difference(ddp, _one_process_reference(data_file, 2)) < 1e-10


def test_ddp_script_rejects_more_micro_batches_than_examples(data_file, tmp_path):
    args = [*_script_args(data_file, tmp_path, 1), f"--micro-batches={BATCH + 1}"]
    with pytest.raises(SystemExit):
        train_ddp.main(args)


@pytest.mark.integration
def test_fsdp2_as_two_nodes_shards_the_weights_and_matches_one_process(data_file, tmp_path):
    endpoint, epochs = _endpoint(), 2
    commands = [
        torchrun_command(
            "helpers.distributed.fsdp2",
            # both "nodes" are this machine: on a GPU machine they would share GPU 0
            [*_script_args(data_file, tmp_path, epochs), "--backend=gloo"],
            nnodes=2,
            nproc_per_node=1,
            rdzv_endpoint=endpoint,
            rdzv_id="test-fsdp2",
            local_addr="127.0.0.1",
        )
        for _ in range(2)
    ]
    results = _launch(commands, out_dir=tmp_path)
    by_rank = lines_by_rank("\n".join(r.stdout for r in results))
    assert list(by_rank) == [0, 1]
    for rank, lines in by_rank.items():
        assert lines[0].startswith(f"node {rank}, local rank 0, gloo"), lines[0]
        assert "0.weight: full shape (128, 784), stored here (64, 784)" in lines
        assert "2.bias: full shape (10,), stored here (5,)" in lines
    # each rank keeps half of every weight, gradient and momentum tensor (float64)
    whole = (128 * 784 + 128 + 10 * 128 + 10) * 8
    half = f"{whole // 2:,}"
    kept = f"bytes kept here: weights {half}, gradients {half}, momentum {half}; "
    for lines in by_rank.values():
        assert kept + f"the whole model's weights {whole:,}" in lines, lines
    fsdp = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert _max_difference(fsdp, _one_process_reference(data_file, epochs)) < 1e-10
    # the distributed checkpoint: one file of shards per rank, loaded here into one
    # whole model in a process without a process group, equals the gathered weights
    assert sorted(p.name for p in (tmp_path / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    model = train_ddp.make_model().double()
    model.load_state_dict({k: torch.zeros_like(v) for k, v in fsdp.items()})
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns that it loads in a single process
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, checkpoint_id=tmp_path / "dcp", no_dist=True)
    assert _max_difference(model.state_dict(), fsdp) == 0.0


# ---------------------------------------------------------------- exact messages and edge cases


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: choose_backend(3, 0, 1, 0), TypeError, "backend must be a str or None, got int"),
        (
            lambda: choose_backend("mpi", 0, 1, 0),
            ValueError,
            "backend must be 'gloo', 'nccl' or None, got 'mpi'",
        ),
        (lambda: choose_backend(None, True, 2, 0), TypeError, "local_rank must be an int, got bool"),
        (lambda: choose_backend(None, 0, 2, -1), ValueError, "gpu_count must be >= 0, got -1"),
        (
            lambda: choose_backend(None, 2, 2, 0),
            ValueError,
            "LOCAL_RANK must be in [0, LOCAL_WORLD_SIZE=2), got 2",
        ),
        (
            lambda: choose_backend("nccl", 1, 2, 1),
            ValueError,
            "backend 'nccl' needs one CUDA GPU per local process: 2 processes, 1 GPUs",
        ),
        (
            lambda: shared_gpus("vm"),
            TypeError,
            "placements must be a sequence of (host, GPU UUID) pairs, one per rank, got str",
        ),
        (
            lambda: shared_gpus([("a", "b"), ("a", "b", "c")]),
            TypeError,
            "placements[1] must be a (host, GPU UUID) pair of str, got ('a', 'b', 'c')",
        ),
        (
            lambda: shared_gpus(["ab"]),
            TypeError,
            "placements[0] must be a (host, GPU UUID) pair of str, got 'ab'",
        ),
        (
            lambda: shared_gpus([frozenset({"a"})]),
            TypeError,
            "placements[0] must be a (host, GPU UUID) pair of str, got frozenset({'a'})",
        ),
        (
            lambda: shared_gpus([("a", 0)]),
            TypeError,
            "placements[0] must be a (host, GPU UUID) pair of str, got ('a', 0)",
        ),
        (lambda: rank_print(1.0, "x"), TypeError, "rank must be an int, got float"),
        (lambda: rank_print(-2, "x"), ValueError, "rank must be non-negative, got -2"),
        (lambda: free_port(5), TypeError, "host must be a str, got int"),
        (lambda: free_port(""), ValueError, "host must not be empty"),
        (lambda: lines_by_rank(b"x"), TypeError, "output must be a str, got bytes"),
        (lambda: torchrun_command(3), TypeError, "module must be a str, got int"),
        (lambda: torchrun_command("a b"), ValueError, "module must be a dotted module name, got 'a b'"),
        (
            lambda: torchrun_command("m", "--x"),
            TypeError,
            "args must be a sequence of str (one item per command-line word)",
        ),
        (
            lambda: torchrun_command("m", [1]),
            TypeError,
            "args must be a sequence of str (one item per command-line word)",
        ),
        (
            lambda: torchrun_command("m", nproc_per_node=0),
            ValueError,
            "nproc_per_node must be at least 1, got 0",
        ),
        (lambda: torchrun_command("m", nnodes=0), ValueError, "nnodes must be at least 1, got 0"),
        (lambda: torchrun_command("m", nnodes=True), TypeError, "nnodes must be an int, got bool"),
        (
            lambda: torchrun_command("m", max_restarts=-1),
            ValueError,
            "max_restarts must be at least 0, got -1",
        ),
        (lambda: torchrun_command("m", rdzv_id=7), TypeError, "rdzv_id must be a str, got int"),
        (
            lambda: torchrun_command("m", rdzv_id="a b"),
            ValueError,
            "rdzv_id must be a non-empty word of letters, digits, '_', '.' or '-', got 'a b'",
        ),
        (
            lambda: torchrun_command("m", rdzv_endpoint="n:1", local_addr=5),
            TypeError,
            "local_addr must be a str or None, got int",
        ),
        (
            lambda: torchrun_command("m", rdzv_endpoint="n:1", local_addr="a b"),
            ValueError,
            "local_addr must be a host name or address, got 'a b'",
        ),
        (
            lambda: torchrun_command("m", nnodes=2),
            ValueError,
            "nnodes=2 needs an rdzv_endpoint that every node can reach",
        ),
        (lambda: torchrun_command("m", rdzv_endpoint=5), TypeError, "rdzv_endpoint must be a str, got int"),
        (
            lambda: torchrun_command("m", rdzv_endpoint="n0"),
            ValueError,
            "rdzv_endpoint must look like 'host:port', got 'n0'",
        ),
        (
            lambda: run_commands("python -V"),
            TypeError,
            "commands must be a sequence of commands (lists of str)",
        ),
        (lambda: run_commands([]), ValueError, "commands must not be empty"),
        (lambda: run_commands([[]]), TypeError, "commands: every command must be a non-empty list of str"),
        (
            lambda: run_commands(["python"]),
            TypeError,
            "commands: every command must be a non-empty list of str",
        ),
        (
            lambda: run_commands([["python", 3]]),
            TypeError,
            "commands: every command must be a non-empty list of str",
        ),
        (lambda: run_commands([["python"]], timeout="1"), TypeError, "timeout must be a number, got str"),
        (lambda: run_commands([["python"]], timeout=True), TypeError, "timeout must be a number, got bool"),
        (
            lambda: run_commands([["python"]], timeout=-1),
            ValueError,
            "timeout must be a positive number of seconds, got -1",
        ),
    ],
)
def test_distributed_errors_name_the_argument_and_what_was_given(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_torchrun_command_defaults():
    command = torchrun_command("Pkg.train_2")  # a module name may start with a capital
    args = get_args_parser().parse_args(command[3:])
    assert command[-2:] == ["-m", "Pkg.train_2"]
    assert (args.nnodes, args.nproc_per_node, args.max_restarts, args.standalone) == ("1", "2", 0, True)
    assert "--max-restarts=0" not in command and not any(w.startswith("--rdzv") for w in command)
    multi = torchrun_command("m", rdzv_endpoint="n0:29500")
    assert "--rdzv-id=book" in multi and "--standalone" not in multi
    assert not any(w.startswith("--local-addr") for w in multi)


def test_run_commands_passes_the_environment_and_unbuffers_python():
    show = (
        "import os; print(os.environ['PYTHONUNBUFFERED'], os.environ['BOOK_TEST_VALUE'], os.environ['HOME'])"
    )
    command = [sys.executable, "-c", show]
    (result,) = run_commands([command], timeout=60, env={"BOOK_TEST_VALUE": "x y"})
    assert result.args == command and result.returncode == 0
    assert result.stdout == f"1 x y {os.environ['HOME']}\n" and result.stderr == ""
    # a timeout under a second is allowed
    (quick,) = run_commands([[sys.executable, "-S", "-c", "pass"]], timeout=0.9)
    assert quick.returncode == 0


def test_run_commands_timeout_is_for_all_commands_together_and_reports_everything():
    first = [
        sys.executable,
        "-c",
        "import sys, time; print('a'); print('e1', file=sys.stderr); time.sleep(60)",
    ]
    second = [
        sys.executable,
        "-c",
        "import sys, time; print('b'); print('e2', file=sys.stderr); time.sleep(60)",
    ]
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run_commands([first, second], timeout=1)
    # SIGTERM stops both at once: no 10-second wait for a SIGKILL
    assert time.monotonic() - start < 8
    assert info.value.cmd == first and info.value.timeout == 1
    assert info.value.output == "a\n\nb\n" and info.value.stderr == "e1\n\ne2\n"


def test_run_commands_stops_a_late_command_at_the_shared_deadline():
    # The first command ends just before the deadline; the second, 0.3 s after it: it
    # is stopped then, not given a fresh allowance once the first has ended.
    quick = [sys.executable, "-c", "import time; time.sleep(0.8)"]
    late = [sys.executable, "-c", "import time; time.sleep(1.3)"]
    with pytest.raises(subprocess.TimeoutExpired):
        run_commands([quick, late], timeout=1.0)
