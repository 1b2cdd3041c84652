# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,jupyter,mystnb,-all
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 8. Tips and tricks, each one measured
#
# Advice about speed is easy to give and easy to get wrong: what pays on a data-centre
# GPU can cost time on a laptop, and the other way round. This chapter therefore
# measures every tip on the machine that runs it, prints the numbers, and lets the text
# draw a conclusion only from them. By the end you will write device-agnostic code and
# know when an accelerator, more data-loader workers, mixed precision or
# `torch.compile` pay and when they do not; schedule a learning rate correctly;
# accumulate and clip gradients; save a checkpoint that resumes a run bit for bit; make
# two runs identical; and find where a training step spends its time and its memory.
#
# **Prerequisites:** chapter 1 (devices, `helpers.timing.best_time`, deterministic
# algorithms), chapter 2 (the training loop, gradient accumulation, checkpoints,
# `weights_only`) and chapter 3 (batch normalisation).
#
# ```{admonition} How to read the numbers
# :class: note
# Every timing here is the fastest of several repeats after a warm-up
# (`best_time`, from chapter 1), which is the estimate least disturbed by whatever
# else the machine is doing. The numbers on this page come from the machine that built
# it (the setup cell prints what it was), and they vary with the hardware and with
# whatever else runs at the same time; run the notebook yourself and yours will
# differ. That is why no sentence below says "faster" or
# "slower" by itself: each comparison is put into words by
# `helpers.tips.speed_verdict`, which calls two timings "as fast as" each other unless
# they differ by more than 10 %.
# ```

# %% tags=["hide-cell"]
# On Colab only: install this book's helpers package (Colab's own torch is kept).
import sys

if "google.colab" in sys.modules:
    import subprocess

    repository = "https://github.com/pytorch-book/pytorch-book"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", f"git+{repository}"], check=True
    )

# %%
import copy
import hashlib
import inspect
import io
import itertools
import logging
import os
import pickle
import shutil
import subprocess
import tempfile
import textwrap
import time
import warnings
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from helpers.models import count_parameters
from helpers.numerics import sum_rounding_bound
from helpers.plotting import plot_losses
from helpers.results import record
from helpers.runtime import (
    describe_runtime,
    get_device,
    make_generator,
    seed_everything,
)
from helpers.timing import best_time
from helpers.tips import CostlyDataset, atomic_save, speed_verdict
from helpers.training import evaluate
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.optim import lr_scheduler
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    TensorDataset,
)

# Section 8.8 turns on deterministic algorithms. On CUDA with PyTorch 2.9 or earlier
# they need this setting before the first matrix product; elsewhere it is ignored.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
seed = seed_everything(0)
device = get_device()
print(describe_runtime(device, seed))
print(
    f"CPU: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
    f"vector instructions: {torch.backends.cpu.get_cpu_capability()}"
)
# Timings measure the machine as it is: other programs' load changes them.
load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
print("load average (1 min):", load_at_start)

# %% [markdown]
# The experiments train small networks on the handwritten digits that ship with
# scikit-learn: 1,797 images of 8 × 8 pixels, small enough that every experiment takes
# seconds on a CPU. They are split, stratified by digit, into training, validation and
# test parts; every choice below is made on the validation part, and the test part is
# used once, in section 8.3. The model is a multilayer perceptron with dropout.

# %%
digits = load_digits()
images = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
labels = torch.tensor(digits.target)  # (1797,) int64
index = np.arange(len(labels))
rest, test_index = train_test_split(
    index, test_size=0.2, random_state=seed, stratify=digits.target
)
train_index, val_index = train_test_split(
    rest, test_size=0.2, random_state=seed, stratify=digits.target[rest]
)
train_set = TensorDataset(images[train_index], labels[train_index])
val_set = TensorDataset(images[val_index], labels[val_index])
test_set = TensorDataset(images[test_index], labels[test_index])
val_loader = DataLoader(val_set, batch_size=512)
print(f"train {len(train_set)}, validation {len(val_set)}, test {len(test_set)} digits")
record("n_train", len(train_set), fmt="{:,}")


def make_model(hidden: int = 256, dropout: float = 0.1) -> nn.Sequential:
    """64 pixels -> two hidden layers of `hidden` units -> 10 digit logits."""
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, 10),
    )


criterion = nn.CrossEntropyLoss()
print(f"{count_parameters(make_model()):,} parameters")

# %% [markdown]
# ## 8.1 Devices
#
# ### Device-agnostic code
#
# Pick the device once, `device = get_device()` (CUDA, then Apple's MPS, then the
# CPU; chapter 1), and move the model and every batch with `.to(device)`. Code written
# with `.cuda()` runs only where PyTorch has CUDA (an NVIDIA GPU, or an AMD one with a
# ROCm build): on any other machine, a Mac included, it stops with an error.

# %%
model = make_model().to(device)  # Module.to moves the parameters in place
batch = images[:4].to(device)  # Tensor.to returns a new tensor: assign it
print("output on", model(batch).device)
if torch.cuda.is_available():
    print("This machine has CUDA, so .cuda() happens to work here (and only on such")
    print("a machine).")
else:
    try:
        images[:4].cuda()
    except (AssertionError, RuntimeError) as error:
        print(
            f"images[:4].cuda() -> {type(error).__name__}: {str(error).splitlines()[0]}"
        )

# %% [markdown]
# ### What a call costs: the overhead floor
#
# Every operation pays a fixed price before it computes anything: Python, PyTorch's
# dispatcher, memory allocation, and on a GPU the launch of a kernel. For a small
# batch that price is most of the time. The cell times one forward pass of the model
# for batch sizes from 1 to 4,096 on the CPU and, where there is one, on the
# accelerator (with `best_time(..., device=...)` waiting for the GPU to finish, since
# GPU work is asynchronous).

# %%
batch_sizes = [1, 8, 64, 512, 4096]


def forward_times(on: torch.device) -> dict[int, float]:
    """Fastest time in seconds of one forward pass of a fresh model, per batch size."""
    torch.manual_seed(seed)
    net = make_model().to(on).eval()
    times = {}
    with torch.inference_mode():
        for size in batch_sizes:
            x = torch.randn(size, 64, device=on)
            repeat = 20 if size <= 512 else 5
            times[size] = best_time(partial(net, x), repeat=repeat, warmup=3, device=on)
    return times


sweep = {"cpu": forward_times(torch.device("cpu"))}
if device.type != "cpu":
    sweep[device.type] = forward_times(device)
print(
    f"{'batch':>6}"
    + "".join(f"{name + ' per batch':>18}{'per sample':>12}" for name in sweep)
)
for size in batch_sizes:
    cells = "".join(
        f"{times[size] * 1e6:>15.1f} µs{times[size] / size * 1e6:>9.2f} µs"
        for times in sweep.values()
    )
    print(f"{size:>6}{cells}")

fig, (ax_call, ax_sample) = plt.subplots(1, 2, figsize=(10, 3.8))
for name, times in sweep.items():
    ax_call.plot(batch_sizes, [times[b] * 1e6 for b in batch_sizes], "o-", label=name)
    per_sample = [times[b] / b * 1e6 for b in batch_sizes]
    ax_sample.plot(batch_sizes, per_sample, "o-", label=name)
ax_call.set(title="Time per forward pass", ylabel="time per batch (µs)")
ax_sample.set(title="Time per sample", ylabel="time per sample (µs)")
for ax in (ax_call, ax_sample):
    ax.set(xscale="log", yscale="log", xlabel="batch size")
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()

cpu_times = sweep["cpu"]
cpu_per_sample = {b: cpu_times[b] / b for b in batch_sizes}
cpu_best_batch = min(cpu_per_sample, key=cpu_per_sample.get)
record("cpu_call_1_us", cpu_times[1] * 1e6, fmt="{:.0f}")
record("cpu_call_64_us", cpu_times[64] * 1e6, fmt="{:.0f}")
record("cpu_64_over_1", cpu_times[64] / cpu_times[1], fmt="{:.1f}")
record("cpu_sample_1_us", cpu_per_sample[1] * 1e6, fmt="{:.0f}")
record("cpu_sample_best_us", cpu_per_sample[cpu_best_batch] * 1e6, fmt="{:.2f}")
record("cpu_best_batch", cpu_best_batch, fmt="{:,}")
if (
    cpu_best_batch < 4096
    and cpu_per_sample[4096] > 1.1 * cpu_per_sample[cpu_best_batch]
):
    large_batch_sentence = (
        f"At 4,096 the time per sample rose again, to "
        f"{cpu_per_sample[4096] * 1e6:.2f} µs. Two likely causes: a batch this large "
        f"no longer fits in the CPU's fast caches (each hidden activation is "
        f"4,096 x 256 x 4 bytes = 4 MiB), or other programs competed for the CPU "
        f"while it was timed."
    )
elif cpu_best_batch == 4096:
    large_batch_sentence = "The largest batch tried was also the cheapest per sample."
else:
    large_batch_sentence = (
        "Beyond that size the time per sample stayed within 10 % of its lowest value."
    )
record("large_batch_sentence", large_batch_sentence)
if device.type == "cpu":
    accelerator_sentence = (
        "This machine has no accelerator, so only the CPU was measured; on a machine "
        "with a GPU the same cell draws a second line."
    )
else:
    accel = sweep[device.type]
    accelerator_sentence = (
        f"On this machine the {device.type.upper()} was "
        f"{speed_verdict(cpu_times[1], accel[1])} the CPU for a batch of 1 and "
        f"{speed_verdict(cpu_times[4096], accel[4096])} the CPU for a batch of 4,096."
    )
record("accelerator_sentence", accelerator_sentence)

# %% [markdown]
# On the CPU a batch of 1 took {glue:}`cpu_call_1_us` µs and a batch of 64 took
# {glue:}`cpu_call_64_us` µs: 64 times the work for {glue:}`cpu_64_over_1` times the
# time. Per sample, the cost fell from {glue:}`cpu_sample_1_us` µs at batch size 1 to
# {glue:}`cpu_sample_best_us` µs at batch size {glue:}`cpu_best_batch`, the cheapest of
# the sizes tried. {glue:}`large_batch_sentence` {glue:}`accelerator_sentence`
#
# This is why a tiny model can run slower on a GPU than on a CPU. A GPU has a higher
# fixed price per operation (each operation is a kernel launched from the CPU, typically
# several microseconds) and only wins once each operation has enough arithmetic to
# keep thousands of cores busy. A model as small as this one, fed one sample at a
# time, never gets there; fed thousands of samples per batch, it can.
# The figure's left panel is the overhead floor, its right panel the price per sample.
#
# ### Moving data, and `pin_memory`
#
# A discrete GPU has its own memory, and every batch crosses the link between CPU and
# GPU (PCIe on most machines), which is far slower than the GPU's own memory. Two
# settings make the crossing cheaper. `pin_memory=True` in a `DataLoader` (or
# `tensor.pin_memory()`) puts batches in page-locked CPU memory, which the GPU can copy
# from directly; a normal, *pageable* tensor is first copied into such a buffer behind
# the scenes. `x.to(device, non_blocking=True)` from pinned memory then returns at once
# and lets the copy overlap with work the CPU queues next. The cell measures what
# applies on this machine.

# %%
transfer_batch = torch.randn(4096, 64)  # 1 MiB of float32
mebibytes = transfer_batch.numel() * transfer_batch.element_size() / 2**20
if device.type == "cpu":
    same_object = transfer_batch.to(device) is transfer_batch
    noop_s = best_time(partial(transfer_batch.to, device), repeat=100)
    transfer_sentence = (
        f"Here the device is the CPU, so .to(device) returned the very same tensor "
        f"object (an identity check with is gives {same_object}) in "
        f"{noop_s * 1e6:.1f} µs: nothing was copied, and pinned memory needs an "
        f"accelerator, so this machine has no transfer to measure."
    )
    assert same_object
else:
    pageable_s = best_time(partial(transfer_batch.to, device), repeat=20, device=device)
    transfer_sentence = (
        f"Copying {mebibytes:.0f} MiB from pageable memory to the {device.type.upper()} "
        f"took {pageable_s * 1e6:.0f} µs ({mebibytes / 1024 / pageable_s:.1f} GiB/s), "
        f"against {sweep[device.type][4096] * 1e6:.0f} µs for the forward pass on "
        f"that batch."
    )
    if device.type == "cuda":
        pinned = transfer_batch.pin_memory()
        pinned_s = best_time(
            partial(pinned.to, device, non_blocking=True), repeat=20, device=device
        )
        transfer_sentence += (
            f" From pinned memory the copy took {pinned_s * 1e6:.0f} µs "
            f"({mebibytes / 1024 / pinned_s:.1f} GiB/s): "
            f"{speed_verdict(pageable_s, pinned_s)} the pageable copy."
        )
