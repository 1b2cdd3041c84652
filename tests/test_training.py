from typing import ClassVar

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.progress import PLAIN_ENV
from helpers.training import (
    EvalResult,
    accuracy,
    evaluate,
    fit,
    logits_to_labels,
    predict,
    train_one_epoch,
)

CPU = torch.device("cpu")


def _toy_binary(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).float()
    return x, y


def _one_step_per_group(model, batches, lr, group):
    """The reference: one plain SGD step on the concatenation of each group of batches."""
    criterion = nn.BCEWithLogitsLoss()
    params = list(model.parameters())
    for start in range(0, len(batches), group):
        chunk = batches[start : start + group]
        x = torch.cat([xb for xb, _ in chunk])
        y = torch.cat([yb for _, yb in chunk])
        grads = torch.autograd.grad(criterion(model(x).squeeze(1), y), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= lr * g


@pytest.mark.parametrize("batch_size", [8, 12])
@pytest.mark.parametrize("accumulation_steps", [1, 2, 3])
def test_accumulation_equals_one_step_on_the_concatenated_batch(accumulation_steps, batch_size):
    x, y = _toy_binary()
    # 8 equal batches of 8 (with k=3 the last group holds only 2 batches), or five of 12
    # and a short one of 4, which shares its group with full ones for k=2 and k=3:
    # weighting the batches of a group equally would over-weight it
    batches = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    reference = nn.Linear(2, 1)
    reference.load_state_dict(model.state_dict())

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    train_one_epoch(model, batches, nn.BCEWithLogitsLoss(), optimizer, CPU, accumulation_steps)
    _one_step_per_group(reference, batches, lr=0.5, group=accumulation_steps)

    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_partial_group_is_not_shrunk_by_k():
    """Dividing the last, shorter group by k (not its size) would give a different step."""
    x, y = _toy_binary(24)
    batches = list(zip(x.split(8), y.split(8), strict=True))  # 3 batches, k=2: groups of 2 and 1
    torch.manual_seed(0)
    model, shrunk = nn.Linear(2, 1), nn.Linear(2, 1)
    shrunk.load_state_dict(model.state_dict())
    train_one_epoch(model, batches, nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), 0.5), CPU, 2)
    _one_step_per_group(shrunk, batches[:2], lr=0.5, group=2)
    criterion = nn.BCEWithLogitsLoss()
    grads = torch.autograd.grad(
        criterion(shrunk(batches[2][0]).squeeze(1), batches[2][1]) / 2, list(shrunk.parameters())
    )
    with torch.no_grad():
        for p, g in zip(shrunk.parameters(), grads, strict=True):
            p -= 0.5 * g
    assert not torch.allclose(model.weight, shrunk.weight, atol=1e-4)


