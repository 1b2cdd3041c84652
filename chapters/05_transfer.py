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
# # 5. Transfer learning: feature extraction and fine-tuning
#
# A network trained on a large data set has learned features (strokes, edges, curves)
# that are useful far beyond the task it was trained for. **Transfer learning** reuses
# them for a new task with few labels. By the end of this chapter you will know how to
# inspect torchvision's pretrained models without downloading them and read their
# published accuracy and preprocessing; how to load a checkpoint into a model with a new
# head and check what was and was not loaded; how to freeze layers correctly (including
# the batch-norm trap); and how training from scratch, **feature extraction** and
# **fine-tuning** compare when a task has 1, 3 or 10 labelled images per class, measured
# on validation data and then, once, on a test set.
#
# The executed book has no internet, so it cannot download ImageNet weights. Instead it
# pretrains its own source model, on letters it renders from the fonts that matplotlib
# ships, and transfers that to real handwritten digits. Section 5.9 gives the exact
# cells to fine-tune an ImageNet ResNet-18 on your own folder of images when you do have
# internet access.
#
# **Prerequisites:** chapter 2 (the training loop, `helpers.training`) and chapter 3
# (convolutions, batch normalisation, the digit data, `helpers.data`).

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
import time

chapter_started = time.perf_counter()  # the chapter's run time is reported at the end

import copy
import functools
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from helpers.data import load_mnist_subset
from helpers.models import count_parameters
from helpers.plotting import plot_image_grid
from helpers.progress import tqdm
from helpers.results import record
from helpers.runtime import (
    describe_runtime,
    get_device,
    make_generator,
    seed_everything,
)
from helpers.transfer import (
    GLYPH_CLASSES,
    labelled_subset,
    matplotlib_fonts,
    random_affine,
    render_glyphs,
    sample_glyphs,
    train_phases,
)
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from torch.utils.data.dataloader import default_collate
from torchvision import models

seed = seed_everything(0)
device = get_device()
print(describe_runtime(device, seed))

# %% [markdown]
# ## 5.1 Three ways to learn a new task
#
# Suppose a network was trained on a large **source** task and we now have a small
# **target** task. We cut off the source network's last layer (its **head**, which maps
# features to the source's classes) and keep the rest (its **backbone**). Then:
#
# - **From scratch**: ignore the source; train a randomly initialised network on the
#   target labels alone. The baseline.
# - **Feature extraction**: freeze the whole backbone and train only a new head on its
#   features. Few parameters are learned, so few labels suffice, but the features stay
#   what the source task made them.
# - **Fine-tuning**: start from the source weights, train a new head and also let the
#   last block(s) of the backbone change, usually with a smaller learning rate so the
#   pretrained features are adjusted rather than overwritten.
#
# It works because early layers learn generic patterns (edges, strokes, blobs) that most
# image tasks need, while later layers become more specific to the source task. How much
# it helps depends on how related the tasks are and on how many target labels there are,
# which is what this chapter measures.
#
# ## 5.2 torchvision's model zoo, without a download
#
# `torchvision.models` builds the classic architectures. Each builder takes a `weights=`
# argument: `None` gives random initial weights, and a member of the model's **weights
# enum** (e.g. `ResNet18_Weights.IMAGENET1K_V1`) downloads and loads pretrained weights.
# The enum also carries metadata that needs no download: the published ImageNet
# accuracy, the parameter count, the class names and the preprocessing the weights were
# trained with.
#
# Building a model allocates and initialises its weights, 138 million of them for
# VGG-16. Inside `with torch.device("meta"):` the tensors record only shapes and dtypes
# (the initialisation functions run but compute nothing), so building is almost free,
# and shapes are all we need to count parameters and find the layer
# to replace. For each model the cell checks the count against the enum's metadata.

# %%
zoo = {  # name: (builder, default weights, the layer that maps features to classes)
    "ResNet-18": (models.resnet18, models.ResNet18_Weights.DEFAULT, "fc"),
    "ResNet-50": (models.resnet50, models.ResNet50_Weights.DEFAULT, "fc"),
    "VGG-16": (models.vgg16, models.VGG16_Weights.DEFAULT, "classifier.6"),
    "Inception-v3": (models.inception_v3, models.Inception_V3_Weights.DEFAULT, "fc"),
}
print(
    f"{'model':13} {'parameters':>12}  {'head to replace':27} {'weights':14} "
    f"{'top-1':>6} {'top-5':>6}  resize/crop"
)
with torch.device("meta"):  # shapes only: no data, no real computation, no download
    for name, (builder, weights, head_name) in zoo.items():
        # init_weights=True: Inception-v3's current initialisation, without a FutureWarning
        options = {"init_weights": True} if builder is models.inception_v3 else {}
        net = builder(weights=None, **options)
        n_params = count_parameters(net)
        assert n_params == weights.meta["num_params"], name
        head = net.get_submodule(head_name)  # an nn.Linear
        head_text = f"{head_name}: Linear({head.in_features}, {head.out_features})"
        metrics = weights.meta["_metrics"]["ImageNet-1K"]
        preprocess = weights.transforms()
        print(
            f"{name:13} {n_params:>12,}  {head_text:27} "
            f"{weights.name:14} {metrics['acc@1']:>6.2f} {metrics['acc@5']:>6.2f}  "
            f"{preprocess.resize_size[0]}/{preprocess.crop_size[0]}"
        )
    inception = models.inception_v3(weights=None, init_weights=True)
    print("Inception-v3's auxiliary head: AuxLogits.fc =", inception.AuxLogits.fc)

# %% [markdown]
# Every one of these ends in a linear layer with 1,000 outputs, one per ImageNet class;
# for a new task with `C` classes you replace it with `nn.Linear(in_features, C)`. Its
# name differs: `fc` in ResNets and Inception, the seventh entry of `classifier` in VGG
# (`classifier[6]`). Inception-v3 also has an auxiliary classifier, `AuxLogits`, used
# only in training mode, whose `fc` must be replaced too. The "top-1" column is the
# published share of ImageNet validation images whose highest-scoring class is right,
# "top-5" whether the right class is among the five highest.
#
# The preprocessing belongs to the weights, not to the architecture.
# `weights.transforms()` returns it as a transform; here is ResNet-50's:

# %%
v1, v2 = models.ResNet50_Weights.IMAGENET1K_V1, models.ResNet50_Weights.IMAGENET1K_V2
for w in (v1, v2):
    print(w, "->", Path(w.url).name)
    print(w.transforms())
record("r50_v1_top1", v1.meta["_metrics"]["ImageNet-1K"]["acc@1"], fmt="{:.1f}")
record("r50_v2_top1", v2.meta["_metrics"]["ImageNet-1K"]["acc@1"], fmt="{:.1f}")
record("r50_v1_resize", v1.transforms().resize_size[0])
record("r50_v2_resize", v2.transforms().resize_size[0])

