"""Chapter 3's exercise checkers (helpers.exercises.ch03): right answers pass, the chapter's
untouched starters report "not attempted", each listed mistake gets its hint, and other
wrong answers fail."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from exercise_cells import run_starter, starter_cells
from torch import nn

from helpers.exercises.ch03 import (
    check_accuracy_by_confidence,
    check_conv2d_by_unfold,
    check_diagonal_kernel,
    check_pooled_head,
    check_rate_sweep,
    check_short_run,
)
from helpers.training import fit, predict

STARTERS = starter_cells("03")


def test_every_exercise_has_one_starter():
    assert len(STARTERS) == 5


def untouched(index: int, **names: object) -> str:
    return run_starter(STARTERS[index], **names)


# --- 3.1 -----------------------------------------------------------------------------

DIAGONAL = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


@pytest.mark.parametrize("kernel", [DIAGONAL, -DIAGONAL, torch.tensor([[0.0, 0, 0], [0, -1, 0], [0, 0, 1]])])
def test_diagonal_kernels_pass(kernel, capsys):
    assert check_diagonal_kernel(kernel)
    assert "not at all to 4 perpendicular ones" in capsys.readouterr().out


def test_a_nearly_diagonal_kernel_passes_with_its_ratio(capsys):
    assert check_diagonal_kernel(DIAGONAL + 0.05 * SOBEL_X)
    assert "31 times more than to 4 perpendicular ones" in capsys.readouterr().out


def test_diagonal_starter_is_not_attempted():
    assert untouched(0) == "… Exercise 3.1: not attempted yet: fill in `diagonal` above\n"


@pytest.mark.parametrize(
    ("kernel", "hint"),
    [
        (DIAGONAL.flip(1), "the other diagonal"),  # top left to bottom right
        (SOBEL_X, "both diagonals"),
        (SOBEL_X.T, "both diagonals"),
        # a line detector along the wanted diagonal: symmetric, not an edge kernel
        (torch.tensor([[-1.0, -1, 2], [-1, 2, -1], [2, -1, -1]]), "like a line detector"),
        (DIAGONAL + 0.5, "sum to zero"),
    ],
)
def test_diagonal_mistakes_get_their_hint(kernel, hint):
    verdict = check_diagonal_kernel(kernel)
    assert not verdict and hint in verdict.hint


@pytest.mark.parametrize(
    ("kernel", "message"),
    [
        ([[1.0]], "should be a tensor, got list"),
        (torch.zeros(1, 1, 3, 3), r"shape (1, 1, 3, 3), expected (3, 3)"),
        (torch.ones(3, 3, dtype=torch.long), "expected a float dtype"),
        (torch.full((3, 3), float("nan")), "NaN or infinite"),
        (torch.zeros(3, 3), "all zeros"),
        (DIAGONAL + 0.4 * SOBEL_X, "should be at least 10 times"),  # partly diagonal
    ],
)
def test_other_wrong_kernels_fail(kernel, message):
    verdict = check_diagonal_kernel(kernel)
    assert not verdict and message in verdict.message
    if "at least 10" in message:
        assert verdict.hint is None


# --- 3.2 -----------------------------------------------------------------------------


def conv2d_by_unfold(x, weight, bias, padding):
    c_out, _, k, _ = weight.shape
    h_out = x.shape[2] + 2 * padding - k + 1
    w_out = x.shape[3] + 2 * padding - k + 1
    columns = F.unfold(x, k, padding=padding)  # (B, C_in*k*k, L)
    return (weight.view(c_out, -1) @ columns + bias[:, None]).unflatten(2, (h_out, w_out))


def test_conv2d_by_unfold_passes(capsys):
    assert check_conv2d_by_unfold(conv2d_by_unfold)
    assert "matches F.conv2d to" in capsys.readouterr().out


def test_conv2d_starter_is_not_attempted():
    assert untouched(1) == "… Exercise 3.2: not attempted yet: fill in `conv2d_by_unfold` above\n"


def _sizes(x, weight, padding):
    return x.shape[0], weight.shape[0], x.shape[2] + 2 * padding - 2, x.shape[3] + 2 * padding - 2


def no_bias(x, weight, bias, padding):
    return conv2d_by_unfold(x, weight, torch.zeros_like(bias), padding)


def width_first(x, weight, bias, padding):
    b, c, h, w = _sizes(x, weight, padding)
    return conv2d_by_unfold(x, weight, bias, padding).flatten(2).view(b, c, w, h)


def view_without_transpose(x, weight, bias, padding):
    columns = F.unfold(x, 3, padding=padding)
    return (columns.transpose(1, 2) @ weight.flatten(1).T + bias).reshape(_sizes(x, weight, padding))


def channels_last_weight(x, weight, bias, padding):
    flat = weight.permute(0, 2, 3, 1).flatten(1)
    return (flat @ F.unfold(x, 3, padding=padding) + bias.view(1, -1, 1)).view(_sizes(x, weight, padding))


def width_first_transposed(x, weight, bias, padding):
    return width_first(x, weight, bias, padding).transpose(2, 3)


def same_size_output(x, weight, bias, padding):
    b, _, h, w = x.shape  # right for padding 1 only
    return (weight.flatten(1) @ F.unfold(x, 3, padding=padding) + bias.view(1, -1, 1)).view(
        b, weight.shape[0], h, w
    )


def ignores_padding(x, weight, bias, padding):
    b, _, h, w = x.shape  # H x W: right for padding 1 only, and no error at padding 0
    out = weight.flatten(1) @ F.unfold(x, 3, padding=padding) + bias.view(1, -1, 1)
    return out.reshape(b, -1, h, w)


def sides_from_l(x, weight, bias, padding):
    out = weight.flatten(1) @ F.unfold(x, 3, padding=padding) + bias.view(1, -1, 1)
    side = int(out.shape[-1] ** 0.5)  # guessed from L: right for 5 x 7, not for 4 x 2
    return out.view(x.shape[0], -1, side, out.shape[-1] // side)


def calls_conv2d(x, weight, bias, padding):
    return F.conv2d(x, weight, bias, padding=padding)


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (no_bias, "the bias is missing"),
        (width_first, "height first"),
        (sides_from_l, "not from L"),
        (width_first_transposed, "then transposing"),
        (view_without_transpose, "must be transposed"),
        (channels_last_weight, "do not permute the weight"),
        (calls_conv2d, "use F.unfold"),
        (same_size_output, "(H + 2p - 2) x (W + 2p - 2)"),
        (ignores_padding, "(H + 2p - 2) x (W + 2p - 2)"),
        (lambda x, weight, bias, padding: conv2d_by_unfold(x, weight.detach(), bias, padding), ".detach()"),
        (lambda x, weight, bias, padding: nn.Conv2d(1, 1, 3)(x), "use F.unfold"),
    ],
)
def test_conv2d_mistakes_get_their_hint(attempt, hint):
    verdict = check_conv2d_by_unfold(attempt)
    assert not verdict and hint in verdict.hint


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        ("conv", "should be a function"),
        (lambda x, weight, bias, padding: conv2d_by_unfold(x, weight, bias, padding) + 0.1, "entries differ"),
        (
            lambda x, weight, bias, padding: (
                conv2d_by_unfold(x, weight**2 / weight, bias, padding).detach() + 0 * weight.sum()
            ),
            "the gradient for weight",
        ),
        # a wrong shape at padding 1, or a view that fails there: no output-size hint
        (lambda x, weight, bias, padding: conv2d_by_unfold(x, weight, bias, padding)[:, :1], "(2, 1, 5, 7)"),
        (lambda x, weight, bias, padding: x.view(-1, 4, 5, 5), "raised RuntimeError: shape"),
    ],
)
def test_other_wrong_convolutions_fail(attempt, message):
    verdict = check_conv2d_by_unfold(attempt)
    assert not verdict and message in verdict.message and verdict.hint is None


# --- 3.3 -----------------------------------------------------------------------------


def short_run(net, rate, *, loaders, criterion, device, seed, n_epochs=2):
    train_loader, val_loader = loaders
    optimizer = torch.optim.AdamW(net.parameters(), lr=rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=n_epochs)
    train_loader.generator.manual_seed(seed)
    history = fit(
        net,
        train_loader,
        val_loader,
        criterion,
        optimizer,
        n_epochs,
        device,
        scheduler=scheduler,
        progress=False,
    )
    return history.train_loss[-1], predict(net, val_loader, device)[0]


def loop_run(net, rate, *, loaders, criterion, device, seed, n_epochs=2, mistake=None):
    """The same written out, with one mistake switched on by name."""
    train_loader, val_loader = loaders
    decay = 0.01 if mistake == "default decay" else 1e-4
    optimizer = torch.optim.AdamW(net.parameters(), lr=rate, weight_decay=decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=n_epochs)
    if mistake == "global seed":
        torch.manual_seed(seed)
    else:
        train_loader.generator.manual_seed(seed)
    if mistake == "copy":
        net = copy.deepcopy(net)
    for _ in range(n_epochs):
        total, count = 0.0, 0
        for inputs, targets in train_loader:
            optimizer.zero_grad()
            loss = criterion(net(inputs), targets)
            loss.backward()
            optimizer.step()
            if mistake == "per batch":
                scheduler.step()
            total, count = total + loss.item() * len(targets), count + len(targets)
        if mistake not in ("per batch", "no schedule"):
            scheduler.step()
    with torch.no_grad():
        scores = torch.cat([net(inputs) for inputs, _ in val_loader])
    loss_out = loss.item() if mistake == "last batch" else total / count
    return loss_out, scores if mistake == "scores" else scores.argmax(dim=1)


def test_short_run_passes(capsys):
    assert check_short_run(short_run)
    assert check_short_run(loop_run)
    assert "matches AdamW with a per-epoch cosine schedule" in capsys.readouterr().out


def test_short_run_starter_is_not_attempted():
    assert untouched(2) == (
        "… Exercise 3.3: not attempted yet: fill in `short_run` above\n"
        "… Exercise 3.3: not attempted yet: fill in `rate_sweep` above\n"
    )


def test_short_run_keeps_the_callers_random_state():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    check_short_run(lambda *args, **kwargs: loop_run(*args, **kwargs, mistake="global seed"))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("no schedule", "step the scheduler once per epoch"),
        ("per batch", "not after every batch"),
        ("global seed", "torch.manual_seed does not reach it"),
        ("default decay", "default weight_decay is 0.01"),
        ("last batch", "mean over the last epoch's batches"),
        ("scores", "not scores"),
        ("copy", "not a copy"),
    ],
)
def test_short_run_mistakes_get_their_hint(mistake, hint):
    verdict = check_short_run(lambda *args, **kwargs: loop_run(*args, **kwargs, mistake=mistake))
    assert not verdict and hint in verdict.hint


def _twice_the_rate(net, rate, **kwargs):
    return short_run(net, 2 * rate, **kwargs)


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        (None, "should be a function"),
        (lambda net, rate, **kwargs: short_run(net, rate, **kwargs)[1], "should return (last training loss"),
        (_twice_the_rate, "net's weights after short_run"),
        (
            lambda net, rate, **kwargs: (short_run(net, rate, **kwargs)[0] + 1, torch.zeros(20)),
            "training loss",
        ),
        (lambda net, rate, **kwargs: (short_run(net, rate, **kwargs)[0], torch.zeros(20)), "predictions"),
    ],
)
def test_other_wrong_runs_fail(attempt, message):
    verdict = check_short_run(attempt)
    assert not verdict and message in verdict.message and verdict.hint is None


def rate_sweep(make_net, run, rates, *, baseline, seed, true, compare, mistake=None):
    """The chapter's solution, with one mistake switched on by name."""
    runs, shared = {}, None
    if mistake == "seed once":
        torch.manual_seed(seed)
    for rate in rates:
        if mistake not in ("seed once", "no seed"):
            torch.manual_seed(seed)
        if mistake == "one net":
            shared = shared or make_net()
            net = shared
        else:
            net = make_net()
        if mistake == "skip" and rate == rates[-1]:
            continue
        runs[rate] = run(net, 2 * rate if mistake == "wrong rate" else rate)
    if mistake == "no runs":
        runs = {rate: (0.0, torch.zeros(1)) for rate in rates}
    comparisons = {}
    for rate in rates:
        if (rate == baseline and mistake != "baseline too") or rate not in runs:
            continue
        pair = (
            (runs[baseline][1], runs[rate][1]) if mistake == "swapped" else (runs[rate][1], runs[baseline][1])
        )
        labels = pair[0] if mistake == "wrong labels" else true
        comparisons[rate] = compare(*pair, labels)
    return runs, comparisons


