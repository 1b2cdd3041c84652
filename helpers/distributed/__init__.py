"""Multi-process training with ``torch.distributed``: both ends of a ``torchrun`` launch.

Introduced in chapter 09 (distributed training).

- Inside a worker process started by ``torchrun``: ``setup_distributed`` joins the
  process group (nccl with one GPU per process when there are enough GPUs, gloo on the
  CPU otherwise) and ``rank_print`` prints a line tagged with the process's rank.
- In the notebook that launches the workers: ``torchrun_command`` builds the command
  line, ``free_port`` finds a port for a rendezvous, ``run_commands`` runs one or more
  commands at once with a timeout, ``run_commands_with_rerun`` runs them once more when
  torch itself failed, and ``lines_by_rank`` sorts the tagged output by rank.

The runnable scripts of the chapter live next to this file (``collectives.py``,
``train_ddp.py``, ``fsdp2.py``), with a SLURM batch script and a Kubernetes TrainJob
manifest that launch ``train_ddp.py`` on a cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = [
    "PACKAGE_DIR",
    "DistributedContext",
    "choose_backend",
    "failed_inside_torch",
    "failure_text",
    "free_port",
    "lines_by_rank",
    "rank_print",
    "run_commands",
    "run_commands_with_rerun",
    "setup_distributed",
    "shared_gpus",
    "torchrun_command",
]

#: The folder holding this package's scripts and cluster files.
PACKAGE_DIR = Path(__file__).resolve().parent

#: Variables torchrun sets for every worker; ``setup_distributed`` needs them all.
TORCHRUN_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)

_RANK_TAG = re.compile(r"^\[rank (\d+)\] ?(.*)$")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job: its ranks, the job's size, backend and device."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    backend: str
    device: torch.device


def _check_backend(backend: object) -> None:
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
    if backend not in (None, "gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or None, got {backend!r}")


def choose_backend(
    backend: str | None, local_rank: int, local_world_size: int, gpu_count: int
) -> tuple[str, torch.device]:
    """The backend and device of local process ``local_rank`` on a machine with ``gpu_count`` GPUs.

    ``backend=None`` picks ``"nccl"`` on GPU ``local_rank`` when the machine has at least
    one CUDA GPU per local process, and ``"gloo"`` on the CPU otherwise; ``"nccl"`` with
    fewer GPUs than local processes is an error. Introduced in chapter 09.
    """
    _check_backend(backend)
    for name, value in (
        ("local_rank", local_rank),
        ("local_world_size", local_world_size),
        ("gpu_count", gpu_count),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if gpu_count < 0:
        raise ValueError(f"gpu_count must be >= 0, got {gpu_count}")
    if not 0 <= local_rank < local_world_size:
        raise ValueError(
            f"LOCAL_RANK must be in [0, LOCAL_WORLD_SIZE={local_world_size}), got {local_rank}"
        )
    enough_gpus = gpu_count >= local_world_size
    if backend is None:
        backend = "nccl" if enough_gpus else "gloo"
    if backend == "gloo":
        return backend, torch.device("cpu")
    if not enough_gpus:
        raise ValueError(
            f"backend 'nccl' needs one CUDA GPU per local process: {local_world_size} "
            f"processes, {gpu_count} GPUs"
        )
    return backend, torch.device("cuda", local_rank)  # the local rank, not the rank


def shared_gpus(
    placements: Sequence[tuple[str, str]],
) -> dict[tuple[str, str], list[int]]:
    """The (host, GPU) pairs that more than one rank would use, with those ranks.

    ``placements[rank]`` is where ``rank`` runs: its host name and its GPU's UUID.
    Introduced in chapter 09.
    """
    if isinstance(placements, str) or not isinstance(placements, Sequence):
        raise TypeError(
            "placements must be a sequence of (host, GPU UUID) pairs, one per rank, "
            f"got {type(placements).__name__}"
        )
    for rank, placement in enumerate(placements):
        if not (
            isinstance(placement, Sequence)
            and not isinstance(placement, str)
            and len(placement) == 2
            and all(isinstance(part, str) for part in placement)
        ):
            raise TypeError(
                f"placements[{rank}] must be a (host, GPU UUID) pair of str, got {placement!r}"
            )
    ranks: dict[tuple[str, str], list[int]] = {}
    for rank, placement in enumerate(placements):
        ranks.setdefault(tuple(placement), []).append(rank)
    return {place: r for place, r in ranks.items() if len(r) > 1}


def _environment_int(name: str) -> int:
    text = os.environ[name]
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"environment variable {name} must be an integer, got {text!r}"
        ) from None


def setup_distributed(backend: str | None = None) -> DistributedContext:
    """Join the process group described by torchrun's environment variables.

    The backend and device are ``choose_backend``'s: ``nccl`` with GPU ``LOCAL_RANK``
    when the machine has a CUDA GPU per local process, ``gloo`` on the CPU otherwise.
    With ``nccl`` the ranks first compare, over a small ``gloo`` group, which GPU each
    took: two ranks on one GPU (two jobs' worth of processes on one machine, for
    example two simulated nodes) is an error that names them, never a hang or a crash
    inside NCCL. Call ``torch.distributed.destroy_process_group()`` when done.
    Introduced in chapter 09.
    """
    _check_backend(backend)
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"environment variables {missing} are not set: start this script with torchrun"
        )
    rank, world_size = _environment_int("RANK"), _environment_int("WORLD_SIZE")
    local_rank = _environment_int("LOCAL_RANK")  # this process's number on its machine
    local_world_size = _environment_int("LOCAL_WORLD_SIZE")
    gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend, device = choose_backend(backend, local_rank, local_world_size, gpu_count)
    if backend == "gloo":
        # MASTER_ADDR/PORT, RANK and WORLD_SIZE are read from the environment
        dist.init_process_group("gloo")
    else:
        torch.cuda.set_device(device)  # without this every process would use GPU 0
        # No device_id= here: it would start NCCL at once, before the check below;
        # without it NCCL starts at the first collective on this process's GPU.
        dist.init_process_group("nccl")
        here = (
            socket.gethostname(),
            str(torch.cuda.get_device_properties(device).uuid),
        )
        placements: list = [None] * world_size
        cpu_group = dist.new_group(backend="gloo")
        dist.all_gather_object(placements, here, group=cpu_group)
        dist.destroy_process_group(cpu_group)
        clashes = shared_gpus(placements)
        if clashes:
            dist.destroy_process_group()
            (host, _), ranks = next(iter(clashes.items()))
            raise RuntimeError(
                f"ranks {ranks} would share one GPU ({device}) on {host}: give each "
                "process its own GPU (CUDA_VISIBLE_DEVICES) or use backend='gloo'"
            )
    return DistributedContext(
        rank, local_rank, world_size, local_world_size, backend, device
    )


def rank_print(rank: int, *values: object) -> None:
    """``print`` with a ``[rank N]`` tag, written in one piece so lines never mix.

    Several processes writing to one terminal or file can interleave their output; a
    single write of the whole line (newline included) keeps each line intact.
    Introduced in chapter 09.
    """
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__}")
    if rank < 0:
        raise ValueError(f"rank must be non-negative, got {rank}")
    line = " ".join([f"[rank {rank}]", *map(str, values)])
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now (the OS picks it); for a rendezvous endpoint.

    Another program could take it before it is used, so use it at once. Introduced in chapter 09.
    """
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, got {type(host).__name__}")
    if not host:
        raise ValueError("host must not be empty")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def torchrun_command(
    module: str,
    args: Sequence[str] = (),
    *,
    nproc_per_node: int = 2,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "book",
    max_restarts: int = 0,
    local_addr: str | None = None,
) -> list[str]:
    """The command ``python -m torch.distributed.run ... -m module args`` as a list.

    Without ``rdzv_endpoint`` the job is single-node (``--standalone``: torchrun starts
    its own rendezvous on a free port). With ``rdzv_endpoint="host:port"`` every node runs
    the same command and they meet there through the c10d rendezvous; ``local_addr`` is
    the address this node's workers are reached at. Introduced in chapter 09.
    """
    if not isinstance(module, str):
        raise TypeError(f"module must be a str, got {type(module).__name__}")
    if not re.fullmatch(r"[A-Za-z_][\w.]*", module):
        raise ValueError(f"module must be a dotted module name, got {module!r}")
    if isinstance(args, str) or not all(isinstance(a, str) for a in args):
        raise TypeError(
            "args must be a sequence of str (one item per command-line word)"
        )
    _check_int("nproc_per_node", nproc_per_node, 1)
    _check_int("nnodes", nnodes, 1)
    _check_int("max_restarts", max_restarts, 0)
    if not isinstance(rdzv_id, str):
        raise TypeError(f"rdzv_id must be a str, got {type(rdzv_id).__name__}")
    if not re.fullmatch(r"[\w.-]+", rdzv_id):
        raise ValueError(
            "rdzv_id must be a non-empty word of letters, digits, '_', '.' or '-', "
            f"got {rdzv_id!r}"
        )
    if local_addr is not None:
        if not isinstance(local_addr, str):
            raise TypeError(
                f"local_addr must be a str or None, got {type(local_addr).__name__}"
            )
        if not re.fullmatch(r"\S+", local_addr):
            raise ValueError(
                f"local_addr must be a host name or address, got {local_addr!r}"
            )
    command = [sys.executable, "-m", "torch.distributed.run"]
    if rdzv_endpoint is None:
        if nnodes != 1:
            raise ValueError(
                f"nnodes={nnodes} needs an rdzv_endpoint that every node can reach"
            )
        command.append("--standalone")
    else:
        if not isinstance(rdzv_endpoint, str):
            raise TypeError(
                f"rdzv_endpoint must be a str, got {type(rdzv_endpoint).__name__}"
            )
        if not re.fullmatch(r"[^\s:]+:\d+", rdzv_endpoint):
            raise ValueError(
                f"rdzv_endpoint must look like 'host:port', got {rdzv_endpoint!r}"
            )
        command += [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
            f"--rdzv-id={rdzv_id}",
        ]
        if local_addr is not None:
            command.append(f"--local-addr={local_addr}")
    command += [f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}"]
    if max_restarts:
        command.append(f"--max-restarts={max_restarts}")
    return [*command, "-m", module, *args]


