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
# # 2. Neural-network basics
#
# Training a neural network is a loop: predict, measure the error, work out how each
# weight contributed to it, nudge the weights. By the end of this chapter you will have
# written every part of that loop yourself: gradients with autograd, a model as an
# `nn.Module`, a loss, an optimizer, a `Dataset` and `DataLoader`, the training and
# evaluation loops, and saving and loading the result. The model you train diagnoses
# breast tumours from real measurements and is checked on patients it never saw.
#
# **Prerequisites:** chapter 1 (tensors, shapes, broadcasting, `gather`).

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
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from helpers.data import load_breast_cancer_split, make_linear_data
from helpers.plotting import plot_losses
from helpers.runtime import (
    describe_runtime,
    get_device,
    make_generator,
    seed_everything,
)
from helpers.training import evaluate, fit, predict, train_one_epoch
from sklearn.metrics import ConfusionMatrixDisplay, f1_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

seed = seed_everything(0)
device = get_device()
print(describe_runtime(device, seed))

# %% [markdown]
# ## 2.1 Autograd: gradients for free
#
# A tensor created with `requires_grad=True` is a **leaf** of a computation graph. Every
# operation on it records how to differentiate itself (`grad_fn`). Calling `backward()` on
# a scalar result walks that record backwards (the chain rule) and stores the derivative
# of the result with respect to each leaf in the leaf's `.grad`.

# %%
x = torch.tensor(2.0, requires_grad=True)
y = x**3 + 2 * x  # dy/dx = 3x^2 + 2 = 14 at x = 2
print("leaf?", x.is_leaf, y.is_leaf, "| y was made by", y.grad_fn.name())
y.backward()
print("x.grad =", x.grad)
assert x.grad.item() == 14.0

# %% [markdown]
# `backward()` needs a **scalar** to start from. If the output is a vector, PyTorch cannot
# know which combination of its elements you want the gradient of, and raises an error
# (a mistake in many tutorials). Either reduce it to a scalar first, or pass the weights of
# the combination as `gradient=`.

# %%
v = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
squares = v**2
try:
    squares.backward()
except RuntimeError as err:
    print("RuntimeError:", err)
squares.sum().backward()  # d(sum v_i^2)/dv = 2v
print(v.grad)

# %% [markdown]
# Note the word *stores*: `backward` **adds** into `.grad`, it does not overwrite it. Run
# it again and the gradients accumulate. That is deliberate (it lets you sum gradients
# over several batches, section 2.7) and it is why training loops reset gradients each step.

# %%
(v**2).sum().backward()
print("after a second backward:", v.grad)  # 4v: twice the true gradient
v.grad = None  # reset (optimizer.zero_grad() does this for every parameter)
(v**2).sum().backward()
print("after resetting:        ", v.grad)

# %% [markdown]
# Recording the graph costs memory and time, and is pointless when you only want numbers,
# as in evaluation. `torch.no_grad()` turns recording off for a block; `detach()` returns a
# tensor that shares the data but has no history (you need it before `.numpy()`).

# %%
with torch.no_grad():
    doubled = v * 2
print("inside no_grad, requires_grad =", doubled.requires_grad)
print(v.detach().numpy())

# %% [markdown]
# ### A graph built as the code runs
#
# PyTorch builds the graph while your Python code executes, so ordinary `if`, `for` and
# `while` decide what gets recorded, and each call can record a different graph. Below, the
# number of doublings depends on the input's value; autograd differentiates whatever path
# actually ran.