def sweep_with(mistake):
    return lambda *args, **kwargs: rate_sweep(*args, **kwargs, mistake=mistake)


def test_rate_sweep_passes(capsys):
    assert check_rate_sweep(rate_sweep)
    assert "trains a fresh network per rate" in capsys.readouterr().out


def test_rate_sweep_keeps_the_callers_random_state():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    check_rate_sweep(rate_sweep)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("seed once", "not once before the loop"),
        ("no seed", "right before each make_net()"),
        ("one net", "build a fresh network for every rate"),
        ("swapped", "the rate under test comes first"),
    ],
)
def test_rate_sweep_mistakes_get_their_hint(mistake, hint):
    verdict = check_rate_sweep(sweep_with(mistake))
    assert not verdict and hint in verdict.hint


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        (None, "should be a function"),
        (lambda *args, **kwargs: rate_sweep(*args, **kwargs)[0], "should return two dicts"),
        (sweep_with("skip"), "expected each of"),
        (sweep_with("wrong rate"), "which is not one of"),
        (sweep_with("no runs"), "is not what run(net, 0.001) returned"),
        (sweep_with("baseline too"), "expected every rate but the baseline"),
        (sweep_with("wrong labels"), "(difference, only_a, only_b)"),
        (
            lambda *args, **kwargs: (
                {k: v for k, v in rate_sweep(*args, **kwargs)[0].items() if k != 0.01},
                {},
            ),
            "the runs dict has the keys",
        ),
    ],
)
def test_other_wrong_sweeps_fail(attempt, message):
    verdict = check_rate_sweep(attempt)
    assert not verdict and message in verdict.message and verdict.hint is None