# %% [markdown]
# Both resize the shorter side (to {glue:}`r50_v1_resize` and {glue:}`r50_v2_resize`
# pixels), cut a 224 × 224 centre crop, scale to [0, 1] and normalise each colour
# channel with ImageNet's mean and standard deviation. Feeding a pretrained network
# images prepared differently (another normalisation, no resize) silently costs
# accuracy, so always take the preprocessing from the same enum member as the weights.
#
# ### Why `weights=` replaced `pretrained=True`
#
# Older code, including many tutorials, writes `models.resnet50(pretrained=True)`. One
# boolean cannot say *which* pretrained weights: ResNet-50 has two ImageNet sets,
# `IMAGENET1K_V1` (top-1 {glue:}`r50_v1_top1` %) and `IMAGENET1K_V2` (top-1
# {glue:}`r50_v2_top1` %, from a newer training recipe), and each needs its own
# preprocessing. Since torchvision 0.13 an enum member names the set and carries its
# URL, preprocessing and metrics; `pretrained=` is deprecated. `DEFAULT` points to the
# best set available and may change between torchvision releases, so name the member
# (`IMAGENET1K_V2`) when results must be reproducible. The old argument still works for
# now, with a warning (shown on the meta device, where building costs nothing):

# %%
with warnings.catch_warnings(record=True) as caught, torch.device("meta"):
    warnings.simplefilter("always")
    models.resnet18(pretrained=False)  # the deprecated spelling of weights=None
for warning in caught:
    print(f"{warning.category.__name__}: {warning.message}")
assert any("deprecated" in str(w.message) for w in caught)

# %% [markdown]
# ## 5.3 The source task: letters rendered from matplotlib's fonts
#
# A source task should be large, cheap and related to the target. Ours is generated:
# we take 21 of the font faces that matplotlib ships (DejaVu Sans, Sans Mono and Serif,
# STIX and Computer Modern, in regular, bold and italic styles). `render_glyphs` from
# `helpers.transfer` draws {glue:}`n_source_classes` letter classes in each: the 26
# capitals and the 11 lower-case letters that EMNIST's "balanced" split keeps apart
# from their capitals (`a b d e f g h n q r t`; it merges pairs such as `c`/`C` and
# `o`/`O` whose handwritten shapes are hard to tell apart). Each glyph is
# scaled, keeping its aspect ratio, into a 20 × 20 box centred in a 28 × 28 image, much
# as MNIST's digits were. There are **no digits** among them: the source network never
# sees the target's classes.

# %%
fonts = matplotlib_fonts()
glyphs = render_glyphs(GLYPH_CLASSES, fonts)  # (classes, fonts, 28, 28) in [0, 1]
n_classes_source = len(GLYPH_CLASSES)
record("n_source_classes", n_classes_source)
record("n_glyphs", glyphs.shape[0] * glyphs.shape[1], fmt="{:,}")
print("glyphs", tuple(glyphs.shape), "| the first fonts:", [f.stem for f in fonts[:3]])
letter = GLYPH_CLASSES.index("R")
fig = plot_image_grid(
    glyphs[letter],
    titles=[f.stem.replace("DejaVu", "").replace("General", "") for f in fonts],
    suptitle="The letter R in the 21 font faces (before distortion)",
    ncols=7,
    size=1.6,
)
plt.show()

# %% [markdown]
# Printed letters are far more regular than handwriting, so every source example is
# distorted afresh: `sample_glyphs` draws a random class and font, then rotates (up to
# 15 degrees), stretches (0.75 to 1.1 per axis), shears and shifts it with a random
# affine map, applied to the whole batch at once with `F.affine_grid` and
# `F.grid_sample`, and makes the strokes of about half of them a pixel thicker. Every
# batch is drawn afresh, so there is no fixed training set to memorise, only the
# {glue:}`n_glyphs` glyphs (classes × fonts) under ever new distortions.

# %%
examples, example_labels = sample_glyphs(glyphs, 24, make_generator(seed))
fig = plot_image_grid(
    examples,
    titles=[GLYPH_CLASSES[i] for i in example_labels.tolist()],
    suptitle="Source examples: random letters, fonts and distortions",
    ncols=12,
)
plt.show()

# %% [markdown]
# ### The source network
#
# `GlyphNet` is a small convolutional network named like a ResNet: blocks named
# `layer1` to `layer3` (a torchvision ResNet has `layer1` to `layer4`), a pooling stage
# and a linear head named `fc`, so that the transfer code below reads the same as it
# would for a ResNet. Unlike a ResNet's, its blocks are single convolutions without
# residual (skip) connections. To stay within the chapter's time budget the blocks
# downsample with stride-2 convolutions instead of chapter 3's max-pooling, and the
# pooling keeps a 2 × 2 grid of each channel's averages (256 features) rather than one
# value per channel, because where a stroke sits matters for telling characters apart.


# %%
class GlyphNet(nn.Module):
    """Three conv blocks (conv, batch norm, ReLU), 2 x 2 average pooling, a linear head."""

    def __init__(self, num_classes: int, channels: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        c1, c2, c3 = channels

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            )

        self.layer1 = block(1, c1, stride=2)  # (B, 1, 28, 28) -> (B, c1, 14, 14)
        self.layer2 = block(c1, c2, stride=2)  # -> (B, c2, 7, 7)
        self.layer3 = block(c2, c3, stride=1)  # -> (B, c3, 7, 7)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())  # (B, c3*4)
        self.fc = nn.Linear(c3 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))


h = torch.zeros(8, 1, 28, 28)
probe = GlyphNet(num_classes=n_classes_source).eval()
with torch.no_grad():
    for name in ("layer1", "layer2", "layer3", "pool", "fc"):
        h = getattr(probe, name)(h)
        print(f"{name:7} -> {tuple(h.shape)}")

# %% [markdown]
# ### Pretraining
#
# The loop is chapter 2's, with one difference: there are no epochs, because every batch
# is freshly generated, so the cosine learning-rate schedule is stepped after every
# optimizer step over `pretrain_steps` steps. The inputs are normalised with the mean
# and standard deviation of a sample of training examples; exactly this preprocessing
# will travel with the weights, as `weights.transforms()` does for torchvision's models.
# A fixed set of 1,000 examples, drawn with a different generator, serves as the source
# validation set. Its letters come from the same 21 fonts as the training examples,
# only with other distortions, so it measures how well the network handles new
# distortions of known glyphs, not new fonts.

# %%
source_generator = make_generator(seed)
statistics_sample, _ = sample_glyphs(glyphs, 2000, source_generator)
source_mean = statistics_sample.mean().item()
source_std = statistics_sample.std().item()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """The source model's preprocessing; images in [0, 1]."""
    return (images - source_mean) / source_std


source_val_x, source_val_y = sample_glyphs(glyphs, 1000, make_generator(seed + 1))
source_val_x = normalize(source_val_x).to(device)
source_val_y = source_val_y.to(device)

pretrain_steps, pretrain_batch = 600, 128
torch.manual_seed(seed)
source_model = GlyphNet(num_classes=n_classes_source).to(device)
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.AdamW(source_model.parameters(), lr=3e-3, weight_decay=1e-4)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=pretrain_steps)

