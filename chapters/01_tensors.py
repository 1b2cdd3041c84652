# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,jupyter,-all
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
# # 1. Tensors
#
# Everything PyTorch computes, it computes on tensors: images, token ids, model weights,
# gradients and losses are all tensors. By the end of this chapter you will be able to
# create tensors of the shape, type and device you need, reshape and index them without
# copying data by accident, predict what broadcasting will do, and replace a Python loop
# by one vectorised expression that runs more than ten times faster on this very machine.
#
# **Prerequisites:** Python and a first acquaintance with NumPy arrays. No earlier chapter.

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
import matplotlib.pyplot as plt
import numpy as np
import torch
from helpers.plotting import plot_broadcast
from helpers.runtime import (
    describe_runtime,
    get_device,
    make_generator,
    seed_everything,
)
from helpers.timing import best_time

seed = seed_everything(0)
device = get_device()
print(describe_runtime(device, seed))

# %% [markdown]
# `get_device()` picks a CUDA GPU if there is one, then an Apple-silicon GPU (MPS), and
# falls back to the CPU. Every chapter runs on whichever it finds, unchanged.
#
# ## 1.1 Creating tensors
#
# A tensor is an n-dimensional array of numbers of one type, stored on one device. The
# most direct way to make one is from Python data; `torch.tensor` always copies it.

# %%
scalar = torch.tensor(3.5)
vector = torch.tensor([1.0, 2.0, 3.0])
matrix = torch.tensor([[1, 2, 3], [4, 5, 6]])
for name, t in [("scalar", scalar), ("vector", vector), ("matrix", matrix)]:
    print(f"{name:6}  ndim={t.ndim}  shape={tuple(t.shape)}  dtype={t.dtype}")

# %% [markdown]
# More often you ask for a tensor of a given shape and let PyTorch fill it. The factory
# functions all take the shape first, and `dtype=` and `device=` keywords.

# %%
print(torch.zeros(2, 3))  # all 0.0
print(torch.ones(2, 3, dtype=torch.int64))  # all 1, as integers
print(torch.full((2, 3), 7.0))  # any constant
print(torch.arange(0, 10, 2))  # like range(): the end is excluded
print(torch.linspace(0, 1, 5))  # 5 evenly spaced points, both ends included
print(torch.rand(2, 3))  # uniform on [0, 1)
print(torch.randn(2, 3))  # standard normal: mean 0, standard deviation 1

# %% [markdown]
# The `*_like` variants copy the shape, dtype and device of an existing tensor, which
# saves you from repeating them (and from getting one of them wrong).

# %%
template = torch.randn(2, 4, dtype=torch.float64)
zeros = torch.zeros_like(template)
noise = torch.randn_like(template)
print(zeros.shape, zeros.dtype, noise.shape, noise.dtype)

# %% [markdown]
# ## 1.2 Data types and casting
#
# Python floats become `float32`, PyTorch's default for real numbers (half the memory of
# NumPy's default `float64`, and what GPUs are fastest at); Python ints become `int64`.
# Operations on mixed types *promote* to the type that can hold both.