# --- 3.4 -----------------------------------------------------------------------------


def accuracy_by_confidence(logits, labels, fraction, *, mistake=None):
    probabilities = logits.softmax(dim=0 if mistake == "dim 0" else 1)
    confidence, guess = probabilities.max(dim=1)
    if mistake == "max logit":
        confidence = logits.max(dim=1).values
    order = confidence.argsort(descending=mistake == "descending")
    correct = (guess == labels).float()
    k = round(fraction * len(labels))
    return correct[order[:k]].mean().item(), correct[order[k:]].mean()


def test_accuracy_by_confidence_passes(capsys):
    assert check_accuracy_by_confidence(accuracy_by_confidence)
    assert "matches the reference on 400 random images" in capsys.readouterr().out


def test_confidence_starter_is_not_attempted():
    assert untouched(3) == "… Exercise 3.4: not attempted yet: fill in `accuracy_by_confidence` above\n"


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [("dim 0", "not over the images"), ("descending", "increasing order"), ("max logit", "largest logit")],
)
def test_confidence_mistakes_get_their_hint(mistake, hint):
    verdict = check_accuracy_by_confidence(lambda *args: accuracy_by_confidence(*args, mistake=mistake))
    assert not verdict and hint in verdict.hint


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        (1.0, "should be a function"),
        (lambda logits, labels, fraction: 0.5, "should return a tuple of two accuracies"),
        (lambda logits, labels, fraction: ("a", "b"), "should be a number"),
        (  # the rest measured on all images
            lambda logits, labels, fraction: (
                accuracy_by_confidence(logits, labels, fraction)[0],
                (logits.argmax(dim=1) == labels).float().mean().item(),
            ),
            "the accuracy on the other",
        ),
    ],
)
def test_other_wrong_accuracies_fail(attempt, message):
    verdict = check_accuracy_by_confidence(attempt)
    assert not verdict and message in verdict.message and verdict.hint is None