class _Recorder(nn.Module):
    """Wraps a model and records, for every forward call, the mode and whether autograd records."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.inner(x)


def test_train_one_epoch_returns_sample_weighted_mean_loss():
    x, y = _toy_binary(10)
    model = nn.Linear(2, 1)
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    criterion = nn.BCEWithLogitsLoss()
    with torch.no_grad():
        expected = criterion(model(x).squeeze(1), y).item()
    # lr=0 leaves the model unchanged, so the epoch's mean equals the full-data loss
    got = train_one_epoch(model, batches, criterion, torch.optim.SGD(model.parameters(), lr=0.0), CPU)
    assert got == pytest.approx(expected, rel=1e-6)


def test_train_one_epoch_puts_a_model_in_eval_mode_back_into_training_mode():
    x, y = _toy_binary(16)
    model = _Recorder(nn.Linear(2, 1))
    model.eval()  # the state a previous evaluation leaves behind
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, [(x[:8], y[:8]), (x[8:], y[8:])], nn.BCEWithLogitsLoss(), optimizer, CPU)
    assert model.seen == [(True, True), (True, True)]
    assert model.training and model.inner.training


def test_evaluate_and_predict_run_in_eval_mode_without_building_a_graph():
    x, y = _toy_binary(16)
    model = _Recorder(nn.Linear(2, 1))  # a new module is in training mode
    loader = [(x[:8], y[:8]), (x[8:], y[8:])]
    evaluate(model, loader, nn.BCEWithLogitsLoss(), CPU)
    assert model.seen == [(False, False), (False, False)]
    model.train()
    model.seen.clear()
    predict(model, loader, CPU)
    assert model.seen == [(False, False), (False, False)]


def test_evaluate_and_predict_agree_with_direct_computation():
    x, y = _toy_binary(50)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    criterion = nn.BCEWithLogitsLoss()
    result = evaluate(model, loader, criterion, CPU)
    model.eval()
    with torch.no_grad():
        logits = model(x).squeeze(1)
    assert isinstance(result, EvalResult)
    assert result.loss == pytest.approx(criterion(logits, y).item(), rel=1e-5)
    assert result.accuracy == pytest.approx(((logits > 0).float() == y).float().mean().item())
    assert not model.training  # evaluation leaves the model in eval mode (dropout off)
    preds, trues = predict(model, loader, CPU)
    assert torch.equal(preds, (logits > 0).long()) and torch.equal(trues, y.long())


def test_evaluate_handles_multiclass_logits():
    x = torch.eye(3)
    y = torch.tensor([0, 1, 1])
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))  # predicts the index of the hot input: 0, 1, 2
    result = evaluate(model, [(x, y)], nn.CrossEntropyLoss(), CPU)
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.loss == pytest.approx(nn.CrossEntropyLoss()(x, y).item())


def test_logits_to_labels_shapes():
    assert logits_to_labels(torch.tensor([-1.0, 2.0])).tolist() == [0, 1]
    assert logits_to_labels(torch.tensor([[0.5], [-0.5]])).tolist() == [1, 0]
    assert logits_to_labels(torch.tensor([[0.1, 0.9, 0.0]])).tolist() == [1]
    with pytest.raises(ValueError, match="logits"):
        logits_to_labels(torch.zeros(2, 2, 2))


def test_fit_learns_a_separable_problem_and_records_history():
    x, y = _toy_binary(200)
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=20, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    history = fit(model, loader, loader, nn.BCEWithLogitsLoss(), optimizer, 15, CPU, progress=False)
    assert len(history.train_loss) == len(history.val_loss) == len(history.val_accuracy) == 15
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_accuracy[-1] >= 0.95
    assert history.lr == [0.1] * 15
    assert history.val_accuracy[history.best_epoch - 1] == max(history.val_accuracy)


def test_fit_steps_the_scheduler_per_epoch_and_checkpoints_the_best_epoch(tmp_path):
    x, y = _toy_binary(100)
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    # Train on flipped labels but validate on the true ones: held-out accuracy peaks early
    # and then falls, so "the best epoch" differs from "the last epoch".
    train, val = [(x, 1 - y)], [(x, y)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    path = tmp_path / "best.pt"
    history = fit(
        model,
        train,
        val,
        nn.BCEWithLogitsLoss(),
        optimizer,
        6,
        CPU,
        scheduler=scheduler,
        checkpoint_path=path,
        progress=False,
    )
    assert history.lr == [0.5, 0.5, 0.25, 0.25, 0.125, 0.125]
    best = history.best_epoch
    assert best < 6 and history.val_accuracy[best - 1] > history.val_accuracy[-1]
    assert history.val_accuracy[best - 1] == max(history.val_accuracy)
    # the checkpoint holds the best epoch's weights: it reproduces that epoch's accuracy
    restored = nn.Linear(2, 1)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert evaluate(restored, val, nn.BCEWithLogitsLoss(), CPU).accuracy == history.val_accuracy[best - 1]


class _RecordingPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """A ReduceLROnPlateau that remembers the value of every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.values: list[float] = []

    def step(self, metrics, *args, **kwargs):
        self.values.append(float(metrics))
        return super().step(metrics, *args, **kwargs)


@pytest.mark.parametrize(("select", "mode"), [("metric", "max"), ("loss", "min")])
def test_fit_steps_reduce_lr_on_plateau_with_the_selected_value(select, mode):
    x, y = _toy_binary(40)
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    val = [(x[:20], y[:20]), (x[20:], y[20:])]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = _RecordingPlateau(optimizer, mode=mode)
    criterion = nn.BCEWithLogitsLoss()
    fit(
        model,
        [(x, 1 - y)],
        val,
        criterion,
        optimizer,
        3,
        CPU,
        select=select,
        scheduler=scheduler,
        progress=False,
    )
    # the value of the last epoch, recomputed here from the trained model
    with torch.no_grad():
        logits = model(x).squeeze(1)
    last = (
        criterion(logits, y).item() if select == "loss" else ((logits > 0).float() == y).float().mean().item()
    )
    assert len(scheduler.values) == 3
    assert scheduler.values[-1] == pytest.approx(last, rel=1e-5)