def run_commands(
    commands: Sequence[Sequence[str]],
    *,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> list[subprocess.CompletedProcess]:
    """Start every command at once, wait for all, and return their results (stdout, stderr as text).

    ``env`` entries are added to this process's environment. If they have not all ended
    after ``timeout`` seconds, the ones still running get SIGTERM (a torchrun agent then
    stops its workers), SIGKILL 10 s later, and ``subprocess.TimeoutExpired`` is raised
    with the output so far. Introduced in chapter 09.
    """
    if isinstance(commands, str) or not isinstance(commands, Sequence):
        raise TypeError("commands must be a sequence of commands (lists of str)")
    if not commands:
        raise ValueError("commands must not be empty")
    for command in commands:
        if (
            isinstance(command, str)
            or not command
            or not all(isinstance(w, str) for w in command)
        ):
            raise TypeError("commands: every command must be a non-empty list of str")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number, got {type(timeout).__name__}")
    if timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    deadline = time.monotonic() + timeout
    # Files, not pipes: a pipe nobody reads fills up and stalls the process writing to it.
    with contextlib.ExitStack() as stack:
        logs = [
            (
                stack.enter_context(tempfile.TemporaryFile("w+")),
                stack.enter_context(tempfile.TemporaryFile("w+")),
            )
            for _ in commands
        ]
        procs = [
            subprocess.Popen(list(c), stdout=out, stderr=err, text=True, env=full_env)
            for c, (out, err) in zip(commands, logs, strict=True)
        ]
        timed_out = False
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
        if timed_out:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        texts = []
        for out, err in logs:
            out.seek(0)
            err.seek(0)
            texts.append((out.read(), err.read()))
    if timed_out:
        joined = "\n".join(o for o, _ in texts)
        raise subprocess.TimeoutExpired(
            procs[0].args, timeout, output=joined, stderr="\n".join(e for _, e in texts)
        )
    return [
        subprocess.CompletedProcess(p.args, p.returncode, o, e)
        for p, (o, e) in zip(procs, texts, strict=True)
    ]


# Two failures come from torch itself, not from the code it runs:
# - torchrun's agent can read a failed worker's error file while that worker is still
#   writing it (a surviving rank that fails on a crashed rank's closed connection writes
#   one as the agent tears it down); the agent then dies of a JSONDecodeError in
#   ProcessFailure;
# - a worker killed by a signal from torch's native code: SIGSEGV (seen with gloo on
#   torch 2.11) or SIGABRT ("terminate called without an active exception" after the
#   script's last line: a thread torn down at interpreter exit).
_AGENT_ERROR_FILE_RACE = ("self.error_file_data = json.load(fp)", "JSONDecodeError")
_NATIVE_CRASH = re.compile(r"Signal (6 \(SIGABRT\)|11 \(SIGSEGV\)) received by PID")


def failed_inside_torch(result: subprocess.CompletedProcess) -> bool:
    """Whether a launch failed in torch itself: the agent's error-file race, or a worker
    killed by SIGSEGV or SIGABRT. Any other failure (an exception in the script, a
    SIGKILL) is the script's or the machine's, and is not. Introduced in chapter 09.
    """
    if not isinstance(result, subprocess.CompletedProcess):
        raise TypeError(
            f"result must be a subprocess.CompletedProcess, got {type(result).__name__}"
        )
    stderr = result.stderr or ""
    raced = all(s in stderr for s in _AGENT_ERROR_FILE_RACE)
    return result.returncode != 0 and (
        raced or _NATIVE_CRASH.search(stderr) is not None
    )


def failure_text(stderr: str, *, stacks: int = 4000, tail: int = 3000) -> str:
    """The last ``tail`` characters of ``stderr``, after the first ``stacks`` characters
    from its "Fatal Python error" (the stacks ``PYTHONFAULTHANDLER`` prints when a worker
    dies of a signal), if there is one. Introduced in chapter 09.
    """
    if not isinstance(stderr, str):
        raise TypeError(f"stderr must be a str, got {type(stderr).__name__}")
    fatal = stderr.find("Fatal Python error")
    head = stderr[fatal : fatal + stacks] + "\n[...]\n" if fatal >= 0 else ""
    return head + stderr[-tail:]


def run_commands_with_rerun(
    commands: Sequence[Sequence[str]],
    *,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    out_dirs: Iterable[str | os.PathLike] = (),
) -> tuple[list[subprocess.CompletedProcess], str]:
    """``run_commands``, and once more if torch itself failed (``failed_inside_torch``).

    Before the second run every folder in ``out_dirs`` is emptied, so that a script that
    resumes from its checkpoint starts afresh. ``PYTHONFAULTHANDLER=1`` is set (unless
    ``env`` sets it), so a worker killed by a signal prints every thread's Python stack
    first. Returns the results of the last run and the first run's ``failure_text`` of
    every failed command ("" when there was no second run). A failure of the script
    itself is returned as it is, not rerun. Introduced in chapter 09.
    """
    folders = [Path(d) for d in out_dirs]
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"out_dirs: {folder} is not a folder")
    env = {"PYTHONFAULTHANDLER": "1", **(env or {})}
    results = run_commands(commands, timeout=timeout, env=env)
    if not any(failed_inside_torch(r) for r in results):
        return results, ""
    first = "\n".join(failure_text(r.stderr) for r in results if r.returncode != 0)
    for folder in folders:
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    return run_commands(commands, timeout=timeout, env=env), first


def lines_by_rank(output: str) -> dict[int, list[str]]:
    """Group the ``[rank N] ...`` lines of ``output`` by N (tags removed), ranks in order.

    Untagged lines (the launcher's own messages) are dropped. Introduced in chapter 09.
    """
    if not isinstance(output, str):
        raise TypeError(f"output must be a str, got {type(output).__name__}")
    grouped: dict[int, list[str]] = {}
    for line in output.splitlines():
        match = _RANK_TAG.match(line)
        if match:
            grouped.setdefault(int(match.group(1)), []).append(match.group(2))
    return dict(sorted(grouped.items()))