# --- 3.5 -----------------------------------------------------------------------------


class DigitCNN(nn.Module):
    """The chapter's network without its augmentation layer (augment is accepted, unused)."""

    def __init__(self, channels=(16, 32), dropout=0.3, augment=True):
        super().__init__()
        c1, c2 = channels
        self.augment = nn.Identity()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * 7 * 7, 10))

    def forward(self, x):
        return self.classifier(self.features(self.augment(x)))


BARE_HEADS = {  # extra_block=False: the right control head and wrong ones
    "right": lambda c2: [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, 10)],
    "max": lambda c2: [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c2, 10)],
    "dropout": lambda c2: [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(c2, 10)],
    "two linears": lambda c2: [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, c2), nn.Linear(c2, 10)],
    "tanh": lambda c2: [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Tanh(), nn.Linear(c2, 10)],
}


def pooled_class(
    *,
    width=None,
    pool=None,
    conv_padding=1,
    bias=False,
    relu=True,
    dropout=False,
    order="conv",
    bare="right",
):
    """A PooledDigitCNN, right by default, with one mistake switched on by keyword.

    bare picks the head for extra_block=False from BARE_HEADS, or "block": the extra block
    is always added."""

    class PooledDigitCNN(DigitCNN):
        def __init__(self, channels=(16, 32), *, extra_block=True, **kwargs):
            super().__init__(channels, **kwargs)
            c2 = width or channels[1]
            if not extra_block and bare != "block":
                self.classifier = nn.Sequential(*BARE_HEADS[bare](c2))
                return
            block = [nn.Conv2d(c2, c2, 3, padding=conv_padding, bias=bias), nn.BatchNorm2d(c2)]
            block += [nn.ReLU()] if relu else []
            pooling = [pool or nn.AdaptiveAvgPool2d(1)]
            layers = block + pooling if order == "conv" else pooling + block
            layers += [nn.Flatten(), *([nn.Dropout(0.3)] if dropout else []), nn.Linear(c2, 10)]
            self.classifier = nn.Sequential(*layers)

    return PooledDigitCNN