def test_fit_keeps_the_first_of_equally_good_epochs(tmp_path, monkeypatch):
    x, y = _toy_binary(20)
    model = nn.Linear(2, 1)
    # lr=0: every epoch scores the same, so the first one stays the best
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    saves = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda *a, **k: (saves.append(1), real_save(*a, **k)))
    history = fit(
        model,
        [(x, y)],
        [(x, y)],
        nn.BCEWithLogitsLoss(),
        optimizer,
        3,
        CPU,
        checkpoint_path=tmp_path / "best.pt",
        progress=False,
    )
    assert history.val_accuracy[0] == history.val_accuracy[1] == history.val_accuracy[2]
    assert history.best_epoch == 1
    assert len(saves) == 1  # the checkpoint is written once, for epoch 1


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m, o: train_one_epoch("m", [], nn.MSELoss(), o, CPU), TypeError, "model"),
        (lambda m, o: train_one_epoch(m, [], nn.MSELoss(), o, 0), TypeError, "device"),
        (lambda m, o: train_one_epoch(m, [], nn.MSELoss(), o, "gpu9"), ValueError, "device"),
        (lambda m, o: train_one_epoch(m, [], nn.MSELoss(), None, CPU), TypeError, "optimizer"),
        (lambda m, o: train_one_epoch(m, [], nn.MSELoss(), o, CPU, 0), ValueError, "accumulation_steps"),
        (lambda m, o: train_one_epoch(m, [], nn.MSELoss(), o, CPU, 1.0), TypeError, "accumulation_steps"),
        (
            lambda m, o: train_one_epoch(m, [], nn.MSELoss(), o, CPU),
            ValueError,
            "^loader yielded no batches$",
        ),
        (lambda m, o: evaluate(m, [], nn.MSELoss(), CPU), ValueError, "^loader yielded no batches$"),
        (lambda m, o: predict(m, [], CPU), ValueError, "^loader yielded no batches$"),
        (lambda m, o: fit(m, [], [], nn.MSELoss(), o, 0, CPU), ValueError, "epochs"),
        (lambda m, o: fit(m, [], [], nn.MSELoss(), o, 2.0, CPU), TypeError, "epochs"),
        (lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, select="best"), ValueError, "select"),
        (
            lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, metric=None, select="metric"),
            ValueError,
            "metric",
        ),
        (lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, metric="f1"), ValueError, "metric"),
        (lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, metric=3), TypeError, "metric"),
        (
            lambda m, o: fit(
                m, [], [], nn.MSELoss(), o, 1, CPU, scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(o)
            ),
            ValueError,
            "mode='max'",
        ),
        (lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, scheduler=o), TypeError, "scheduler"),
        (
            lambda m, o: fit(m, [], [], nn.MSELoss(), None, 1, CPU),
            TypeError,
            "optimizer must be a torch.optim",
        ),
        (lambda m, o: fit(m, [], [], None, o, 1, CPU), TypeError, "criterion must be a loss"),
        (
            lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, checkpoint_path=3),
            TypeError,
            "checkpoint_path",
        ),
        (lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, progress="no"), TypeError, "progress"),
        (lambda m, o: train_one_epoch(m, [], "mse", o, CPU), TypeError, "criterion must be a loss"),
        (lambda m, o: evaluate(m, [], None, CPU), TypeError, "criterion must be a loss"),
        (lambda m, o: predict(m, [], "gpu9"), ValueError, "device"),
        (lambda m, o: logits_to_labels([0.5, -1.0]), TypeError, "logits must be a torch.Tensor"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, message):
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match=message):
        call(model, optimizer)


def _toy_regression(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    y = x @ torch.tensor([1.5, -2.0, 0.5]) + 0.3
    return x, y


def mean_absolute_error(outputs, targets):
    return (outputs - targets).abs().mean().item()


def test_evaluate_takes_a_callable_metric_or_none_and_accepts_a_device_string():
    x, y = _toy_regression(30)
    model = nn.Linear(3, 1)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]  # unequal batches: weighted by size
    result = evaluate(model, batches, nn.MSELoss(), "cpu", metric=mean_absolute_error)
    with torch.no_grad():
        outputs = model(x).squeeze(1)
    assert result.loss == pytest.approx(nn.MSELoss()(outputs, y).item(), rel=1e-5)
    assert result.metric == pytest.approx((outputs - y).abs().mean().item(), rel=1e-5)
    assert result.metric_name == "mean_absolute_error"
    with pytest.raises(AttributeError, match="not accuracy"):
        _ = result.accuracy
    plain = evaluate(model, batches, nn.MSELoss(), torch.device("cpu"), metric=None)
    assert plain.metric is None and plain.loss == pytest.approx(result.loss)