# %%
ints = torch.tensor([1, 2, 3])
floats = torch.tensor([0.5, 0.5, 0.5])
print(ints.dtype, floats.dtype, (ints + floats).dtype)  # int64 + float32 -> float32
print(ints / 2, ints // 2)  # true division always gives floats; // keeps integers

# %% [markdown]
# Casting is explicit: `.to(dtype)` or the shorthands `.float()`, `.double()`, `.long()`,
# `.half()`. Casting to an integer type truncates towards zero, and low-precision types
# round: `float16` keeps about three significant decimal digits.

# %%
x = torch.tensor([-1.7, 0.4, 2.9])
print(x.long())  # truncation, not rounding
print(x.round().long())  # round first if that is what you mean
print(torch.tensor(1000.1).half())  # float16 cannot represent 1000.1
print(
    torch.tensor(1 / 3, dtype=torch.float64), torch.tensor(1 / 3, dtype=torch.float32)
)

# %% [markdown]
# Some operations insist on floating point: `ints.mean()` raises an error, because the
# mean of integers is generally not an integer. Cast first: `ints.float().mean()`.

# %%
try:
    ints.mean()
except RuntimeError as err:
    print("RuntimeError:", str(err).splitlines()[0])
print(ints.float().mean())

# %% [markdown]
# ## 1.3 Devices and `.to`
#
# A tensor lives on one device. `.to(device)` returns a copy on that device (or the tensor
# itself if it is already there); operations need all their inputs on the same device.
# Writing `.to(device)` rather than `.cuda()` is what lets the same code run on a CPU,
# an NVIDIA GPU or an Apple GPU.

# %%
a = torch.randn(3, 3)
a_dev = a.to(device)
print(a.device, "->", a_dev.device)
b_dev = torch.ones(3, 3, device=device)  # or create it there directly
print((a_dev @ b_dev).device)
print(
    a_dev.sum().item()
)  # .item() turns a one-element tensor into a Python number (on the CPU)

# %% [markdown]
# On a machine with a GPU, mixing a CPU tensor with a GPU tensor raises *"Expected all
# tensors to be on the same device"*. Moving data is not free: copies between the CPU and
# a GPU cross the PCIe bus, so move data once, then keep the work on the device. Chapter 8
# measures when a GPU pays off and when it does not.
#
# ## 1.4 Changing shape
#
# `view` and `reshape` both reinterpret the same numbers with a new shape (the total
# number of elements must match; one dimension may be `-1`, meaning "whatever is left").

# %%
t = torch.arange(12)
print(t.view(3, 4))
print(t.reshape(2, -1).shape)  # -1 is inferred: (2, 6)

# %% [markdown]
# The difference: `view` never copies, so it only works when the new shape can be
# expressed over the existing memory layout; `reshape` returns a view when it can and a
# copy when it must. `permute` reorders dimensions (a transpose, in general) without
# moving any data, which usually leaves the tensor *non-contiguous*: its rows are no longer
# laid out one after another in memory. Then `view` fails and `reshape` copies.

# %%
images = torch.randn(
    2, 28, 28, 3
)  # (batch, height, width, channels), as image libraries store it
chw = images.permute(
    0, 3, 1, 2
)  # (batch, channels, height, width), as PyTorch layers expect
print(chw.shape, "contiguous:", chw.is_contiguous())
try:
    chw.view(2, -1)
except RuntimeError as err:
    print("view failed:", str(err).split(".")[0])
flat = chw.reshape(2, -1)  # (2, 3*28*28): reshape copies here
print(flat.shape)

# %% [markdown]
# `unsqueeze(d)` inserts a dimension of size 1 at position `d`; `squeeze(d)` removes one.
# They are how you turn a single example into a batch of one, or a `(B, 1)` model output
# into a `(B,)` vector of predictions.

# %%
sample = torch.randn(3, 32, 32)  # one image: (channels, height, width)
batch = sample.unsqueeze(0)  # (1, 3, 32, 32)
column = torch.randn(5, 1)
print(batch.shape, column.squeeze(1).shape)

# %% [markdown]
# `cat` joins tensors along an **existing** dimension; `stack` adds a **new** one. Use
# `cat` to append more rows, `stack` to turn a list of equally shaped examples into a batch.

# %%
p, q = torch.zeros(2, 3), torch.ones(2, 3)
print(torch.cat([p, q], dim=0).shape)  # (4, 3): more rows
print(torch.cat([p, q], dim=1).shape)  # (2, 6): more columns
print(torch.stack([p, q], dim=0).shape)  # (2, 2, 3): a new leading dimension

# %% [markdown]
# ## 1.5 Indexing, masks and `gather`
#
# Basic indexing works like NumPy: integers pick, slices keep a dimension, `...` stands
# for "all remaining dimensions".

# %%
m = torch.arange(20).reshape(4, 5)
print(m[1, 2], m[1], m[:, 2], m[1:3, ::2], m[..., -1], sep="\n")

# %% [markdown]
# A boolean tensor of the same shape acts as a **mask**: indexing with it selects the
# elements where it is `True`, as a flat vector. `torch.where` keeps the shape and picks
# from one of two tensors per element.

# %%
scores = torch.tensor([[0.2, -1.3, 0.8], [1.5, -0.1, -0.7]])
positive = scores > 0
print(positive)
print(scores[positive])  # tensor([0.2, 0.8, 1.5])
print(torch.where(positive, scores, torch.zeros_like(scores)))  # ReLU by hand

# %% [markdown]
# `gather` picks one element per row using a tensor of indices. The classic use is reading
# each example's score for its *true* class out of a `(batch, classes)` score matrix, which
# is exactly the term a classification loss needs.

# %%
logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]])
targets = torch.tensor([0, 2, 1])
picked = logits.gather(
    dim=1, index=targets.unsqueeze(1)
)  # index must be (3, 1) like the output
print(picked.squeeze(1))  # tensor([2.0, 3.0, 1.0])
assert torch.equal(
    picked.squeeze(1), logits[torch.arange(3), targets]
)  # same thing, fancy-indexed

