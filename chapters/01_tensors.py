# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,jupyter,mystnb,cellView,-all
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
# create tensors of the shape, type and device you need, predict the dtype of a mixed
# expression, tell a view from a copy, reshape and index without copying data by accident,
# predict what broadcasting will do, and replace a Python loop by one vectorised expression
# that runs hundreds to thousands of times faster (section 1.13 measures the factor on
# your machine).
#
# **Prerequisites:** Python and a first acquaintance with NumPy arrays. No earlier chapter.

# %% tags=["hide-cell"]
# On Colab only: install this book's helpers package (pip keeps Colab's own
# torch when it meets the book's lowest declared version, and upgrades it if not).
import sys

if "google.colab" in sys.modules:
    import subprocess

    repository = "https://github.com/pytorch-book/pytorch-book"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", f"git+{repository}"],
        check=True,
    )

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from helpers.plotting import plot_broadcast
from helpers.results import prose, record
from helpers.runtime import (
    describe_runtime,
    get_device,
    make_generator,
    seed_everything,
)
from helpers.timing import best_time

# BOOK_SEED=n runs the chapter with another seed. The comments beside the
# checks (assert) give the values measured when each margin was set, on one
# machine; another CPU, torch or device moves them a little, within the margin.
seed = seed_everything(0)
device = get_device()
print(describe_runtime(device, seed))

# %% [markdown]
# `get_device()` picks a CUDA GPU if there is one, then an Apple-silicon GPU (MPS), and
# falls back to the CPU. Every chapter runs on whichever it finds, unchanged. Inside, it
# asks PyTorch the two questions the next cell asks: they name the two kinds of GPU
# explicitly, which is what a reader needs to see once. (From PyTorch 2.7 on,
# `torch.accelerator.current_accelerator(check_available=True)` asks the same for any
# kind of accelerator and returns `None` when there is none; without
# `check_available=True` it names the accelerator PyTorch was *built* for, even on a
# machine that has none.)

# %%
# what get_device() checks, in this order
print("CUDA available:", torch.cuda.is_available())
print("MPS available: ", torch.backends.mps.is_available())

# %% [markdown]
# ## 1.1 Creating tensors
#
# A tensor is an n-dimensional array of numbers of one type, stored on one device. The
# most direct way to make one is from Python data; `torch.tensor` always copies it.
# `ndim`, `shape` and `dtype` describe it; `numel()` counts its elements and `nbytes`
# is their size in memory.

# %%
scalar = torch.tensor(3.5)
vector = torch.tensor([1.0, 2.0, 3.0])
matrix = torch.tensor([[1, 2, 3], [4, 5, 6]])
for name, t in [("scalar", scalar), ("vector", vector), ("matrix", matrix)]:
    print(f"{name:6}  ndim={t.ndim}  shape={tuple(t.shape)}  dtype={t.dtype}")
# numel(): the number of elements; element_size(): bytes per element
print(
    f"matrix: {matrix.numel()} elements x {matrix.element_size()} bytes"
    f" = {matrix.nbytes} bytes"
)

# %% [markdown]
# More often you ask for a tensor of a given shape and let PyTorch fill it. `zeros`,
# `ones`, `full`, `rand` and `randn` take the shape first; `arange` and `linspace` take a
# range instead. All of them accept `dtype=` and `device=` keywords (`torch.set_default_device`
# changes where they put a tensor given no `device=`; this book always passes `device=`,
# so every cell shows where its tensors live). `empty` also takes a
# shape but fills in nothing: its elements are whatever the memory held before, so use it
# only for a tensor whose every element you are about to overwrite (section 1.13 does).

# %%
print(torch.zeros(2, 3))  # all 0.0
print(torch.ones(2, 3, dtype=torch.int64))  # all 1, as integers
print(torch.full((2, 3), 7.0))  # any constant
print(torch.arange(0, 10, 2))  # like range(): the end is excluded
print(torch.linspace(0, 1, 5))  # 5 evenly spaced points, both ends included
print(torch.rand(2, 3))  # uniform on [0, 1)
print(torch.randn(2, 3))  # standard normal: mean 0, standard deviation 1
print(torch.empty(2, 3).shape)  # allocated, not filled: print only its shape

# %% [markdown]
# The `*_like` variants copy the shape, dtype and device of an existing tensor, which
# saves you from repeating them (and from getting one of them wrong).

# %%
template = torch.randn(2, 4, dtype=torch.float64)
zeros = torch.zeros_like(template)
noise = torch.randn_like(template)
print(zeros.shape, zeros.dtype, noise.shape, noise.dtype)

# %% [markdown]
# One look-alike to avoid: `torch.Tensor` (capital T) is the tensor *class*, and calling
# it with a number reads the number as a shape. `torch.Tensor(3)` is an uninitialised
# vector of three elements in the default dtype (float32 unless changed), while
# `torch.tensor(3)` is the 0-dim integer 3.

# %%
print(torch.tensor(3).shape, torch.tensor(3).dtype)  # 0-dim, int64
print(torch.Tensor(3).shape, torch.Tensor(3).dtype)  # shape (3,), float32

# %% [markdown]
# ## 1.2 Data types: formats, casting and promotion
#
# Python floats become `float32`, PyTorch's default for real numbers
# (`torch.get_default_dtype()`, half the memory of NumPy's default `float64`); Python ints
# become `int64`. A floating-point format trades **range** (its exponent bits) against
# **precision** (its mantissa bits), and `torch.finfo` reports both: `max` is the largest
# finite value, `eps` the gap between 1 and the next number the format can hold (its
# relative precision), and `tiny` the smallest positive number held at full precision.

# %%
for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
    info = torch.finfo(dtype)
    print(
        f"{dtype!s:15} {info.bits:2} bits   max {info.max:8.2e}   "
        f"eps {info.eps:.1e}   tiny {info.tiny:.1e}"
    )

# %% [markdown]
# So `float16` keeps about three significant digits and tops out at 65,504, while
# `bfloat16` has float32's range (the same 8 exponent bits) and less precision: with an
# `eps` of 2⁻⁷ it holds only every second integer between 256 and 512. The next cell
# shows each limit. `.item()` returns a one-element tensor's value as a Python number,
# printed here with 17 digits (PyTorch's own four decimals would hide the difference
# between float32 and float64).

# %%
big = torch.tensor(70000.0)
print(
    "70000 as float16:",
    big.half().item(),
    "  as bfloat16:",
    big.bfloat16().item(),
)
odd = torch.tensor(257.0)
print(
    "257 as float16:",
    odd.half().item(),
    "  as bfloat16:",
    odd.bfloat16().item(),
)
third64 = torch.tensor(1 / 3, dtype=torch.float64)
third32 = torch.tensor(1 / 3, dtype=torch.float32)
print(f"1/3 in float64: {third64.item():.17f}")
print(f"1/3 in float32: {third32.item():.17f}")

# %% [markdown]
# Weights and arithmetic default to float32. Recent NVIDIA GPUs multiply large matrices
# much faster in the 16-bit formats; *mixed precision* (`torch.autocast`, chapter 8)
# uses that speed while the weights stay in float32. Nothing before chapter 8 needs
# more; the aside says which hardware does what.

# %% [markdown] tags=["box-dropdown"]
# <details>
# <summary>Going further: tensor cores and TF32</summary>
#
# NVIDIA's tensor cores, the matrix units behind most of a recent GPU's speed, multiply
# float16 inputs (since the Volta generation) and bfloat16 inputs (since Ampere) many
# times faster than plain float32 arithmetic. From Ampere on they also offer **TF32**,
# which reads only 10 mantissa bits of each float32 input (float16's precision), keeps
# float32's range and adds up in float32. Mixed precision runs matrix products and
# convolutions in 16 bits while numerically sensitive operations (sums, softmax, losses)
# stay in float32. PyTorch's TF32 defaults differ by operation: float32 matrix products
# use full precision (`torch.get_float32_matmul_precision()` is `"highest"`;
# `torch.set_float32_matmul_precision("high")` allows TF32), while cuDNN convolutions may
# use TF32 (`torch.backends.cudnn.allow_tf32` is `True`); the hidden cell below prints
# both. Since PyTorch 2.9 the documentation recommends newer switches,
# `torch.backends.cuda.matmul.fp32_precision` and
# `torch.backends.cudnn.conv.fp32_precision`. Each is `"ieee"`, `"tf32"` or `"none"`,
# and `"none"` means "take the parent switch's setting". They state the same defaults
# as the older switches: the matmul switch reads `"none"` and so does its root,
# `torch.backends.fp32_precision`, so nothing has chosen TF32 and float32 matrix
# products run in full float32 (IEEE), as `"highest"` says; the convolution switch
# reads `"tf32"`, as `allow_tf32 = True` says. The hidden cell prints both pairs; this
# book reads the older switches, the ones most code in use still sets. An NVIDIA GPU
# older than Ampere has no TF32 units, so there float32 products stay float32 whatever
# the settings say.
#
# </details>

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# The two TF32 switches of the aside above, at their defaults
print("float32 matmul precision:", torch.get_float32_matmul_precision())
print("cuDNN convolutions may use TF32:", torch.backends.cudnn.allow_tf32)
# the newer switches: matmul "none" (full float32), conv "tf32"
print("matmul.fp32_precision:", torch.backends.cuda.matmul.fp32_precision)
print("cudnn.conv.fp32_precision:", torch.backends.cudnn.conv.fp32_precision)

# %% [markdown]
# Casting is explicit: `.to(dtype)` or the shorthands `.float()`, `.double()`, `.long()`,
# `.half()`. Casting to an integer type truncates towards zero, and low-precision types
# round to the nearest number they can hold.

# %%
x = torch.tensor([-1.7, 0.4, 2.9])
print(x.long())  # truncation, not rounding
print(x.round().long())  # round first if that is what you mean
print(torch.tensor(1000.1).half())  # float16's spacing near 1000 is 0.5

# %% [markdown]
# When an element-wise operation (arithmetic such as `+`, `*`, `/`, or a comparison) mixes
# dtypes, PyTorch does **not** look for a type that can hold both values. It promotes by
# **category**, bool < integer < floating point < complex:
#
# 1. The result has the highest category among the operands.
# 2. Its size comes from the operands of that category only, and among those from the
#    highest-ranked group: tensors with dimensions, else 0-dim tensors, else Python
#    numbers. So a 0-dim tensor or a Python number sets the size only when its category
#    is higher than every dimensioned tensor's; a Python float then gives the default
#    `float32`, a Python int `int64`. (Complex is the exception: a complex 0-dim tensor
#    or Python number meeting a floating-point tensor gives the complex type of that
#    tensor's precision, so `float64` plus `1j` gives `complex128`, and `float32` plus
#    a 0-dim `complex128` tensor gives `complex64`.)
# 3. Two sizes of one category give the smallest dtype that holds both, which can be
#    neither operand's: `uint8 + int8` gives `int16`, `float16 + bfloat16` gives
#    `float32` (`torch.promote_types` answers for any pair).
#
# `torch.result_type` applies the rule without computing anything. Matrix products do
# not promote at all: `@`, `mm` and `bmm` need both operands in one dtype, so
# `int64 @ float32` and even `float64 @ float32` raise a `RuntimeError`. Convert one side
# first. The newer unsigned types `uint16`, `uint32` and `uint64` follow stricter rules
# still; the aside after the cell has them, and the error messages of `@`.