print(transfer_sentence)
record("transfer_sentence", transfer_sentence)

# %% [markdown]
# {glue:}`transfer_sentence` Either way the rule is the same: move the model once,
# move each batch once, and keep everything in between on the device.
#
# ### `.item()` forces a synchronisation
#
# On a GPU, PyTorch only *queues* kernels and returns to Python at once, so the CPU can
# prepare the next step while the GPU computes. `loss.item()` (also `.cpu()`,
# `.tolist()`, `print(tensor)`, or an `if` on a tensor's value) needs the number
# itself, so the CPU must wait until the GPU has finished everything queued before it.
# Calling it on every step stops the CPU from running ahead. The alternative is to add
# the losses up on the device and read the sum once. The cell times 50 training steps
# both ways.

# %%
torch.manual_seed(seed)
net = make_model().to(device)
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
x_batch, y_batch = images[:64].to(device), labels[:64].to(device)


def fifty_steps(read_every_step: bool) -> float:
    """50 training steps; the mean loss read every step or once at the end."""
    total = torch.zeros((), device=device)
    read = 0.0
    for _ in range(50):
        loss = criterion(net(x_batch), y_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if read_every_step:
            read += loss.item()  # waits for the device every step
        else:
            total += loss.detach()  # stays on the device, no waiting
    return read / 50 if read_every_step else total.item() / 50


item_every_s = best_time(partial(fifty_steps, True), repeat=3, device=device) / 50
item_once_s = best_time(partial(fifty_steps, False), repeat=3, device=device) / 50
item_verdict = speed_verdict(item_every_s, item_once_s)
print(
    f"item() every step: {item_every_s * 1e3:.2f} ms per step; "
    f"once: {item_once_s * 1e3:.2f} ms per step -> once is {item_verdict} every step"
)
record("item_every_ms", item_every_s * 1e3, fmt="{:.2f}")
record("item_once_ms", item_once_s * 1e3, fmt="{:.2f}")
record("item_verdict", item_verdict)
record("device_name", device.type.upper())

# %% [markdown]
# Reading the loss once took {glue:}`item_once_ms` ms per step and reading it every
# step {glue:}`item_every_ms` ms, so here (on the {glue:}`device_name`) reading it
# once was {glue:}`item_verdict` reading it every step. On a CPU there is nothing to
# wait for: the operations run one after the other in the calling thread, and `.item()`
# only converts a number, so on a CPU any difference between the two comes from
# something else (other programs on the machine, for one), not from synchronisation.
# On a GPU the cost of reading every step grows with how much work the CPU could have
# queued ahead. Accumulating on the device does no more work than reading every step,
# on any device, so write training loops the second way.
#
# ### The CPU's own threads
#
# A CPU is a device with several cores, and PyTorch splits large operations across
# `torch.get_num_threads()` threads (by default, one per core). Threads pay only when
# an operation is big enough to share out, and on a machine where other programs are
# busy they can wait on each other. The cell times a training step of batch 64 and a
# forward pass of batch 4,096 on the CPU with one thread and with the default.

# %%
default_threads = torch.get_num_threads()
cpu_net = make_model().eval()
cpu_x, cpu_y = images[:64], labels[:64]
big_x = torch.randn(4096, 64)
cpu_optimizer = torch.optim.SGD(cpu_net.parameters(), lr=0.01)


def cpu_step() -> None:
    loss = criterion(cpu_net(cpu_x), cpu_y)
    cpu_optimizer.zero_grad()
    loss.backward()
    cpu_optimizer.step()


def big_forward() -> None:
    with torch.inference_mode():
        cpu_net(big_x)


thread_times = {}
try:
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        thread_times[threads] = (
            best_time(cpu_step, repeat=20, warmup=3),
            best_time(big_forward, repeat=5, warmup=1),
        )
finally:
    torch.set_num_threads(default_threads)  # the setting is global: put it back
for threads, (step_s, forward_s) in thread_times.items():
    print(
        f"{threads} thread(s): training step (batch 64) {step_s * 1e3:.2f} ms, "
        f"forward (batch 4,096) {forward_s * 1e3:.1f} ms"
    )
if default_threads > 1:
    one, many = thread_times[1], thread_times[default_threads]
    threads_sentence = (
        f"With {default_threads} threads the small training step was "
        f"{speed_verdict(one[0], many[0])} with one thread, and the large forward pass "
        f"{speed_verdict(one[1], many[1])} with one thread."
    )
else:
    threads_sentence = (
        "This machine gives PyTorch one thread, so there is no comparison."
    )
print(threads_sentence)
record("threads_sentence", threads_sentence)

# %% [markdown]
# {glue:}`threads_sentence` On an idle machine a large operation usually gains from
# more threads and a tiny one gains little or nothing; on a shared, busy machine
# threads can even lose, because each operation waits for its slowest thread. When
# several processes share a machine (data-loader workers, several training jobs), give
# each fewer threads with `torch.set_num_threads` (DataLoader workers already use one).
#
# ## 8.2 Data loading
#
# ### Fetching a batch at a time
#
# A `DataLoader` with `batch_size=64` calls the dataset's `__getitem__` 64 times, once
# per index, and then stacks the samples (`collate_fn`). For data that is already one
# tensor in memory, that is 64 small indexing operations where one would do:
# `TensorDataset` also accepts a *list* of indices and returns the whole batch. A
# `BatchSampler` around the usual `RandomSampler` hands it those lists, and
# `batch_size=None` tells the loader that the samples arrive already batched.

# %%
per_sample_loader = DataLoader(
    train_set, batch_size=64, shuffle=True, generator=make_generator(seed)
)


def make_train_loader(batch_size: int, generator: torch.Generator) -> DataLoader:
    """Shuffled batches of the training digits, indexed a whole batch at a time."""
    sampler = RandomSampler(train_set, generator=generator)
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    return DataLoader(train_set, sampler=batches, batch_size=None)


per_batch_loader = make_train_loader(64, make_generator(seed))
x_first, y_first = next(iter(per_batch_loader))
print("one batch:", tuple(x_first.shape), tuple(y_first.shape))


def read_all(loader: DataLoader) -> None:
    for _ in loader:
        pass


per_sample_s = best_time(partial(read_all, per_sample_loader), repeat=5)
per_batch_s = best_time(partial(read_all, per_batch_loader), repeat=5)
loader_verdict = speed_verdict(per_sample_s, per_batch_s)
print(
    f"one epoch of loading: per sample {per_sample_s * 1e3:.1f} ms, "
    f"per batch {per_batch_s * 1e3:.2f} ms -> per batch is {loader_verdict} per sample"
)
record("per_sample_ms", per_sample_s * 1e3, fmt="{:.1f}")
record("per_batch_ms", per_batch_s * 1e3, fmt="{:.2f}")
record("loader_verdict", loader_verdict)

# %% [markdown]
# Reading the {glue:}`n_train` training digits once took {glue:}`per_sample_ms` ms
# sample by sample and {glue:}`per_batch_ms` ms batch by batch: batch-wise indexing was
# {glue:}`loader_verdict` per-sample indexing. The rest of the chapter uses
# `make_train_loader`. (It needs a dataset that can index many samples at once; for
# files on disk, per-sample loading with workers, below, is the tool.)
#
# ### The batch size
#
# The batch size sets how many samples share each call's fixed price, and how many
# optimizer steps an epoch takes. The cell times one training epoch at three batch
# sizes.

# %%
epoch_times = {}
for size in (16, 64, 256):
    torch.manual_seed(seed)
    net = make_model().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loader = make_train_loader(size, make_generator(seed))

    def one_epoch(net=net, optimizer=optimizer, loader=loader) -> None:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = criterion(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    epoch_times[size] = best_time(one_epoch, repeat=3, device=device)
    print(
        f"batch size {size:>3}: {len(loader):>2} steps, "
        f"{epoch_times[size] * 1e3:.1f} ms per epoch"
    )
record("epoch_16_ms", epoch_times[16] * 1e3, fmt="{:.0f}")
record("epoch_256_ms", epoch_times[256] * 1e3, fmt="{:.0f}")
record("batch_verdict", speed_verdict(epoch_times[16], epoch_times[256]))

# %% [markdown]
# An epoch at batch size 256 took {glue:}`epoch_256_ms` ms, against {glue:}`epoch_16_ms`
# ms at batch size 16: it was {glue:}`batch_verdict` the epoch at 16. But a bigger
# batch is not simply better: it takes fewer, less noisy optimizer steps per epoch, and
# usually needs a larger learning rate and more epochs to reach the same accuracy.
# Choose the batch size for the optimisation, on validation data, and use the speed as
# a tie-breaker.
#
# ### Workers for a costly `__getitem__`
#
# When each sample costs real time to produce (a file read from disk, a JPEG decoded,
# an augmentation computed), `num_workers=k` starts `k` worker processes that produce
# batches in parallel with the training loop, and in parallel with each other. To
# measure this, `helpers.tips.CostlyDataset` wraps tensors and makes `__getitem__`
# slow on purpose, in one of two ways:

# %%
print(inspect.getsource(CostlyDataset.__getitem__))

# %% [markdown]
# `sleep_s` stands for waiting on a disk or a network (the process waits but the CPU
# is free), `work` for CPU-heavy preprocessing (the CPU is busy). Each item of the
# waiting set sleeps 2 ms, and each item of the computing set does 30,000 rounds of
# arithmetic, which the cell times on this machine. An epoch covers 128 digits in
# batches of 16, and each configuration runs two epochs, each a full pass of loading
# plus a training step per batch. Without `persistent_workers=True` the workers are
# started anew at the beginning of every epoch and shut down at its end; with it they
# stay alive between epochs.

# %%
subset = train_index[:128]
waiting_set = CostlyDataset(images[subset], labels[subset], sleep_s=0.002)
computing_set = CostlyDataset(images[subset], labels[subset], work=30_000)
compute_item_s = best_time(partial(computing_set.__getitem__, 0), repeat=5)
print(f"one item of the computing set: {compute_item_s * 1e3:.1f} ms")
record("compute_item_ms", compute_item_s * 1e3, fmt="{:.1f}")

worker_settings = {
    "0 workers": {"num_workers": 0},
    "2 workers": {"num_workers": 2},
    "2 workers, persistent": {"num_workers": 2, "persistent_workers": True},
}
if device.type == "cuda":  # pinned memory only exists with an accelerator like CUDA
    worker_settings["2 workers, persistent, pinned"] = {
        "num_workers": 2,
        "persistent_workers": True,
        "pin_memory": True,
    }


def timed_epochs(dataset: Dataset, epochs: int = 2, **options) -> list[float]:
    """Seconds per epoch of loading every batch and taking one training step on it."""
    torch.manual_seed(seed)
    net = make_model().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loader = DataLoader(
        dataset, batch_size=16, shuffle=True, generator=make_generator(seed), **options
    )
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for x, y in loader:
            # non_blocking only has an effect for pinned memory and a CUDA device
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        loss.item()  # wait for the device before stopping the clock
        times.append(time.perf_counter() - start)
    return times


loading = {}
for kind, dataset in (("waiting", waiting_set), ("computing", computing_set)):
    for name, options in worker_settings.items():
        loading[kind, name] = timed_epochs(dataset, **options)
        first, second = loading[kind, name]
        print(f"{kind:9} {name:30} epoch 1 {first:.3f} s, epoch 2 {second:.3f} s")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
names = list(worker_settings)
positions = np.arange(len(names))
item_costs = {
    "waiting": "sleeps 2 ms per item",
    "computing": f"{compute_item_s * 1e3:.1f} ms of work per item",
}
for ax, kind in zip(axes, ("waiting", "computing"), strict=True):
    for offset, epoch in ((-0.2, 0), (0.2, 1)):
        heights = [loading[kind, name][epoch] for name in names]
        ax.bar(positions + offset, heights, width=0.4, label=f"epoch {epoch + 1}")
    ax.set_xticks(positions, [name.replace(", ", ",\n") for name in names], fontsize=8)
    ax.set(title=f"A {kind} __getitem__ ({item_costs[kind]})", ylabel="seconds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
fig.suptitle("Time per epoch: loading 128 digits plus a training step per batch")
fig.tight_layout()
plt.show()


def second_epoch(kind: str, name: str) -> float:
    return loading[kind, name][1]


record("wait_0_s", second_epoch("waiting", "0 workers"), fmt="{:.2f}")
record("wait_2_s", second_epoch("waiting", "2 workers, persistent"), fmt="{:.2f}")
record(
    "wait_verdict",
    speed_verdict(
        second_epoch("waiting", "0 workers"),
        second_epoch("waiting", "2 workers, persistent"),
    ),
)
record("compute_0_s", second_epoch("computing", "0 workers"), fmt="{:.2f}")
record("compute_2_s", second_epoch("computing", "2 workers, persistent"), fmt="{:.2f}")
record(
    "compute_verdict",
    speed_verdict(
        second_epoch("computing", "0 workers"),
        second_epoch("computing", "2 workers, persistent"),
    ),
)
record(
    "persistent_verdict",
    speed_verdict(
        second_epoch("waiting", "2 workers"),
        second_epoch("waiting", "2 workers, persistent"),
    ),
)
record("cpu_count", os.cpu_count())
if device.type == "cuda":
    pinned_sentence = (
        "With pinned memory on top, the second epoch of the waiting set was "
        + speed_verdict(
            second_epoch("waiting", "2 workers, persistent"),
            second_epoch("waiting", "2 workers, persistent, pinned"),
        )
        + " the same loader without it."
    )
else:
    pinned_sentence = (
        "pin_memory=True was not measured: it needs an accelerator, and on this "
        "machine the loader would only warn and ignore it."
    )
record("pinned_sentence", pinned_sentence)

# %% [markdown]
# Reading the second epochs off the figure: for the waiting dataset, an epoch with two
# persistent workers took {glue:}`wait_2_s` s, against {glue:}`wait_0_s` s without
# workers, so it was {glue:}`wait_verdict` the epoch without workers. Waiting needs no
# CPU, so workers overlap their waits however few cores the machine has (two workers
# wait for two items at a time, more workers for more), and all of their loading
# overlaps with the training step in the main process. For the computing dataset (an
# item took {glue:}`compute_item_ms` ms here) an epoch with two persistent workers took
# {glue:}`compute_2_s` s against {glue:}`compute_0_s` s: it was
# {glue:}`compute_verdict` the epoch without workers. Computing needs cores: this
# machine has {glue:}`cpu_count`, shared by the workers, the training loop and anything
# else running, so CPU-bound loading can gain at most what the free cores allow.
#
# In the first epoch every configuration with workers pays their start-up. Without
# `persistent_workers` the second epoch pays it again; here the persistent workers'
# second epoch was {glue:}`persistent_verdict` the non-persistent one's. Start-up is
# cheap on Linux, where workers are *forked* copies of the running process, and costs
# far more where they are *spawned* (below). {glue:}`pinned_sentence`
#
# A good recipe: start with `num_workers=0`; if the GPU (or the training step) waits
# for data, raise `num_workers` step by step and measure, as here; add
# `persistent_workers=True` when an epoch is short, and `pin_memory=True` when
# training on CUDA.
#
# ### Workers in a notebook: define the dataset in a module
#
# How a worker gets the dataset depends on how it is started. With `fork` (the default
# on Linux up to Python 3.13) the worker is a copy of the running process and has
# every object already. With `spawn` (the default on macOS and Windows) or `forkserver`
# (Python 3.14's default on Linux) it is a fresh Python process: the dataset is
# *pickled*, sent to it and unpickled there, and unpickling an object needs its class,
# which Python finds by importing the module the class was defined in. A class defined
# in a notebook lives in the notebook's `__main__`, which a fresh process does not
# have. The cell does what such a worker does first: it unpickles a dataset in a new
# Python process.

# %%
print("start method here:", torch.multiprocessing.get_start_method())


class NotebookDataset(Dataset):
    """A dataset defined in the notebook itself."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return index


def unpickle_elsewhere(obj: object) -> tuple[bool, str, float]:
    """Unpickle `obj` in a fresh Python process, as a spawned worker must."""
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(obj), capture_output=True
    )
    seconds = time.perf_counter() - start
    message = (
        result.stderr.decode().strip().splitlines()[-1] if result.returncode else ""
    )
    return result.returncode == 0, message, seconds


notebook_ok, notebook_error, _ = unpickle_elsewhere(NotebookDataset())
module_ok, _, module_seconds = unpickle_elsewhere(waiting_set)
print(f"class from the notebook ({NotebookDataset.__module__}): {notebook_error}")
print(
    f"class from {CostlyDataset.__module__}: unpickled in {module_seconds:.1f} s "
    "(a fresh process imports torch first)"
)
assert not notebook_ok and "NotebookDataset" in notebook_error and module_ok
record("spawn_import_s", module_seconds, fmt="{:.1f}")

# %% [markdown]
# The notebook's class cannot be found; the module's class is imported and works. So in
# a notebook, keep `Dataset` classes, `collate_fn`s and `worker_init_fn`s that workers
# need in a `.py` module next to it, as this book does with `helpers.tips`. The time is
# worth noting too: the fresh process needed {glue:}`spawn_import_s` s, mostly to import
# torch, and a spawned worker pays that at every start, which is where
# `persistent_workers=True` pays most. (A *script* that uses spawned workers must also
# put its top-level code under `if __name__ == "__main__":`, because each spawned worker
# imports the script's main module.)
#
# ## 8.3 Learning-rate schedules
#
# A learning rate large enough to make fast progress early is usually too large to
# settle into a minimum late: the loss stops falling and bounces around. A schedule
# lowers the rate during training (some raise it first). `torch.optim.lr_scheduler`
# holds the common ones; each wraps an optimizer and changes its learning rate every
# time you call `scheduler.step()`.
#
# ### The order of the calls
#
# Since PyTorch 1.1, `scheduler.step()` comes **after** `optimizer.step()`. Called
# before it, the schedule is shifted by one: its first value is never used. PyTorch
# notices and warns.


# %%
def rates_used(scheduler_first: bool) -> list[float]:
    """The learning rate each of three optimizer steps used, with StepLR halving it."""
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    used = []
    for _ in range(3):
        weight.grad = torch.ones(1)
        if scheduler_first:
            scheduler.step()  # wrong place
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if not scheduler_first:
            scheduler.step()  # right place: after optimizer.step()
    return used


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    wrong_order = rates_used(scheduler_first=True)
right_order = rates_used(scheduler_first=False)
print("optimizer.step() then scheduler.step():", right_order)
print("scheduler.step() then optimizer.step():", wrong_order)
print("warning:", str(caught[0].message).split(". ")[0])
assert right_order == [0.1, 0.05, 0.025] and wrong_order == [0.05, 0.025, 0.0125]

# %% [markdown]
# ### Six schedules on the digits
#
# The schedules below all start from (or peak at) the same rate, 0.05, with SGD and
# momentum 0.9, and run for 12 epochs. All but one are stepped after every batch, so
# their parameters count optimizer steps:
#
# - **constant**: no scheduler, the baseline.
# - **`StepLR`**: multiplies the rate by 0.1 every third of the run.
# - **`CosineAnnealingLR`**: follows half a cosine from the rate down to 0.
# - **`OneCycleLR`**: rises from 1/25 of the peak to the peak over the first 30 % of the
#   steps, then anneals to almost 0; by default it also cycles SGD's momentum the
#   opposite way (0.95 to 0.85 and back).
# - **linear warm-up + cosine**: `LinearLR` climbs from 1 % of the rate to the rate over
#   the first 10 % of the steps, then `CosineAnnealingLR` takes over; `SequentialLR`
#   chains the two. Warm-up protects the first steps, when the weights are random and
#   gradients can be large and erratic (it matters most for large batches, Adam, and
#   transformers).
# - **`ReduceLROnPlateau`**: steps once per epoch *with the validation loss* and
#   multiplies the rate by 0.3 whenever that loss fails to beat its best so far by
#   more than the default relative `threshold` of 1e-4 (`patience=0`: no epoch of
#   grace; the default, 10, suits longer runs).
#
# Each schedule trains with two seeds, so that its difference from the others can be
# compared with the difference between seeds.

# %%
lr_epochs, peak_lr = 12, 0.05
steps_per_epoch = len(make_train_loader(64, make_generator(seed)))
total_steps = lr_epochs * steps_per_epoch


def make_schedule(name: str, optimizer: torch.optim.Optimizer):
    """The named learning-rate scheduler for `total_steps` optimizer steps."""
    if name == "constant":
        return None
    if name == "StepLR":
        return lr_scheduler.StepLR(optimizer, step_size=total_steps // 3, gamma=0.1)
    if name == "CosineAnnealingLR":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "OneCycleLR":
        return lr_scheduler.OneCycleLR(
            optimizer, max_lr=peak_lr, total_steps=total_steps
        )
    if name == "warm-up + cosine":
        warm = total_steps // 10
        warmup = lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warm)
        cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warm)
        return lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warm])
    if name == "ReduceLROnPlateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=0)
    raise ValueError(f"unknown schedule {name!r}")


def train_with_schedule(name: str, run_seed: int):
    """Train a fresh model; return it, the rate of every step and the val losses."""
    torch.manual_seed(run_seed)
    net = make_model().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=peak_lr, momentum=0.9)
    scheduler = make_schedule(name, optimizer)
    per_epoch = isinstance(scheduler, lr_scheduler.ReduceLROnPlateau)
    loader = make_train_loader(64, make_generator(run_seed))
    rates, val_losses = [], []
    for _ in range(lr_epochs):
        net.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = criterion(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            rates.append(optimizer.param_groups[0]["lr"])  # the rate this step uses
            optimizer.step()
            if scheduler is not None and not per_epoch:
                scheduler.step()  # after optimizer.step(), once per batch
        val_loss = evaluate(net, val_loader, criterion, device).loss
        val_losses.append(val_loss)
        if per_epoch:
            scheduler.step(val_loss)  # once per epoch, given the validation loss
    return net, rates, val_losses


schedule_names = [
    "constant",
    "StepLR",
    "CosineAnnealingLR",
    "OneCycleLR",
    "warm-up + cosine",
    "ReduceLROnPlateau",
]
schedule_runs = {
    (name, run_seed): train_with_schedule(name, run_seed)
    for name in schedule_names
    for run_seed in (seed, seed + 1)
}
final_val = {
    name: [schedule_runs[name, s][2][-1] for s in (seed, seed + 1)]
    for name in schedule_names
}
print(f"{'schedule':20} final validation loss: seed {seed}, seed {seed + 1}, mean")
for name, (a, b) in final_val.items():
    print(f"{name:20} {a:.4f}  {b:.4f}  {(a + b) / 2:.4f}")

# %%
fig, (ax_rate, ax_loss) = plt.subplots(1, 2, figsize=(12, 4))
for name in schedule_names:
    _, rates, val_losses = schedule_runs[name, seed]
    ax_rate.plot(range(1, len(rates) + 1), rates, label=name)
plot_losses(
    {name: schedule_runs[name, seed][2] for name in schedule_names},
    title=f"Validation loss (seed {seed})",
    ylabel="cross-entropy",
    log_y=True,
    ax=ax_loss,
)
ax_rate.set(
    title="Learning rate used at each step (seed 0)",
    xlabel="optimizer step",
    ylabel="learning rate",
    yscale="log",
)
ax_rate.grid(alpha=0.3)
ax_rate.legend(fontsize=8)
fig.tight_layout()
plt.show()

mean_val = {name: sum(v) / 2 for name, v in final_val.items()}
best_schedule = min(mean_val, key=mean_val.get)
seed_spread = max(abs(a - b) for a, b in final_val.values())
schedule_gain = mean_val["constant"] - mean_val[best_schedule]
if best_schedule == "constant":
    schedule_sentence = "no schedule beat the constant rate"
elif schedule_gain > seed_spread:
    schedule_sentence = (
        f"{best_schedule} beat the constant rate by more than the largest "
        f"seed-to-seed difference"
    )
else:
    schedule_sentence = (
        f"{best_schedule} came first, but its lead over the constant rate is smaller "
        f"than the largest seed-to-seed difference, so it is not a result"
    )
print(schedule_sentence)
record("best_schedule", best_schedule)
record("best_schedule_loss", mean_val[best_schedule], fmt="{:.3f}")
record("constant_loss", mean_val["constant"], fmt="{:.3f}")
record("seed_spread", seed_spread, fmt="{:.3f}")
record("schedule_sentence", schedule_sentence)
plateau_rates = schedule_runs["ReduceLROnPlateau", seed][1]
cuts = sum(b < a for a, b in itertools.pairwise(plateau_rates))
record("plateau_cuts", {0: "never", 1: "once", 2: "twice"}.get(cuts, f"{cuts} times"))

# %% [markdown]
# The left panel shows each schedule's rate over the run, read off the optimizer at
# every step; for `ReduceLROnPlateau` that is the rate it actually chose from the
# validation losses of this run (it cut the rate {glue:}`plateau_cuts` with seed
# 0). On the validation set, averaged over the two seeds, {glue:}`schedule_sentence`
# (mean final validation loss {glue:}`best_schedule_loss` against
# {glue:}`constant_loss`; the two seeds of one schedule differed by up to
# {glue:}`seed_spread`).
#
# Do not read more into it than that. Every schedule ran at the same peak rate, 0.05,
# picked by hand; a fair contest tunes each schedule's rate and length on validation
# data, and schedules matter more for long runs and large models than for
# twelve epochs of a small network. What the comparison does show is the mechanics:
# how each schedule moves the rate, and how to step it.
#
# ### The test set, once
#
# The schedule is chosen on validation data; now, once, its seed-0 model is measured on
# the test digits.

# %%
selected = schedule_runs[best_schedule, seed][0]
test_result = evaluate(
    selected, DataLoader(test_set, batch_size=512), criterion, device
)
test_se = (test_result.accuracy * (1 - test_result.accuracy) / len(test_set)) ** 0.5
print(
    f"{best_schedule}: test accuracy {test_result.accuracy:.3f} "
    f"(standard error {test_se:.3f}), test loss {test_result.loss:.3f}"
)
record(
    "test_accuracy",
    test_result.accuracy,
    fmt="{:.1%}",
    headline="Digits MLP, selected schedule: test accuracy",
)
record("test_se", 100 * test_se, fmt="{:.1f}")
record("n_test", len(test_set))
assert test_result.accuracy >= 0.93, test_result.accuracy

# %% [markdown]
# The selected model ({glue:}`best_schedule`) classifies {glue:}`test_accuracy` of the
# {glue:}`n_test` test digits correctly, with a standard error of {glue:}`test_se`
# points.
#
# ## 8.4 Mixed precision
#
# Most of a network's arithmetic survives with fewer bits than `float32`'s 24-bit
# significand. **Autocast** runs selected operations (matrix products, convolutions)
# in a 16-bit type and keeps the sensitive ones (reductions, losses, softmax) in
# `float32`, while the weights themselves stay `float32`. Two 16-bit types exist:
#
# - `float16`: 11-bit significand, but a narrow range: the smallest normal number is
#   about 6e-5 and the largest 65,504. Small gradients underflow to zero, so training in
#   `float16` multiplies the loss by a large factor before `backward` and divides the
#   gradients by it before the step: that is `torch.amp.GradScaler`. Fast on NVIDIA
#   GPUs, the usual choice there.
# - `bfloat16`: only an 8-bit significand, but the same range as `float32`, so no
#   scaler is needed. Supported by autocast on CPUs and recent GPUs.

# %%
amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
use_scaler = amp_dtype == torch.float16
values = torch.tensor([1e-8, 1e-5, 70_000.0])
print("float32: ", values.tolist())
print("float16: ", values.half().tolist())
print("bfloat16:", values.bfloat16().tolist())
for dtype in (torch.float16, torch.bfloat16):
    print(f"{dtype}: relative precision (eps) {torch.finfo(dtype).eps:.1e}")

probe = make_model().to(device)
with torch.autocast(device_type=device.type, dtype=amp_dtype):
    logits = probe(images[:8].to(device))
    loss = criterion(logits, labels[:8].to(device))
print(
    f"inside autocast: logits {logits.dtype}, loss {loss.dtype}, "
    f"weights {probe[0].weight.dtype}"
)
assert values.half()[0] == 0 and values.bfloat16()[0] > 0

# %% [markdown]
# In `float16`, 1e-8 became 0 and 70,000 became infinity; `bfloat16` kept both, only
# roughly (70,000 became 70,144: eight significant bits). Inside autocast the linear
# layers produced 16-bit logits while the loss came out in `float32`, and the weights
# stayed `float32`.
#
# Does it pay here? Whether 16-bit arithmetic is fast depends on the hardware: NVIDIA
# GPUs since Volta have tensor cores for `float16` (and since Ampere for `bfloat16`),
# and CPUs need special instructions to compute in `bfloat16` natively (AVX-512 BF16
# or AMX on x86, the BF16 extension on Arm); without them every product converts back
# and forth. The cell times a training step with and without autocast, then trains the
# model both ways.

# %%
amp_net = make_model().to(device)
amp_optimizer = torch.optim.SGD(amp_net.parameters(), lr=0.01)
x_amp = torch.randn(256, 64, device=device)
y_amp = torch.randint(0, 10, (256,), device=device)


def amp_step(enabled: bool) -> None:
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=enabled):
        loss = criterion(amp_net(x_amp), y_amp)
    amp_optimizer.zero_grad()
    loss.backward()
    amp_optimizer.step()


fp32_step_s = best_time(partial(amp_step, False), repeat=10, warmup=2, device=device)
amp_step_s = best_time(partial(amp_step, True), repeat=10, warmup=2, device=device)
amp_verdict = speed_verdict(fp32_step_s, amp_step_s)
print(
    f"training step, batch 256: float32 {fp32_step_s * 1e3:.2f} ms, "
    f"autocast {amp_dtype} {amp_step_s * 1e3:.2f} ms -> autocast is {amp_verdict} "
    "float32"
)
cpu_flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
native_bf16 = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in cpu_flags]
if device.type == "cpu":
    if not cpu_flags:
        bf16_sentence = (
            "This system does not list its CPU features in /proc/cpuinfo, so whether "
            "it computes in bfloat16 natively is not known here."
        )
    elif native_bf16:
        bf16_sentence = (
            f"This CPU lists {' and '.join(native_bf16)} among its features: it has "
            "native bfloat16 instructions."
        )
    else:
        bf16_sentence = (
            "This CPU lists neither avx512_bf16 nor amx_bf16 among its features, so "
            "its bfloat16 products run without native bfloat16 instructions."
        )
else:
    bf16_sentence = f"The step ran on the {device.type.upper()}."
print(bf16_sentence)
record("amp_dtype", str(amp_dtype).removeprefix("torch."))
record("fp32_step_ms", fp32_step_s * 1e3, fmt="{:.2f}")
record("amp_step_ms", amp_step_s * 1e3, fmt="{:.2f}")
record("amp_verdict", amp_verdict)
record("bf16_sentence", bf16_sentence)

# %% [markdown]
# A training step took {glue:}`fp32_step_ms` ms in `float32` and {glue:}`amp_step_ms` ms
# under autocast with {glue:}`amp_dtype`: autocast was {glue:}`amp_verdict` `float32`.
# {glue:}`bf16_sentence` On a GPU with tensor cores, large matrix products run much
# faster in 16 bits than in `float32`, and activations saved in 16 bits take half the
# memory; for a model this small, overhead would still dominate (section 8.1).
#
# The training loop with mixed precision: the forward pass and the loss inside
# `autocast`, the backward pass outside it, and the scaler around `backward` and
# `step` (for `bfloat16` it is created disabled and passes everything through
# unchanged, so one loop serves both types).


# %%
def train_precision(amp: bool, epochs: int = 8):
    """Train a fresh model with Adam, with or without autocast; return the history."""
    torch.manual_seed(seed)
    net = make_model().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and use_scaler)
    loader = make_train_loader(64, make_generator(seed))
    train_losses, val_losses = [], []
    for _ in range(epochs):
        net.train()
        total = torch.zeros((), device=device)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
                loss = criterion(net(x), y)
            optimizer.zero_grad()
            scaler.scale(loss).backward()  # loss times the scale factor (or 1)
            scaler.step(optimizer)  # unscales; skips the step on an inf or NaN gradient
            scaler.update()
            total += loss.detach() * len(y)
        train_losses.append(total.item() / len(train_set))
        val_losses.append(evaluate(net, val_loader, criterion, device).loss)
    final = evaluate(net, val_loader, criterion, device)
    return train_losses, val_losses, final.accuracy


precision_runs = {"float32": train_precision(False), "autocast": train_precision(True)}
fig = plot_losses(
    {
        f"{name}, {part}": run[i]
        for name, run in precision_runs.items()
        for i, part in ((0, "train"), (1, "validation"))
    },
    title=f"Training in float32 and with autocast ({amp_dtype})",
    ylabel="cross-entropy",
    log_y=True,
)
plt.show()
fp32_acc, amp_acc = precision_runs["float32"][2], precision_runs["autocast"][2]
val_se = (fp32_acc * (1 - fp32_acc) / len(val_set)) ** 0.5
curve_gap = max(
    abs(a - b)
    for a, b in zip(
        precision_runs["float32"][1], precision_runs["autocast"][1], strict=True
    )
)
if abs(amp_acc - fp32_acc) <= 2 * val_se:
    amp_accuracy_sentence = "lower precision cost nothing measurable in accuracy here"
else:
    amp_accuracy_sentence = "the difference is beyond two standard errors here"
print(
    f"validation accuracy: float32 {fp32_acc:.3f}, autocast {amp_acc:.3f} "
    f"(one standard error: {val_se:.3f})"
)
record("fp32_val_acc", fp32_acc, fmt="{:.1%}")
record("amp_val_acc", amp_acc, fmt="{:.1%}")
record("amp_acc_gap", 100 * abs(amp_acc - fp32_acc), fmt="{:.1f}")
record("val_se", 100 * val_se, fmt="{:.1f}")
record("amp_curve_gap", curve_gap, fmt="{:.3f}")
record("amp_accuracy_sentence", amp_accuracy_sentence)
assert abs(amp_acc - fp32_acc) <= 3 * val_se, (amp_acc, fp32_acc)

# %% [markdown]
# The validation losses of the two runs differ by at most {glue:}`amp_curve_gap` in any
# epoch, and the final validation accuracies, {glue:}`fp32_val_acc` for the model
# trained in `float32` and {glue:}`amp_val_acc` for the one trained with autocast (both
# evaluated by `evaluate`, in `float32`), differ by {glue:}`amp_acc_gap` points, against a
# standard error of {glue:}`val_se` points for either one:
# {glue:}`amp_accuracy_sentence`.
# Whether mixed precision pays is then a question of speed and memory, which depend on
# the hardware.
#
# ## 8.5 `torch.compile`
#
# `torch.compile(model)` traces the model's Python code into a graph the first time it
# runs, and hands the graph to a compiler (by default *Inductor*), which fuses
# operations and generates code: C++ with OpenMP on a CPU, Triton kernels on a GPU. The
# first call pays for all of that; later calls with the same input shapes run the
# generated code. So two numbers matter: the compile time, and the steady-state gain.
# On a CPU Inductor needs a C++ compiler, which the cell checks first. (Compiled
# kernels are cached on disk, so a second run of this notebook on the same machine
# compiles faster.)


# %%
def synchronize() -> None:
    """Wait until the device has finished its queued work (nothing to do on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


if device.type == "cpu" and sys.platform == "win32":
    compiler_name = os.environ.get("CXX", "cl")
elif device.type == "cpu":
    compiler_name = os.environ.get(
        "CXX", "clang++" if sys.platform == "darwin" else "g++"
    )
else:
    compiler_name = None  # GPU code is generated with Triton
compile_skip = None
if compiler_name is not None and shutil.which(compiler_name) is None:
    compile_skip = f"torch.compile needs the C++ compiler {compiler_name!r}, not found"
print("C++ compiler:", shutil.which(compiler_name) if compiler_name else "not needed")

# A machine with CUDA tools but no GPU gets a harmless notice from Inductor; mute it.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
compile_model = make_model().to(device).eval()
example = torch.randn(256, 64, device=device)
with torch.inference_mode():
    eager_s = best_time(
        partial(compile_model, example), repeat=20, warmup=3, device=device
    )
    if compile_skip is None:
        compiled_model = torch.compile(compile_model)
        start = time.perf_counter()
        try:
            compiled_out = compiled_model(example)  # the first call compiles
            synchronize()
        except Exception as error:  # e.g. a platform Inductor does not support
            compile_skip = f"torch.compile failed here: {type(error).__name__}: {error}"
        compile_s = time.perf_counter() - start
    if compile_skip is None:
        compiled_s = best_time(
            partial(compiled_model, example), repeat=20, warmup=3, device=device
        )
        eager_out = compile_model(example)
        # How far two correct float32 computations may differ: each output is a chain
        # of sums of 64, 256 and 256 products plus a bias each (n + 2 terms: see
        # helpers.numerics), bounded relative to the same sums of absolute values.
        absolute_model = copy.deepcopy(compile_model)
        for parameter in absolute_model.parameters():
            parameter.abs_()
        magnitude = absolute_model(example.abs())  # (256, 10): sums of |w x|
        compile_tolerance = (
            sum_rounding_bound(torch.float32, 66 + 258 + 258) * magnitude
        )
        compile_gap = (compiled_out - eager_out).abs().max().item()
        compile_within = ((compiled_out - eager_out).abs() <= compile_tolerance).all()
        compile_gap_share = (
            ((compiled_out - eager_out).abs() / compile_tolerance).max().item()
        )

if compile_skip is None:
    compile_verdict = speed_verdict(eager_s, compiled_s)
    saved_per_call = eager_s - compiled_s
    if compile_verdict.endswith("faster than"):
        calls = compile_s / saved_per_call
        break_even = f"would be paid back after about {calls:,.0f} calls"
    elif compile_verdict.endswith("slower than"):
        break_even = "is never paid back here"
    else:
        break_even = "is not paid back by any gain this measurement can resolve"
    compile_sentence = (
        f"The first call took {compile_s:.1f} s. Afterwards a forward pass of batch "
        f"256 took {compiled_s * 1e6:.0f} µs compiled against {eager_s * 1e6:.0f} µs "
        f"eager: the compiled model was {compile_verdict} the eager one, so the "
        f"compile time {break_even}. "
        + (
            "The outputs were bit for bit equal."
            if compile_gap == 0
            else f"The outputs differed by at most {compile_gap:.1e}, a fraction "
            f"{compile_gap_share:.1g} of what float32 rounding of these sums can "
            "account for."
        )
    )
    print(f"largest difference between compiled and eager outputs: {compile_gap:.1e}")
    # Measured: 0 (bit for bit) at CPU levels default, avx2 and avx512 with seeds
    # 0-2, 1e-7 on an H200 GPU. The bound is a worst case, so passing it is weak
    # evidence: a dropped bias is only about 5 times over it.
    assert compile_within, (compile_gap, compile_gap_share)
else:
    compile_verdict = "not measured"
    compile_sentence = f"Not measured on this machine: {compile_skip}."
print(compile_sentence)
record("compile_sentence", compile_sentence)

# %% [markdown]
# {glue:}`compile_sentence` (Fused kernels may add in a different order, so compiled
# and eager results are close but need not be bitwise equal. The cell checks each
# output against the worst case that float32 rounding allows for its chain of sums,
# `helpers.numerics.sum_rounding_bound`: for $n$ terms, two orders of summation can
# differ by up to about $n \cdot \varepsilon \cdot \sum_i |x_i|$. The bound assumes
# float32 arithmetic throughout. With TF32 matrix products enabled on an NVIDIA GPU
# (`torch.set_float32_matmul_precision("high")`, which Inductor's warning on such a
# GPU suggests), the inputs of each product are rounded to 10 bits of mantissa first,
# and the bound no longer applies.)
#
# The compile time is the number to weigh first. A model that trains for hours
# amortises any compile time; a notebook that runs a small model for a minute rarely
# does. Compiling only pays when the steady-state gain times the number of calls
# exceeds it, and the gain is largest for models whose time goes into many small,
# fusable operations (normalisation, activations, elementwise arithmetic) on a GPU.
# This model is little more than three matrix products, which Inductor hands to a
# matrix library much as eager mode does, so there is little for it to fuse, while
# every compiled call also checks its *guards* (the conditions, such as input shapes,
# under which the compiled code is valid). Two more points: a new input shape, a new
# dtype or a Python branch that goes the other way triggers a recompilation (by
# default the second shape is compiled with dynamic sizes), and training compiles the
# backward pass too, which costs more time than the inference shown here.
#
# ## 8.6 Gradient accumulation and clipping
#
# ### Accumulation
#
# When a batch does not fit in memory, split it into `k` micro-batches, call
# `backward` on each (gradients *add up* in `.grad`, chapter 2) and step once. With a
# mean-reduced loss each micro-batch loss is divided by `k`, so the sum of the
# gradients is the mean over the whole batch. Chapter 2's
# `helpers.training.train_one_epoch(..., accumulation_steps=k)` does this; here it is
# written out and checked against one big batch of 128 digits, and then broken in the
# two ways the equality depends on: equal micro-batches and no batch-dependent layers.
# (Dropout is off in this section: it draws new random masks for every call, so the
# two ways could only agree on average.)

# %%
x_big = images[train_index[:128]].to(device)
y_big = labels[train_index[:128]].to(device)


def big_batch_gradients(net: nn.Module) -> list[torch.Tensor]:
    net.zero_grad()
    criterion(net(x_big), y_big).backward()
    return [p.grad.clone() for p in net.parameters()]


def accumulated_gradients(
    net: nn.Module, sizes: list[int], weighted: bool
) -> list[torch.Tensor]:
    """Gradients summed over micro-batches of the given sizes, one backward each."""
    net.zero_grad()
    for x, y in zip(x_big.split(sizes), y_big.split(sizes), strict=True):
        loss = criterion(net(x), y)  # the mean over this micro-batch
        # weighted: by the micro-batch's share of the samples; else by 1 / k
        scale = len(y) / len(y_big) if weighted else 1 / len(sizes)
        (loss * scale).backward()  # adds into .grad
    return [p.grad.clone() for p in net.parameters()]


def largest_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((g - h).abs().max().item() for g, h in zip(a, b, strict=True))


torch.manual_seed(seed)
plain_net = make_model(dropout=0.0).to(device)
batchnorm_net = nn.Sequential(
    nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 10)
).to(device)
reference = big_batch_gradients(plain_net)
largest_gradient = max(g.abs().max().item() for g in reference)
cases = {
    "4 x 32, divided by k": (plain_net, [32] * 4, False),
    "100 + 28, divided by k": (plain_net, [100, 28], False),
    "100 + 28, weighted by size": (plain_net, [100, 28], True),
    "4 x 32 with BatchNorm": (batchnorm_net, [32] * 4, False),
}
accumulation_gaps = {}
for name, (net, sizes, weighted) in cases.items():
    # the BatchNorm model is compared with its own big-batch gradients
    target = reference if net is plain_net else big_batch_gradients(copy.deepcopy(net))
    # copy the model so that BatchNorm's running statistics start equal
    accumulated = accumulated_gradients(copy.deepcopy(net), sizes, weighted)
    accumulation_gaps[name] = largest_difference(target, accumulated)
    print(f"{name:28} largest difference from one batch: {accumulation_gaps[name]:.1e}")
print(f"(largest gradient entry: {largest_gradient:.1e})")
accumulation_gap = accumulation_gaps["4 x 32, divided by k"]
record(
    "accumulation_gap",
    accumulation_gap,
    fmt="{:.0e}",
    headline="Accumulated vs big-batch gradients: largest difference",
)
record("unequal_gap", accumulation_gaps["100 + 28, divided by k"], fmt="{:.0e}")
record("weighted_gap", accumulation_gaps["100 + 28, weighted by size"], fmt="{:.0e}")
record("batchnorm_gap", accumulation_gaps["4 x 32 with BatchNorm"], fmt="{:.0e}")
record("largest_gradient", largest_gradient, fmt="{:.0e}")
assert accumulation_gap < 1e-6
assert accumulation_gaps["100 + 28, weighted by size"] < 1e-6
assert accumulation_gaps["100 + 28, divided by k"] > 1e-3
assert accumulation_gaps["4 x 32 with BatchNorm"] > 1e-3

# %% [markdown]
# Four equal micro-batches reproduce the big batch's gradients to
# {glue:}`accumulation_gap` (`float32` rounding: the sums are added in a different
# order), where the largest gradient entry is {glue:}`largest_gradient`. The equality
# fails in two ways:
#
# - **Unequal micro-batches** (100 + 28) divided by `k` weight each *micro-batch*
#   equally, so the 28 samples count as much as the 100: off by
#   {glue:}`unequal_gap`. Weighting each loss by its share of the samples,
#   `len(y) / N`, restores the equality ({glue:}`weighted_gap`). A last, shorter batch
#   of an epoch is the common case. `train_one_epoch` divides every loss by `k`, so it
#   weights such a batch like a full one; what it does correct is a last *group* of
#   fewer than `k` batches, which it averages over its own count. `drop_last=True`,
#   or weighting by size as here, makes the steps exact.
# - **BatchNorm** normalises each micro-batch with its own mean and variance, so the
#   forward pass itself differs: off by {glue:}`batchnorm_gap`, and no scaling fixes
#   that. (Its running statistics are also updated `k` times instead of once.) Use
#   `GroupNorm` or `LayerNorm` where micro-batches are small.
#
# ### Clipping
#
# `torch.nn.utils.clip_grad_norm_(parameters, max_norm)` computes the norm of all
# gradients together, as if they were one long vector, and if it exceeds `max_norm`
# scales every gradient by `max_norm / norm`: same direction, shorter step. It returns
# the norm *before* clipping, which is worth logging. It goes after the last
# `backward` of an accumulation cycle and before `optimizer.step()`; with a
# `GradScaler`, after `scaler.unscale_(optimizer)`, so that it sees true gradients.

# %%
grads_before = big_batch_gradients(plain_net)
by_hand = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads_before]))
clip_to = round(by_hand.item() / 2, 3)  # a limit below the norm, so clipping acts
returned = nn.utils.clip_grad_norm_(plain_net.parameters(), max_norm=clip_to)
after = torch.linalg.vector_norm(
    torch.stack([p.grad.norm() for p in plain_net.parameters()])
)
cosine = nn.functional.cosine_similarity(
    torch.cat([g.flatten() for g in grads_before]),
    torch.cat([p.grad.flatten() for p in plain_net.parameters()]),
    dim=0,
)
print(
    f"norm by hand {by_hand:.4f}, returned {returned:.4f}; clipped to {clip_to}: "
    f"norm after {after:.4f}, cosine(before, after) {cosine:.6f}"
)
assert torch.isclose(by_hand, returned) and abs(after.item() - clip_to) < 1e-4
assert cosine > 0.9999