# %% [markdown]
# ## 1.6 Broadcasting
#
# Arithmetic between tensors of different shapes follows one rule. Line the shapes up from
# the **right**; two dimensions are compatible if they are equal or one of them is 1 (a
# missing dimension counts as 1). Size-1 dimensions are then stretched to match, without
# copying any memory. The figure shows a column `(3, 1)` plus a row `(4,)`.

# %%
col = torch.arange(3.0).reshape(3, 1)
row = torch.tensor([10.0, 20.0, 30.0, 40.0])
fig = plot_broadcast(col, row)
plt.show()
print((col + row).shape)

# %% [markdown]
# The grey cells are never stored. Broadcasting is how you centre every column of a data
# matrix in one line, and also how a silent bug slips in: subtracting a `(B,)` vector from
# a `(B, 1)` column gives a `(B, B)` matrix, not the `(B,)` difference you wanted.

# %%
data = torch.randn(100, 3) * torch.tensor([1.0, 5.0, 10.0]) + torch.tensor(
    [0.0, 3.0, -2.0]
)
centred = data - data.mean(dim=0)  # (100, 3) - (3,) -> (100, 3)
print(centred.mean(dim=0).abs().max() < 1e-5)

prediction = torch.randn(4, 1)  # what a model with one output returns
target = torch.randn(4)
print(
    "wrong:",
    (prediction - target).shape,
    " right:",
    (prediction.squeeze(1) - target).shape,
)

# %% [markdown]
# ## 1.7 In-place operations
#
# Methods ending in an underscore (`add_`, `mul_`, `zero_`, `clamp_`) change a tensor in
# place instead of returning a new one. They save memory, but every other name for the same
# memory sees the change, and autograd refuses some of them on values it still needs for
# the backward pass (chapter 2). Prefer the out-of-place form unless memory is tight.

# %%
w = torch.ones(3)
alias = w  # another name, not a copy
w.mul_(2)
print(w, alias)  # both changed
w = w + 1  # out of place: `w` now names a new tensor; `alias` keeps the old one
print(w, alias)

# %% [markdown]
# ## 1.8 Views and shared storage
#
# Slicing, `view`, `transpose`, `permute` and `expand` return **views**: new tensor objects
# over the same memory. Writing through a view changes the original. `clone()` makes an
# independent copy. `data_ptr()` tells you where a tensor's first element lives, so equal
# pointers mean shared memory.

# %%
base = torch.arange(6.0)
first_half = base[:3]  # a view
first_half[0] = 100.0
print(base)  # the original changed
print(first_half.data_ptr() == base.data_ptr())

safe = base[:3].clone()
safe[0] = -1.0
print(base[0].item(), safe[0].item())  # the clone is independent

# %% [markdown]
# A transposed matrix is a view with swapped *strides* (how many elements to skip to move one
# step along each dimension). `contiguous()` returns a tensor laid out row by row, copying
# only if needed.

# %%
mat = torch.arange(6.0).reshape(2, 3)
tr = mat.t()
print(
    "strides:",
    mat.stride(),
    tr.stride(),
    "contiguous:",
    mat.is_contiguous(),
    tr.is_contiguous(),
)
print(tr.contiguous().is_contiguous(), tr.contiguous().data_ptr() != mat.data_ptr())

# %% [markdown]
# ## 1.9 Reductions along a dimension
#
# `sum`, `mean`, `max`, `argmax`, `std` and friends reduce over all elements by default, or
# along `dim`. `keepdim=True` keeps the reduced dimension with size 1, which is what you
# want when the result is broadcast back against the input, as in a row-wise softmax.

# %%
z = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
print(z.sum(), z.sum(dim=0), z.sum(dim=1), z.sum(dim=1, keepdim=True).shape, sep="\n")

values, indices = z.max(dim=1)  # max along a dim returns both
print(values, indices)

exp = z.exp()
softmax = exp / exp.sum(dim=1, keepdim=True)  # (2, 3) / (2, 1) broadcasts per row
assert torch.allclose(softmax, torch.softmax(z, dim=1))
print(softmax.sum(dim=1))