pretrain_started = time.perf_counter()
source_losses, source_accs = [], []
for step in tqdm(range(1, pretrain_steps + 1), desc="pretraining steps"):
    images, labels = sample_glyphs(glyphs, pretrain_batch, source_generator)
    source_model.train()
    loss = criterion(source_model(normalize(images).to(device)), labels.to(device))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()  # once per optimizer step: the schedule spans all the steps
    source_losses.append(loss.item())
    if step % 50 == 0:
        source_model.eval()
        with torch.no_grad():
            predicted = source_model(source_val_x).argmax(dim=1)
        accuracy = (predicted == source_val_y).float().mean().item()
        source_accs.append((step, accuracy))
        print(f"step {step:3d}  loss {loss.item():.3f}  val accuracy {accuracy:.3f}")
pretrain_seconds = time.perf_counter() - pretrain_started
record("pretrain_seconds", pretrain_seconds, fmt="{:.0f}")
source_val_acc = source_accs[-1][1]
record(
    "source_val_acc",
    source_val_acc,
    fmt="{:.1%}",
    headline="Source (letters) validation accuracy after pretraining",
)
# CPU levels default, avx2, avx512 x seeds 0-2: 98.8 % to 99.6 %
assert source_val_acc > 0.9, source_val_acc

fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.5))
ax_loss.plot(range(1, pretrain_steps + 1), source_losses, lw=0.8)
ax_loss.set(title="Pretraining: training loss", xlabel="step", ylabel="loss")
ax_acc.plot(*zip(*source_accs, strict=True), marker="o")
ax_acc.set(
    title="Pretraining: source validation accuracy", xlabel="step", ylabel="accuracy"
)
for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# After {glue:}`pretrain_seconds` seconds of pretraining the network recognises
# {glue:}`source_val_acc` of the source validation letters. That accuracy is not the
# goal; the features behind it are.
#
# ### Saving the source checkpoint, and loading it safely
#
# The checkpoint holds the weights and what a user needs to apply them: the class names
# and the normalisation. `torch.load(..., weights_only=True)` unpickles only tensors and
# plain containers (dicts, lists, strings, numbers); it is designed so that a tampered
# file cannot make loading call arbitrary functions, which a full unpickle allows. It is
# safer loading, not a sandbox: it has had bugs of its own in older torch releases, so
# load files only from sources you trust and keep torch up to date.

# %%
checkpoint_dir = Path(tempfile.mkdtemp())
source_path = checkpoint_dir / "glyphnet_source.pt"
torch.save(
    {
        "model": source_model.state_dict(),
        "classes": GLYPH_CLASSES,
        "mean": source_mean,
        "std": source_std,
    },
    source_path,
)
checkpoint = torch.load(source_path, map_location="cpu", weights_only=True)
print({key: type(value).__name__ for key, value in checkpoint.items()})
print("state_dict keys:", list(checkpoint["model"])[:6], "...")

# %% [markdown]
# ## 5.4 The target task: handwritten digits with few labels
#
# The target is the real MNIST subset from chapter 3 (`load_mnist_subset`): 500
# validation and 1,000 test digits, and a pool of training digits from which we take
# only 1, 3 or 10 labelled images per class. `labelled_subset` draws them at random with
# a seed; the same seed gives nested subsets (the 3 per class include the 1). Which few
# images are drawn matters a lot, so every budget is run with two different draws.
#
# Keeping 500 labelled validation digits while training on 10 to 100 is a luxury a real
# few-label project does not have; here it lets us select epochs and compare methods
# reliably. The hyper-parameters below were chosen on this validation set while the
# chapter was written, with the same values for every budget.

# %%
digits = load_mnist_subset(val_size=500, test_size=1000, seed=seed)
budgets, draws = (1, 3, 10), (0, 1)
methods = ("scratch", "feature extraction", "fine-tuning")
one_each = labelled_subset(digits.y_train, 1, seed=draws[0])
fig = plot_image_grid(
    digits.x_train[one_each],
    titles=[str(d) for d in digits.y_train[one_each].tolist()],
    suptitle="The whole training set at 1 label per class (draw 0)",
    ncols=10,
)
plt.show()

# %% [markdown]
# Ten images make a poor epoch, so an epoch here is `samples_per_epoch` draws, with
# replacement, from the labelled images: every budget then gets the same number of
# optimizer steps. Each drawn digit is augmented as in chapter 3 (rotated up to 10
# degrees, shifted up to 2 pixels) and, new here, scaled by 0.9 to 1.1 per axis
# (`random_affine` does all of this for the whole batch in the loader's `collate_fn`)
# and normalised with the **source** model's statistics, the preprocessing its features
# were learned with. Validation and test digits are only normalised.


# %%
def augment_batch(batch: list, generator: torch.Generator) -> tuple:
    """collate_fn: stack the drawn digits, distort them all at once, normalise."""
    images, labels = default_collate(batch)  # (B, 1, 28, 28), (B,)
    images = random_affine(
        images, generator, rotation=(-10, 10), scale=(0.9, 1.1), shift=(-2, 2)
    )
    return normalize(images), labels


samples_per_epoch, batch_size = 320, 64


def target_train_loader(per_class: int, draw: int) -> DataLoader:
    """Augmented batches from `per_class` labelled digits of each class (draw `draw`)."""
    index = labelled_subset(digits.y_train, per_class, seed=draw)
    labelled = TensorDataset(digits.x_train[index], digits.y_train[index])
    sampler = RandomSampler(
        labelled,
        replacement=True,
        num_samples=samples_per_epoch,
        generator=make_generator(draw),
    )
    collate = functools.partial(augment_batch, generator=make_generator(draw + 100))
    return DataLoader(labelled, batch_size, sampler=sampler, collate_fn=collate)


val_loader = DataLoader(
    TensorDataset(normalize(digits.x_val), digits.y_val), batch_size=500
)
test_loader = DataLoader(
    TensorDataset(normalize(digits.x_test), digits.y_test), batch_size=500
)
images, labels = next(iter(target_train_loader(1, draws[0])))
print("a training batch:", tuple(images.shape), "labels", labels[:12].tolist())

# %% [markdown]
# ## 5.5 Loading the source weights under a new head
#
# The target model is a `GlyphNet` with 10 outputs. Its backbone has exactly the source
# model's parameter names and shapes; only `fc` differs, (10, 256) instead of
# ({glue:}`n_source_classes`, 256). `load_state_dict(..., strict=False)` is often
# suggested for this, but `strict=False` only tolerates *missing* and *unexpected* keys;
# a key present in both with different shapes still fails:

# %%
source_state = checkpoint["model"]
target_model = GlyphNet(num_classes=10)
try:
    target_model.load_state_dict(source_state, strict=False)
except RuntimeError as error:
    for line in str(error).splitlines():
        if "size mismatch" in line:
            print(line.strip())

# %% [markdown]
# So the head's entries are dropped first. Then `strict=False` loads the rest and
# *returns* what it skipped: `missing_keys` (in the model, not in the file) and
# `unexpected_keys` (in the file, not in the model). Always look at them: a renamed
# layer shows up in both lists, and with `strict=False` nothing else would tell you that
# it kept its random weights (exercise 3).