# %%
int8s = torch.tensor([1, 100], dtype=torch.int8)
halves = torch.ones(2, dtype=torch.float16)
double_0d = torch.tensor(2.5, dtype=torch.float64)  # a 0-dim tensor
cases = {
    "int64 tensor + float32 tensor": (torch.tensor([1]), torch.tensor([1.0])),
    "int8 tensor + Python int 1000": (int8s, 1000),
    "int8 tensor + 0-dim int64 tensor": (int8s, torch.tensor(1000)),
    "int8 tensor + 1-dim int64 tensor": (int8s, torch.tensor([1000])),
    "int8 tensor + Python float 2.5": (int8s, 2.5),
    "int8 tensor + 0-dim float64 tensor": (int8s, double_0d),
    "float16 tensor + 0-dim float64 tensor": (halves, double_0d),
    "bool tensor + Python int 1": (torch.tensor([True]), 1),
    "float32 tensor + 0-dim complex128": (
        torch.ones(2),
        torch.tensor(1j, dtype=torch.complex128),
    ),
}
for name, (a, b) in cases.items():
    print(f"{name:38} -> {torch.result_type(a, b)}")

# %% [markdown] tags=["box-dropdown"]
# <details>
# <summary>Going further: uint16/32/64 and the wording of dtype errors</summary>
#
# `promote_types` pairs `uint16`, `uint32` or `uint64` only with itself or a floating
# type (the floating type wins: `uint64` with `float16` gives `float16`) and raises for
# any other integer type, bool or complex type; the hidden cell below checks every pair.
# PyTorch's documentation gives these types "limited support in eager mode", so some
# releases cannot even add two of them on the CPU (the sentence after the cell says what
# this one does). Convert them first (`.int()`, `.float()`).
#
# The `RuntimeError` of a mixed-dtype matrix product is worded differently for vectors,
# matrices and batches; for two matrices it says "expected m1 and m2 to have the same
# dtype". The cell's last lines print all three.
#
# Near its end the cell calls `record`, which stores a sentence from this run under a
# name; the text after the cell quotes it, so the words and the run cannot disagree
# (every chapter does this; with `headline=` the value is also listed on the book's
# Status page).
#
# </details>

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
try:
    torch.promote_types(torch.uint16, torch.int32)
    uint16_promotes = True
except RuntimeError as err:
    uint16_promotes = False
    print("uint16 + int32 ->", type(err).__name__)
assert not uint16_promotes
# the whole rule, for each of the three: only itself and floating types pair
others = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32)
others += (torch.int64, torch.uint16, torch.uint32, torch.uint64)
others += (torch.float16, torch.bfloat16, torch.float32, torch.float64)
others += (torch.complex64, torch.complex128)
for unsigned in (torch.uint16, torch.uint32, torch.uint64):
    for other in others:
        try:
            paired = torch.promote_types(unsigned, other)
        except RuntimeError:
            paired = None
        if other == unsigned:
            assert paired == unsigned, (unsigned, paired)
        elif other.is_floating_point:
            assert paired == other, (unsigned, other, paired)  # the float wins
        else:
            assert paired is None, (unsigned, other, paired)
print("uint16/32/64 pair only with themselves and floating types")
small = torch.tensor([1, 2], dtype=torch.uint16)
try:
    print("uint16 + uint16 ->", small + small)
    uint16_outcome = "computes `uint16 + uint16` on the CPU"
except RuntimeError as err:  # NotImplementedError is a RuntimeError
    print("uint16 + uint16 ->", type(err).__name__, str(err).splitlines()[0])
    uint16_outcome = (
        f"cannot compute `uint16 + uint16` on the CPU (it raises "
        f"`{type(err).__name__}`)"
    )
print("uint16 converted first:", small.int() + small.int())
record("uint16_sentence", f"PyTorch {torch.__version__} {uint16_outcome}")
# float64 @ float32 with vectors, matrices and batches of matrices
for shape in ((3,), (3, 3), (2, 3, 3)):
    try:
        torch.ones(shape, dtype=torch.float64) @ torch.ones(shape)
        matmul_mixes = True
    except RuntimeError as err:
        matmul_mixes = False
        print(f"{len(shape)}-D float64 @ float32 ->", str(err).splitlines()[0])
    assert not matmul_mixes, shape

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
In the run that made this page, {{uint16_sentence}}; the hidden cell's
`small.int() + small.int()` converts first.
"""
)

# %% [markdown]
# Two consequences. An int64 tensor combined with a float32 tensor becomes float32, which
# holds every integer up to 2²⁴ = 16,777,216 exactly but not 2²⁴ + 1: its 24 significand
# bits make the spacing just above 2²⁴ equal to `eps` × 2²⁴ = 2⁻²³ × 2²⁴ = 2. And an int8 tensor
# plus the Python int 1000 stays int8, so the sum silently wraps around modulo 256
# (NumPy 2 raises an `OverflowError` instead, NumPy 1 widened to int16; the cell shows
# what your NumPy does).

# %%
counts = torch.tensor([2**24, 2**24 + 1])  # int64 holds both exactly
as_float = counts + torch.zeros(2)  # float32: 16,777,217 becomes 16,777,216
print(as_float, "equal:", bool(as_float[0] == as_float[1]))
wrapped = int8s + 1000  # 1 + 1000 = 1001 = 4 * 256 - 23, so it wraps to -23
print(wrapped)
# .tolist() returns the elements as a (nested) Python list of numbers
assert as_float[1] == 2**24 and wrapped.tolist() == [-23, 76]
try:
    numpy_sum = np.array([1, 100], dtype=np.int8) + 1000
    print(f"NumPy {np.__version__}:", numpy_sum, numpy_sum.dtype)
except OverflowError as err:
    print(f"NumPy {np.__version__}: OverflowError: {err}")

# %% [markdown]
# Some operations change the category by themselves: `/` always gives floats (so do
# `sqrt`, `exp` and `log` of integers), `//` floors and keeps integers, and comparisons
# give `bool`. And some operations insist on floating point:
# `ints.mean()` raises an error, because the mean of integers is generally not an integer.
# Cast first: `ints.float().mean()`.

# %%
ints = torch.tensor([1, 2, 3])
print(ints / 2, ints // 2)
try:
    ints.mean()
except RuntimeError as err:
    print("RuntimeError:", str(err).splitlines()[0])
print(ints.float().mean())

# %% [markdown]
# ## 1.3 Devices and `.to`
#
# A tensor lives on one device. `.to(device)` returns a copy on that device (or the tensor
# itself if it is already there). Operations need their tensor inputs on one device, with
# one common exception: a 0-dim CPU tensor may be combined with a tensor on any device,
# like a Python number. Writing `.to(device)` rather than `.cuda()` is what lets the same code run
# on a CPU, an NVIDIA GPU or an Apple GPU.

# %%
a = torch.randn(3, 3)
a_dev = a.to(device)
print(a.device, "->", a_dev.device)
b_dev = torch.ones(3, 3, device=device)  # or create it on the device directly
print((a_dev @ b_dev).device)
print((a_dev * torch.tensor(2.0)).device)  # a 0-dim CPU tensor is allowed
# .item() turns a one-element tensor into a Python number, copying it to the CPU
print(a_dev.sum().item())
# only a machine with an accelerator can show the error
if device.type != "cpu":
    try:
        a + a_dev  # a CPU tensor with dimensions, and one on the accelerator
    except RuntimeError as err:
        print("RuntimeError:", str(err).splitlines()[0])

# %% [markdown]
# On a machine with a GPU, mixing a CPU tensor that has dimensions with a GPU tensor
# raises *"Expected all tensors to be on the same device"* (the cell shows it when it
# runs on a GPU). Moving data is not free, but what it costs depends on the hardware. A
# discrete NVIDIA GPU has its own memory, and a
# copy travels over the link between CPU and GPU (PCIe in most machines), which is far
# slower than the GPU's own memory. On Apple silicon (MPS) the CPU and GPU share the same
# physical memory, so no bus is crossed, but `.to("mps")` still copies into a separate GPU
# buffer. On both, reading a result back (`.item()`, `.cpu()`) waits until the GPU work
# queued before it (on the current stream, the only one a beginner uses) has finished.
# Either way: move data once, then keep the work on the device. Chapter 8
# measures when a GPU pays off and when it does not.
#
# ## 1.4 Changing shape
#
# `view` and `reshape` give the same elements, in the same row-major order, with a new
# shape. The sizes must multiply to the same total; one of them may be `-1`, meaning
# "whatever is left".

# %%
t = torch.arange(12)
print(t.view(3, 4))
print(t.reshape(2, -1).shape)  # -1 is inferred: (2, 6)

# %% [markdown]
# The difference: `view` never copies. Its result shares memory with the input, and when
# the new shape cannot be laid over that memory it raises an error instead. `reshape`
# returns a view when one exists and a copy otherwise (section 1.6 gives the exact rule),
# but PyTorch's documentation tells you not to rely on which of the two you get. If you
# will write into the result and want the input to change with it, use `view`; if you
# need an independent tensor, use `clone()`.
# `permute` reorders dimensions (a transpose, in general) without moving any data, which
# usually leaves the tensor **non-contiguous**: its elements are no longer stored in
# row-major order for its new shape.

# %%
# (batch, height, width, channels), as image libraries store images
images = torch.randn(2, 28, 28, 3)
# (batch, channels, height, width), as PyTorch's layers expect them
chw = images.permute(0, 3, 1, 2)
print(chw.shape, "contiguous:", chw.is_contiguous())

# %% [markdown]
# `unsqueeze(d)` inserts a dimension of size 1 at position `d`; `squeeze(d)` removes one.
# They are how you turn a single example into a batch of one, or a `(B, 1)` model output
# into a `(B,)` vector of predictions. Indexing with `None` inserts a size-1 dimension
# too, at the position where the `None` stands: `sample[None]` is
# `sample.unsqueeze(0)`, and `v[:, None]` turns a length-n vector into an `(n, 1)`
# column. Give `squeeze` its dimension: without one it removes *every* size-1
# dimension, so a batch that happens to hold a single example loses its batch dimension.
# With one, it removes that dimension only if its size is 1, and otherwise returns the
# tensor unchanged, without an error.
# (Cells check what the text claims with `assert`, as in section 1.2;
# `torch.equal(a, b)` is `True` when two tensors have the same shape and the same
# values.)

# %%
sample = torch.randn(3, 32, 32)  # one image: (channels, height, width)
batch = sample.unsqueeze(0)  # (1, 3, 32, 32)
column = torch.randn(5, 1)
print(batch.shape, column.squeeze(1).shape)
print(column.squeeze(0).shape)  # dim 0 has size 5: nothing removed, no error
assert torch.equal(sample[None], batch)  # None inserts the same size-1 dim
print(torch.arange(4)[:, None].shape)  # (4,) -> (4, 1)
one_output = torch.randn(1, 1)  # a batch of one example, one output each
print(one_output.squeeze(1).shape, one_output.squeeze().shape)  # (1,) but ()

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
# for "all remaining dimensions". One exception: a slice's step must be positive, so
# NumPy's `a[::-1]` raises a `ValueError`; reverse with `t.flip(0)`, which copies.

# %%
m = torch.arange(20).reshape(4, 5)
print(m[1, 2], m[1], m[:, 2], m[1:3, ::2], m[..., -1], sep="\n")
try:
    m[:, ::-1]  # fine in NumPy
except ValueError as err:
    print("negative step:", err)
print(m.flip(1)[0])  # columns reversed: [4, 3, 2, 1, 0]

# %% [markdown]
# A boolean tensor of the same shape acts as a **mask**: indexing with it selects the
# elements where it is `True`, as a flat vector. `torch.where(mask, a, b)` keeps the
# shape and picks per element from `a` where the mask is `True`, from `b` elsewhere
# (either may be a plain number). `masked_fill(mask, value)` returns a copy with one
# value wherever the mask is `True`, the usual way to set padded positions to `-inf`
# before a softmax (exercise 3 meets such rows).

# %%
scores = torch.tensor([[0.2, -1.3, 0.8], [1.5, -0.1, -0.7]])
positive = scores > 0
print(positive)
print(scores[positive])  # tensor([0.2, 0.8, 1.5])
relu = torch.where(positive, scores, 0.0)  # ReLU by hand
print(relu)
assert torch.equal(scores.masked_fill(~positive, 0.0), relu)  # ~ negates a mask

# %% [markdown]
# `gather(dim, index)` reads elements along `dim` at the positions that `index` holds and
# returns a tensor of `index`'s shape: for `dim=1`, `out[i, j] = input[i, index[i, j]]`,
# so a `(B, k)` index picks k elements from each row. The classic use, with k = 1, is
# reading each example's score for its *true* class out of a `(batch, classes)` score
# matrix, which is exactly the term a classification loss needs. `scatter_add_(dim,
# index, src)` goes the other way: it adds `src[i, j]` into `out[i, index[i, j]]` (for
# `dim=1`), and `scatter_` writes instead of adding.

# %%
logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]])
targets = torch.tensor([0, 2, 1])
# the index must have the output's shape, (3, 1): one column index per row
picked = logits.gather(dim=1, index=targets.unsqueeze(1))
print(picked.squeeze(1))  # tensor([2.0, 3.0, 1.0])
# the same three elements, picked with a row index and a column index
assert torch.equal(picked.squeeze(1), logits[torch.arange(3), targets])
# index tensors broadcast against each other, like the operands of + (section
# 1.7 gives the rule): (2, 1) with (2,) picks a (2, 2) block,
# out[i, j] = logits[row_ids[i], col_ids[j]]
row_ids, col_ids = torch.tensor([0, 2]), torch.tensor([1, 2])
block = logits[row_ids[:, None], col_ids]  # (2, 2)
print(block)  # rows 0 and 2, columns 1 and 2: [[0.5, -1.0], [1.0, 1.0]]
assert torch.equal(block, logits[[0, 2]][:, [1, 2]])
two_per_row = torch.tensor([[0, 2], [1, 0], [2, 2]])  # (3, 2): k = 2 per row
print(logits.gather(dim=1, index=two_per_row))  # (3, 2); row 0: [2.0, -1.0]
# the inverse direction: out[i, index[i, j]] += src[i, j]
put_back = torch.zeros(3, 3).scatter_add_(1, targets.unsqueeze(1), picked)
print(put_back)  # each picked score back in its class's column, zeros elsewhere

# %% [markdown]
# ## 1.6 Views, strides and copies
#
# A tensor is a window onto a block of memory called its **storage**: a shape, a
# **stride** per dimension (how many elements to skip in memory to move one step along
# that dimension) and an offset to its first element. Basic indexing (integers, slices,
# `None`, `...`), `view`, `transpose`, `permute` and `expand` return **views**: new
# tensors over the same storage, so writing through one changes the other. `detach`
# (chapter 2) shares the storage too, and PyTorch's list of view operations includes
# it, although autograd does not track its result as a view (`._base` is `None`).
#
# To test whether one tensor is a view of another made inside PyTorch, compare where
# their storages start, `untyped_storage().data_ptr()`. Comparing `data_ptr()` tests
# something else: it is the address of the tensor's *first element*, which differs for
# a slice that starts later. (Tensors made by `torch.from_numpy`, section 1.11, wrap the
# array's memory as it is: two calls on the same array `a` give one storage address,
# but `from_numpy(a)` and `from_numpy(a[1:])` get storages that start at different
# addresses although they overlap; `np.shares_memory` answers for those.)


# %%
def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b are views of one storage
    (made from each other in PyTorch). Caveat: two tensors with no
    elements can both have an empty storage at address 0, and compare equal.
    """
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