# %% [markdown]
# ## 1.10 Matrix products: `matmul`, `@` and `einsum`
#
# `@` is `torch.matmul`. For 2-D tensors it is the matrix product; with more dimensions the
# leading ones are treated as a batch (and broadcast). `einsum` names every index, which
# makes complicated contractions readable: indices that appear in the inputs but not the
# output are summed over.

# %%
A = torch.randn(4, 3)
B = torch.randn(3, 2)
print((A @ B).shape, torch.allclose(A @ B, torch.matmul(A, B)))

batch_a = torch.randn(10, 4, 3)  # ten (4, 3) matrices
print((batch_a @ B).shape)  # B is broadcast over the batch: (10, 4, 2)

same = torch.einsum("bij,jk->bik", batch_a, B)
assert torch.allclose(same, batch_a @ B, atol=1e-6)
dots = torch.einsum("ij,ij->i", A, A)  # a dot product per row
assert torch.allclose(dots, (A * A).sum(dim=1))
print(dots)

# %% [markdown]
# Note that `*` is the element-wise product, never the matrix product.
#
# ## 1.11 The NumPy bridge
#
# `torch.from_numpy(array)` and `tensor.numpy()` convert **without copying** (for CPU
# tensors): both names refer to the same memory, so a change on one side shows on the other.
# `torch.tensor(array)` and `torch.as_tensor(array, dtype=...)` with a different dtype copy.

# %%
arr = np.arange(4.0)  # float64, NumPy's default
shared = torch.from_numpy(arr)
copied = torch.tensor(arr)
arr[0] = 42.0
print(shared, copied)  # the shared tensor sees 42, the copy does not
print(shared.dtype)  # float64 is kept; use .float() before feeding a float32 model

back = shared.numpy()
back[1] = -7.0
print(arr)  # the same memory again

# %% [markdown]
# A GPU tensor must come to the CPU first (`t.cpu().numpy()`), and a tensor that records
# gradients must be detached first (`t.detach().cpu().numpy()`); chapter 2 explains why.
#
# ## 1.12 Random numbers, seeds and generators
#
# `torch.manual_seed` resets the global random stream, so the same seed gives the same
# numbers. `seed_everything` from `helpers.runtime` seeds Python, NumPy and torch together.

# %%
torch.manual_seed(123)
first = torch.rand(3)
torch.manual_seed(123)
second = torch.rand(3)
print(first, second, torch.equal(first, second))

# %% [markdown]
# The global stream is shared by everything in the process: if any code you call draws a
# random number, everything drawn after it changes. A private `torch.Generator` gives one
# piece of code its own stream. `make_generator(seed)` creates one; pass it with
# `generator=`.

# %%
gen = make_generator(7)
draw_a = torch.randn(3, generator=gen)
gen = make_generator(7)
torch.randn(1000)  # unrelated draws from the global stream...
draw_b = torch.randn(3, generator=gen)  # ...do not affect the private one
print(draw_a, torch.equal(draw_a, draw_b))

# %% [markdown]
# Seeding makes a run repeatable on the same hardware and library versions. It does not
# make a CPU and a GPU produce identical numbers: they use different algorithms and
# summation orders.
#
# ## 1.13 Why vectorise: a measurement
#
# A Python loop over tensor elements pays the interpreter's and PyTorch's per-call overhead
# for every element. A vectorised expression does the whole computation in one call to
# optimised C++ code. Here is the same computation, the squared distance from each of 200
# points to each of 50 centres, written both ways and timed on this machine.

# %%
gen = make_generator(seed)
points = torch.randn(200, 2, generator=gen)
centres = torch.randn(50, 2, generator=gen)