# %%
backbone_state = {k: v for k, v in source_state.items() if not k.startswith("fc.")}
result = target_model.load_state_dict(backbone_state, strict=False)
print("missing:   ", result.missing_keys)
print("unexpected:", result.unexpected_keys)
assert result.missing_keys == ["fc.weight", "fc.bias"] and not result.unexpected_keys
assert torch.equal(target_model.layer1[0].weight, source_state["layer1.0.weight"])

# %% [markdown]
# Only the new head is missing, and it keeps its fresh random initialisation. Note that
# the backbone's state includes the batch-norm **buffers** (`running_mean`,
# `running_var`, `num_batches_tracked`) as well as the weights.
#
# ## 5.6 Freezing correctly
#
# Freezing means three things, and tutorials often do only the first.
#
# 1. **No gradients**: `module.requires_grad_(False)` sets `requires_grad = False` on
#    every parameter of a module. Autograd then records nothing for operations whose
#    inputs need no gradient, so the backward pass stops at the first trainable layer;
#    feature extraction is also cheaper per step.
# 2. **Only trainable parameters in the optimizer**, so that none of the frozen ones
#    can be updated by accident (shown below).
# 3. **Frozen batch norm in `eval()` mode.** `model.train()` switches *every* submodule
#    to training mode, and a batch-norm layer in training mode normalises with the
#    batch's statistics and updates its running estimates, whether or not its
#    parameters require gradients. A "frozen" backbone would drift towards the target's
#    statistics. So after `model.train()`, call `.eval()` on the frozen blocks.
#
# The function below builds a target model for each method. For fine-tuning, the
# optimizer gets two **parameter groups**, each a dict with its own learning rate: the
# new head learns at `lr`, the unfrozen `layer3` at `lr * backbone_lr_factor`. A
# `StepLR` schedule divides every group's rate by 10 after 8 of the 12 epochs. The
# learning rates and the backbone factor were chosen on the validation set while the
# chapter was written, with the same values for every method and budget. The length of
# training (12 epochs of 320 draws) was set by the time budget, not tuned; section 5.7
# shows which runs it leaves short.

# %%
epochs, lr, backbone_lr_factor = 12, 1e-2, 0.01


def build(method: str, run_seed: int) -> tuple:
    """A target model for `method`, its frozen blocks, optimizer and scheduler."""
    torch.manual_seed(run_seed)  # the same random head (or network) for every method
    model = GlyphNet(num_classes=10)
    frozen = []
    if method != "scratch":
        result = model.load_state_dict(backbone_state, strict=False)
        assert result.missing_keys == ["fc.weight", "fc.bias"]
        frozen = [model.layer1, model.layer2]
        if method == "feature extraction":
            frozen.append(model.layer3)
        for block in frozen:
            block.requires_grad_(False)
    model = model.to(device)
    if method == "fine-tuning":
        groups = [
            {"params": model.layer3.parameters(), "lr": lr * backbone_lr_factor},
            {"params": model.fc.parameters(), "lr": lr},
        ]
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=8, gamma=0.1)
    return model, frozen, optimizer, scheduler


print(f"{'method':19} {'trainable':>9} {'of all':>7}  learning rates")
for method in methods:
    model, frozen, optimizer, _ = build(method, seed)
    trainable = count_parameters(model)  # counts requires_grad=True only
    everything = count_parameters(model, trainable_only=False)
    rates = [group["lr"] for group in optimizer.param_groups]
    print(f"{method:19} {trainable:>9,} {everything:>7,}  {rates}")
    record(f"trainable_{method.split()[0].replace('-', '_')}", trainable, fmt="{:,}")

# %% [markdown]
# Feature extraction trains only the head's {glue:}`trainable_feature` parameters;
# fine-tuning also trains `layer3`, {glue:}`trainable_fine_tuning` in all.
#
# **The batch-norm trap, measured.** One forward pass of a target batch through the
# feature-extraction model in training mode, with no optimizer step at all:

# %%
model, frozen, optimizer, _ = build("feature extraction", seed)
bn = model.layer1[1]  # the first BatchNorm2d
before = bn.running_mean.clone()
model.train()  # also puts the frozen blocks in training mode
with torch.no_grad():
    model(images.to(device))
drift = (bn.running_mean - before).abs().max().item()
print(f"model.train(): running_mean moved by up to {drift:.3f}")

before = bn.running_mean.clone()
model.train()
for block in frozen:
    block.eval()  # the fix
with torch.no_grad():
    model(images.to(device))
print("frozen blocks in eval():", torch.equal(bn.running_mean, before))
record("bn_drift", drift, fmt="{:.3f}")
assert drift > 0 and torch.equal(bn.running_mean, before)

# %% [markdown]
# In training mode the buffers moved by up to {glue:}`bn_drift` although no parameter
# requires a gradient; with the frozen blocks in `eval()` they did not move.
#
# **Why only trainable parameters go into the optimizer.** An optimizer skips a
# parameter whose `.grad` is `None`, and a parameter frozen before any backward pass
# never gets one, so for it the choice does not matter. It does for a parameter that was
# trained and then frozen, say after a first phase that trained everything, with the
# same optimizer kept. PyTorch's default `optimizer.zero_grad()` sets its old gradient
# to `None`, and the optimizer leaves it alone from then on. But with
# `zero_grad(set_to_none=False)` the gradient is only zeroed, and AdamW keeps moving the
# "frozen" weights: its running average of past gradients is not zero, and its weight
# decay shrinks them at every step. Three steps after freezing `layer1`:

# %%
for set_to_none, fresh_optimizer in ((True, False), (False, False), (False, True)):
    model, _, _, _ = build("scratch", seed)  # everything trainable at first
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    for step in range(4):
        if step == 1:  # one step of training everything, then freeze layer1
            model.layer1.requires_grad_(False)
            before = model.layer1[0].weight.detach().clone()
            if fresh_optimizer:  # the fix: a new optimizer over trainable ones only
                trainable = [p for p in model.parameters() if p.requires_grad]
                optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-2)
        optimizer.zero_grad(set_to_none=set_to_none)
        criterion(model(images.to(device)), labels.to(device)).backward()
        optimizer.step()
    changed = not torch.equal(model.layer1[0].weight, before)
    print(
        f"set_to_none={set_to_none!s:5}  optimizer of trainable parameters only: "
        f"{fresh_optimizer!s:5}  frozen layer1 changed: {changed}"
    )
    assert changed == (not set_to_none and not fresh_optimizer)

# %% [markdown]
# Only the middle case moved the frozen weights. An optimizer built after freezing, from
# the trainable parameters only, is safe whatever `zero_grad` does, and its state
# (AdamW keeps two running averages per parameter) stays small.
#
# ## 5.7 Train and validation phases, written out
#
# Transfer-learning code often trains with the loop of PyTorch's transfer-learning
# tutorial, in which each epoch has a *train* phase and a *val* phase. Here it is, with
# frozen blocks handled as section 5.6 showed: they go back to `eval()` after
# `model.train()`, gradients are recorded only
# in the train phase (`torch.set_grad_enabled`), the scheduler steps once per epoch
# after that epoch's optimizer steps, and the weights of the best validation epoch are
# kept (in memory, with `copy.deepcopy`, since `state_dict()` returns references to the
# live tensors). First run: fine-tuning with 1 label per class, draw 0.