base = torch.arange(6.0)
tail = base[2:]  # a view that starts 2 elements in
tail[0] = 100.0
print(base)  # the original changed
print("data_ptr equal:", tail.data_ptr() == base.data_ptr())
print(
    "same storage:",
    same_storage(tail, base),
    "| offset:",
    tail.storage_offset(),
)

safe = base[2:].clone()  # clone() always copies
safe[0] = -1.0
print(base[2].item(), safe[0].item(), "same storage:", same_storage(safe, base))

array = np.arange(4.0)  # from_numpy (section 1.11) wraps the array's memory
whole, again, later = (torch.from_numpy(a) for a in (array, array, array[1:]))
print(
    "from_numpy twice:",
    same_storage(whole, again),
    "| from a[1:]:",
    same_storage(whole, later),
    "| np.shares_memory:",
    np.shares_memory(whole.numpy(), later.numpy()),
)
assert same_storage(whole, again) and not same_storage(whole, later)

# %% [markdown]
# (Sharing a storage does not mean sharing elements: `base[:3]` and `base[3:]` share one
# storage but no element.)
#
# Indexing with a boolean mask, or with a tensor (with dimensions) or list of indices
# (**advanced** indexing), returns a **copy**: the selected elements are in general not
# evenly spaced in memory, so no strides could describe them. *Assigning* through the
# same index does write into the original (it runs `index_put_`). The trap is chaining
# the two:
# `m[mask][0] = v` reads a copy and writes into the copy.

# %%
m = torch.arange(12).reshape(3, 4)
# basic: a view
print("m[1:, ::2] shares m's storage:", same_storage(m[1:, ::2], m))
# mask: a copy
print("m[m > 5]   shares m's storage:", same_storage(m[m > 5], m))
# list: a copy
print("m[[0, 2]]  shares m's storage:", same_storage(m[[0, 2]], m))
m[m > 5] = 0  # assignment through a mask writes into m
m[m < 2][0] = 99  # writes 99 into a temporary copy: m does not change
print(m)
assert (m == 99).sum() == 0 and (m > 5).sum() == 0

# %% [markdown]
# Strides explain what a view can do without moving data. `mat.t()` transposes a (2, 3)
# matrix by swapping its strides. `contiguous()` returns a row-major copy when the layout
# is not already row-major, and the tensor itself when it is.

# %%
mat = torch.arange(6.0).reshape(2, 3)
tr = mat.t()
print("strides:", mat.stride(), tr.stride())
print("contiguous:", mat.is_contiguous(), tr.is_contiguous())
print("tr.contiguous() is a copy:", not same_storage(tr.contiguous(), mat))
print("mat.contiguous() is mat itself:", mat.contiguous() is mat)

# %% [markdown]
# Cutting a tensor into pieces gives views too. `split(size, dim)` cuts pieces of `size`
# along `dim` (the last one may be shorter), `chunk(n, dim)` asks for `n` pieces instead
# (and may return fewer: `torch.arange(6).chunk(4)` gives three pieces of two), and
# `unbind(dim)` removes the dimension and returns its slices. For a batch of matrices,
# `.mT` transposes the last two dimensions (a view, like `transpose(-2, -1)`); `.T` is
# meant for matrices.

# %%
rows = torch.arange(10.0).reshape(5, 2)
pieces = rows.split(2)  # sizes 2, 2, 1 along dim 0
parts = rows.chunk(2)  # 2 pieces: sizes 3 and 2
columns = rows.unbind(dim=1)  # 2 tensors of shape (5,)
print([tuple(t.shape) for t in pieces], [tuple(t.shape) for t in parts])
print(columns[1], "a view:", same_storage(columns[1], rows))
batch = torch.zeros(4, 2, 3)
print("batch.mT:", tuple(batch.mT.shape))  # (4, 3, 2)
assert [len(t) for t in pieces] == [2, 2, 1]
assert [len(t) for t in parts] == [3, 2]
assert all(same_storage(t, rows) for t in (*pieces, *parts, *columns))
assert batch.mT.shape == (4, 3, 2) and same_storage(batch.mT, batch)

# %% [markdown]
# `view` only computes new strides, so it works exactly when the new shape can be
# described by strides over the existing memory. Splitting one dimension into several is
# always possible. Merging two adjacent dimensions `d` and `d + 1` is possible only if
# `stride[d] == stride[d + 1] * size[d + 1]`: one step along `d` must land exactly where
# running off the end of `d + 1` would, so the merged dimension has a single stride
# (a dimension of size 1 merges with anything, since its stride is never used). A
# contiguous tensor meets this for every pair, so being contiguous is sufficient but not
# necessary. The permuted images `chw` from section 1.4 show a merge that works and one
# that does not.

# %%
print("shape", tuple(chw.shape), "strides", chw.stride())
# merge height and width: stride 84 == 3 * 28, so a view exists
spatial = chw.view(2, 3, 28 * 28)
print("view(2, 3, 784) works; shares storage:", same_storage(spatial, images))
try:
    # would merge channels (stride 1) with height (stride 84): no single stride
    # fits
    chw.view(2, -1)