# %% [markdown]
# Clipping matters when a few steps have huge gradients: a learning rate that is too
# high, a badly scaled loss, exploding recurrent networks (chapter 4). The cell trains
# with a deliberately excessive learning rate, 1.0 with momentum 0.9, once without and
# once with `max_norm=1.0`, and logs the norm at every step (`max_norm=inf` only
# measures).


# %%
def train_clipped(max_norm: float, epochs: int = 6):
    """SGD at lr 1.0; return the gradient norm of every step and the val losses."""
    torch.manual_seed(seed)
    net = make_model().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.9)
    loader = make_train_loader(64, make_generator(seed))
    norms, val_losses = [], []
    for _ in range(epochs):
        net.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = criterion(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            norms.append(nn.utils.clip_grad_norm_(net.parameters(), max_norm))
            optimizer.step()
        val_losses.append(evaluate(net, val_loader, criterion, device).loss)
    return torch.stack(norms).cpu(), val_losses


clip_runs = {
    "no clipping": train_clipped(float("inf")),
    "max_norm 1.0": train_clipped(1.0),
}
fig, (ax_norm, ax_loss) = plt.subplots(1, 2, figsize=(12, 3.8))
for name, (norms, _) in clip_runs.items():
    ax_norm.plot(range(1, len(norms) + 1), norms, label=name, lw=1)
ax_norm.axhline(1.0, color="gray", ls=":", label="max_norm")
ax_norm.set(
    title="Gradient norm before clipping (lr 1.0)",
    xlabel="optimizer step",
    ylabel="gradient norm",
    yscale="log",
)
ax_norm.grid(alpha=0.3)
ax_norm.legend()
plot_losses(
    {name: run[1] for name, run in clip_runs.items()},
    title="Validation loss (lr 1.0)",
    ylabel="cross-entropy",
    ax=ax_loss,
)
ax_loss.axhline(np.log(10), color="gray", ls=":", label="guessing (ln 10)")
ax_loss.legend()
fig.tight_layout()
plt.show()
unclipped_loss = clip_runs["no clipping"][1][-1]
clipped_loss = clip_runs["max_norm 1.0"][1][-1]
clipped_share = (clip_runs["max_norm 1.0"][0] > 1.0).float().mean().item()
print(
    f"final validation loss: without clipping {unclipped_loss:.3f}, with "
    f"{clipped_loss:.3f}; {clipped_share:.0%} of the clipped run's steps were clipped"
)
record("unclipped_loss", unclipped_loss, fmt="{:.2f}")
record("clipped_loss", clipped_loss, fmt="{:.2f}")
record("clipped_share", clipped_share, fmt="{:.0%}")
record("clip_comparison", "lower" if clipped_loss < unclipped_loss else "not lower")

# %% [markdown]
# With clipping, {glue:}`clipped_share` of the steps were clipped, and the final
# validation loss, {glue:}`clipped_loss`, was {glue:}`clip_comparison` than the
# {glue:}`unclipped_loss` of the run without (guessing scores ln 10 ≈ 2.30). Clipping
# bounds the size of every step, which can keep an over-eager learning rate from
# wrecking the weights; it does not make that learning rate a good choice, and with a
# sensible rate it should rarely trigger. The fix for a rate that needs constant
# clipping is a lower rate or a warm-up.
#
# ## 8.7 Checkpointing and resuming
#
# A run that stops (a crash, a pre-empted cloud machine, a time limit) should continue
# as if it had never stopped. Chapter 2 saved the model, the optimizer and the
# shuffling generator; a full checkpoint also needs the **scheduler**, the **global
# random generators** (dropout draws from them) and the epoch number. The cell trains
# six epochs without a break, then trains again, crashes in the middle of epoch 4, and
# resumes from the checkpoint written at the end of epoch 3 with freshly built objects,
# as a new process would.

# %%
resume_epochs = 6


class Crash(Exception):
    """Stands for a power cut, an out-of-memory kill or a pre-empted machine."""


def rng_states() -> dict:
    """Every random generator training draws from (add NumPy's or Python's if used)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states:
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
    if "mps" in states:
        torch.mps.set_rng_state(states["mps"].cpu())


def fresh_training():
    """Model, optimizer, per-step cosine schedule and shuffling generator."""
    net = make_model().to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    total = resume_epochs * steps_per_epoch
    scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return net, optimizer, scheduler, make_generator(seed)


def run_epochs(parts, first, last, folder, crash_at=None) -> list[float]:
    """Train epochs first..last; checkpoint after each; optionally crash mid-way."""
    net, optimizer, scheduler, shuffle_rng = parts
    loader = make_train_loader(64, shuffle_rng)
    losses = []
    for epoch in range(first, last + 1):
        net.train()
        for step, (x, y) in enumerate(loader):
            if (epoch, step) == crash_at:
                raise Crash(f"crashed at epoch {epoch}, step {step}")
            loss = criterion(net(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        checkpoint = {
            "epoch": epoch,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "shuffle_rng": shuffle_rng.get_state(),
            "rng": rng_states(),
        }
        atomic_save(checkpoint, Path(folder) / "checkpoint.pt")  # see below
    return losses


with tempfile.TemporaryDirectory() as folder:
    torch.manual_seed(seed)
    uninterrupted = fresh_training()
    uninterrupted_losses = run_epochs(uninterrupted, 1, resume_epochs, folder)

with tempfile.TemporaryDirectory() as folder:
    torch.manual_seed(seed)
    crashed = fresh_training()
    try:
        run_epochs(crashed, 1, resume_epochs, folder, crash_at=(4, 9))
    except Crash as error:
        print(error)
    torch.manual_seed(12345)  # a new process would start from other random states
    checkpoint = torch.load(
        Path(folder) / "checkpoint.pt", map_location=device, weights_only=True
    )

# %% [markdown]
# The checkpoint from the end of epoch 3 is loaded; now a fresh model, optimizer,
# scheduler and generator are built and given its states. To show that each part
# matters, the cell also resumes three more times, each time leaving one part out.


# %%
def resume(skip: str | None = None):
    """Rebuild everything, restore the checkpoint except `skip`, finish training."""
    torch.manual_seed(12345)
    parts = fresh_training()
    net, optimizer, scheduler, shuffle_rng = parts
    net.load_state_dict(checkpoint["model"])
    if skip != "optimizer":
        optimizer.load_state_dict(checkpoint["optimizer"])
    if skip != "scheduler":
        scheduler.load_state_dict(checkpoint["scheduler"])
    if skip != "random states":
        # map_location moved every tensor to `device`; generators need CPU tensors
        shuffle_rng.set_state(checkpoint["shuffle_rng"].cpu())
        set_rng_states(checkpoint["rng"])
    with tempfile.TemporaryDirectory() as folder:
        losses = run_epochs(parts, checkpoint["epoch"] + 1, resume_epochs, folder)
    return net, losses


def weight_gap(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return max((p - q).abs().max().item() for p, q in pairs)


resumed, resumed_losses = resume()
resumed_equal = all(
    torch.equal(p, q)
    for p, q in zip(
        uninterrupted[0].state_dict().values(),
        resumed.state_dict().values(),
        strict=True,
    )
)
print(
    f"resumed from epoch {checkpoint['epoch']}: weights bit-for-bit equal: {resumed_equal}"
)
ablation = {}
for part in ("optimizer", "scheduler", "random states"):
    ablation[part] = weight_gap(uninterrupted[0], resume(skip=part)[0])
    print(
        f"  resumed without the {part:13}: largest weight difference {ablation[part]:.1e}"
    )
record(
    "resume_equal",
    resumed_equal,
    headline="Resume after a crash reproduces the uninterrupted weights (torch.equal)",
)
record("skip_optimizer_gap", ablation["optimizer"], fmt="{:.0e}")
record("skip_scheduler_gap", ablation["scheduler"], fmt="{:.0e}")
record("skip_rng_gap", ablation["random states"], fmt="{:.0e}")
assert resumed_equal
assert min(ablation.values()) > 0

steps_done = checkpoint["epoch"] * steps_per_epoch
fig = plot_losses(
    {
        "uninterrupted": uninterrupted_losses,
        "resumed after the crash": [float("nan")] * steps_done + resumed_losses,
    },
    title="Training loss per step: the resumed run retraces the uninterrupted one",
    xlabel="optimizer step",
    ylabel="training loss",
    log_y=True,
)
fig.axes[0].axvline(steps_done, color="gray", ls=":")
plt.show()

# %% [markdown]
# The resumed run ends with weights equal bit for bit to the uninterrupted run's
# (`torch.equal` on every tensor of the `state_dict`), and from the dotted line on its
# loss curve covers the uninterrupted run's exactly. Leaving out any one part breaks
# that: without the optimizer's state (AdamW's running averages) the weights end up
# {glue:}`skip_optimizer_gap` apart, without the scheduler's (it loses its place in the
# cosine) {glue:}`skip_scheduler_gap`, and without the random states (other dropout
# masks and another batch order) {glue:}`skip_rng_gap`.
#
# Resuming at an epoch boundary keeps this simple: the crash cost the part of epoch 4
# that had run. To resume mid-epoch, also save the step within the epoch and skip that
# many batches on restart (with the generator state from the *start* of the epoch).
# Bit-for-bit resumption also needs the same hardware, software versions and thread
# count, and deterministic algorithms on a GPU (section 8.8).
#
# ### Saving atomically
#
# `torch.save(obj, path)` opens `path` for writing, which first empties it, then
# writes. If the process dies in between, or the object fails to serialise, the old
# checkpoint is gone and the new one incomplete. `helpers.tips.atomic_save`, used
# above, writes to a temporary file in the same folder and renames it over the old one
# with `os.replace`, which on a POSIX file system replaces the file in a single,
# atomic step:

# %%
print(inspect.getsource(atomic_save).split('"""')[-1])
with tempfile.TemporaryDirectory() as folder:
    good = {"model": resumed.state_dict()}
    broken = {"model": resumed.state_dict(), "oops": lambda: None}  # cannot be pickled
    outcomes = {}
    for label, save in (("torch.save", torch.save), ("atomic_save", atomic_save)):
        path = Path(folder) / f"{label}.pt"
        save(good, path)
        try:
            save(broken, path)  # a save that fails half-way
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            print(f"{label:12} second save failed: {type(error).__name__}")
        try:
            torch.load(path, weights_only=True)
            outcomes[label] = "the previous checkpoint still loads"
        except Exception as error:
            outcomes[label] = f"unreadable ({type(error).__name__})"
        print(f"{label:12} after a failed save: {outcomes[label]}")
    leftovers = [p.name for p in Path(folder).iterdir()]
print("files left in the folder:", leftovers)
assert outcomes["atomic_save"] == "the previous checkpoint still loads"
assert not outcomes["torch.save"].startswith("the previous")
assert sorted(leftovers) == ["atomic_save.pt", "torch.save.pt"]

# %% [markdown]
# After the failed plain save the file is unreadable; after the failed atomic save the
# previous checkpoint is intact and no temporary file is left behind. (Keeping the last
# two or three checkpoints, under different names, also guards against a checkpoint
# that saved fine but holds a diverged model.)
#
# ### `weights_only=True`: what it does and does not protect against
#
# A checkpoint is a pickle, and unpickling can call any function the file names.
# Chapter 2 explained `weights_only=True` (the default since PyTorch 2.6): a restricted
# unpickler that accepts tensors, primitive types and containers of them. Here is the
# attack it stops, and one it cannot.


# %%
class Payload:
    """An object whose unpickling calls a function of the attacker's choice."""

    def __reduce__(self):
        return (print, ("!!! this line was printed by torch.load",))


buffer = io.BytesIO()
torch.save({"model": {}, "extra": Payload()}, buffer)
buffer.seek(0)
torch.load(buffer, weights_only=False)  # runs the payload
buffer.seek(0)
try:
    torch.load(buffer, weights_only=True)
except pickle.UnpicklingError as error:
    print(f"weights_only=True refused to load it: {type(error).__name__}")

# A file with valid tensors and wrong values loads without complaint.
honest = {"weight": torch.ones(3)}
tampered = {"weight": torch.tensor([1.0, 1.0, -1e6])}
digests = {}
for name, state in (("honest", honest), ("tampered", tampered)):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    digests[name] = hashlib.sha256(buffer.getvalue()).hexdigest()
    buffer.seek(0)
    print(
        f"{name:8} loads with weights_only=True:", torch.load(buffer, weights_only=True)
    )
print("their SHA-256 digests differ:", digests["honest"] != digests["tampered"])
assert digests["honest"] != digests["tampered"]

# %% [markdown]
# `weights_only=True` stopped the code from running, but the tampered weights loaded
# like any others: the unpickler checks *types*, not *values*. A model file from an
# untrusted source can therefore still carry a backdoor in its weights, and a bug in
# the restricted unpickler itself (PyTorch has fixed such bugs, chapter 2) reopens the
# door to code. Compare the file's SHA-256 digest with one published by a source you
# trust, keep PyTorch updated, and prefer a tensors-only format such as `safetensors`
# for weights you receive.
#
# ## 8.8 Reproducibility
#
# Two runs of the same script give identical weights when every source of randomness
# is seeded and every operation is deterministic. Chapter 1 listed what that takes on
# each device; a training run adds the data loader. Its shuffling draws from the
# loader's `generator` (or, without one, from torch's global generator), and each
# worker `i` seeds its own `torch`, `random` and NumPy generators from a base seed
# that the loader draws when its workers start (every epoch, unless
# `persistent_workers=True` keeps them and their generators running), and from `i`. So
# random augmentations in workers differ between workers and epochs, and repeat
# across runs.
#
# The cell trains twice with the same seed, with random noise added to every image as
# augmentation inside two workers, and with `torch.use_deterministic_algorithms(True)`,
# which makes PyTorch use deterministic kernels or raise an error where none exists.
# (On CUDA, also keep `torch.backends.cudnn.benchmark = False`, the default: benchmark
# mode may pick a different convolution algorithm each run.)

# %%
first_512 = train_index[:512]  # a shorter epoch keeps the three runs quick
augmented_set = CostlyDataset(images[first_512], labels[first_512], noise_std=0.1)


def training_run(run_seed: int, epochs: int = 2) -> tuple[nn.Module, list[float]]:
    """A short run with random augmentation in two workers, fully seeded."""
    torch.manual_seed(run_seed)
    net = make_model().to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    loader = DataLoader(
        augmented_set,
        batch_size=64,
        shuffle=True,
        num_workers=2,
        generator=make_generator(run_seed),  # shuffling and worker seeds
    )
    losses = []
    for _ in range(epochs):
        for x, y in loader:
            loss = criterion(net(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return net, losses


torch.use_deterministic_algorithms(True)
try:
    first_run, first_losses = training_run(seed)
    second_run, second_losses = training_run(seed)
    other_run, other_losses = training_run(seed + 1)
finally:
    torch.use_deterministic_algorithms(False)  # a global switch: turn it off again
runs_identical = all(
    torch.equal(p, q)
    for p, q in zip(
        first_run.state_dict().values(), second_run.state_dict().values(), strict=True
    )
)
other_gap = weight_gap(first_run, other_run)
print(f"same seed twice: identical weights {runs_identical}")
print(f"seed {seed + 1} instead: largest weight difference {other_gap:.2f}")
record(
    "runs_identical",
    runs_identical,
    headline="Two seeded runs with augmenting workers give identical weights",
)
record("other_seed_gap", other_gap, fmt="{:.2f}")
assert runs_identical and other_gap > 1e-3

fig = plot_losses(
    {
        f"seed {seed}, first run": first_losses,
        f"seed {seed}, second run": second_losses,
        f"seed {seed + 1}": other_losses,
    },
    title="Training loss per step of three seeded runs",
    xlabel="optimizer step",
    ylabel="training loss",
    log_y=True,
)
fig.axes[0].lines[1].set_linestyle("--")
plt.show()

# %% [markdown]
# The two runs with the same seed end with identical weights, and their loss curves
# coincide (the dashed one lies exactly on the solid one); another seed gives other
# weights (largest difference {glue:}`other_seed_gap`). Why the loader gets its own
# `generator`: without one, it draws the shuffle and the worker seeds from the global
# generator, which every other random draw in the program also moves. Add one unrelated
# draw (say, an extra model built for a comparison) and the data order changes:


# %%
def first_labels(generator: torch.Generator | None, extra_draw: bool) -> torch.Tensor:
    """The first shuffled batch's labels, after seeding the global generator."""
    torch.manual_seed(seed)
    if extra_draw:
        torch.rand(1)  # unrelated code that uses the global generator
    loader = DataLoader(train_set, batch_size=16, shuffle=True, generator=generator)
    return next(iter(loader))[1]


for label, make in (
    ("own generator", lambda: make_generator(seed)),
    ("global", lambda: None),
):
    same = torch.equal(first_labels(make(), False), first_labels(make(), True))
    print(f"{label:14}: same first batch after an unrelated random draw: {same}")
    if label == "own generator":
        assert same
    else:
        assert not same

# %% [markdown]
# ## 8.9 Profiling and memory
#
# ### Where a training step spends its time
#
# Before optimising anything, measure where the time goes. `torch.profiler.profile`
# records every operator PyTorch runs (and, on a GPU with
# `ProfilerActivity.CUDA`, every kernel) with its time, its shapes and, with
# `profile_memory=True`, the memory it allocates. The table shows the operators of five
# training steps at batch 256, sorted by their own time (without the operators they
# call).

# %%
profile_net = make_model().to(device)
profile_optimizer = torch.optim.AdamW(profile_net.parameters(), lr=1e-3)
x_prof = torch.randn(256, 64, device=device)
y_prof = torch.randint(0, 10, (256,), device=device)


def profiled_step() -> None:
    loss = criterion(profile_net(x_prof), y_prof)
    profile_optimizer.zero_grad()
    loss.backward()
    profile_optimizer.step()


activities = [ProfilerActivity.CPU]
sort_key = "self_cpu_time_total"
if device.type == "cuda":
    activities.append(ProfilerActivity.CUDA)
    sort_key = "self_device_time_total"
for _ in range(3):
    profiled_step()  # warm-up: the first steps allocate and initialise
with profile(activities=activities, profile_memory=True) as prof:
    for _ in range(5):
        profiled_step()
    synchronize()  # the GPU's queued work belongs to the profiled steps
table = prof.key_averages().table(
    sort_by=sort_key, row_limit=8, max_name_column_width=30
)
print(table)
top_operators = sorted(
    prof.key_averages(), key=lambda event: getattr(event, sort_key), reverse=True
)
top_operator = top_operators[0].key
record("top_operator", top_operator)
if device.type == "cuda":
    # GPU time belongs to kernels, listed under their own names beside the operators
    matmul_sentence = (
        "on the GPU, the table's device-time columns show which kernels took the time"
    )
else:
    total_time = sum(event.self_cpu_time_total for event in top_operators)
    matmul_time = sum(
        event.self_cpu_time_total
        for event in top_operators
        if event.key in ("aten::addmm", "aten::mm")
    )
    matmul_sentence = (
        f"the matrix products (addmm and mm) together took "
        f"{matmul_time / total_time:.0%} of the profiled time, and the rest went to "
        f"the many cheaper operators around them"
    )
print(matmul_sentence)
record("matmul_sentence", matmul_sentence)

# %% [markdown]
# Names starting with `aten::` are PyTorch's operators: `addmm` is a linear layer's
# matrix product plus bias, `mm` the matrix products of the backward pass,
# `bernoulli_` draws dropout's random masks, `threshold_backward` is ReLU's backward,
# and the optimizer's update appears as element-wise operators (`_foreach_*` when it
# updates all parameters in one call). The most expensive operator by its own time
# was {glue:}`top_operator`, and {glue:}`matmul_sentence`. For a timeline,
# `prof.export_chrome_trace("trace.json")` writes a file that `chrome://tracing` or
# Perfetto opens.
#
# ### `inference_mode` and `no_grad`
#
# Under `torch.no_grad()` autograd records nothing, so no activations are kept for a
# backward pass. `torch.inference_mode()` goes further: the tensors it creates are
# marked as never needing gradients, which also skips autograd's version counting on
# them. Use it for evaluation and serving; use `no_grad` where the results may later
# meet autograd (exercise 4 shows why). The cell times a forward pass of batch 512 in
# each mode.

# %%
mode_net = make_model().to(device).eval()
x_mode = torch.randn(512, 64, device=device)


def forward_in(mode) -> None:
    with mode():
        mode_net(x_mode)


mode_times = {
    name: best_time(partial(forward_in, mode), repeat=20, warmup=3, device=device)
    for name, mode in (
        ("autograd on", torch.enable_grad),
        ("no_grad", torch.no_grad),
        ("inference_mode", torch.inference_mode),
    )
}
for name, seconds in mode_times.items():
    print(f"{name:15} {seconds * 1e6:8.0f} µs")
record("grad_mode_us", mode_times["autograd on"] * 1e6, fmt="{:.0f}")
record("inference_mode_us", mode_times["inference_mode"] * 1e6, fmt="{:.0f}")
record(
    "inference_verdict",
    speed_verdict(mode_times["autograd on"], mode_times["inference_mode"]),
)
record(
    "inference_vs_no_grad",
    speed_verdict(mode_times["no_grad"], mode_times["inference_mode"]),
)

# %% [markdown]
# The forward pass took {glue:}`inference_mode_us` µs under `inference_mode` and
# {glue:}`grad_mode_us` µs with autograd on, so `inference_mode` was
# {glue:}`inference_verdict` autograd on, and {glue:}`inference_vs_no_grad` `no_grad`.
# Time is not the only saving: without autograd no activations are kept for a backward
# pass, and for large batches that memory is the bigger gain. The next cell measures
# how much it is.
#
# ### Memory: an estimate, checked
#
# Training memory has three parts that can be estimated from the model alone:
#
# - **Parameters and their gradients**: 4 bytes per `float32` value, each.
# - **Optimizer state**: Adam and AdamW keep two running averages per parameter, two
#   more copies' worth (plus a step counter per tensor); SGD with momentum keeps one.
# - **Activations** kept for the backward pass, which grow with the batch size. For
#   Linear and ReLU layers: each `Linear` keeps its input (for its weight's gradient)
#   and each ReLU its output, which is the next layer's input, one tensor for both; the
#   cross-entropy loss keeps its log-probabilities (and the targets). So for a batch
#   of `B` and widths 64, 256, 256, 10: about `4 B (64 + 256 + 256 + 10)` bytes.
#
# The cell checks each against a measurement: the optimizer's state tensors after one
# step, and every tensor autograd actually saves during a forward pass, captured with
# `torch.autograd.graph.saved_tensors_hooks` (a tensor kept by two operations is
# counted once, and the weights themselves are not counted). Dropout is off here: each
# dropout layer would add its random mask and its own output, which the next layer
# keeps.

# %%
memory_batch = 512
torch.manual_seed(seed)
memory_net = make_model(dropout=0.0).to(device)
memory_optimizer = torch.optim.AdamW(memory_net.parameters(), lr=1e-3)
n_params = count_parameters(memory_net)
param_bytes = n_params * 4

x_mem = images[train_index[:memory_batch]].to(device)
y_mem = labels[train_index[:memory_batch]].to(device)
weight_storages = {p.untyped_storage().data_ptr() for p in memory_net.parameters()}
saved = {}  # storage address -> bytes


def pack(tensor: torch.Tensor) -> torch.Tensor:
    storage = tensor.untyped_storage()
    if storage.data_ptr() not in weight_storages:
        saved[storage.data_ptr()] = (storage.nbytes(), tensor.dtype)
    return tensor


with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
    loss = criterion(memory_net(x_mem), y_mem)
loss.backward()
memory_optimizer.step()
optimizer_bytes = sum(
    t.numel() * t.element_size()
    for state in memory_optimizer.state.values()
    for t in state.values()
    if torch.is_tensor(t)
)
activation_estimate = 4 * memory_batch * (64 + 256 + 256 + 10)
activation_measured = sum(n for n, dtype in saved.values() if dtype == torch.float32)
other_saved = sum(n for n, dtype in saved.values() if dtype != torch.float32)
mib = 2**20
print(
    f"parameters:   {n_params:,} x 4 bytes = {param_bytes / mib:.2f} MiB "
    "(and as much again for their gradients)"
)
print(
    f"AdamW state:  estimate {2 * param_bytes / mib:.2f} MiB, "
    f"measured {optimizer_bytes / mib:.2f} MiB"
)
print(
    f"activations:  estimate {activation_estimate / mib:.2f} MiB, measured "
    f"{activation_measured / mib:.2f} MiB (+ {other_saved:,} bytes of targets)"
)
if device.type == "cuda":
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    kept = criterion(memory_net(x_mem), y_mem)
    print(
        f"CUDA allocator: the forward pass and loss left "
        f"{(torch.cuda.memory_allocated() - before) / mib:.2f} MiB allocated"
    )
    del kept
record("param_mib", param_bytes / mib, fmt="{:.2f}")
record("adam_mib", optimizer_bytes / mib, fmt="{:.2f}")
record("activation_estimate_mib", activation_estimate / mib, fmt="{:.2f}")
record("activation_measured_mib", activation_measured / mib, fmt="{:.2f}")
assert abs(optimizer_bytes - 2 * param_bytes) / param_bytes < 0.01
assert abs(activation_measured - activation_estimate) / activation_estimate < 0.05

# %% [markdown]
# The parameters take {glue:}`param_mib` MiB, AdamW's state measured
# {glue:}`adam_mib` MiB (twice the parameters, plus a few bytes of step counters), and
# the saved
# activations for a batch of 512 measured {glue:}`activation_measured_mib` MiB
# against the estimate of {glue:}`activation_estimate_mib` MiB. The estimate is
# the tool: activations scale with the batch size, parameters and optimizer state do
# not, so a batch that does not fit calls for smaller micro-batches with accumulation
# (section 8.6), mixed precision (half the bytes per saved activation), or activation
# checkpointing (`torch.utils.checkpoint`, which recomputes activations in the backward
# pass instead of keeping them). On a GPU, `torch.cuda.max_memory_allocated()` reports
# the peak the allocator handed out, temporary buffers included, and
# `torch.cuda.memory_summary()` also the blocks it keeps cached for reuse.
#
# ## Summary table: the tips, measured here
#
# The table collects this run's measurements, one line per tip.
# {glue:}`load_sentence`

# %%
load_at_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
if load_at_start is None:
    load_sentence = "This system does not report its load, so check it yourself."
else:
    busiest = max(load_at_start, load_at_end)
    load_sentence = (
        f"The machine's load average (processes wanting a core, over a minute) was "
        f"{load_at_start:.1f} at the start of this run and {load_at_end:.1f} at the "
        f"end, on {os.cpu_count()} cores."
    )
    if busiest > os.cpu_count():
        load_sentence += (
            " That is more than the cores can serve, so other programs competed with "
            "these measurements: the timings and verdicts on this page describe a busy "
            "machine, not this hardware alone (threaded operations suffer most, since "
            "each waits for its slowest thread). Run the notebook on an idle machine "
            "before drawing conclusions about the hardware."
        )
    else:
        load_sentence += " The machine was not overloaded while it ran."
print(load_sentence)
record("load_sentence", load_sentence)
wait_epochs = (
    loading["waiting", "0 workers"][1],
    loading["waiting", "2 workers, persistent"][1],
)
compute_epochs = (
    loading["computing", "0 workers"][1],
    loading["computing", "2 workers, persistent"][1],
)
if compile_skip is None:
    compile_effect = f"compile {compile_s:.1f} s; steady state {compile_verdict} eager"
else:
    compile_effect = compile_skip
summary_rows = [
    (
        "1 Devices",
        f"CPU, batch 1 vs {cpu_best_batch}: {cpu_per_sample[1] * 1e6:.0f} vs "
        f"{cpu_per_sample[cpu_best_batch] * 1e6:.2f} µs per sample. "
        f"{accelerator_sentence} .item() once: {item_verdict} every step.",
    ),
    (
        "2 Data loading",
        f"batch-wise indexing {loader_verdict} per-sample; 2 persistent workers "
        f"{speed_verdict(*wait_epochs)} none (waiting items), "
        f"{speed_verdict(*compute_epochs)} none (computing items)",
    ),
    (
        "3 LR schedules",
        f"best mean final validation loss: {best_schedule}, "
        f"{mean_val[best_schedule]:.3f} (constant rate {mean_val['constant']:.3f}, "
        f"seed spread {seed_spread:.3f}); {schedule_sentence}; "
        f"test accuracy {test_result.accuracy:.1%}",
    ),
    (
        "4 Mixed precision",
        f"{str(amp_dtype).removeprefix('torch.')} autocast step {amp_verdict} "
        f"float32; validation accuracy {amp_acc:.1%} vs {fp32_acc:.1%}",
    ),
    ("5 torch.compile", compile_effect),
    (
        "6 Accumulation, clipping",
        f"4 x 32 vs 128: {accumulation_gap:.0e}; unequal micro-batches "
        f"{accumulation_gaps['100 + 28, divided by k']:.0e}, BatchNorm "
        f"{accumulation_gaps['4 x 32 with BatchNorm']:.0e}; at lr 1.0, val loss "
        f"{clipped_loss:.2f} clipped vs {unclipped_loss:.2f}",
    ),
    (
        "7 Checkpoints",
        f"resumed weights equal: {resumed_equal}; after a failed save: "
        f"plain {outcomes['torch.save']}, atomic {outcomes['atomic_save']}",
    ),
    (
        "8 Reproducibility",
        f"two seeded runs identical: {runs_identical}; "
        f"another seed differs by {other_gap:.2f}",
    ),
    (
        "9 Profiling, memory",
        f"top operator {top_operator}; activations {activation_measured / mib:.2f} "
        f"MiB measured vs {activation_estimate / mib:.2f} estimated; inference_mode "
        f"{speed_verdict(mode_times['autograd on'], mode_times['inference_mode'])} "
        "autograd on",
    ),
]
print(f"{'tip':25} effect measured on this machine")
for tip, effect in summary_rows:
    lines = textwrap.wrap(effect, width=62)
    print(f"{tip:25} {lines[0]}")
    for line in lines[1:]:
        print(f"{'':25} {line}")

# %% [markdown]
# ```{admonition} Common pitfalls
# :class: warning
# - **`.cuda()` in library code**: it ties the code to NVIDIA GPUs; use `.to(device)`.
# - **Timing GPU code without synchronising**, or without a warm-up: the clock stops
#   before the GPU finishes, and the first call pays for initialisation.
# - **`.item()` (or `print`, `.cpu()`) on every step** on a GPU: each one waits for
#   the GPU. Accumulate on the device and read once.
# - **Workers with a dataset, `collate_fn` or `worker_init_fn` defined in a notebook**
#   on macOS, Windows or Python 3.14's Linux default: define them in a module.
# - **`scheduler.step()` before `optimizer.step()`**, or stepping a per-batch schedule
#   once per epoch (its `T_max`/`total_steps` counts what you step).
# - **`float16` without `GradScaler`**, and clipping before `scaler.unscale_`.
# - **Accumulating unequal micro-batches with `loss / k`**, or expecting accumulation
#   to equal a big batch with BatchNorm.
# - **A checkpoint without optimizer, scheduler or random states**: the run continues,
#   but not as it would have.
# - **Saving over the only checkpoint with a plain `torch.save`**.
# - **Trusting `weights_only=True` as a sandbox**: it blocks code in pickles, not
#   malicious weights, and only in patched PyTorch versions.
# - **A `DataLoader` without its own `generator`** in a run meant to be reproducible.
# ```
#
# ## Exercises
#
# **Exercise 1.** Does the overhead floor move with the model? Repeat the batch-size
# sweep of section 8.1 on the CPU with a wider model, `make_model(hidden=1024)`, and
# find the batch size at which the time per sample is lowest. Compare the time of a
# batch of 1 with the narrow model's.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 1: the same measurement with hidden=1024 (16 times the hidden-to-hidden
# weights, 4 times the first and last layers').
torch.manual_seed(seed)
wide = make_model(hidden=1024).eval()
wide_times = {}
with torch.inference_mode():
    for size in batch_sizes:
        x = torch.randn(size, 64)
        wide_times[size] = best_time(partial(wide, x), repeat=10 if size <= 512 else 3)
wide_per_sample = {b: wide_times[b] / b for b in batch_sizes}
wide_best = min(wide_per_sample, key=wide_per_sample.get)
weight_ratio = count_parameters(wide) / count_parameters(make_model())
time_ratio_1 = wide_times[1] / cpu_times[1]
print(
    f"wide model: {wide_times[1] * 1e6:.0f} µs for a batch of 1 (narrow: "
    f"{cpu_times[1] * 1e6:.0f} µs); cheapest per sample at batch size {wide_best} "
    f"({wide_per_sample[wide_best] * 1e6:.1f} µs). With {weight_ratio:.1f} times the "
    f"weights, a batch of one cost {time_ratio_1:.1f} times the narrow model's time: "
    "less than the extra arithmetic, because the fixed price per operation, "
    "which the two models share, is a large part of a batch of one. The floor itself "
    "stays where it was; the bigger the work per call, the smaller its share."
)
# the shared fixed overhead keeps the batch-1 time ratio below the weight ratio
# (measured here: 2.4 to 2.9 against 13.3)
assert time_ratio_1 < weight_ratio, (time_ratio_1, weight_ratio)

# %% [markdown]
# **Exercise 2.** Clip correctly with accumulation. For the 4 × 32 split of section
# 8.6, with `limit = clip_to / 4` (an eighth of the big batch's gradient norm),
# compute the gradients two ways: accumulate all four micro-batches and then clip the
# total to `limit`, versus clipping each micro-batch's contribution to `limit` before
# adding it. Compare both with the big batch's gradient clipped to `limit`.


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 2: clipping is not linear, so where it happens matters.
limit = clip_to / 4


def clipped_big() -> list[torch.Tensor]:
    big_batch_gradients(plain_net)
    nn.utils.clip_grad_norm_(plain_net.parameters(), limit)
    return [p.grad.clone() for p in plain_net.parameters()]


def clip_after_accumulating() -> list[torch.Tensor]:
    accumulated_gradients(plain_net, [32] * 4, weighted=False)
    nn.utils.clip_grad_norm_(plain_net.parameters(), limit)
    return [p.grad.clone() for p in plain_net.parameters()]


def clip_each_micro_batch() -> tuple[list[torch.Tensor], int]:
    total = [torch.zeros_like(p) for p in plain_net.parameters()]
    clipped = 0
    for x, y in zip(x_big.split(32), y_big.split(32), strict=True):
        plain_net.zero_grad()
        (criterion(plain_net(x), y) / 4).backward()
        clipped += int(nn.utils.clip_grad_norm_(plain_net.parameters(), limit) > limit)
        total = [t + p.grad for t, p in zip(total, plain_net.parameters(), strict=True)]
    return total, clipped


reference_clipped = clipped_big()
gap_after = largest_difference(reference_clipped, clip_after_accumulating())
each, n_clipped = clip_each_micro_batch()
gap_each = largest_difference(reference_clipped, each)
print(
    f"Clipping once after accumulating matches the clipped big batch (difference "
    f"{gap_after:.0e}); clipping each micro-batch ({n_clipped} of 4 were clipped) "
    f"does not (difference {gap_each:.0e})."
)
assert gap_after < 1e-6 and gap_each > 1e-4

# %% [markdown]
# **Exercise 3.** Write the linear warm-up of section 8.3 by hand with
# `lr_scheduler.LambdaLR`, which multiplies the base rate by any function of the step
# number, and check over the first 30 steps that it sets the same rates as
# `LinearLR(start_factor=0.01, total_iters=20)`.


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 3: LinearLR's factor goes linearly from 0.01 at step 0 to 1 at step 20.
def warmup_factor(step: int, warm: int = 20, start: float = 0.01) -> float:
    return start + (1 - start) * min(step, warm) / warm


def rates_of(make_scheduler) -> list[float]:
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.05)
    scheduler = make_scheduler(optimizer)
    rates = []
    for _ in range(30):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


by_lambda = rates_of(lambda opt: lr_scheduler.LambdaLR(opt, warmup_factor))
by_linear = rates_of(
    lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=20)
)
gap = max(abs(a - b) for a, b in zip(by_lambda, by_linear, strict=True))
print(
    f"LambdaLR and LinearLR set the same 30 rates (largest difference {gap:.1e}), "
    f"from {by_lambda[0]:.4f} to {by_lambda[-1]:.4f}."
)
assert gap < 1e-9

# %% [markdown]
# **Exercise 4.** Run the model on a batch under `torch.inference_mode()` and try to
# use the output in a computation whose gradient you then take (for example, as the
# input of a trainable layer). Do the same under `torch.no_grad()`. Which one works,
# and what does the error say?

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 4: inference tensors can never enter autograd; no_grad outputs can.
head = nn.Linear(10, 1).to(device)
outcome = {}
for name, mode in (
    ("no_grad", torch.no_grad),
    ("inference_mode", torch.inference_mode),
):
    with mode():
        features = mode_net(x_mode)  # (512, 10)
    try:
        head(features).sum().backward()  # gradient for the head's weights
        outcome[name] = "works"
    except RuntimeError as error:
        outcome[name] = f"RuntimeError: {str(error).splitlines()[0]}"
    print(f"{name:15} {outcome[name]}")
print(
    "The no_grad output can feed a layer that is trained; the inference_mode output "
    "cannot be saved for backward, so use no_grad when results may meet autograd."
)
assert outcome["no_grad"] == "works" and outcome["inference_mode"].startswith("Runtime")

# %% [markdown]
# ## Summary
#
# - Write `.to(device)`, never `.cuda()`. Small batches pay a fixed price per
#   operation (on a GPU more than on a CPU), so a tiny model can be slower on a GPU;
#   `.item()` every step makes a GPU wait, and pinned memory with `non_blocking=True`
#   speeds up copies to CUDA.
# - Workers pay when `__getitem__` is costly: waiting overlaps on any machine, computing
#   only on free cores; keep workers' classes and functions in a module.
# - Step the scheduler after the optimizer; choose a schedule and its rate on
#   validation data. Here {glue:}`schedule_sentence`.
# - Mixed precision: `bfloat16` on CPUs, `float16` with `GradScaler` on CUDA; it kept
#   the accuracy here and pays only where the hardware computes in 16 bits.
#   `torch.compile` pays once its compile time is amortised.
# - Accumulation equals a big batch only for equal micro-batches (or size-weighted
#   losses) and no BatchNorm; clip once, after accumulating. A checkpoint with model,
#   optimizer, scheduler and random states resumed bit for bit; save it atomically and
#   load it with `weights_only=True`, which blocks code, not bad weights.
# - Seeds, a loader `generator` and deterministic algorithms made two runs identical;
#   the profiler and a three-part memory estimate show where time and memory go.
#
# **Next:** chapter 9 runs the training loop on several processes at once with
# `torch.distributed`.