def test_evaluate_reads_the_device_once_not_once_per_batch(monkeypatch):
    # six batches and tensor metrics of mixed dtypes (and an int64 count): .item() runs
    # twice (the loss and the metric, after the loop), where reading each batch's would
    # run it 12 times; a float metric gives the same mean
    x, y = _toy_regression(60)
    batches = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 60, 10)]
    model = nn.Linear(3, 1)
    with torch.no_grad():
        outputs = model(x).squeeze(1)
    calls = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: calls.append(1) or item(t))
    doubled = iter([False, True] * 3)

    def mixed(out, target):  # float32 and float64 batch means, alternating
        error = (out - target).abs().mean()
        return error.double() if next(doubled) else error

    result = evaluate(model, batches, nn.MSELoss(), "cpu", metric=mixed)
    assert len(calls) == 2
    assert result.metric == pytest.approx((outputs - y).abs().mean().item(), rel=1e-6)
    calls.clear()
    counted = evaluate(model, batches, nn.MSELoss(), "cpu", metric=lambda o, t: (o > t).sum())
    assert len(calls) == 2 and counted.metric == pytest.approx((outputs > y).sum().item() / 6)
    floats = evaluate(model, batches, nn.MSELoss(), "cpu", metric=mean_absolute_error)
    assert floats.metric == pytest.approx(result.metric, rel=1e-6)


@pytest.mark.parametrize(
    ("metric", "error", "message"),
    [
        (lambda o, t: (o - t).abs(), ValueError, r"one number per batch, got shape \(10,\)$"),
        (lambda o, t: "small", TypeError, "metric '<lambda>' must return a float or a one-element"),
        (lambda o, t: True, TypeError, "tensor, got bool$"),
    ],
)
def test_evaluate_names_a_metric_that_returns_no_single_number(metric, error, message):
    x, y = _toy_regression(20)
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    with pytest.raises(error, match=message):
        evaluate(nn.Linear(3, 1), batches, nn.MSELoss(), "cpu", metric=metric)


def test_fit_selects_the_lowest_validation_loss_for_regression(tmp_path):
    x, y = _toy_regression()
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    # Training on negated targets drives the validation loss up after a first improvement.
    train = [(x, -y)]
    val = [(x, y)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / "best.pt"
    history = fit(
        model,
        train,
        val,
        nn.MSELoss(),
        optimizer,
        8,
        "cpu",
        metric=None,
        checkpoint_path=path,
        progress=False,
    )
    assert history.select == "loss" and history.val_metric == []
    assert history.val_loss[history.best_epoch - 1] == min(history.val_loss)
    restored = nn.Linear(3, 1)
    restored.load_state_dict(torch.load(path, weights_only=True))
    restored_loss = evaluate(restored, val, nn.MSELoss(), CPU, metric=None).loss
    assert restored_loss == pytest.approx(min(history.val_loss), rel=1e-6)
    with pytest.raises(AttributeError, match="not accuracy"):
        _ = history.val_accuracy


def test_fit_feeds_the_selected_value_to_reduce_lr_on_plateau():
    x, y = _toy_regression()
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # lr=0.1 on these data improves every epoch, then the same-data swap makes validation worse
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0)
    history = fit(
        model,
        [(x, -y)],
        [(x, y)],
        nn.MSELoss(),
        optimizer,
        5,
        CPU,
        metric=None,
        scheduler=scheduler,
        progress=False,
    )
    # The lr halves after every epoch whose validation loss did not improve on the best so far.
    expected, lr, best = [], 0.1, float("inf")
    for loss in history.val_loss:
        expected.append(lr)
        if loss < best:
            best = loss
        else:
            lr *= 0.5
    assert history.lr == pytest.approx(expected)
    assert history.lr[-1] < 0.1