except RuntimeError as err:
    print("view(2, -1) fails:", str(err).split(" (")[0])
flat = chw.reshape(2, -1)  # (2, 3*28*28): no view exists, so reshape copies
print("reshape(2, -1) shares storage:", same_storage(flat, images))
merged = chw.reshape(2, 3, 784)  # a view exists, so reshape returns it
print("reshape(2, 3, 784) shares storage:", same_storage(merged, images))

# %% [markdown]
# `reshape` copied only for the shape that no view could describe. `flatten` behaves like
# `reshape`, and `.contiguous().view(...)` always works, at the price of a copy whenever
# the tensor is not contiguous.
#
# ## 1.7 Broadcasting
#
# Arithmetic between tensors of different shapes follows one rule. Line the shapes up from
# the **right**; two dimensions are compatible if they are equal or one of them is 1 (a
# missing dimension counts as 1). Size-1 dimensions are then stretched to match. The figure
# shows a column `(3, 1)` plus a row `(4,)`: in its panels `a` is `col` and `b` is `row`,
# blue cells hold stored values and grey cells the copies broadcasting pretends to make.

# %%
col = torch.arange(3.0).reshape(3, 1)
row = torch.tensor([10.0, 20.0, 30.0, 40.0])
fig = plot_broadcast(col, row)
fig.suptitle(
    "Broadcasting: size-1 dimensions are stretched "
    "(blue = stored, grey = virtual copy)"
)
plt.show()
print((col + row).shape)
# the rule alone, from shapes, without any tensor
print(torch.broadcast_shapes((3, 1), (4,)))
stretched = col.expand(3, 4)  # the stretching made visible: still col's memory
print("strides of col.expand(3, 4):", stretched.stride())
print("shares col's storage:", same_storage(stretched, col))
copied = col.repeat(1, 4)  # the same values, but twelve of them really stored
print("strides of col.repeat(1, 4):", copied.stride())
print("shares col's storage:", same_storage(copied, col))
# bytes of memory behind each: 3 float32 values against 12
expand_bytes = stretched.untyped_storage().nbytes()
repeat_bytes = copied.untyped_storage().nbytes()
print("bytes stored: expand", expand_bytes, "| repeat", repeat_bytes)
assert (expand_bytes, repeat_bytes) == (3 * 4, 12 * 4)

# %% [markdown]
# The grey cells are never stored: a stretched dimension is read with stride 0, so every
# step along it reads the same element again, as `expand` shows. `repeat` gives the same
# values by copying them, so it costs memory that `expand` does not: four times as many
# bytes here, the last line shows (`untyped_storage().nbytes()` is the size of the
# memory behind a tensor). Only the result of `col + row` is a new `(3, 4)` tensor.
# `torch.broadcast_shapes` applies the rule to shapes alone, which checks a prediction
# before any memory is allocated.
# Broadcasting is how you centre every column of a data matrix in one line, and also how
# a silent bug slips in: subtracting a `(B,)` vector from a `(B, 1)` column gives a
# `(B, B)` matrix, not the `(B,)` difference you wanted.

# %%
scale = torch.tensor([1.0, 5.0, 10.0])
shift = torch.tensor([0.0, 3.0, -2.0])
# three columns with different spreads
data = torch.randn(100, 3) * scale + shift
centred = data - data.mean(dim=0)  # (100, 3) - (3,) -> (100, 3)
print("column means after centring:", centred.mean(dim=0))
assert centred.mean(dim=0).abs().max() < 1e-5

prediction = torch.randn(4, 1)  # what a model with one output returns
target = torch.randn(4)
wrong = prediction - target  # (4, 1) - (4,) -> (4, 4)
right = prediction.squeeze(1) - target  # (4,) - (4,) -> (4,)
print("wrong:", wrong.shape, " right:", right.shape)

# %% [markdown]
# ## 1.8 In-place operations
#
# Methods ending in an underscore (`add_`, `mul_`, `zero_`, `clamp_`) change a tensor in
# place instead of returning a new one. They save memory, but every view of the changed
# elements and every other name for the same tensor sees the change. The augmented
# assignments `+=`, `-=`, `*=` and `/=` are in place too: for a tensor, `w += 1` runs
# `w.add_(1)`, while `w = w + 1` builds a new tensor and makes the name `w` point to it.

# %%
w = torch.ones(3)
alias = w  # another name, not a copy
w.mul_(2)
print(w, alias)  # both changed: 2
w += 1  # in place as well
print(w, alias)  # both changed: 3
w = w + 1  # out of place: `w` now names a new tensor; `alias` keeps the old one
print(w, alias)  # 4 and 3
assert alias.tolist() == [3.0, 3.0, 3.0] and w.tolist() == [4.0, 4.0, 4.0]

# %% [markdown]
# An in-place result must fit the tensor it is written into. Broadcasting may stretch the
# other operand but never the target, so `a += b` fails when the broadcast shape is
# larger than `a`. Nor can in-place arithmetic or `copy_` write into a tensor from
# `expand` (section 1.7): its stride-0 dimension makes many elements share one memory
# location, so they would all receive different results at once. (`fill_` and `zero_`,
# which write one value everywhere, are allowed.)

# %%
target = torch.zeros(3)
try:
    target += torch.ones(2, 3)  # the broadcast shape (2, 3) does not fit (3,)
except RuntimeError as err:
    print("RuntimeError:", err)
try:
    torch.zeros(3, 1).expand(3, 4).add_(1)  # 12 elements, 3 memory locations
except RuntimeError as err:
    print("RuntimeError:", str(err).split(".")[0])

# %% [markdown]
# In-place operations also collide with **autograd**, which records operations so it can
# compute gradients (chapter 2 is about it). `requires_grad=True` asks it to record; a
# tensor you create that way is a **leaf**, where the recorded graph starts. Two rules
# follow:
#
# - A leaf that requires gradients cannot be changed in place while autograd records.
#   Change it under `torch.no_grad()`, which is how optimisers update weights.
# - Every tensor has a version counter that each in-place operation increments. Autograd
#   notes the version of every tensor it saves for the backward pass, and `backward()`
#   raises an error if that version has changed, because the saved value is gone.

# %%
w = torch.ones(3, requires_grad=True)  # a leaf that requires gradients
try:
    w.add_(1.0)
except RuntimeError as err:
    print("RuntimeError:", err)
with torch.no_grad():  # not recorded, so allowed
    w.add_(1.0)
print(w)

# exp saves its output y, because the derivative of exp(w) is y itself
y = w.exp()
y.add_(1.0)  # changes the saved y in place: its version goes from 0 to 1
try:
    y.sum().backward()
except RuntimeError as err:
    print("RuntimeError:", str(err).split(" Hint:")[0])
y = w.exp() + 1  # the out-of-place version keeps the saved value intact
y.sum().backward()
print(w.grad)  # d(sum(exp(w) + 1))/dw = exp(w) = exp(2)

# %% [markdown]
# Prefer the out-of-place form unless memory is tight.
#
# ## 1.9 Reductions along a dimension
#
# `sum`, `mean`, `max`, `argmax`, `std` and friends reduce over all elements by default, or
# along `dim`. `keepdim=True` keeps the reduced dimension with size 1, which is what you
# want when the result is broadcast back against the input. Without it, the result can
# still broadcast, silently, against the wrong dimension: for a square matrix,
# `sq / sq.sum(dim=1)` divides column j by row j's sum, with no error (next cell).

# %%
z = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
print(
    z.sum(),
    z.sum(dim=0),
    z.sum(dim=1),
    z.sum(dim=1, keepdim=True).shape,
    sep="\n",
)

sq = torch.tensor([[1.0, 3.0], [1.0, 1.0]])
print(sq / sq.sum(dim=1))  # (2, 2) / (2,): the sums line up with the columns
print(sq / sq.sum(dim=1, keepdim=True))  # (2, 2) / (2, 1): each row sums to 1
assert torch.equal((sq / sq.sum(dim=1, keepdim=True)).sum(dim=1), torch.ones(2))
assert not torch.equal((sq / sq.sum(dim=1)).sum(dim=1), torch.ones(2))

values, indices = z.max(dim=1)  # max along a dim returns both
print(values, indices)

# %% [markdown]
# `std` and `var` divide by n − 1 by default (Bessel's correction, `correction=1`), which
# makes the variance an unbiased estimate of the variance of the population the sample
# came from. NumPy's `np.std` divides by n (`ddof=0`), so the two libraries disagree on
# the same numbers. Pass `correction=0` to PyTorch (or `ddof=1` to NumPy) to match them.