def test_pooled_head_passes(capsys):
    assert check_pooled_head(pooled_class(), DigitCNN)
    out = capsys.readouterr().out
    assert "9·32² + 2·32 + 10·32 + 10 = 9,610 parameters" in out
    assert "with extra_block=False (average and linear alone) 330 parameters" in out


class BlockInFeatures(DigitCNN):
    """The exercise's other natural reading: the third block appended to self.features."""

    def __init__(self, channels=(16, 32), extra_block=True, **kwargs):
        super().__init__(channels, **kwargs)
        c2 = channels[1]
        if extra_block:
            self.features.extend([nn.Conv2d(c2, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU()])
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, 10))


def test_pooled_head_accepts_the_block_in_features(capsys):
    assert check_pooled_head(BlockInFeatures, DigitCNN)
    assert "the first two blocks start from DigitCNN's weights" in capsys.readouterr().out


class Unused(nn.Module):
    """A module whose parameter forward never uses."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


class BlockInFeaturesUnused(BlockInFeatures):
    """As above, with a parameter in the appended modules that forward never uses."""

    def __init__(self, channels=(16, 32), **kwargs):
        super().__init__(channels, **kwargs)
        self.features.append(Unused())


def test_pooled_starter_is_not_attempted():
    assert untouched(4, DigitCNN=DigitCNN) == (
        "… Exercise 3.5: not attempted yet: fill in `PooledDigitCNN` above\n"
    )


class NoExtraBlockFlag(DigitCNN):
    """Right with the block, but extra_block reaches DigitCNN through **kwargs."""

    def __init__(self, channels=(16, 32), **kwargs):
        super().__init__(channels, **kwargs)
        self.classifier = pooled_class()(channels).classifier


class NewHeadElsewhere(DigitCNN):
    def __init__(self, channels=(16, 32), **kwargs):
        super().__init__(channels, **kwargs)
        self.head = pooled_class()(channels, **kwargs).classifier


class BlockElsewhere(DigitCNN):
    """Right, but the block in an attribute of its own, with a forward of its own."""

    def __init__(self, channels=(16, 32), *, extra_block=True, **kwargs):
        super().__init__(channels, **kwargs)
        c2 = channels[1]
        block = [nn.Conv2d(c2, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU()]
        self.extra = nn.Sequential(*(block if extra_block else []))
        self.classifier = nn.Linear(c2, 10)

    def forward(self, x):
        return self.classifier(self.extra(self.features(self.augment(x))).mean(dim=(2, 3)))


class NoBlock(DigitCNN):
    """Average pooling and the linear layer alone, whatever extra_block says."""

    def __init__(self, channels=(16, 32), **kwargs):
        kwargs.pop("extra_block", None)
        super().__init__(channels, **kwargs)
        self.classifier = nn.Sequential(*BARE_HEADS["right"](channels[1]))


class FeaturesBuiltAgain(pooled_class()):
    def __init__(self, channels=(16, 32), **kwargs):
        super().__init__(channels, **kwargs)
        self.features = DigitCNN(channels).features


class FeaturesCut(pooled_class()):
    def __init__(self, channels=(16, 32), **kwargs):
        super().__init__(channels, **kwargs)
        self.features = self.features[:4]


class FeaturesAsList(pooled_class()):
    def __init__(self, channels=(16, 32), **kwargs):
        super().__init__(channels, **kwargs)
        self.features = nn.ModuleList(self.features)


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (NewHeadElsewhere, "assign the new head to self.classifier"),
        (BlockElsewhere, "put the new block in self.classifier, before the pooling"),
        (BlockElsewhere, "yours is in self.extra"),
        (NoBlock, "put the new block in self.classifier, before the pooling"),
        (FeaturesBuiltAgain, "call super().__init__(channels, **kwargs) first"),
        (FeaturesCut, "call super().__init__(channels, **kwargs) first"),
        (FeaturesAsList, "or append the new block to self.features"),
        (pooled_class(dropout=True), "leave the dropout out"),
        (pooled_class(width=32), "not a fixed 32"),
        (pooled_class(bias=True), "bias=False"),
        (pooled_class(pool=nn.AdaptiveMaxPool2d(1)), "not a max"),
        (pooled_class(conv_padding=0), "pad the convolution by 1"),
        (pooled_class(order="pool"), "before the pooling"),
        (pooled_class(relu=False), "the ReLU is missing"),
        (pooled_class(pool=nn.AvgPool2d(7)), "averages maps of any size"),
        (NoExtraBlockFlag, "take extra_block as a keyword argument"),
        (pooled_class(bare="block"), "extra_block=False is the control"),
        (pooled_class(bare="max"), "not a max"),
    ],
)
def test_pooled_mistakes_get_their_hint(attempt, hint):
    verdict = check_pooled_head(attempt, DigitCNN)
    assert not verdict and hint in verdict.hint


class TwoConvolutions(DigitCNN):
    def __init__(self, channels=(16, 32), **kwargs):
        super().__init__(channels, **kwargs)
        c2 = channels[1]
        self.classifier = nn.Sequential(
            nn.Conv2d(c2, c2, 3, padding=1, bias=False),
            nn.Conv2d(c2, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c2, 10),
        )


class FiveByFive(pooled_class()):
    def __init__(self, channels=(16, 32), **kwargs):
        super().__init__(channels, **kwargs)
        c2 = channels[1]
        self.classifier[0] = nn.Conv2d(c2, c2, 5, padding=2, bias=False)


class Head(nn.Module):
    """The right head plus a parameter that forward never uses."""

    def __init__(self, c2):
        super().__init__()
        self.layers = pooled_class()((4, c2)).classifier
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.layers(x)


class UnusedParameter(DigitCNN):
    def __init__(self, channels=(16, 32), **kwargs):
        super().__init__(channels, **kwargs)
        self.classifier = Head(channels[1])


class ShapeOnLargerImages(pooled_class()):
    def forward(self, x):
        out = super().forward(x)
        return out if x.shape[-1] == 28 else out[:, :5]


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        ("PooledDigitCNN", "PooledDigitCNN should be a class"),
        (nn.Module, "should be a subclass of DigitCNN"),
        (TwoConvolutions, "one Conv2d, one BatchNorm2d and one Linear, got 2, 1 and 1"),
        (FiveByFive, "with a (5, 5) kernel"),
        (pooled_class(pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Tanh())), "the network's output"),
        (ShapeOnLargerImages, "on 56 x 56 images the output has shape (2, 5)"),
        (UnusedParameter, "no gradient reaches the head's parameters ['unused']"),
        (BlockInFeaturesUnused, "no gradient reaches the head's parameters ['features.11.unused']"),
        (pooled_class(bare="dropout"), "with extra_block=False the head has a dropout layer"),
        (pooled_class(bare="two linears"), "should hold one Linear 6 -> 10, got [(6, 6), (6, 10)]"),
        (pooled_class(bare="tanh"), "the output with extra_block=False"),
    ],
)
def test_other_wrong_heads_fail(attempt, message):
    verdict = check_pooled_head(attempt, DigitCNN)
    assert not verdict and message in verdict.message and verdict.hint is None


def test_pooled_head_names_no_attribute_when_no_block_exists():
    verdict = check_pooled_head(NoBlock, DigitCNN)
    assert not verdict and "got 0, 0 and 1" in verdict.message and "yours is in" not in verdict.hint


def test_pooled_head_uses_width_hint_only_for_32():
    verdict = check_pooled_head(pooled_class(width=8), DigitCNN)
    assert not verdict and verdict.hint is None and "expected 6 -> 10" in verdict.message


def test_checkers_leave_the_global_random_state_alone():
    torch.manual_seed(1)
    before = torch.get_rng_state()
    check_pooled_head(pooled_class(), DigitCNN)
    check_diagonal_kernel(DIAGONAL)
    assert torch.equal(torch.get_rng_state(), before)