# %%
model, frozen, optimizer, scheduler = build("fine-tuning", run_seed=draws[0])
loaders = {"train": target_train_loader(1, draws[0]), "val": val_loader}
frozen_before = {
    name: copy.deepcopy(block.state_dict())
    for name, block in (("layer1", model.layer1), ("layer2", model.layer2))
}
curves = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
best_acc, best_state, best_epoch = -1.0, None, 0
started = time.perf_counter()
for epoch in range(1, epochs + 1):
    for phase in ("train", "val"):
        if phase == "train":
            model.train()
            for block in frozen:
                block.eval()  # frozen batch norm keeps its statistics
        else:
            model.eval()
        total_loss, correct, count = 0.0, 0, 0
        for inputs, targets in loaders[phase]:
            inputs, targets = inputs.to(device), targets.to(device)
            with torch.set_grad_enabled(phase == "train"):
                outputs = model(inputs)
                loss = criterion(outputs, targets)
            if phase == "train":
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            total_loss += loss.item() * len(targets)
            correct += (outputs.argmax(dim=1) == targets).sum().item()
            count += len(targets)
        curves[f"{phase}_loss"].append(total_loss / count)
        curves[f"{phase}_acc"].append(correct / count)
    scheduler.step()  # once per epoch, after the optimizer steps
    if curves["val_acc"][-1] > best_acc:
        best_acc, best_epoch = curves["val_acc"][-1], epoch
        best_state = copy.deepcopy(model.state_dict())
    print(
        f"epoch {epoch:2d}  train loss {curves['train_loss'][-1]:.3f}  "
        f"val loss {curves['val_loss'][-1]:.3f}  val acc {curves['val_acc'][-1]:.3f}"
    )
model.load_state_dict(best_state)
first_seconds = time.perf_counter() - started

for name, state in frozen_before.items():  # weights AND batch-norm buffers
    now = model.get_submodule(name).state_dict()
    assert all(torch.equal(state[k], now[k]) for k in state), name
print(
    f"best val accuracy {best_acc:.3f} in epoch {best_epoch}; layer1, layer2 unchanged"
)

# %% [markdown]
# The assertion compared every tensor of `layer1` and `layer2`, weights and batch-norm
# buffers, with their values before training: they are bit-for-bit unchanged, while
# `layer3` and the head were trained.
#
# `train_phases` in `helpers.transfer` is this loop as a function (it returns the same
# curves); the remaining runs use it. Each of the three methods is trained for every
# budget and draw; the table keeps each run's best validation accuracy.

# %%
runs = {}  # (per_class, draw, method) -> (model, curves, seconds)
runs[1, draws[0], "fine-tuning"] = (model, curves, first_seconds)
todo = [(k, d, m) for k in budgets for d in draws for m in methods]
for per_class, draw, method in tqdm(todo, desc="runs"):
    if (per_class, draw, method) in runs:
        continue
    model, frozen, optimizer, scheduler = build(method, run_seed=draw)
    loaders = {"train": target_train_loader(per_class, draw), "val": val_loader}
    started = time.perf_counter()
    history = train_phases(
        model, loaders, criterion, optimizer, epochs, device,
        scheduler=scheduler, frozen=frozen,
    )  # fmt: skip
    curves = {key: getattr(history, key) for key in ("train_loss", "train_acc")}
    curves |= {key: getattr(history, key) for key in ("val_loss", "val_acc")}
    runs[per_class, draw, method] = (model, curves, time.perf_counter() - started)

print(f"{'labels per class':>16} " + " ".join(f"{m:>19}" for m in methods))
val_table = {}
for per_class in budgets:
    row = []
    for method in methods:
        accs = [max(runs[per_class, d, method][1]["val_acc"]) for d in draws]
        val_table[per_class, method] = sum(accs) / len(accs)
        row.append(f"{val_table[per_class, method]:>19.3f}")
    print(f"{per_class:>16} " + " ".join(row))
seconds = {m: sum(runs[k, d, m][2] for k in budgets for d in draws) for m in methods}
n_each = len(budgets) * len(draws)
print(
    "training seconds per run:", {m: round(s / n_each, 1) for m, s in seconds.items()}
)

# %% [markdown]
# The curves of all {glue:}`n_runs` runs, draw 0 solid and draw 1 dashed:

# %%
record("n_runs", len(runs))
colours = dict(zip(methods, ("tab:grey", "tab:blue", "tab:orange"), strict=True))
fig, axes = plt.subplots(len(budgets), 2, figsize=(11, 3 * len(budgets)), sharex=True)
for row, per_class in enumerate(budgets):
    for (k, draw, method), (_, curves, _) in runs.items():
        if k != per_class:
            continue
        first = draw == draws[0]
        style = {"color": colours[method], "linestyle": "-" if first else "--"}
        label = method if first else None
        x = range(1, epochs + 1)
        axes[row, 0].plot(x, curves["train_loss"], label=label, **style)
        axes[row, 1].plot(x, curves["val_acc"], label=label, **style)
    axes[row, 0].set(
        title=f"{per_class} label(s) per class: training loss", ylabel="loss"
    )
    axes[row, 1].set(
        title=f"{per_class} label(s) per class: validation accuracy", ylabel="accuracy"
    )
for ax in axes.flat:
    ax.grid(alpha=0.3)
for ax in axes[-1]:
    ax.set_xlabel("epoch")
axes[0, 1].legend()
fig.tight_layout()
plt.show()
fe_speed = seconds["scratch"] / seconds["feature extraction"]
record("fe_speedup", fe_speed, fmt="{:.1f}")
scratch_1_curves = [runs[1, d, "scratch"][1] for d in draws]
record(
    "scratch_1_loss", max(c["train_loss"][-1] for c in scratch_1_curves), fmt="{:.3f}"
)
# last-epoch training loss at 10 labels per class: scratch vs the two transfer methods
final_loss_10 = {
    m: max(runs[10, d, m][1]["train_loss"][-1] for d in draws) for m in methods
}
scratch_10_loss = min(runs[10, d, "scratch"][1]["train_loss"][-1] for d in draws)
record("scratch_10_loss", scratch_10_loss, fmt="{:.2f}")
record("transfer_10_loss", max(final_loss_10[m] for m in methods[1:]), fmt="{:.2f}")
assert scratch_10_loss > max(final_loss_10[m] for m in methods[1:]), final_loss_10
for per_class in budgets:
    for method in methods:
        name = f"val_{method.split()[0].replace('-', '_')}_{per_class}"
        record(name, val_table[per_class, method], fmt="{:.1%}")