# %%
def double_until_large(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    steps = 0
    while x.abs().sum() < 10:
        x = x * 2
        steps += 1
    return x.sum(), steps


for start in (0.3, 3.0):
    leaf = torch.tensor([start, start], requires_grad=True)
    total, steps = double_until_large(leaf)
    total.backward()
    print(
        f"start={start}: {steps} doublings, "
        f"gradient {leaf.grad.tolist()} (= 2**{steps})"
    )
    assert torch.allclose(leaf.grad, torch.full((2,), 2.0**steps))

# %% [markdown]
# ### Checking a gradient
#
# When you write your own differentiable function, check autograd's answer against finite
# differences, `(f(x + h) - f(x - h)) / 2h`. `torch.autograd.gradcheck` does this for every
# input element; it needs double precision, because the differences are tiny.


# %%
def smooth_loss(w: torch.Tensor) -> torch.Tensor:
    return (torch.log1p(torch.exp(w)) * torch.sin(w)).sum()


w = torch.randn(
    5, dtype=torch.float64, requires_grad=True, generator=make_generator(seed)
)
smooth_loss(w).backward()
h = 1e-6
basis = torch.eye(5, dtype=torch.float64)
with torch.no_grad():
    numeric = torch.stack(
        [(smooth_loss(w + h * e) - smooth_loss(w - h * e)) / (2 * h) for e in basis]
    )
print("autograd:", w.grad)
print("numeric: ", numeric)
assert torch.allclose(w.grad, numeric, atol=1e-6)
assert torch.autograd.gradcheck(smooth_loss, (w,))

# %% [markdown]
# ## 2.2 Models are `nn.Module`s
#
# A model is a class that inherits from `nn.Module`. Its `__init__` creates the layers,
# which are modules themselves and own their weights; `forward` says how data flows
# through them. You call the model like a function, `model(x)`, and never `forward`
# directly (calling the module also runs any hooks registered on it).


# %%
class MLP(nn.Module):
    """A multilayer perceptron: Linear -> ReLU -> Linear."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()  # must run first: it sets up the parameter bookkeeping
        self.hidden = nn.Linear(in_features, hidden)
        self.activation = nn.ReLU()
        self.output = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.activation(self.hidden(x)))  # (B, in) -> (B, out)


model = MLP(in_features=30, hidden=16, out_features=1)
print(model)

# %% [markdown]
# ```{note}
# Older examples write `super(MLP, self).__init__()`, which still works. Some widely
# copied ones carry the typo `super(...).init()`: `nn.Module` has no `init` method, so
# creating the model fails at once with *"'super' object has no attribute 'init'"*.
# Leaving the call out entirely fails at the first layer assignment with *"cannot
# assign module before Module.__init__() call"*. Write `super().__init__()`.
# ```
#
# Assigning a layer to an attribute registers it. `parameters()` yields every weight
# tensor (the optimizer needs them); `named_parameters()` adds their names.

# %%
for name, param in model.named_parameters():
    print(f"{name:15} {tuple(param.shape)!s:10} requires_grad={param.requires_grad}")
n_params = sum(p.numel() for p in model.parameters())
print("total parameters:", n_params)
assert n_params == 30 * 16 + 16 + 16 * 1 + 1

# %% [markdown]
# The `state_dict` is an ordered mapping from those names to tensors: the model's learned
# state, and what you save to disk (section 2.9).

# %%
print({name: tuple(t.shape) for name, t in model.state_dict().items()})

# %% [markdown]
# ## 2.3 A first training loop: recovering known weights
#
# Before real data, a problem whose answer we know. `make_linear_data` draws inputs `x` and
# targets `y = x @ w_true + b_true + noise` with weights we choose. A single `nn.Linear`
# trained with mean squared error should find them again.

# %%
w_true = torch.tensor([2.0, -3.0, 0.5])
b_true = 1.0
x_lin, y_lin = make_linear_data(
    500, w_true, b_true, noise_std=0.1, generator=make_generator(seed)
)
x_lin, y_lin = x_lin.to(device), y_lin.to(device)

regressor = nn.Linear(3, 1).to(device)
criterion = nn.MSELoss()
optimizer = torch.optim.SGD(regressor.parameters(), lr=0.1)

regression_losses = []
for _ in range(100):
    prediction = regressor(x_lin).squeeze(1)  # (500, 1) -> (500,), the shape of y_lin
    loss = criterion(prediction, y_lin)
    optimizer.zero_grad()  # clear the gradients of the previous step
    loss.backward()  # fill .grad of the weight and the bias
    optimizer.step()  # w <- w - lr * w.grad, for each parameter
    regression_losses.append(loss.item())

learned_w = regressor.weight.detach().squeeze(0).cpu()
learned_b = regressor.bias.item()
print(
    "true w:", w_true.tolist(), " learned w:", [round(v, 3) for v in learned_w.tolist()]
)
print(f"true b: {b_true}   learned b: {learned_b:.3f}")
assert torch.allclose(learned_w, w_true, atol=0.05) and abs(learned_b - b_true) < 0.05

fig = plot_losses(
    {"train (full batch)": regression_losses},
    title="Linear regression",
    xlabel="step",
    log_y=True,
)
plt.show()

# %% [markdown]
# The loss falls until it reaches the noise floor (the noise has variance 0.01), and the
# learned weights match the true ones to about two decimals. Those five lines inside the
# loop (forward, loss, `zero_grad`, `backward`, `step`) are the core of every training
# loop in this book.
#
# ## 2.4 Losses
#
# A loss turns predictions and targets into one number to minimise. Three cover most work:
#
# - **`nn.MSELoss`** for regression: the mean of squared differences.
# - **`nn.BCEWithLogitsLoss`** for yes/no targets: takes a raw score (a *logit*) per example.
# - **`nn.CrossEntropyLoss`** for one-of-`C` classes: takes `C` raw scores per example and
#   the index of the true class.
#
# Both classification losses want **logits**, not probabilities. Applying `sigmoid` yourself
# and then `nn.BCELoss` computes the same formula less accurately: in `float32`,
# `sigmoid(40)` rounds to exactly 1, its log is `-inf`, and `BCELoss` clamps the answer to
# 100 and passes back a zero gradient. The fused loss works in log space and stays exact.

# %%
logit = torch.tensor([40.0, 200.0], requires_grad=True)
target = torch.tensor([0.0, 0.0])  # confidently wrong predictions
fused = nn.BCEWithLogitsLoss(reduction="none")(logit, target)
fused.sum().backward()
fused_grad = logit.grad.clone()
logit.grad = None
separate = nn.BCELoss(reduction="none")(torch.sigmoid(logit), target)
separate.sum().backward()
print("BCEWithLogitsLoss:", fused.tolist(), " gradient:", fused_grad.tolist())
print("sigmoid + BCELoss:", separate.tolist(), " gradient:", logit.grad.tolist())

# %% [markdown]
# The true losses are 40 and 200, and the gradient should be 1 (the model is wrong, so it
# should be pushed). The fused loss gets both right; the separate version reports 100 for
# both and no gradient at all, so training would stall on exactly the examples it gets
# most wrong.
#
# `CrossEntropyLoss` is the multi-class version: it applies `log_softmax` to the logits and
# picks out each example's true-class term, which is `gather` from chapter 1.

# %%
class_logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
classes = torch.tensor([0, 2])
by_hand = -torch.log_softmax(class_logits, dim=1).gather(1, classes.unsqueeze(1)).mean()
built_in = nn.CrossEntropyLoss()(class_logits, classes)
print(by_hand.item(), built_in.item())
assert torch.isclose(by_hand, built_in)

# %% [markdown]
# Passing `softmax` outputs into `CrossEntropyLoss` is a common bug: it applies a second
# softmax, which squashes the scores and slows learning without raising any error.
#
# ## 2.5 Optimizers
#
# An optimizer holds references to the parameters and updates them from their `.grad`.
# Plain **SGD** steps against the gradient: `w -= lr * grad`. **Momentum** keeps a running
# velocity, so steps in a consistent direction grow and zig-zags cancel. **Adam** also
# scales each parameter's step by a running estimate of its gradient's size, which helps
# when parameters live on very different scales. Here all three fit the same regression
# after we have made it harder: the three input features are scaled by 0.3, 1 and 3, so
# the loss surface is a long narrow valley.

# %%
scales = torch.tensor([0.3, 1.0, 3.0], device=device)
x_badly_scaled = x_lin * scales
optimizers = {
    "SGD": lambda params: torch.optim.SGD(params, lr=0.05),
    "SGD + momentum 0.9": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "Adam": lambda params: torch.optim.Adam(params, lr=0.1),
}
curves = {}
for label, make_optimizer in optimizers.items():
    torch.manual_seed(seed)  # same initial weights for every optimizer
    candidate = nn.Linear(3, 1).to(device)
    optimizer = make_optimizer(candidate.parameters())
    curves[label] = []
    for _ in range(150):
        loss = criterion(candidate(x_badly_scaled).squeeze(1), y_lin)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curves[label].append(loss.item())
    print(f"{label:20} loss after 150 steps: {curves[label][-1]:.4f}")

fig = plot_losses(
    curves,
    title="Three optimizers on a badly scaled regression",
    xlabel="step",
    log_y=True,
)
plt.show()
assert curves["SGD + momentum 0.9"][-1] < curves["SGD"][-1]

# %% [markdown]
# Plain SGD's learning rate is capped by the steepest direction (a larger one diverges
# along the feature scaled by 3) and so it crawls along the flat one. Momentum and Adam
# both reach the noise floor. In practice Adam (or AdamW) is the usual default, and
# well-tuned SGD with momentum remains a strong choice for vision models.
#
# ## 2.6 Real data: `Dataset` and `DataLoader`
#
# The Wisconsin breast-cancer data set ships with scikit-learn: 569 tumours, each described
# by 30 measurements of cell nuclei from a biopsy image, labelled malignant or benign.
# `load_breast_cancer_split` holds out 20 % of the tumours as a **test set** (stratified,
# so both parts keep the class balance) and standardises every feature using statistics of
# the training part only, so nothing about the test patients leaks into training.

# %%
data = load_breast_cancer_split(test_fraction=0.2, seed=seed)
print("train:", tuple(data.x_train.shape), " test:", tuple(data.x_test.shape))
print(
    "classes:",
    data.class_names,
    " benign share of train:",
    round(data.y_train.mean().item(), 3),
)

# %% [markdown]
# A `Dataset` answers two questions: how many examples there are (`__len__`) and what
# example `i` is (`__getitem__`). That is all a `DataLoader` needs to shuffle the examples
# and group them into batches. This one wraps tensors already in memory; in later chapters
# `__getitem__` reads and transforms an image.


# %%
class TabularDataset(Dataset):
    """Rows of a feature matrix with their labels."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]


train_set = TabularDataset(data.x_train, data.y_train)
test_set = TabularDataset(data.x_test, data.y_test)
batch_size = 32
# A private generator makes the shuffling order repeatable without touching the global seed.
train_loader = DataLoader(
    train_set, batch_size=batch_size, shuffle=True, generator=make_generator(seed)
)
test_loader = DataLoader(test_set, batch_size=256)  # evaluation needs no shuffling

for batch_index, (inputs, targets) in enumerate(train_loader):
    if batch_index == 0:
        print("first batch:", tuple(inputs.shape), tuple(targets.shape))
print(
    f"{len(train_set)} examples -> {len(train_loader)} batches; "
    f"the last holds {len(inputs)}"
)

# %% [markdown]
# ## 2.7 The training loop, step by step
#
# ### Why `zero_grad`
#
# Section 2.1 showed that `backward` adds into `.grad`. Here is the consequence on a real
# model: two backward passes over the same batch without clearing leave exactly twice the
# gradient, and an optimizer step would then move twice as far, in a direction mixed from
# stale batches.

# %%
torch.manual_seed(seed)
model = MLP(30, 16, 1).to(device)
criterion = nn.BCEWithLogitsLoss()
inputs, targets = next(iter(train_loader))
inputs, targets = inputs.to(device), targets.to(device)

criterion(model(inputs).squeeze(1), targets).backward()
once = model.hidden.weight.grad.clone()
criterion(model(inputs).squeeze(1), targets).backward()  # no zero_grad in between
print(
    "ratio after two backward passes:",
    (model.hidden.weight.grad.norm() / once.norm()).item(),
)
assert torch.allclose(model.hidden.weight.grad, 2 * once)
model.zero_grad()

# %% [markdown]
# ### Gradient accumulation
#
# The same behaviour becomes a tool when a batch does not fit in memory. Split a batch of
# 64 into 4 micro-batches of 16, divide each micro-batch's loss by 4, and call `backward`
# on each: the summed gradient equals that of the whole batch, and one optimizer step then
# does what a step on the big batch would have done.

# %%
big_inputs, big_targets = data.x_train[:64].to(device), data.y_train[:64].to(device)

model.zero_grad()
criterion(model(big_inputs).squeeze(1), big_targets).backward()
full_batch_grad = model.hidden.weight.grad.clone()

model.zero_grad()
accumulation_steps = 4
for micro_inputs, micro_targets in zip(
    big_inputs.chunk(accumulation_steps),
    big_targets.chunk(accumulation_steps),
    strict=True,
):
    loss = criterion(model(micro_inputs).squeeze(1), micro_targets) / accumulation_steps
    loss.backward()  # adds this micro-batch's share into .grad
accumulated_grad = model.hidden.weight.grad.clone()
model.zero_grad()

print("max difference:", (full_batch_grad - accumulated_grad).abs().max().item())
assert torch.allclose(full_batch_grad, accumulated_grad, atol=1e-6)

# %% [markdown]
# ### The full loop
#
# Now the whole thing. Each **epoch** is one pass over the training set, in shuffled
# batches; after each, the model is evaluated on the test set. Two switches matter:
# `model.train()` and `model.eval()` tell layers such as dropout and batch normalisation
# which behaviour to use (this small MLP has none, but the habit prevents bugs in chapter 3
# and later), and `torch.no_grad()` skips graph recording during evaluation.

# %%
torch.manual_seed(seed)
model = MLP(30, 16, 1).to(device)
criterion = nn.BCEWithLogitsLoss()
lr = 1e-3
optimizer = torch.optim.Adam(model.parameters(), lr=lr)
epochs = 40

train_losses, test_losses = [], []
for epoch in range(1, epochs + 1):
    model.train()
    running_loss, seen = 0.0, 0
    for inputs, targets in train_loader:
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs).squeeze(1)  # (B, 1) -> (B,), to match targets
        loss = criterion(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * len(
            targets
        )  # loss is a batch mean; weight it by size
        seen += len(targets)
    train_losses.append(running_loss / seen)

    model.eval()
    total, seen = 0.0, 0
    with torch.no_grad():
        for inputs, targets in test_loader:
            inputs, targets = inputs.to(device), targets.to(device)
            total += criterion(model(inputs).squeeze(1), targets).item() * len(targets)
            seen += len(targets)
    test_losses.append(total / seen)
    if epoch % 10 == 0 or epoch == 1:
        print(
            f"epoch {epoch:3d}  train loss {train_losses[-1]:.4f}  "
            f"test loss {test_losses[-1]:.4f}"
        )

fig = plot_losses(
    {"train": train_losses, "test": test_losses}, title="MLP on breast-cancer data"
)
plt.show()

# %% [markdown]
# Both curves fall together and flatten; the test loss sitting close to the training loss
# means the model is not memorising the training patients. Had the test curve turned up
# while the training curve kept falling, that would be overfitting, and the epoch where it
# turned would be the one to keep.
#
# ## 2.8 Evaluation: accuracy and F1
#
# Evaluation runs the model in `eval()` mode without gradients and compares decisions with
# labels. A logit above 0 means a probability above 0.5, so the decision is `logit > 0`.
# **Accuracy** is the share of correct decisions. The **F1 score** combines precision and
# recall of one class (here label 0, malignant, the class a screening test must not miss);
# it exposes a model that does well on the majority class only.

# %%
model.eval()
with torch.no_grad():
    test_logits = model(data.x_test.to(device)).squeeze(1).cpu()
test_pred = (test_logits > 0).long()
test_true = data.y_test.long()
test_acc = (test_pred == test_true).float().mean().item()
malignant_f1 = f1_score(test_true.numpy(), test_pred.numpy(), pos_label=0)
print(
    f"test accuracy: {test_acc:.3f}   F1 (malignant): {malignant_f1:.3f}   "
    f"on {len(test_true)} tumours"
)
assert test_acc >= 0.95, test_acc

# %%
display = ConfusionMatrixDisplay.from_predictions(
    test_true.numpy(),
    test_pred.numpy(),
    display_labels=list(data.class_names),
    colorbar=False,
)
display.ax_.set_title("Test-set confusion matrix")
plt.show()

# %% [markdown]
# The rows are the true classes and the columns the predictions; the off-diagonal cells are
# the mistakes, and the matrix shows which kind they are.
#
# From here on, later chapters call the loops you just wrote from `helpers.training`:
# `train_one_epoch` (the inner loop of section 2.7), `evaluate` (loss and accuracy under
# `eval()` and `no_grad`), `predict`, and `fit`, which runs epochs of both. They contain
# nothing you have not seen, as a check against the hand-written version shows.

# %%
result = evaluate(model, test_loader, criterion, device)
helper_pred, helper_true = predict(model, test_loader, device)
print(
    f"helpers.training.evaluate: loss {result.loss:.4f}, accuracy {result.accuracy:.3f}"
)
assert (
    abs(result.loss - test_losses[-1]) < 1e-6 and abs(result.accuracy - test_acc) < 1e-6
)
assert torch.equal(helper_pred, test_pred)

# %% [markdown]
# ## 2.9 Saving and loading
#
# Save the `state_dict`, not the model object: the state dict is plain tensors, and loading
# it only needs the class definition. Load with `weights_only=True`, which refuses to run
# arbitrary code hidden in a file (a pickled model can carry any code; the default became
# `True` in PyTorch 2.6, and writing it keeps older versions safe too).

# %%
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "breast_cancer_mlp.pt"
    torch.save(model.state_dict(), path)
    print(f"saved {path.name}: {path.stat().st_size / 1024:.1f} KiB")
    restored = MLP(30, 16, 1).to(device)
    restored.load_state_dict(torch.load(path, map_location=device, weights_only=True))

restored.eval()
with torch.no_grad():
    restored_logits = restored(data.x_test.to(device)).squeeze(1).cpu()
assert torch.equal(restored_logits, test_logits)
print("the restored model makes identical predictions")

# %% [markdown]
# `map_location=device` lets a file saved on a GPU load on a machine without one.
#
# ```{admonition} Common pitfalls
# :class: warning
# - **Forgetting `optimizer.zero_grad()`**: gradients from earlier batches pile up.
# - **Forgetting `model.eval()` / `model.train()`**: dropout and batch norm then behave
#   wrongly at test time (or at training time, after an evaluation).
# - **Calling `backward()` on a non-scalar** without `gradient=`: reduce the loss first.
# - **Sigmoid or softmax before the loss**: `BCEWithLogitsLoss` and `CrossEntropyLoss` take logits.
# - **Shape `(B, 1)` against targets `(B,)`**: `MSELoss` broadcasts it to `(B, B)` with only a
#   warning; `squeeze(1)` the output.
# - **Preprocessing with test statistics**: fit scaling on the training split only.
# ```
#
# ## Exercises
#
# **Exercise 1.** Use autograd to compute the derivative of `f(x) = x**2 * sin(x)` at 50
# points in `[-3, 3]` in one `backward` call, and compare it with the derivative you work
# out by hand.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 1: sum() makes a scalar whose gradient w.r.t. each x_i is f'(x_i).
xs = torch.linspace(-3, 3, 50, requires_grad=True)
(xs**2 * torch.sin(xs)).sum().backward()
analytic = 2 * xs.detach() * torch.sin(xs.detach()) + xs.detach() ** 2 * torch.cos(
    xs.detach()
)
print("max error:", (xs.grad - analytic).abs().max().item())
assert torch.allclose(xs.grad, analytic, atol=1e-5)

# %% [markdown]
# **Exercise 2.** Train a fresh `MLP(30, 16, 1)` with micro-batches of 8 and
# `accumulation_steps=4` (an effective batch of 32) using `train_one_epoch` from
# `helpers.training`, for 40 epochs. Does it reach the same test accuracy?

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 2
torch.manual_seed(seed)
model = MLP(30, 16, 1).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
small_loader = DataLoader(
    train_set, batch_size=8, shuffle=True, generator=make_generator(seed)
)
for _ in range(40):
    train_one_epoch(
        model, small_loader, criterion, optimizer, device, accumulation_steps=4
    )
accumulated = evaluate(model, test_loader, criterion, device)
print(f"test accuracy with accumulation: {accumulated.accuracy:.3f}")
assert accumulated.accuracy >= 0.95

# %% [markdown]
# **Exercise 3.** Replace Adam by SGD with momentum 0.9 and `lr=0.01`, train with `fit`
# from `helpers.training` for 40 epochs, and plot both loss curves. Which converges faster?

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 3
torch.manual_seed(seed)
model = MLP(30, 16, 1).to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
history = fit(
    model, train_loader, test_loader, criterion, optimizer, 40, device, progress=False
)
fig = plot_losses(
    {"Adam: test": test_losses, "SGD + momentum: test": history.val_loss},
    title="Adam vs SGD with momentum",
)
plt.show()
print(f"final test accuracy with SGD + momentum: {history.val_accuracy[-1]:.3f}")
assert history.val_accuracy[-1] >= 0.95

# %% [markdown]
# **Exercise 4.** Is the hidden layer needed? Train logistic regression, a single
# `nn.Linear(30, 1)`, the same way and compare its parameter count and test accuracy
# with the MLP's.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 4: compare the two lines printed; on these 30 features a linear model is about as good.
torch.manual_seed(seed)
logistic = nn.Linear(30, 1).to(device)
optimizer = torch.optim.Adam(logistic.parameters(), lr=1e-2)
history = fit(
    logistic,
    train_loader,
    test_loader,
    criterion,
    optimizer,
    40,
    device,
    progress=False,
)
print(
    f"logistic regression: {sum(p.numel() for p in logistic.parameters())} parameters, "
    f"test accuracy {history.val_accuracy[-1]:.3f}"
)
print(f"MLP:                 {n_params} parameters, test accuracy {test_acc:.3f}")
assert history.val_accuracy[-1] >= 0.9

# %% [markdown]
# ## Summary
#
# - Autograd records operations on tensors with `requires_grad=True`; `backward()` on a
#   scalar fills `.grad`, adding to what is there.
# - A model is an `nn.Module`: layers in `__init__` (after `super().__init__()`), data flow
#   in `forward`; `state_dict()` is what you save, `torch.load(..., weights_only=True)` loads it.
# - Classification losses take logits; `CrossEntropyLoss` and `BCEWithLogitsLoss` are
#   exact where softmax or sigmoid followed by a log is not.
# - The loop is forward, loss, `zero_grad`, `backward`, `step`; evaluation is `eval()` and
#   `no_grad()`; accumulate gradients to emulate a larger batch.
# - The MLP classified held-out tumours with the accuracy printed in section 2.8.
#
# **Next:** chapter 3 replaces the fully connected layers by convolutions and trains on
# images of handwritten digits, with `helpers.training` running the loop you wrote here.