class _MeanAbsoluteError:
    """A callable metric object: it has no ``__name__``, so its class names it."""

    def __call__(self, outputs, targets):
        return (outputs - targets).abs().mean().item()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda m, o: accuracy(torch.zeros(2, 3), [0, 1]),
            TypeError,
            "targets must be a torch.Tensor, got list",
        ),
        (lambda m, o: predict(m, [], 0), TypeError, "device must be a str or torch.device, got int"),
        (
            lambda m, o: predict(m, [], "gpu9"),
            ValueError,
            "device must name a torch device such as 'cpu', got 'gpu9'",
        ),
        (lambda m, o: predict("m", [], CPU), TypeError, "model must be a torch.nn.Module, got str"),
        (
            lambda m, o: evaluate(m, [], "mse", CPU),
            TypeError,
            "criterion must be a loss such as nn.CrossEntropyLoss(), got str",
        ),
        (
            lambda m, o: train_one_epoch(m, [], nn.MSELoss(), "sgd", CPU),
            TypeError,
            "optimizer must be a torch.optim.Optimizer, got str",
        ),
        (
            lambda m, o: evaluate(m, [], nn.MSELoss(), CPU, metric="f1"),
            ValueError,
            "metric must be one of ['accuracy'], a callable or None, got 'f1'",
        ),
        (
            lambda m, o: evaluate(m, [], nn.MSELoss(), CPU, metric=3),
            TypeError,
            "metric must be a str, a callable or None, got int",
        ),
        (lambda m, o: logits_to_labels([0.5]), TypeError, "logits must be a torch.Tensor, got list"),
        (
            lambda m, o: logits_to_labels(torch.zeros(2, 3, 4)),
            ValueError,
            "logits must have shape (B,), (B, 1) or (B, C), got (2, 3, 4)",
        ),
        (
            lambda m, o: train_one_epoch(m, [], nn.MSELoss(), o, CPU, True),
            TypeError,
            "accumulation_steps must be an int, got bool",
        ),
        (
            lambda m, o: train_one_epoch(m, [], nn.MSELoss(), o, CPU, 0),
            ValueError,
            "accumulation_steps must be >= 1, got 0",
        ),
        (
            lambda m, o: fit(m, [], [], nn.MSELoss(), o, 2.0, CPU),
            TypeError,
            "epochs must be an int, got float",
        ),
        (
            lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, metric=None, select="metric"),
            ValueError,
            "select='metric' needs a metric; pass metric=... or select='loss'",
        ),
        (
            lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, scheduler=o),
            TypeError,
            "scheduler must be a torch LR scheduler or None, got SGD",
        ),
        (
            lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, checkpoint_path=3),
            TypeError,
            "checkpoint_path must be a str, a Path or None, got int",
        ),
        (
            lambda m, o: fit(m, [], [], nn.MSELoss(), o, 1, CPU, progress="yes"),
            TypeError,
            "progress must be a bool, got str",
        ),
    ],
)
def test_error_messages_name_the_argument_and_what_was_given(call, error, message):
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error) as info:
        call(model, optimizer)
    assert str(info.value) == message


def test_a_zero_logit_is_class_0_and_a_positive_one_class_1():
    assert logits_to_labels(torch.tensor([0.0, 1e-6, -1e-6])).tolist() == [0, 1, 0]
    assert logits_to_labels(torch.tensor([[0.0], [0.3]])).tolist() == [0, 1]


def test_accuracy_counts_matching_labels_of_float_targets():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [0.0, 5.0, 1.0], [1.0, 0.0, 0.0]])
    # predicted 0, 2, 1, 0; the float targets 0, 2, 0, 1 match the first two
    assert accuracy(logits, torch.tensor([0.0, 2.0, 0.0, 1.0])) == 0.5


def test_a_callable_object_metric_is_named_after_its_class():
    x, y = _toy_regression(12)
    model = nn.Linear(3, 1)
    result = evaluate(model, [(x, y)], nn.MSELoss(), CPU, metric=_MeanAbsoluteError())
    with torch.no_grad():
        expected = (model(x).squeeze(1) - y).abs().mean().item()
    assert result.metric_name == "_MeanAbsoluteError"
    assert result.metric == pytest.approx(expected, rel=1e-6)