# %% [markdown]
# Three things stand out on validation. With 1 label per class, both ways of
# transferring beat training from scratch by a wide margin (scratch
# {glue:}`val_scratch_1`, feature extraction {glue:}`val_feature_1`, fine-tuning
# {glue:}`val_fine_tuning_1`), and the scratch network's training loss falls to
# {glue:}`scratch_1_loss` or less while its validation accuracy stays low: with ten
# images it memorises them. As labels grow, scratch catches up ({glue:}`val_scratch_10`
# against {glue:}`val_fine_tuning_10` for fine-tuning at 10 per class). Scratch is also
# the method the short schedule holds back most: at 10 per class its last-epoch training
# loss is still {glue:}`scratch_10_loss` or more, against {glue:}`transfer_10_loss` or
# less for the transferred networks, so a longer schedule could narrow the gap further.
# Features learned from printed letters help most where labels are scarcest. And with
# the same number of steps, a feature-extraction run was {glue:}`fe_speedup` times
# faster than a run from scratch on this machine, because the backward pass stops at
# the head instead of running through the whole network (these timings are only
# meaningful on an otherwise idle machine; they vary between runs).
#
# ## 5.8 The test set, once
#
# Every choice (hyper-parameters, each run's best epoch) was made on validation data.
# Now each selected model is scored once on the 1,000 test digits.

# %%
test_acc = {}
for (per_class, draw, method), (model, _, _) in runs.items():
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, targets in test_loader:
            predicted = model(inputs.to(device)).argmax(dim=1).cpu()
            correct += (predicted == targets).sum().item()
    test_acc[per_class, draw, method] = correct / len(digits.y_test)


def mean_test(per_class: int, method: str) -> float:
    """Test accuracy averaged over the draws."""
    return sum(test_acc[per_class, d, method] for d in draws) / len(draws)


print(f"{'labels per class':>16} " + " ".join(f"{m:>19}" for m in methods))
for per_class in budgets:
    cells = [
        f"{mean_test(per_class, m):.3f} ("
        + ", ".join(f"{test_acc[per_class, d, m]:.2f}" for d in draws)
        + ")"
        for m in methods
    ]
    print(f"{per_class:>16} " + " ".join(f"{c:>19}" for c in cells))

fig, ax = plt.subplots(figsize=(6.5, 4))
for method in methods:
    ax.plot(budgets, [mean_test(k, method) for k in budgets], marker="o",
            color=colours[method], label=f"{method} (mean of draws)")  # fmt: skip
    for draw in draws:
        ax.scatter(budgets, [test_acc[k, draw, method] for k in budgets],
                   color=colours[method], alpha=0.4, s=15)  # fmt: skip
ax.set_xscale("log")
ax.set_xticks(budgets, [str(k) for k in budgets])
ax.set(
    title="Digits: test accuracy against labelled images per class",
    xlabel="labelled training images per class (log scale)",
    ylabel="test accuracy",
)
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# The table gives the mean over the two draws and, in brackets, each draw; the figure
# shows the same (faint dots for the draws). The headline result is at the smallest
# budget:

# %%
scratch_1 = mean_test(1, "scratch")
fe_1 = mean_test(1, "feature extraction")
ft_1 = mean_test(1, "fine-tuning")
ft_gain, fe_gain = 100 * (ft_1 - scratch_1), 100 * (fe_1 - scratch_1)
record("test_scratch_1", scratch_1, fmt="{:.1%}")
record("test_fe_1", fe_1, fmt="{:.1%}")
record("test_ft_1", ft_1, fmt="{:.1%}")
record(
    "ft_gain_1",
    ft_gain,
    fmt="{:+.1f}",
    headline="Fine-tuning minus scratch, 1 label per class, test accuracy points",
)
record(
    "fe_gain_1",
    fe_gain,
    fmt="{:+.1f}",
    headline="Feature extraction minus scratch, 1 label per class, test points",
)
record("test_scratch_10", mean_test(10, "scratch"), fmt="{:.1%}")
draw_gains = [
    100 * (test_acc[1, d, "fine-tuning"] - test_acc[1, d, "scratch"]) for d in draws
]
record("ft_gain_1_low", min(draw_gains), fmt="{:+.1f}")
record("ft_gain_1_high", max(draw_gains), fmt="{:+.1f}")
for per_class in budgets[1:]:
    gain = mean_test(per_class, "fine-tuning") - mean_test(per_class, "scratch")
    record(f"ft_gain_{per_class}", 100 * gain, fmt="{:+.1f}")
print(
    f"1 label per class, test accuracy: scratch {scratch_1:.3f}, "
    f"feature extraction {fe_1:.3f}, fine-tuning {ft_1:.3f}"
)
# CPU levels default, avx2, avx512 x seeds 0-2: fine-tuning gained 17.0 to 19.3 points
# over scratch, feature extraction 16.0 to 19.0
assert ft_gain >= 10 and fe_gain >= 5, (scratch_1, fe_1, ft_1)
# the benefit of transfer shrinks as labels grow
assert ft_gain > 100 * (mean_test(10, "fine-tuning") - mean_test(10, "scratch"))

# %% [markdown]
# With one labelled digit per class, fine-tuning the letter network scores
# {glue:}`test_ft_1` on the test digits and feature extraction {glue:}`test_fe_1`,
# against {glue:}`test_scratch_1` from scratch: {glue:}`ft_gain_1` and
# {glue:}`fe_gain_1` points. At accuracies between 40 % and 60 % one draw's test
# accuracy has a standard error of about 1.5 points (1,000 images), but which ten images
# are drawn moves the result more than that: the fine-tuning gain was
# {glue:}`ft_gain_1_low` points for one draw and {glue:}`ft_gain_1_high` for the other,
# which is why each budget has two draws (the asserted threshold, at least 10 points,
# applies to their mean). The gain is
# {glue:}`ft_gain_3` points at 3 labels per class and {glue:}`ft_gain_10` at 10: by then
# the network trained on digits alone, which reaches {glue:}`test_scratch_10`, has
# caught up with the ones whose features were shaped by printed letters. At these
# budgets fine-tuning `layer3` is not clearly better than feature extraction: with so
# few labels there is little to adapt the features with, and much to overfit. How many
# labels it takes for scratch to catch up depends on the task and on how closely the
# source resembles it; handwritten digits are an easy target.
#
# ## 5.9 With internet access: an ImageNet ResNet-18 on your own images
#
# Everything above carries over to torchvision's pretrained models. The function below
# fine-tunes an ImageNet ResNet-18 on a folder of your images laid out for
# `torchvision.datasets.ImageFolder`: one sub-folder per class (`my_images/cat/1.jpg`,
# `my_images/dog/7.png`, ...), whose names become the class names. It freezes everything
# but `layer4` and a new `fc`, gives `layer4` a tenth of the head's learning rate, and
# trains with SGD, a `StepLR` schedule and `train_phases`. The cell only *defines* the
# function; the next cell runs it when you set `USE_IMAGENET = True`.
#
# `resnet18(weights=...)` fetches the weights with `torch.hub.load_state_dict_from_url`,
# which saves them as `$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth` (`TORCH_HOME`
# defaults to `$XDG_CACHE_HOME/torch`, usually `~/.cache/torch`) and downloads only when
# that file is missing. torchvision
# asks it to check the file's SHA-256 against the prefix in the name (`f37072fd`), but
# the check runs only on a download; a file already in the cache is loaded as it is, and
# (in the torchvision and torch versions this book uses) with `weights_only=False`.
# Treat that folder as trusted. The book's tests use this: they place a state dict there
# under that name and run this very cell offline.