# %%
sample_values = torch.tensor([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
print(f"torch.std  (divides by n - 1): {sample_values.std().item():.4f}")
print(f"np.std     (divides by n):     {np.std(sample_values.numpy()):.4f}")
print(
    "torch.std(correction=0):       "
    f"{sample_values.std(correction=0).item():.4f}"
)
assert np.isclose(
    sample_values.std(correction=0).item(), np.std(sample_values.numpy())
)

# %% [markdown]
# **Softmax** turns each row of scores into probabilities, exp(zᵢ) / Σⱼ exp(zⱼ), and is a
# reduction followed by a broadcast. Written literally it overflows: float32's `exp` is
# `inf` above about 88.7, and `inf / inf` is `nan`. Subtracting each row's maximum first
# changes nothing mathematically (the factor exp(−max) cancels between numerator and
# denominator) but makes the largest exponent exp(0) = 1, so nothing overflows and the
# denominator is at least 1. `torch.softmax`, `log_softmax` and `logsumexp` do this for
# you.


# %%
def softmax_naive(z: torch.Tensor) -> torch.Tensor:
    e = z.exp()
    return e / e.sum(dim=1, keepdim=True)  # (N, C) / (N, 1): one sum per row


def softmax_stable(z: torch.Tensor) -> torch.Tensor:
    # each row's maximum becomes 0
    shifted = z - z.max(dim=1, keepdim=True).values
    e = shifted.exp()
    return e / e.sum(dim=1, keepdim=True)


print(torch.tensor([88.0, 89.0]).exp())  # the float32 overflow, one step apart
scores_big = torch.tensor([[1000.0, 1001.0, 1002.0], [1.0, 2.0, 3.0]])
print(softmax_naive(scores_big))
print(softmax_stable(scores_big))
assert softmax_naive(scores_big)[0].isnan().all()
# allclose: |a - b| <= atol + rtol * |b| for every element (by default
# atol=1e-8, rtol=1e-5), a tolerance that floating-point rounding needs
assert torch.allclose(
    softmax_stable(scores_big), torch.softmax(scores_big, dim=1)
)
# the form for tests: tolerances chosen by dtype, and a report of what is off
torch.testing.assert_close(
    softmax_stable(scores_big), torch.softmax(scores_big, dim=1)
)
try:
    torch.testing.assert_close(
        softmax_naive(scores_big), torch.softmax(scores_big, dim=1)
    )
except AssertionError as err:
    report = str(err).splitlines()[2:4]  # how many differ, the largest gap
    print("assert_close on the literal version:", *report, sep="\n  ")

# %% [markdown]
# The literal version returns `nan` for the first row; the shifted one gives the same
# probabilities for both rows, as it should: the rows differ by a constant, 999.
# `torch.allclose` answers only `True` or `False`. `torch.testing.assert_close`, the
# comparison PyTorch recommends for tests, picks its tolerances from the dtype (tighter
# for float64, looser for float16) and, when it fails, says how many elements differ,
# by how much and where, as its report on the literal version shows.
#
# ## 1.10 Matrix products: `matmul`, `@` and `einsum`
#
# `@` is `torch.matmul`. For 2-D tensors it is the matrix product; with more dimensions the
# leading ones are treated as a batch (and broadcast). A 1-D operand is treated as a row
# when it stands on the left and as a column on the right, and that dimension is removed
# from the result: `(3,) @ (3, 2)` gives `(2,)`, `(4, 3) @ (3,)` gives `(4,)`, and two
# vectors give their dot product, a 0-dim tensor. `einsum` names every index, which
# makes complicated contractions readable: indices that appear in the inputs but not the
# output are summed over.

# %%
A = torch.randn(4, 3)
B = torch.randn(3, 2)
print((A @ B).shape, torch.allclose(A @ B, torch.matmul(A, B)))

v = torch.randn(3)
print((v @ B).shape, (A @ v).shape, (v @ v).shape)  # (2,), (4,), ()
assert torch.allclose(A @ v, (A @ v[:, None]).squeeze(1))  # v as a column

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
# `torch.as_tensor(array)` shares memory too when the dtype and device already match, and
# copies when you ask for another dtype or device; `torch.tensor(array)` always copies.

# %%
arr = np.arange(4.0)  # float64, NumPy's default
shared = torch.from_numpy(arr)
also_shared = torch.as_tensor(arr)  # same dtype, same device: no copy
# a new dtype needs a copy
converted = torch.as_tensor(arr, dtype=torch.float32)
copied = torch.tensor(arr)  # always a copy
arr[0] = 42.0
print(
    shared[0].item(),
    also_shared[0].item(),
    converted[0].item(),
    copied[0].item(),
)
# float64 is kept; use .float() before feeding a float32 model (or before
# .to("mps"): Apple's MPS backend has no float64)
print(shared.dtype)

back = shared.numpy()
back[1] = -7.0
print(arr)  # the same memory again

# %% [markdown]
# `from_numpy` cannot wrap an array with a negative stride, such as NumPy's reversed
# view `a[::-1]` (common in image code: `img[..., ::-1]` turns BGR into RGB). Copy the
# array first with `.copy()`, or convert it and reverse the tensor with `flip`.

# %%
reversed_view = np.arange(4.0)[::-1]  # a NumPy view with a negative stride
try:
    torch.from_numpy(reversed_view)
except ValueError as err:
    print("ValueError:", str(err).split(",")[0])
print(torch.from_numpy(reversed_view.copy()))

# %% [markdown]
# A GPU tensor must come to the CPU first (`t.cpu().numpy()`), and a tensor that records
# gradients must be detached first (`t.detach().cpu().numpy()`); chapter 2 explains why.
# `t.numpy(force=True)` does both steps in one call.

# %%
weights = torch.ones(2, requires_grad=True)
try:
    weights.numpy()
except RuntimeError as err:
    print("RuntimeError:", err)
print(weights.detach().cpu().numpy(), weights.numpy(force=True))

# %% [markdown]
# ## 1.12 Random numbers, seeds and repeatability
#
# `torch.manual_seed` seeds PyTorch's default random generators (the CPU's and those of
# every CUDA and MPS device), so the same seed gives the same numbers. `seed_everything`
# from `helpers.runtime` also seeds Python's `random` and NumPy's global generator.

# %%
torch.manual_seed(123)
first = torch.rand(3)
torch.manual_seed(123)
second = torch.rand(3)
print(first, second, torch.equal(first, second))

# %% [markdown]
# The global stream is shared by everything in the process: if any code you call draws a
# random number, everything drawn after it changes. A private `torch.Generator` gives one
# piece of code its own stream: `torch.Generator().manual_seed(7)` creates one on the CPU
# (`torch.Generator(device=...)` for a GPU), seeds it and returns it, and any random
# function takes it as `generator=`. The book's `make_generator(seed, device="cpu")`,
# from `helpers.runtime`, does the same and checks its arguments; later cells use it.

# %%
gen = torch.Generator().manual_seed(7)  # manual_seed returns the generator
draw_a = torch.randn(3, generator=gen)
gen = make_generator(7)  # the helper: a new generator with the same seed
torch.randn(1000)  # unrelated draws from the global stream...
draw_b = torch.randn(3, generator=gen)  # ...do not affect the private one
print(draw_a, torch.equal(draw_a, draw_b))
assert torch.equal(draw_a, draw_b)

# %% [markdown]
# Seeding fixes the random numbers. Whether the arithmetic done with them repeats bit for
# bit is a separate question, because floating-point addition is not associative: the
# order of a sum changes its last digits. On a CPU, a run repeats with the same PyTorch
# and NumPy versions on the same machine **and the same number of threads** (a few
# operations need the deterministic mode shown below even there): a parallel sum gives
# each thread its own chunk, so the thread count changes the order.
#
# The next cell ends with `record` (section 1.2), which stores a sentence from this run
# so that the book's text quotes the run beside it; in JupyterLab or Colab it shows
# nothing.

# %%
left_first, right_first = (0.1 + 0.2) + 0.3, 0.1 + (0.2 + 0.3)
print(
    f"(0.1 + 0.2) + 0.3 = {left_first!r}   0.1 + (0.2 + 0.3) = {right_first!r}"
)
values_1m = torch.randn(1_000_000, generator=make_generator(seed + 1))
threads = torch.get_num_threads()  # what this process uses by default
sums = {}
try:
    for n in (1, 4):  # four threads work even on a machine with fewer cores
        torch.set_num_threads(n)
        sums[n] = values_1m.sum().item()
        assert values_1m.sum().item() == sums[n]  # same thread count: same bits
finally:
    torch.set_num_threads(threads)  # the setting is global: restore it
thread_gap = abs(sums[1] - sums[4])
# the gap relative to the sum, and in units of float32's eps (section 1.2)
relative_gap = thread_gap / abs(sums[1])
gap_in_eps = relative_gap / torch.finfo(torch.float32).eps
for n, total in sums.items():
    print(f"{n} {'thread' if n == 1 else 'threads'}: {total:.6f}")
if thread_gap > 0:
    thread_sentence = (
        "With 1 and with 4 threads, the two sums of the same million numbers "
        f"differ by {thread_gap:.1e}, a relative difference of "
        f"{relative_gap:.1e}, or {gap_in_eps:.1f} times float32's eps."
    )
else:
    thread_sentence = (
        "In this run the sums with 1 and with 4 threads happened to agree to "
        "the last bit; on other data or another machine they can differ."
    )
record("thread_sentence", thread_sentence)

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
{{thread_sentence}}
"""
)


# %% [markdown]
# GPUs add a second source of variation. Some CUDA kernels (`index_add_`, `scatter_add_`,
# the backward passes of many layers) add with *atomic* operations, in whatever order the
# GPU's threads arrive, which changes from run to run.
# `torch.use_deterministic_algorithms(True)` makes PyTorch use an ordered (usually slower)
# implementation where one exists, and raise an error for the operations PyTorch knows
# to be nondeterministic and has no ordered version of. (Its documentation adds that
# this alone is not always enough, e.g. for in-place writes to overlapping memory.)
# The next cell adds a million values into ten bins twice, first normally, then in
# deterministic mode.


# %%
def binned_sums(bins: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Add values[i] into slot bins[i] of ten zeros (CUDA: atomic additions)."""
    return torch.zeros(10, device=values.device).index_add_(0, bins, values)


bin_gen = make_generator(seed)
bins = torch.randint(0, 10, (1_000_000,), generator=bin_gen).to(device)
bin_values = values_1m.to(device)
sums_1 = binned_sums(bins, bin_values)
sums_2 = binned_sums(bins, bin_values)
same_normal = torch.equal(sums_1, sums_2)
print(device, "| normal mode, same result twice:", same_normal)
torch.use_deterministic_algorithms(True)
try:
    sums_1 = binned_sums(bins, bin_values)
    sums_2 = binned_sums(bins, bin_values)
    same_deterministic = torch.equal(sums_1, sums_2)
    print(
        device, "| deterministic mode, same result twice:", same_deterministic
    )
    # put_ without accumulation has no deterministic version: a repeated index
    # would make the surviving value arbitrary
    index = torch.tensor([0, 0], device=device)
    new_values = torch.tensor([1.0, 2.0], device=device)
    torch.zeros(3, device=device).put_(index, new_values)
    error_line = "no error"
except RuntimeError as err:  # NotImplementedError is a RuntimeError too
    error_line = f"{type(err).__name__}: {str(err).split(',')[0]}"
finally:
    # the mode is global: switch it back
    torch.use_deterministic_algorithms(False)
print(error_line)
if device.type == "cpu":  # the CPU kernel adds in index order
    assert same_normal and same_deterministic
if device.type in ("cpu", "cuda"):
    assert same_deterministic
    assert error_line.startswith("RuntimeError: put_ does not have"), error_line

# %% [markdown]
# On a CPU both comparisons print `True`, because `index_add_` adds in index order; on a
# CUDA GPU the first can print `False`, deterministic mode makes it `True`, and on both
# the last line is deterministic mode's error for `put_` without accumulation (the cell
# asserts the last two on both; whether the first prints `False` depends on the run).
# So for a repeatable GPU run, seeding is not enough: you also need
# `torch.use_deterministic_algorithms(True)`, which chapter 8 uses to train a model twice
# and compare the results; the aside below covers Apple's MPS and older releases.

# %% [markdown] tags=["box-dropdown"]
# <details>
# <summary>Going further: repeatable runs on CUDA and MPS</summary>
#
# - On CUDA, the releases this book supports (PyTorch 2.11 and later) need no setting
#   beyond deterministic mode: `CUBLAS_WORKSPACE_CONFIG` is no longer needed, and
#   `torch.backends.cudnn.benchmark` is `False` by default. The next two points, and the
#   docstring of `seed_everything`, cover older releases and that default.
# - Keep `torch.backends.cudnn.benchmark = False`, the default. With `True`, cuDNN
#   times several convolution algorithms for each new input shape and keeps the
#   fastest, which can be a different one on the next run.
# - With PyTorch 2.9 and earlier, set the environment variable
#   `CUBLAS_WORKSPACE_CONFIG=:4096:8` (or `:16:8`) before the first CUDA matrix product
#   (simplest: before Python starts). In deterministic mode those releases raise an
#   error naming it otherwise; the releases this book supports no longer check.
# - On Apple's MPS, deterministic mode makes the operations PyTorch knows to be
#   nondeterministic raise; beyond that PyTorch documents no reproducibility guarantee
#   for MPS. What the cell above prints there depends on your release: which MPS
#   kernels are marked nondeterministic, and whether `put_` has an MPS kernel at all.
#   Where it has none, `put_` raises a `NotImplementedError` (a subclass of
#   `RuntimeError`) that says nothing about determinism; the cell prints each error's
#   type to tell the two apart.
# - No setting makes different devices agree: the CPU, CUDA and MPS generators produce
#   different numbers from the same seed, and their kernels add in different orders.
#
# </details>

# %% [markdown]
# ## 1.13 Why vectorise: a measurement
#
# A Python loop over tensor elements pays the interpreter's and PyTorch's per-call overhead
# for every element. A vectorised expression does the whole computation in a few calls to
# optimised C++ code. Here is the same computation, the squared distance from each of 200
# points to each of 50 centres, written both ways and timed on the CPU, where the overhead
# is the point (chapter 8 compares devices). The sizes are kept small so that the
# loop's 10,000 steps stay quick to time. `best_time` from `helpers.timing` runs a
# function several times and returns the fastest run, the estimate least disturbed by
# whatever else the machine is doing; `record` keeps the timings for the text below.
# PyTorch's own tool for such measurements is `torch.utils.benchmark.Timer`: it warms
# up, waits for the GPU, reports the median and spread of many runs, and by default
# uses one thread (its `num_threads=` argument changes that). Chapter 8 uses
# `best_time` throughout, so this chapter does too.

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


def distances_vectorised(
    points: torch.Tensor, centres: torch.Tensor
) -> torch.Tensor:
    # (P, 1, 2) - (1, C, 2) -> (P, C, 2): every point meets every centre
    diff = points[:, None, :] - centres[None, :, :]
    return (diff * diff).sum(dim=-1)  # dim=-1: the last dimension; (P, C)


# this first call of each also serves as the loop's warm-up run
assert torch.allclose(
    distances_loop(points, centres), distances_vectorised(points, centres)
)
# torch.func.vmap batches a function written for one point: (2,) -> (C,)
by_vmap = torch.func.vmap(lambda p: ((p - centres) ** 2).sum(dim=-1))(points)
assert torch.allclose(by_vmap, distances_vectorised(points, centres))
loop_s = best_time(lambda: distances_loop(points, centres), repeat=3, warmup=0)
vec_s = best_time(lambda: distances_vectorised(points, centres), repeat=20)
speedup = loop_s / vec_s
print(
    f"loop: {loop_s * 1e3:.1f} ms   vectorised: {vec_s * 1e3:.3f} ms   "
    f"speed-up: {speedup:.0f}x"
)
record("loop_ms", loop_s * 1e3, fmt="{:.0f}")
record("vectorised_ms", vec_s * 1e3, fmt="{:.3f}")
record(
    "speedup",
    speedup,
    fmt="{:,.0f}",
    headline="Vectorised vs loop speed-up (CPU, 200 points x 50 centres)",
)
# Measured about 1,080 to 5,400 on a 2-core CPU depending on its load; the
# threshold of 200 backs the lower end of the introduction's "hundreds to
# thousands of times" with a margin of 5x or more.
assert speedup >= 200, speedup

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
Both versions give the same numbers (checked by the `allclose` above). On the machine
that built this page the loop took {{loop_ms}} ms and the vectorised version
{{vectorised_ms}} ms, {{speedup}} times faster, each the best of several runs.
Broadcasting did the work: `points[:, None, :]` and `centres[None, :, :]` insert size-1
dimensions (section 1.4) so that every point meets every centre. When a function is
easier to write for one example, PyTorch's own vectoriser, `torch.func.vmap`, turns it
into a batched one without a Python loop; the cell checks it on a one-point version of
the distance. For this particular computation PyTorch also has a ready-made function:
`torch.cdist(points, centres)` returns the distances themselves, not their squares. It
computes them differently by default, though, once either set has more than 25 rows,
and exercise 4 shows what that can cost; `compute_mode="donot_use_mm_for_euclid_dist"`
makes it subtract first, as the cell above does.
"""
)

# %% [markdown] tags=["box-warning"]
# > **Common pitfalls**
# >
# > - **Silent broadcasting.** `(B, 1) - (B,)` gives `(B, B)`. Print shapes, or
# >   `squeeze(1)` first; a bare `squeeze()` also drops a batch dimension of size 1.
# > - **`torch.Tensor(3)` is not `torch.tensor(3)`.** The class reads `3` as a shape and
# >   returns three uninitialised floats; use the lower-case factory.
# > - **Unexpected sharing, unexpected copies.** Slices, `view`, `permute`, `expand` and
# >   `from_numpy` share memory, and so does `detach()`: it stops gradients, not sharing;
# >   `clone()` when you need an independent copy. Masks and index
# >   lists copy, so `m[mask][0] = v` changes nothing. Test sharing between tensors made
# >   in PyTorch with `untyped_storage().data_ptr()`, not `data_ptr()`, and between
# >   `from_numpy` tensors with `np.shares_memory`.
# > - **Integer tensors and silent promotion.** `torch.tensor([1, 2])` is int64, and `mean`
# >   and `std` need floats. int64 with float32 gives float32, in which not every integer
# >   above 2²⁴ fits; an int8 tensor plus 1000 stays int8 and wraps around. Matrix
# >   products do not promote: `@` needs both sides in one dtype.
# > - **`view` on a permuted tensor** fails when it must merge dimensions whose strides do
# >   not line up, where `reshape` copies instead. Whether `reshape` copies is not
# >   promised: use `view` when you need shared memory, `clone()` when you need a copy.
# > - **Comparing with NumPy.** `torch.std` divides by n − 1, `np.std` by n.
# > - **Literal softmax or log-sum-exp** overflows; subtract the row maximum, or call
# >   `torch.softmax` / `torch.logsumexp`.
# > - **Device mismatches.** Create or move every tensor with `device=device` / `.to(device)`;
# >   hard-coded `.cuda()` breaks on machines without a CUDA device.

# %% [markdown]
# ## Exercises
#
# Each exercise has a starter cell: fill it in and run it, and its last line checks your
# attempt on fresh inputs against a reference and says what is off, with a hint for the
# usual mistakes. The solution follows, collapsed.
#
# **Exercise 1.** Class means without a loop. The next cell makes `features`, 12
# examples with 4 features each, and their `labels` from 3 classes. In the starter
# below it, fill in `class_means(features, labels, num_classes)`, which returns the
# `(num_classes, D)` matrix whose row `k` is the mean feature vector of class `k`. Use
# no Python loop over the classes: let one matrix product add up the features of every
# class at once. A class with no examples should get a row of zeros, not `nan`: class 3
# of `class_means(features, labels, 4)` has none, and the checker tries one too. Check
# your function against a loop over the classes that selects rows with a boolean mask
# (section 1.5). If an error stops you on the way, say which part of section 1.2
# explains it.

# %%
features = torch.randn(12, 4, generator=make_generator(seed + 2))
labels = torch.tensor([0, 2, 1, 0, 1, 2, 2, 0, 1, 0, 2, 1])


# %% tags=["exercise-starter"]
def class_means(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    # features (N, D), labels (N,) in 0 .. num_classes - 1; return the
    # (num_classes, D) class means, with no loop over the classes
    raise NotImplementedError  # your code here


from helpers.exercises.ch01 import check_class_means

check_class_means(class_means)

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 1: (12, 1) == (3,) broadcasts to (12, 3).
one_hot = labels[:, None] == torch.arange(3)  # bool, (12, 3)
# .T is the transpose of a matrix, the same as .t() of section 1.6
try:
    one_hot.T @ features
    matmul_promotes = True
except RuntimeError as err:
    matmul_promotes = False
    print("bool @ float32 -> RuntimeError:", str(err).splitlines()[0])


def class_means(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    # (N, 1) == (C,) -> (N, C), 1.0 where labels[i] == k; arange on the
    # labels' device and a cast to the features' dtype keep it generic
    classes = torch.arange(num_classes, device=labels.device)
    one_hot = (labels[:, None] == classes).to(features.dtype)
    # (C,): examples per class; an empty class has sum 0, and 0 / 1 = 0
    class_counts = one_hot.sum(dim=0).clamp(min=1)
    # (C, N) @ (N, D) -> (C, D): row k sums the features of class k
    return (one_hot.T @ features) / class_counts[:, None]


means = class_means(features, labels, 3)  # (3, 4)
by_loop = torch.stack([features[labels == k].mean(dim=0) for k in range(3)])
print(means)
# class 3 has no examples: without the clamp, its row would be 0 / 0 = nan,
# as the mask loop gives, and one nan spreads into every later sum it enters.
# A row of zeros is also what scatter_reduce(..., "mean", include_self=False)
# leaves there: the value of its torch.zeros destination.
with_empty = class_means(features, labels, 4)  # (4, 4)
# torch.nn.functional.one_hot builds the same (N, C) matrix, as int64: it
# needs the same cast before @
from_one_hot = torch.nn.functional.one_hot(labels, 4)  # int64, (12, 4)
assert torch.equal(from_one_hot, (labels[:, None] == torch.arange(4)).long())
by_scatter = torch.zeros(4, 4).scatter_reduce(
    0, labels[:, None].expand(-1, 4), features, "mean", include_self=False
)
# index_add_ for the sums and bincount for the counts reach the same means
# without a loop too (the checker's reference; it asks for the matrix product)
by_index_add = torch.zeros(4, 4).index_add_(0, labels, features)
by_index_add /= torch.bincount(labels, minlength=4).clamp(min=1)[:, None]
print("empty class 3:", with_empty[3])
loop_empty = features[labels == 3].mean(dim=0)  # the mean of no rows
print("the mask loop for class 3:", loop_empty)
print(
    "Row k of one_hot.T @ features adds up the feature vectors of class k; "
    "dividing by the class counts makes them means, equal to the loop's. A "
    "class with no examples has count 0 and 0 / 0 is nan, which would spread "
    "into every later sum it enters; clamping the counts at 1 gives it a row "
    "of zeros, as scatter_reduce does. The bool one-hot matrix cannot go into "
    "@ with float32 features: matrix products do not promote (unlike + and "
    "*), so both operands must have the same dtype; cast with "
    ".to(features.dtype)."
)
assert not matmul_promotes
assert torch.allclose(means, by_loop, atol=1e-6)
assert torch.allclose(with_empty, by_scatter, atol=1e-6)
assert torch.allclose(with_empty, by_index_add, atol=1e-6)
assert torch.equal(with_empty[3], torch.zeros(4))
assert loop_empty.isnan().all()
from helpers.exercises.ch01 import check_class_means

assert check_class_means(class_means)

# %% [markdown]
# **Exercise 2.** Given `x = torch.arange(24).reshape(2, 3, 4)`, produce a tensor of shape
# `(4, 6)` whose row `k` holds every element of `x` with last index `k`, in their original
# order, as a view of `x` (no copy). Before you run anything, use strides to predict
# whether a `view` can produce it; then check, and check whether the result shares
# memory with `x`. In the starter, write it for any 3-D `x` of shape `(A, B, K)`:
# `rows_by_last_index(x)` returns the `(K, A·B)` rows as a view of `x`. Finally, show
# that reversing the order of all three dimensions first makes the same `view` fail,
# and explain why from the strides.


# %% tags=["exercise-starter"]
def rows_by_last_index(x: torch.Tensor) -> torch.Tensor:
    # x (A, B, K) -> (K, A*B), row k = x[..., k] in its original order,
    # sharing x's memory (no copy)
    raise NotImplementedError  # your code here


from helpers.exercises.ch01 import check_rows_by_last_index

check_rows_by_last_index(rows_by_last_index)


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 2
def rows_by_last_index(x: torch.Tensor) -> torch.Tensor:
    moved = x.permute(2, 0, 1)  # (K, A, B), strides (1, B*K, K)
    # merges strides B*K and K, and B*K == K * B: a view exists
    return moved.view(moved.shape[0], -1)  # (K, A*B)


x = torch.arange(24).reshape(2, 3, 4)  # strides (12, 4, 1)
moved = x.permute(2, 0, 1)  # (4, 2, 3), strides (1, 12, 4): not contiguous
print("strides:", moved.stride(), "contiguous:", moved.is_contiguous())
# merges strides 12 and 4, and 12 == 4 * 3: a view exists
rows = moved.view(4, 6)
print(rows)
shares = same_storage(rows, x)
print(
    "view(4, 6) works on the non-contiguous tensor and shares x's memory:",
    shares,
)
assert shares and torch.equal(rows[1], x[..., 1].flatten())
assert torch.equal(rows_by_last_index(x), rows)
# shorter, and a view too: merge A and B while x is still contiguous, then
# transpose; (6, 4) strides (4, 1) -> (4, 6) strides (1, 4)
shorter = x.reshape(-1, x.shape[-1]).T
print(
    "x.reshape(-1, 4).T: strides",
    shorter.stride(),
    "| shares x's memory:",
    same_storage(shorter, x),
)
assert same_storage(shorter, x) and torch.equal(shorter, rows)

other = x.permute(2, 1, 0)  # (4, 3, 2), strides (1, 4, 12): 4 != 12 * 2
try:
    other.view(4, 6)
    failed = False
except RuntimeError:
    failed = True
print(
    "With permute(2, 1, 0) the merged strides are 4 and 12; view fails:", failed
)
assert failed
from helpers.exercises.ch01 import check_rows_by_last_index

assert check_rows_by_last_index(rows_by_last_index)

# %% [markdown]
# **Exercise 3.** The log-sum-exp, log Σⱼ exp(zⱼ), is part of the cross-entropy loss.
# Write it by hand for each row of a 2-D tensor, without `torch.logsumexp`, using the
# max-subtraction trick from section 1.9: what do you have to add back at the end? Fill
# in `logsumexp_rows(z)` in the starter, then compare your version with the literal
# formula and with `torch.logsumexp` on
# `torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])`. Then add a
# row whose entries are all `-inf`, what a mask produces for a sequence that is all
# padding: the sum of its exponentials is 0, and `torch.logsumexp` gives log 0 = `-inf`
# for it. What does your version give, and why? Make it give `-inf` too (the checker
# tries such a row).


# %% tags=["exercise-starter"]
def logsumexp_rows(z: torch.Tensor) -> torch.Tensor:
    # z (N, M) -> (N,): log Σⱼ exp(z[i, j]) for each row, stable for large |z|
    raise NotImplementedError  # your code here


from helpers.exercises.ch01 import check_logsumexp_rows

check_logsumexp_rows(logsumexp_rows)


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 3: log Σ exp(z) = m + log Σ exp(z - m) for any finite m; take m =
# the row maximum, or 0 where that maximum is infinite.
def logsumexp_rows(z: torch.Tensor) -> torch.Tensor:
    # amax: .max(dim, keepdim=True).values of section 1.9, without the indices
    row_max = z.amax(dim=1, keepdim=True)  # (N, 1)
    # a row of only -inf has maximum -inf, and -inf - (-inf) is nan: shift
    # such a row by 0 instead (torch.logsumexp does the same)
    row_max = torch.where(row_max.isinf(), 0.0, row_max)
    # (N,)
    return (z - row_max).exp().sum(dim=1).log() + row_max.squeeze(1)


def logsumexp_unguarded(z: torch.Tensor) -> torch.Tensor:
    row_max = z.amax(dim=1, keepdim=True)  # the same, without the guard
    return (z - row_max).exp().sum(dim=1).log() + row_max.squeeze(1)


extreme = torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
# a third row, all -inf: every entry masked out
masked = torch.cat([extreme, torch.full((1, 3), float("-inf"))])  # (3, 3)
literal = masked.exp().sum(dim=1).log()
unguarded = logsumexp_unguarded(masked)
by_hand = logsumexp_rows(masked)  # (3,)
print("literal:  ", literal)
print("unguarded:", unguarded)
print("by hand:  ", by_hand)
print("torch:    ", torch.logsumexp(masked, dim=1))
masked_row = masked[2:]  # (1, 3)
print(
    "softmax of the masked row:",
    softmax_stable(masked_row),
    torch.softmax(masked_row, dim=1),
)
print(
    "The literal formula gives inf (exp overflows) and -inf (exp "
    "underflows to 0, and log 0 = -inf) for the first two rows; shifting by "
    "the row maximum and adding it back gives finite values that match "
    "torch.logsumexp. For the row of -inf the shift computes -inf - (-inf) = "
    "nan; shifting that row by 0 instead gives log 0 = -inf, as "
    "torch.logsumexp does. softmax_stable of section 1.9 gives nan for that "
    "row, and so does torch.softmax, and the same guard cannot help there: "
    "with every exponential 0, the probabilities are 0 / 0. A fully masked "
    "row has no distribution to give, so code that masks must make sure each "
    "row keeps an entry, or handle such rows itself."
)
assert torch.isinf(literal[:2]).all()
assert unguarded[2].isnan() and by_hand[2] == float("-inf")
assert torch.allclose(by_hand, torch.logsumexp(masked, dim=1))
assert softmax_stable(masked_row).isnan().all()
from helpers.exercises.ch01 import check_logsumexp_rows

assert check_logsumexp_rows(logsumexp_rows)

# %% [markdown]
# **Exercise 4.** Squared distances with one matrix product. Expanding the square gives
# `|p - c|² = |p|² - 2 p·c + |c|²`. In the starter, write
# `distances_matmul(points, centres)`, which builds the `(P, C)` matrix of section 1.13
# from the two vectors of squared row norms and one `@`, with no `(P, C, D)`
# intermediate. Then measure the largest relative error of it, of
# `distances_vectorised` and of `torch.cdist(...) ** 2` (in its default mode and with
# `compute_mode="donot_use_mm_for_euclid_dist"`) against a `float64` reference, for
# section 1.13's points and centres and for both shifted by 1,000 in each coordinate
# (in float32). For the reference, convert the float32 sets that the methods receive to
# float64 (after the shift, the shifted float32 sets, not the shift done in float64) and
# run `distances_vectorised` on them.
# What goes wrong after the shift, and why? Then repair it without giving up the
# matrix product or float32. The starter's third argument, `stable=False`, selects the
# version: with `stable=True` your function should compute the same distances in a
# way that survives the shift. The checker tries both versions on fresh sets (each
# must be right, with one matrix product), then shifts them by 1,000: the repaired
# version must stay in float32 and keep its largest relative error below 1e-2, measured,
# as above, against float64 distances of the float32 shifted sets it receives.


# %% tags=["exercise-starter"]
def distances_matmul(
    points: torch.Tensor, centres: torch.Tensor, stable: bool = False
) -> torch.Tensor:
    # points (P, D), centres (C, D) -> (P, C) squared distances from the
    # squared row norms and one @ (no (P, C, D) tensor); stable=True runs
    # your repaired version
    raise NotImplementedError  # your code here


from helpers.exercises.ch01 import check_distances_matmul

check_distances_matmul(distances_matmul)


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 4: after the shift every squared norm is about 2e6, and float32 keeps
# about 7 significant digits, so each norm carries a rounding error near 0.1.
# The formula subtracts numbers of that size to get distances that can be a
# thousandth: the digits that remain are rounding (catastrophic cancellation),
# some "squared distances" even come out negative. The difference form subtracts
# the coordinates first, which is exact for two float32 numbers this close (within
# a factor of 2 of each other), and squares small numbers.
# Subtracting a common point (the mean of the points) from both sets changes no
# distance and brings the squared norms down from 2e6 to the spread of the sets
# (about 2 on average; the largest, over seeds 0-499, from 7.5 to 21).
# That removes most of the cancellation, not all of it: the formula still gets d²
# by subtracting numbers of size |p|² + |c|², so for one pair its relative error
# is at most about eps * (|p|² + |c|²) / d², with the norms measured from the
# mean. For
# the closest pairs (d² of about 2e-3 or less, depending on the seed) that is
# still hundreds of times the difference form's error; the run below computes
# this prediction and checks the measured error against it.
# torch.cdist, in its default mode, expands the square too for sets of more than
# 25 rows, so after the shift its error is far above the repaired one as well
# (its own kernel, so not the same digits: across seeds it ranges from the
# product's error down to about 1/25 of it); with
# compute_mode="donot_use_mm_for_euclid_dist" it subtracts first.
# The checker's 1e-2 is for its own fixed sets, 35 pairs with none close
# together. Section 1.13's 10,000 pairs change with the seed, and its closest
# pairs set the error (up to 1.2 in seeds 0-999), so here the bound is the
# prediction.
def distances_matmul(
    points: torch.Tensor, centres: torch.Tensor, stable: bool = False
) -> torch.Tensor:
    if stable:
        # one common point off both sets: no distance changes
        mean = points.mean(dim=0)  # (D,)
        points, centres = points - mean, centres - mean
    point_norms = (points**2).sum(dim=1, keepdim=True)  # (P, 1)
    centre_norms = (centres**2).sum(dim=1)  # (C,)
    return point_norms - 2 * points @ centres.T + centre_norms  # (P, C)


def worst_relative_error(
    result: torch.Tensor, reference: torch.Tensor
) -> float:
    # a point that lands exactly on a centre (d² = 0; after the shift this
    # happens at a few seeds in a thousand) has no relative error: left out
    apart = reference > 0
    error = (result.double() - reference)[apart] / reference[apart]
    return error.abs().max().item()


errors, negatives = {}, {}
for shift in (0.0, 1000.0):
    p, c = points + shift, centres + shift
    reference = distances_vectorised(p.double(), c.double())
    errors[shift] = {
        "difference form": worst_relative_error(
            distances_vectorised(p, c), reference
        ),
        "matrix product": worst_relative_error(
            distances_matmul(p, c), reference
        ),
        "matrix product, centred": worst_relative_error(
            distances_matmul(p, c, stable=True), reference
        ),
        "cdist, default mode": worst_relative_error(
            torch.cdist(p, c) ** 2, reference
        ),
        "cdist, no matmul": worst_relative_error(
            torch.cdist(p, c, compute_mode="donot_use_mm_for_euclid_dist") ** 2,
            reference,
        ),
    }
    negatives[shift] = (distances_matmul(p, c) < 0).sum().item()
    print(f"shift {shift:6.0f}: negative squared distances: {negatives[shift]}")
    for name, error in errors[shift].items():
        print(f"    {name:24}: largest relative error {error:.1e}")
# the prediction for the centred product: eps * (|p|² + |c|²) / d² per pair,
# norms from the mean, d² from the float64 reference; its largest value
shifted_p, shifted_c = points + 1000.0, centres + 1000.0
mean = shifted_p.mean(dim=0)
centred_norms = ((shifted_p - mean).double() ** 2).sum(dim=1, keepdim=True) + (
    (shifted_c - mean).double() ** 2
).sum(dim=1)  # (P, C)
exact = distances_vectorised(shifted_p.double(), shifted_c.double())
eps32 = torch.finfo(torch.float32).eps
apart = exact > 0  # as in worst_relative_error
predicted = (eps32 * centred_norms / exact)[apart].max().item()
centred_error = errors[1000.0]["matrix product, centred"]
print(
    f"centred product: predicted eps*(|p|²+|c|²)/d² up to {predicted:.1e}, "
    f"measured {centred_error:.1e}; the closest pair is at d² = "
    f"{exact[apart].min().item():.1e}"
)
# seeds 0-999: shifted product 23 to 1.2e6 and cdist 8 to 5.2e4 (relative);
# difference form and cdist without matmul at most 2.4e-7
assert errors[1000.0]["matrix product"] > 1.0
# cdist expands the square too
assert errors[1000.0]["cdist, default mode"] > 1.0
assert (
    max(errors[1000.0]["difference form"], errors[1000.0]["cdist, no matmul"])
    < 1e-5
)
# both unrepaired errors far above the repaired one: seeds 0-999 give at
# least 68 times, 680,000 at the median (the per-seed ratio of cdist to
# product, 0.04 to 1, is not asserted)
assert (
    min(errors[1000.0]["matrix product"], errors[1000.0]["cdist, default mode"])
    > 20 * centred_error
)
# seeds 0-999: centred product 2.6e-5 to 1.2 (its closest pair decides),
# measured / predicted 0.002 to 0.99, and at least 227 times the difference
# form's error; the prediction is the bound that holds at every seed
assert centred_error < predicted, (centred_error, predicted)
assert centred_error > 100 * errors[1000.0]["difference form"]
# seeds 0-999: at least 11 negative "squared distances" after the shift
assert negatives[1000.0] > 0, negatives
# the shift itself: adding 1,000 in float32 rounds every coordinate
unshifted = distances_vectorised(points.double(), centres.double())
moved = distances_vectorised(
    (points + 1000.0).double(), (centres + 1000.0).double()
)
shift_cost = ((moved - unshifted) / unshifted).abs().max().item()
record("shift_cost", shift_cost, fmt="{:.1e}")
print(
    "The reference above is the shifted float32 sets in float64. The shift "
    "itself rounds every coordinate to float32's spacing near 1,000, and "
    "that alone moves the distances: the shifted sets' exact distances "
    f"differ from the unshifted ones by up to {shift_cost:.1e} (relative), "
    "which no method can undo. So 'exact' is said of the subtraction only; "
    "the errors above measure what each method adds on top of that."
)
# seeds 0-999: shift_cost at least 8,900 times the difference form's error
# (seeds 0-9: 1.6e-3 to 7.2e-3)
assert shift_cost > 1000 * errors[1000.0]["difference form"], shift_cost
from helpers.exercises.ch01 import check_distances_matmul

assert check_distances_matmul(distances_matmul)

# %% [markdown]
# **Exercise 5.** Change the dtype of the distance computation in section 1.13: run
# `distances_vectorised` on float32, float16 and bfloat16 copies of `points` and
# `centres`, and measure the median and the largest relative error of the distances
# against a float64 computation. Fill in `relative_errors(points, centres, dtype)` in
# the starter, which returns the relative errors for one dtype as a `(P, C)` float64
# tensor, then take the median and the largest for each format. How do the errors
# compare with each format's `eps` from section 1.2? Where does the largest error
# occur, and why is it so much bigger?


# %% tags=["exercise-starter"]
def relative_errors(
    points: torch.Tensor, centres: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    # (P, C) float64: the relative error of each distance that
    # distances_vectorised computes in `dtype`
    raise NotImplementedError  # your code here


from helpers.exercises.ch01 import check_relative_errors

check_relative_errors(relative_errors)


# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 5
def relative_errors(
    points: torch.Tensor, centres: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    reference = distances_vectorised(points.double(), centres.double())
    result = distances_vectorised(points.to(dtype), centres.to(dtype)).double()
    return (result - reference).abs() / reference  # (P, C)


reference = distances_vectorised(points.double(), centres.double())  # (200, 50)
median_eps, largest_eps, share_closer = {}, {}, {}
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    relative = relative_errors(points, centres, dtype)  # (200, 50)
    eps = torch.finfo(dtype).eps
    median_eps[dtype] = relative.median().item() / eps
    largest_eps[dtype] = relative.max().item() / eps
    at = reference.flatten()[relative.argmax()].item()
    # the share of all 10,000 point-centre pairs that are closer than that one
    share_closer[dtype] = (reference < at).double().mean().item()
    print(
        f"{dtype!s:15} median error {relative.median().item():.1e} "
        f"= {median_eps[dtype]:.2f} eps   largest {largest_eps[dtype]:5.1f} "
        f"eps, at a squared distance of {at:.1e} "
        f"({share_closer[dtype]:.2%} of pairs are closer)"
    )
median_error_bf16 = median_eps[torch.bfloat16] * torch.finfo(torch.bfloat16).eps
median_error_fp16 = median_eps[torch.float16] * torch.finfo(torch.float16).eps
worst_share = max(share_closer[torch.float16], share_closer[torch.bfloat16])
closest_words = (
    "at the closest pair of all"
    if worst_share == 0
    else f"at a pair with at most {worst_share:.2%} of all pairs closer"
)
print(
    "In every format the median error is a fraction of eps, so it grows "
    f"with eps: bfloat16's is {median_error_bf16 / median_error_fp16:.1f}x "
    "float16's, and their eps differ by 8x. In the 16-bit formats the largest "
    f"error is many eps, {closest_words}, where a point almost touches a "
    "centre: rounding the inputs moves each coordinate by up "
    "to eps/2 of its size, and the difference of two nearly equal coordinates "
    "is so small that this input error is large relative to it. The points "
    "were float32 to begin with, so in float32 only the arithmetic rounds."
)
record(
    "median_error_bf16",
    median_error_bf16,
    fmt="{:.1e}",
    headline="Median relative error of bfloat16 distances (exercise 5)",
)
record(
    "median_error_fp16",
    median_error_fp16,
    fmt="{:.1e}",
    headline="Median relative error of float16 distances (exercise 5)",
)
# Measured at seeds 0, 1, 2 (CPU): median/eps 0.32-0.45 in all three formats;
# the bfloat16/float16 median ratio 7.8, 7.7, 8.3; largest float16 12.6, 23.7,
# 54.2 eps and bfloat16 10.3, 16.3, 25.1 eps; largest float32 1.7-1.8 eps. The
# share of pairs closer than a 16-bit maximum, over seeds 0-499: below 1 % at
# 496 of them, at most 1.72 % (seed 309). Each threshold has a margin of 1.8x
# or more.
assert all(0.1 < ratio < 1.0 for ratio in median_eps.values()), median_eps
assert median_error_bf16 > 4 * median_error_fp16
assert largest_eps[torch.float16] > 5 and largest_eps[torch.bfloat16] > 5, (
    largest_eps
)
assert largest_eps[torch.float32] < 4, largest_eps
assert worst_share < 0.05, share_closer
from helpers.exercises.ch01 import check_relative_errors

assert check_relative_errors(relative_errors)

# %% [markdown]
# ## Summary

# %% tags=["remove-input"] jupyter={"source_hidden": true} cellView="form"
prose(
    r"""
- A tensor has a shape, a dtype and a device; factories (`zeros`, `arange`, `randn`,
  `*_like`) take them, and `.to(...)` changes dtype or device explicitly.
- Mixed dtypes promote by category (bool < integer < float < complex); 0-dim tensors
  and Python numbers count only when their category is higher than every dimensioned
  tensor's. float16's largest value is 65,504, and bfloat16 keeps float32's range with
  less precision.
- A tensor is a view over a storage with strides. Basic indexing, `view`, `permute`,
  `expand`, `split`, `detach` and `from_numpy` share memory; masks and index lists
  copy. `view` works when the merged dimensions' strides line up; `reshape` may return
  a view or a copy, so don't write code that depends on which.
- Broadcasting aligns shapes from the right and stretches size-1 dimensions with stride
  0; it is powerful and the source of silent shape bugs.
- Reductions take `dim` and `keepdim`; `std` divides by n − 1; a stable softmax
  subtracts the row maximum. Seeding repeats the random numbers, while bit-for-bit
  repeatable arithmetic also needs the same thread count on a CPU and deterministic
  algorithms on a GPU.
- The vectorised distance computation was {{speedup}} times faster than the Python
  loop on this page's machine.
"""
)

# %% [markdown]
# **Next:** chapter 2 makes tensors remember how they were computed (autograd), and uses
# that to train a neural network on real medical data.
