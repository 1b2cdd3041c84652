"""Chapter 09's SLURM batch file, submitted to a real one-node SLURM cluster.

The fixture starts munge and SLURM's two daemons (slurmctld, the controller, and
slurmd, the node) on this machine, in a temporary directory with their own ports, and
stops every process it started, by PID, at the end. The test submits the book's own
``slurm_train_ddp.sbatch``, unchanged, with the sbatch options and environment
variables the file documents for one CPU node, and checks what the job wrote against a
one-process computation.

It needs Debian's ``slurm-wlm`` and ``munge`` packages and root (slurmd starts job
steps as the submitting user); ``scripts/test.sh`` installs the packages when it can.
Without them the test skips with the reason, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_distributed import (
    _max_difference,
    _one_process_reference,
    _training_args,
    data_file,  # noqa: F401 (a fixture)
)

from helpers.distributed import PACKAGE_DIR, free_port

pytestmark = pytest.mark.integration

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo")
JOB_TIMEOUT = 400  # seconds; two processes that import torch on a slow, shared machine


def _unavailable() -> str | None:
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not found (Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start job steps"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def _wait_for(condition, what: str, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise TimeoutError(f"{what} within {timeout} s\n{tails}")


SLURM_CONF = """\
ClusterName=book
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=book Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """A one-node SLURM cluster on localhost; yields the environment that talks to it."""
    reason = _unavailable()
    if reason:
        _skip_or_fail(reason)
    # A short path: munge's socket path must fit a Unix socket address (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="slurm-"))
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            host=host,
            root=root,
            ctld_port=free_port(),
            d_port=free_port(),
            cpus=os.cpu_count(),
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []

    def start(*command: str) -> None:
        with open(root / f"{command[0]}.out", "w") as log:  # the child keeps its copy
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(process)

    try:
        subprocess.run(["mungekey", "--create", f"--keyfile={root / 'munge.key'}"], check=True)
        start(
            "munged",
            "--foreground",
            "--force",
            f"--socket={root / 'munge.socket'}",
            f"--key-file={root / 'munge.key'}",
            f"--pid-file={root / 'munged.pid'}",
            f"--seed-file={root / 'munged.seed'}",
            f"--log-file={root / 'munged.log'}",
        )
        logs = [root / name for name in ("munged.out", "slurmctld.log", "slurmd.log")]
        _wait_for((root / "munge.socket").exists, "munged did not start", 30, logs)
        start("slurmctld", "-D", "-i")  # -i: ignore state left by an earlier run
        start("slurmd", "-D")

        def node_idle() -> bool:
            state = subprocess.run(
                ["sinfo", "--noheader", "--format=%T"],
                env=env,
                capture_output=True,
                text=True,
            )
            return state.stdout.strip() == "idle"

        _wait_for(node_idle, "the node did not become idle", 60, logs)
        yield env
    finally:
        for process in reversed(started):
            process.send_signal(signal.SIGTERM)
        for process in reversed(started):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)


def test_the_books_batch_file_trains_on_one_cpu_node(slurm_cluster, data_file, tmp_path):  # noqa: F811
    out_dir, epochs = tmp_path / "run", 2
    env = {
        **slurm_cluster,
        # The variables the batch file documents; torchrun is the one next to Python.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NPROC_PER_NODE": "2",
        "DATA": str(data_file),
        "OUT_DIR": str(out_dir),
        "RDZV_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    job = subprocess.run(
        [
            "sbatch",
            "--wait",  # return when the job ends, with its exit code
            "--nodes=1",
            "--gpus-per-node=0",
            "--cpus-per-task=2",
            f"--output={tmp_path / 'job.out'}",
            str(PACKAGE_DIR / "slurm_train_ddp.sbatch"),
            *_training_args(epochs),  # passed on to train_ddp
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT,
    )
    output = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    assert job.returncode == 0, job.stdout + job.stderr + output[-4000:]
    assert job.stdout.startswith("Submitted batch job ")
    summary = json.loads((out_dir / "history.json").read_text())
    assert summary["world_size"] == 2
    assert [h["epoch"] for h in summary["history"]] == list(range(1, epochs + 1))
    # Both workers ran, under torchrun, inside the SLURM job.
    assert "[rank 0]" in output and "[rank 1]" in output
    # The checkpoint holds the parameters one process computes on the same batches.
    model = torch.load(out_dir / "model.pt", map_location="cpu", weights_only=True)
    assert _max_difference(model, _one_process_reference(data_file, epochs)) < 1e-10