def test_one_output_per_sample_and_two_d_targets_are_not_reshaped():
    """(B,) outputs are used as they are; (B, 1) outputs meet (B, 1) targets unchanged."""
    x, y = _toy_regression(10)
    flat = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))  # (B, 3) -> (B,)
    column = nn.Linear(3, 1)  # (B, 3) -> (B, 1)
    column.load_state_dict(flat[0].state_dict())
    with torch.no_grad():
        expected = nn.MSELoss()(column(x), y[:, None]).item()
    for model, targets in ((flat, y), (column, y[:, None])):
        result = evaluate(model, [(x, targets)], nn.MSELoss(), CPU, metric=None)
        assert result.loss == pytest.approx(expected, rel=1e-6)
        got = train_one_epoch(
            model, [(x, targets)], nn.MSELoss(), torch.optim.SGD(model.parameters(), 0.0), CPU
        )
        assert got == pytest.approx(expected, rel=1e-6)


def test_a_batch_of_one_sample_keeps_its_batch_dimension():
    x, y = _toy_binary(3)
    model = nn.Linear(2, 1)
    criterion = nn.BCEWithLogitsLoss()
    with torch.no_grad():
        expected = criterion(model(x).squeeze(1), y).item()
    batches = [(x[i : i + 1], y[i : i + 1]) for i in range(3)]  # (1, 2) inputs, (1,) targets
    assert evaluate(model, batches, criterion, CPU).loss == pytest.approx(expected, rel=1e-6)
    got = train_one_epoch(model, batches, criterion, torch.optim.SGD(model.parameters(), lr=0.0), CPU)
    assert got == pytest.approx(expected, rel=1e-6)


def test_train_one_epoch_steps_after_every_batch_by_default():
    x, y = _toy_binary(16)
    batches = list(zip(x.split(8), y.split(8), strict=True))
    torch.manual_seed(0)
    model, reference = nn.Linear(2, 1), nn.Linear(2, 1)
    reference.load_state_dict(model.state_dict())
    train_one_epoch(model, batches, nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), lr=0.5), CPU)
    _one_step_per_group(reference, batches, lr=0.5, group=1)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_fit_shows_an_epochs_bar_only_when_asked(monkeypatch, capsys):
    monkeypatch.setenv(PLAIN_ENV, "1")  # a text bar on stdout, as in the book build
    x, y = _toy_binary(8)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, [(x, y)], [(x, y)], nn.BCEWithLogitsLoss(), optimizer, 3, CPU)
    shown = capsys.readouterr()
    assert "epochs: 100%" in shown.out and "3/3" in shown.out
    fit(model, [(x, y)], [(x, y)], nn.BCEWithLogitsLoss(), optimizer, 3, CPU, progress=False)
    shown = capsys.readouterr()
    assert shown.out == shown.err == ""


def test_fit_reports_a_callable_metric_per_epoch():
    x, y = _toy_regression(20)
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    history = fit(
        model, [(x, y)], [(x, y)], nn.MSELoss(), optimizer, 2, CPU, metric=mean_absolute_error, progress=False
    )
    with torch.no_grad():
        last = (model(x).squeeze(1) - y).abs().mean().item()
    assert history.metric_name == "mean_absolute_error" and len(history.val_metric) == 2
    assert history.val_metric[-1] == pytest.approx(last, rel=1e-6)


class _MoveSpy(torch.Tensor):
    """A tensor that records the device of every ``.to(...)`` called on it."""

    moves: ClassVar[list] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            cls.moves.append(args[1] if len(args) > 1 else (kwargs or {}).get("device"))
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize(
    ("run", "moved"),
    [
        (
            lambda model, batches: train_one_epoch(
                model, batches, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), "cpu"
            ),
            [CPU, CPU],
        ),
        (lambda model, batches: evaluate(model, batches, nn.MSELoss(), "cpu"), [CPU, CPU]),
        # predict returns the targets on the CPU, where they are: only the inputs move
        (lambda model, batches: predict(model, batches, "cpu"), [CPU]),
    ],
)
def test_batches_are_moved_to_the_device(run, moved):
    # On a CPU-only machine a tensor left where it was still works, so the moves are
    # watched instead: a batch half left on the CPU would fail on a GPU.
    x, y = torch.randn(4, 3), torch.randn(4, 1)
    batches = [(x.as_subclass(_MoveSpy), y.as_subclass(_MoveSpy))]
    _MoveSpy.moves = []
    run(nn.Linear(3, 1), batches)
    assert _MoveSpy.moves[: len(moved)] == moved