def distances_loop(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    out = torch.empty(len(points), len(centres))
    for i in range(len(points)):
        for j in range(len(centres)):
            diff = points[i] - centres[j]
            out[i, j] = (diff * diff).sum()
    return out


def distances_vectorised(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    diff = (
        points[:, None, :] - centres[None, :, :]
    )  # (200, 1, 2) - (1, 50, 2) -> (200, 50, 2)
    return (diff * diff).sum(dim=-1)  # (200, 50)


assert torch.allclose(
    distances_loop(points, centres), distances_vectorised(points, centres)
)
loop_s = best_time(lambda: distances_loop(points, centres), repeat=3)
vec_s = best_time(lambda: distances_vectorised(points, centres), repeat=20)
speedup = loop_s / vec_s
print(
    f"loop: {loop_s * 1e3:.1f} ms   vectorised: {vec_s * 1e3:.3f} ms   "
    f"speed-up: {speedup:.0f}x"
)
assert speedup >= 10, speedup

# %% [markdown]
# Both versions give the same numbers (checked by the `allclose` above), and the
# vectorised one is faster by the factor printed, measured as the best of several runs on
# the machine that built this page. Broadcasting did the work: `points[:, None, :]` and
# `centres[None, :, :]` insert size-1 dimensions so that every point meets every centre.
#
# ```{admonition} Common pitfalls
# :class: warning
# - **Silent broadcasting.** `(B, 1) - (B,)` gives `(B, B)`. Print shapes, or `squeeze` first.
# - **Unexpected sharing.** Slices, `view` and `from_numpy` share memory; `clone()` when you
#   need an independent copy.
# - **Integer tensors.** `torch.tensor([1, 2])` is `int64`; `mean`, `std` and most layers
#   need floats.
# - **Device mismatches.** Create or move every tensor with `device=device` / `.to(device)`;
#   hard-coded `.cuda()` breaks on machines without an NVIDIA GPU.
# - **`view` on a permuted tensor** fails; use `reshape` (or `.contiguous().view(...)`).
# ```
#
# ## Exercises
#
# Each solution is in a collapsed cell below its exercise; try first, then expand it.
#
# **Exercise 1.** Build the 5 × 5 multiplication table (`table[i, j] == (i + 1) * (j + 1)`)
# from `torch.arange` and broadcasting, with no loop.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 1: a (5, 1) column times a (5,) row broadcasts to (5, 5).
n = torch.arange(1, 6)
table = n[:, None] * n
print(table)
assert table[2, 3] == 12 and table.shape == (5, 5)

# %% [markdown]
# **Exercise 2.** Given `x = torch.arange(24).reshape(2, 3, 4)`, produce a tensor of shape
# `(4, 6)` whose row `k` holds every element of `x` with last index `k`, in their original
# order. Does `view` work directly on your intermediate result?

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 2: move the last dimension to the front, then flatten the rest.
x = torch.arange(24).reshape(2, 3, 4)
moved = x.permute(2, 0, 1)  # (4, 2, 3), non-contiguous
rows = moved.reshape(4, 6)  # view() would fail here; reshape copies
print(rows)
print("contiguous after permute:", moved.is_contiguous())
assert torch.equal(rows[1], x[..., 1].flatten())

# %% [markdown]
# **Exercise 3.** For a `(6, 4)` tensor of class scores, compute each row's predicted
# class and the score of that prediction, once with `max(dim=1)` and once with `argmax` and
# `gather`. Check they agree.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 3
scores = torch.randn(6, 4, generator=make_generator(3))
best_scores, best_classes = scores.max(dim=1)
via_gather = scores.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)  # (6,)
print(best_classes, best_scores)
assert torch.equal(best_scores, via_gather)

# %% [markdown]
# **Exercise 4.** Standardise each column of `data` from section 1.6 to mean 0 and
# standard deviation 1 in one expression, and verify the result with a reduction.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 4: statistics with keepdim=True broadcast back over the rows.
standardised = (data - data.mean(dim=0, keepdim=True)) / data.std(dim=0, keepdim=True)
print(standardised.mean(dim=0), standardised.std(dim=0))
assert torch.allclose(standardised.mean(dim=0), torch.zeros(3), atol=1e-5)
assert torch.allclose(standardised.std(dim=0), torch.ones(3), atol=1e-5)

# %% [markdown]
# ## Summary
#
# - A tensor has a shape, a dtype and a device; factories (`zeros`, `arange`, `randn`,
#   `*_like`) take all three, and `.to(...)` changes dtype or device explicitly.
# - `view`, slicing, `permute` and `from_numpy` share memory; `reshape` copies only when it
#   must; `clone()` always copies.
# - Broadcasting aligns shapes from the right and stretches size-1 dimensions; it is
#   powerful and the source of silent shape bugs.
# - Reductions take `dim` and `keepdim`; `@` and `einsum` cover matrix products.
# - Vectorised code was more than ten times faster than a Python loop here, and the gap
#   grows with the size of the data.
#
# **Next:** chapter 2 makes tensors remember how they were computed (autograd), and uses
# that to train a neural network on real medical data.