# %% tags=["imagenet"]
# Fine-tune an ImageNet ResNet-18 on an image folder (needs internet the first time).
import torch
from helpers.runtime import make_generator
from helpers.transfer import train_phases
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.transforms import v2


def finetune_imagenet_resnet18(
    folder, device, *, epochs=10, batch_size=32, lr=1e-2, val_share=0.2, seed=0
):
    """Fine-tune layer4 and a new head of an ImageNet ResNet-18 on `folder`."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    evaluation = weights.transforms()  # resize 256, centre crop 224, ImageNet mean/std
    training = v2.Compose([
        v2.RandomResizedCrop(evaluation.crop_size[0], antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=evaluation.mean, std=evaluation.std),
    ])  # fmt: skip
    train_view = ImageFolder(folder, transform=training)
    val_view = ImageFolder(folder, transform=evaluation)  # same files, no augmentation
    order = torch.randperm(len(train_view), generator=make_generator(seed)).tolist()
    n_val = max(1, round(val_share * len(order)))
    loaders = {
        "train": DataLoader(Subset(train_view, order[n_val:]), batch_size, shuffle=True,
                            generator=make_generator(seed)),
        "val": DataLoader(Subset(val_view, order[:n_val]), batch_size),
    }  # fmt: skip

    model = resnet18(weights=weights)  # downloads into $TORCH_HOME unless cached
    model.requires_grad_(False)
    model.layer4.requires_grad_(True)
    model.fc = nn.Linear(model.fc.in_features, len(train_view.classes))  # trainable
    model = model.to(device)
    frozen = [model.conv1, model.bn1, model.layer1, model.layer2, model.layer3]
    optimizer = torch.optim.SGD(
        [
            {"params": model.layer4.parameters(), "lr": lr / 10},
            {"params": model.fc.parameters(), "lr": lr},
        ],
        momentum=0.9,
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    history = train_phases(
        model, loaders, nn.CrossEntropyLoss(), optimizer, epochs, device,
        scheduler=scheduler, frozen=frozen, progress=True,
    )  # fmt: skip
    return model, history, train_view.classes


# %%
USE_IMAGENET = False  # True: download ResNet-18's ImageNet weights (about 45 MB)
IMAGE_FOLDER = Path("my_images")  # one sub-folder of images per class
if USE_IMAGENET:
    imagenet_model, imagenet_history, imagenet_classes = finetune_imagenet_resnet18(
        IMAGE_FOLDER, device
    )
    print(imagenet_classes, "best val accuracy", max(imagenet_history.val_acc))

# %% [markdown]
# ```{admonition} Common pitfalls
# :class: warning
# - **`pretrained=True`**: deprecated since torchvision 0.13; write
#   `weights=ResNet18_Weights.IMAGENET1K_V1` (or `.DEFAULT`, which can change between
#   releases) and take the preprocessing from `weights.transforms()`.
# - **Preprocessing that differs from pretraining**: other normalisation statistics or
#   image sizes than the weights were trained with quietly cost accuracy.
# - **Freezing with `requires_grad_(False)` only**: `model.train()` still updates the
#   running statistics of frozen batch-norm layers; call `.eval()` on them after it.
# - **Frozen parameters in the optimizer** after they were trained: with
#   `zero_grad(set_to_none=False)` they keep a zero `.grad`, and momentum or weight
#   decay (AdamW, SGD with momentum) keeps moving them. Build the optimizer from the
#   trainable parameters only.
# - **`strict=False` without reading its result**: it silently skips every key that does
#   not match; check `missing_keys` and `unexpected_keys`. It does not skip keys whose
#   *shapes* differ; drop the old head's entries first.
# - **Inception-v3** expects 299 × 299 inputs and, in training mode, returns
#   `InceptionOutputs(logits, aux_logits)`; replace both `fc` and `AuxLogits.fc`.
# - **Untrusted checkpoints**: load with `weights_only=True`, and treat the
#   `$TORCH_HOME` cache as trusted code, since torchvision loads it without that option.
# ```
#
# ## Exercises
#
# **Exercise 1.** With a frozen backbone and no augmentation, the features of every
# image never change, so they can be computed once. Compute the 256 pooled features of
# the 3-per-class training digits (draw 0), of the validation and of the test digits
# with the source backbone, fit scikit-learn's `LogisticRegression` on them, and compare
# its validation accuracy and its time with the feature-extraction run of section 5.7.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 1: the backbone runs once per image; the head is fitted on fixed features.
from sklearn.linear_model import LogisticRegression

backbone = GlyphNet(num_classes=10)
backbone.load_state_dict(backbone_state, strict=False)
backbone = backbone.to(device).eval()


def features(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, 28, 28) images in [0, 1] -> (N, 256) pooled source features."""
    with torch.no_grad():
        x = normalize(images).to(device)
        return backbone.pool(backbone.layer3(backbone.layer2(backbone.layer1(x)))).cpu()


started = time.perf_counter()
index = labelled_subset(digits.y_train, 3, seed=draws[0])
probe_head = LogisticRegression(max_iter=2000)
probe_head.fit(features(digits.x_train[index]).numpy(), digits.y_train[index].numpy())
probe_acc = probe_head.score(features(digits.x_val).numpy(), digits.y_val.numpy())
probe_seconds = time.perf_counter() - started
fe_run = runs[3, draws[0], "feature extraction"]
fe_acc = max(fe_run[1]["val_acc"])
print(
    f"Logistic regression on fixed features: val accuracy {probe_acc:.3f} in "
    f"{probe_seconds:.2f} s. The head trained on augmented digits: {fe_acc:.3f} in "
    f"{fe_run[2]:.1f} s. The two accuracies are within 10 points of each other (the "
    "trained head's is the best of 12 validation epochs, so slightly optimistic; the "
    "fitted one involved no such choice), and precomputing is much faster, since the "
    "backbone sees each image once instead of at every step."
)
assert abs(probe_acc - fe_acc) < 0.1 and probe_seconds < fe_run[2]

# %% [markdown]
# **Exercise 2.** Fine-tune *all* of the network (every block trainable, the backbone at
# `lr * backbone_lr_factor`, the head at `lr`) with 1 label per class (draw 0), and
# compare its best validation accuracy with fine-tuning `layer3` only.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 2: unfreeze everything; the optimizer gets two parameter groups again.
model, _, _, _ = build("scratch", run_seed=draws[0])  # random head and backbone ...
model.load_state_dict(backbone_state, strict=False)  # ... then the source backbone
backbone_params = [p for n, p in model.named_parameters() if n[:3] != "fc."]
optimizer = torch.optim.AdamW(
    [
        {"params": backbone_params, "lr": lr * backbone_lr_factor},
        {"params": model.fc.parameters(), "lr": lr},
    ],
    weight_decay=1e-4,
)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=8, gamma=0.1)
loaders = {"train": target_train_loader(1, draws[0]), "val": val_loader}
history = train_phases(
    model, loaders, criterion, optimizer, epochs, device, scheduler=scheduler
)
fig, ax = plt.subplots(figsize=(6, 3.5))
x = range(1, epochs + 1)
ax.plot(x, history.val_acc, label="all blocks trainable")
ax.plot(x, runs[1, draws[0], "fine-tuning"][1]["val_acc"], label="layer3 trainable")
ax.plot(x, runs[1, draws[0], "scratch"][1]["val_acc"], label="scratch")
ax.set(
    title="1 label per class (draw 0): how much to fine-tune",
    xlabel="epoch",
    ylabel="validation accuracy",
)
ax.grid(alpha=0.3)
ax.legend()
plt.show()
all_acc = max(history.val_acc)
layer3_acc = max(runs[1, draws[0], "fine-tuning"][1]["val_acc"])
scratch_acc = max(runs[1, draws[0], "scratch"][1]["val_acc"])
w_source = backbone_state["layer1.0.weight"].to(device)
# how far layer1's convolution moved, relative to its size
moved = ((model.layer1[0].weight - w_source).norm() / w_source.norm()).item()
print(
    f"best val accuracy, 1 label per class: all blocks {all_acc:.3f}, layer3 only "
    f"{layer3_acc:.3f}, scratch {scratch_acc:.3f}. Unfreezing everything changes the "
    f"result by {100 * (all_acc - layer3_acc):+.1f} points (one standard error of a "
    "validation accuracy on 500 digits is about 2 points here), small next to the gap "
    f"to scratch. At a hundredth of the head's rate, layer1's weights moved by "
    f"{moved:.1%} of their norm; the early blocks' batch norm, now in training mode, "
    "also adapted its running statistics to the digits."
)
assert abs(all_acc - layer3_acc) < 0.05 and all_acc > scratch_acc + 0.1

# %% [markdown]
# **Exercise 3.** A checkpoint saved from a wrapped model (for example
# `nn.DataParallel`, or a model kept as `self.backbone`) has prefixed keys such as
# `module.layer1.0.weight`. Save the source backbone that way, load it into a fresh
# `GlyphNet(10)` with `strict=False`, and show what happens. Then write
# `load_backbone(model, state, prefix)` that strips the prefix, loads, and raises unless
# exactly the head is missing.

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 3: strict=False "succeeds" while loading nothing at all.
wrapped = {f"module.{k}": v for k, v in backbone_state.items()}
fresh = GlyphNet(num_classes=10)
silent = fresh.load_state_dict(wrapped, strict=False)
n_missing, n_unexpected = len(silent.missing_keys), len(silent.unexpected_keys)
n_model = len(fresh.state_dict())
assert not torch.equal(fresh.layer1[0].weight, backbone_state["layer1.0.weight"])


def load_backbone(model: nn.Module, state: dict, prefix: str = "") -> None:
    """Load `state` (keys may start with `prefix`) into all of `model` but its head."""
    stripped = {k.removeprefix(prefix): v for k, v in state.items()}
    result = model.load_state_dict(stripped, strict=False)
    if result.missing_keys != ["fc.weight", "fc.bias"] or result.unexpected_keys:
        raise RuntimeError(f"backbone did not load cleanly: {result}")


load_backbone(fresh, wrapped, prefix="module.")
assert torch.equal(fresh.layer1[0].weight, backbone_state["layer1.0.weight"])
try:
    load_backbone(GlyphNet(num_classes=10), wrapped)  # forgot the prefix: caught
except RuntimeError as error:
    print("caught:", str(error)[:60], "...")
print(
    f"With the prefix, strict=False 'succeeded' with {n_missing} of the model's "
    f"{n_model} keys missing (batch norm fills in a missing num_batches_tracked itself) "
    f"and all {n_unexpected} file keys unexpected: nothing was loaded and the weights "
    "stayed random. Checking the result catches it."
)
assert n_unexpected == len(wrapped) and n_missing == n_model - 3

# %% [markdown]
# **Exercise 4.** Prepare VGG-16 and Inception-v3 (on the meta device) for a 10-class
# task with a frozen backbone: replace the right layers, then count the trainable
# parameters and check the output shapes for a batch of 2 images (224 × 224 for VGG,
# 299 × 299 for Inception, in training mode, where Inception also returns auxiliary
# logits).

# %% tags=["hide-cell"] jupyter={"source_hidden": true}
# Solution 4: freeze everything, then new heads (new modules are trainable).
with torch.device("meta"):
    vgg = models.vgg16(weights=None).requires_grad_(False)
    vgg.classifier[6] = nn.Linear(vgg.classifier[6].in_features, 10)
    inc = models.inception_v3(weights=None, init_weights=True).requires_grad_(False)
    inc.fc = nn.Linear(inc.fc.in_features, 10)
    inc.AuxLogits.fc = nn.Linear(inc.AuxLogits.fc.in_features, 10)
    vgg_out = vgg.train()(torch.empty(2, 3, 224, 224))
    inc_out = inc.train()(torch.empty(2, 3, 299, 299))
vgg_trainable, inc_trainable = count_parameters(vgg), count_parameters(inc)
print(
    f"VGG-16: {vgg_trainable:,} trainable (4096*10 + 10), output {tuple(vgg_out.shape)}; "
    f"Inception-v3: {inc_trainable:,} trainable (2048*10 + 10 + 768*10 + 10), logits "
    f"{tuple(inc_out.logits.shape)}, aux {tuple(inc_out.aux_logits.shape)}"
)
assert vgg_trainable == 4096 * 10 + 10
assert inc_trainable == 2048 * 10 + 10 + 768 * 10 + 10
assert vgg_out.shape == inc_out.logits.shape == inc_out.aux_logits.shape == (2, 10)

# %% [markdown]
# ## Run time
#
# The whole chapter, pretraining included, on the machine that executed this page:

# %%
chapter_seconds = time.perf_counter() - chapter_started
cpu_seconds = time.process_time()
record(
    "chapter_seconds",
    chapter_seconds,
    fmt="{:.0f}",
)
record("chapter_cpu_seconds", cpu_seconds, fmt="{:.0f}")
print(f"chapter: {chapter_seconds:.0f} s wall, {cpu_seconds:.0f} s CPU (all threads)")

# %% [markdown]
# ## Summary
#
# - torchvision's builders take `weights=` (an enum member with URL, metrics and
#   `transforms()`), not `pretrained=`; on the `meta` device they can be inspected for
#   free. The head to replace is `fc` (ResNet, Inception, plus `AuxLogits.fc`) or
#   `classifier[6]` (VGG).
# - Load a backbone under a new head by dropping the old head's keys and reading
#   `strict=False`'s `missing_keys`/`unexpected_keys`; load files with
#   `weights_only=True`.
# - Freezing is `requires_grad_(False)`, only trainable parameters in the optimizer, and
#   `eval()` on frozen batch-norm blocks after `model.train()`; a check that their
#   weights and buffers did not change makes it certain.
# - A letter network pretrained for {glue:}`pretrain_seconds` s lifted 1-label-per-class
#   digit accuracy by {glue:}`ft_gain_1` points (fine-tuning) and {glue:}`fe_gain_1`
#   (feature extraction); the gain shrinks as labels grow.
#
# **Next:** chapter 6 turns from classifying images to generating them.
