"""Checkers for chapter 4's exercises (recurrent networks); see :mod:`helpers.exercises`.

Each checker builds the reader's object on fresh, seeded inputs on the CPU and compares
it with torch's own layers (``nn.LSTM``, ``nn.GRU``) or with a statistic computed here.
The global random state is left as it was, so a check does not change a chapter's run.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers.exercises import Mismatch, checker, expect, expect_close, expect_tensor
from helpers.sequences import adding_problem

__all__ = [
    "check_bi_classifier",
    "check_direct_forecaster",
    "check_paired_gain",
    "check_scaled_copy",
    "check_short_rnns",
    "check_step_estimate",
]

UNREGISTERED = (
    "a layer kept in a plain list, dict or local variable is not registered: assign it "
    "to an attribute (self.rnn = ...) or use nn.ModuleList, or .parameters() misses it"
)


def _build(cls: Any, name: str, *args: Any, seed: int, **kwargs: Any) -> nn.Module:
    """``cls(*args, **kwargs)``, initialised from ``seed`` without touching the global RNG."""
    expect(
        isinstance(cls, type) and issubclass(cls, nn.Module),
        f"{name} should be an nn.Module subclass (the class itself), got {type(cls).__name__}",
    )
    with torch.random.fork_rng(devices=[]):  # layers initialise from the CPU generator alone
        torch.random.default_generator.manual_seed(seed)
        return cls(*args, **kwargs)


def _only(model: nn.Module, kind: type[nn.Module]) -> Any:
    """The one registered submodule of type ``kind`` in ``model``."""
    found = [module for module in model.modules() if type(module) is kind]
    expect(bool(found), f"found no nn.{kind.__name__} registered in the model", UNREGISTERED)
    expect(len(found) == 1, f"found {len(found)} nn.{kind.__name__} layers, expected one")
    return found[0]


def _number(value: Any, what: str) -> float:
    """``value`` as a float: a real number or a one-element tensor."""
    if isinstance(value, torch.Tensor):
        expect(value.numel() == 1, f"{what} should be one number, got shape {tuple(value.shape)}")
        value = value.item()
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    expect(real, f"{what} should be a real number, got {type(value).__name__}")
    return float(value)


def _within(gap: float) -> str:
    """How closely an attempt matched: "exactly", or "to 3e-7" (not Python's 3e-07)."""
    if gap == 0:
        return "exactly"
    mantissa, exponent = f"{gap:.0e}".split("e")
    return f"to {mantissa}e{int(exponent)}"


def _without_grads(model: nn.Module) -> list[str]:
    """Names of ``model``'s parameters that got no (or an all-zero) gradient."""
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]


FIRST_STEP = "output[:, 0] is the state after the first step; the last one is output[:, -1]"
CELL_STATE = "an LSTM returns (h_n, c_n): the head reads h (output[:, -1] or h_n[-1]), not c_n"
WHOLE_H_N = "h_n is (num_layers, B, hidden), not batch-first: take the top layer, h_n[-1]"
TIME_FIRST = (
    "the LSTM read the windows as (time, batch, features), but they are (B, L, 1): pass "
    "batch_first=True to nn.LSTM (or transpose the windows to (L, B, 1) and back)"
)


@checker("4.1", "DirectForecaster")
def check_direct_forecaster(cls: Any) -> str:
    """Exercise 4.1: an LSTM reads (B, L, 1); a head maps its last h to (B, horizon)."""
    horizon, hidden = 7, 6
    model = _build(cls, "DirectForecaster", horizon, hidden_size=hidden, seed=41)
    lstm, head = _only(model, nn.LSTM), _only(model, nn.Linear)
    shape = (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bidirectional)
    expect(shape == (1, hidden, 1, False), f"expected nn.LSTM(1, {hidden}), one layer, got {lstm}")
    sizes = (head.in_features, head.out_features)
    expect(sizes == (hidden, horizon), f"the head is {head}, expected nn.Linear({hidden}, {horizon})")
    # batch-first or time-first with a transpose, either is right: judge the outputs
    reference = _build(nn.LSTM, "nn.LSTM", 1, hidden, batch_first=True, seed=0)
    reference.load_state_dict(lstm.state_dict())
    time_first = _build(nn.LSTM, "nn.LSTM", 1, hidden, seed=0)
    time_first.load_state_dict(lstm.state_dict())
    generator, gap = torch.Generator().manual_seed(41), 0.0
    for length in (9, 4, 12):
        x = torch.randn(5, length, 1, generator=generator)
        with torch.no_grad():
            output, (h_n, c_n) = reference(x)
            want = head(output[:, -1])
        model.zero_grad()
        got = model(x)
        with torch.no_grad():
            # the windows fed untransposed to a time-first LSTM, whose "time" is then
            # the batch: read at the last "step" (L rows) or at the last "sequence"
            mixed, (mixed_h, _) = time_first(x)
            as_time = isinstance(got, torch.Tensor) and got.shape[:1] == (length,)
            mistakes = {
                FIRST_STEP: head(output[:, 0]),
                CELL_STATE: head(c_n[-1]),
                WHOLE_H_N: head(h_n),
                TIME_FIRST: head(mixed_h[-1] if as_time else mixed[:, -1]),
            }
        gap = max(gap, expect_tensor(got, want, f"the forecasts for windows of {length}", mistakes=mistakes))
        got.pow(2).sum().backward()
        missing = _without_grads(model)
        expect(not missing, f"no gradient reaches {', '.join(missing)}: is something detached?")
    return (
        f"matches nn.LSTM and its head on its own weights {_within(gap)} on 3 random batches "
        f"(windows of 9, 4 and 12 steps, {horizon} values ahead); gradients reach every parameter"
    )


POPULATION_SD = "that standard deviation divides by n; the sample one divides by n - 1 (torch's default)"
UNPAIRED = (
    "the years are paired: take the standard deviation of the per-year differences, "
    "not combine each model's own spread"
)
SIGN = "the gain of best_errors is errors² - best_errors² (positive when best_errors is lower)"
OVER_N = "the standard error of a mean is the standard deviation over √n, not over n"


@checker("4.2", "paired_gain")
def check_paired_gain(paired_gain: Any) -> str:
    """Exercise 4.2: the mean of errors² - best_errors², year by year, and its standard error."""
    generator, gap = torch.Generator().manual_seed(42), 0.0
    for n in (6, 11, 40):
        errors = 20 * torch.randn(n, generator=generator)
        best_errors = 15 * torch.randn(n, generator=generator)
        inputs = (errors.clone(), best_errors.clone())
        got = paired_gain(errors, best_errors)
        unchanged = torch.equal(errors, inputs[0]) and torch.equal(best_errors, inputs[1])
        expect(unchanged, "paired_gain changed its input tensors (an in-place operation such as pow_)")
        expect(
            isinstance(got, (tuple, list)) and len(got) == 2,
            f"paired_gain should return (mean, standard error), got {type(got).__name__}",
        )
        pair = torch.tensor([_number(got[0], "the mean"), _number(got[1], "the standard error")])
        a, b = inputs[0].double().pow(2), inputs[1].double().pow(2)
        d, root = a - b, math.sqrt(n)
        mean, sd = d.mean(), d.std()
        mistakes = {
            POPULATION_SD: torch.stack([mean, d.std(correction=0) / root]),
            UNPAIRED: torch.stack([mean, (a.var() / n + b.var() / n).sqrt()]),
            SIGN: torch.stack([-mean, sd / root]),
            OVER_N: torch.stack([mean, sd / n]),
        }
        want = torch.stack([mean, sd / root])
        gap = max(
            gap,
            expect_tensor(
                pair, want, f"(mean, standard error) for {n} years", check_dtype=False, mistakes=mistakes
            ),
        )
    return (
        f"gives the paired mean gain and its standard error {_within(gap)} "
        "on 3 random pairs of error series (6, 11 and 40 years)"
    )


SAME_NETWORK = "build a fresh Summariser(nn.RNN) inside the loop, one per length, before training it"
LENGTH_40 = "that is its error on sequences of length 40: test each network on sequences of its own length"
RMSE = "that is the square root of the MSE (an RMSE): report the mean squared error itself"


@checker("4.3", "short_rnns")
def check_short_rnns(short_rnns: Any, short_mse: Any) -> str:
    """Exercise 4.3: separate RNNs per length, and each reported test MSE is that network's."""
    for value, name in ((short_rnns, "short_rnns"), (short_mse, "short_mse")):
        expect(
            isinstance(value, dict), f"{name} should be a dict {{length: ...}}, got {type(value).__name__}"
        )
    lengths = sorted(short_rnns)
    expect({5, 10, 20} <= set(lengths), f"short_rnns should have the keys 5, 10 and 20, got {lengths}")
    expect(
        set(short_mse) == set(lengths), f"short_mse has the keys {sorted(short_mse)}, short_rnns {lengths}"
    )
    nets = [short_rnns[n] for n in lengths]
    for n, net in zip(lengths, nets, strict=True):
        expect(isinstance(net, nn.Module), f"short_rnns[{n}] should be a network, got {type(net).__name__}")
        kinds = {type(m) for m in net.modules()}
        expect(nn.RNN in kinds and not kinds & {nn.LSTM, nn.GRU}, f"short_rnns[{n}] is not a plain RNN")
    weights = {p.data_ptr() for net in nets for p in net.parameters()}
    shared = len(weights) < sum(len(list(net.parameters())) for net in nets)
    expect(not shared, "some lengths share one network: each was trained on top of the last", SAME_NETWORK)
    generator, facts, n_test = torch.Generator().manual_seed(43), [], 4000
    for n, net in zip(lengths, nets, strict=True):
        net = copy.deepcopy(net).cpu().float().eval()
        got = _number(short_mse[n], f"short_mse[{n}]")
        with torch.no_grad():
            x, y = adding_problem(n_test, n, generator)
            errors = (net(x) - y).pow(2)
            x_40, y_40 = adding_problem(n_test, 40, generator)
            errors_40 = (net(x_40) - y_40).pow(2)
        expect(errors.shape == (n_test,), f"short_rnns[{n}] returns {tuple(errors.shape)}, not (B,)")
        want = errors.mean().item()
        # a reader's estimate from 1,000 or more sequences, against this one: 5 standard errors
        tol = 5 * errors.std().item() * math.sqrt(1 / 1000 + 1 / n_test)
        if abs(got - want) > tol:
            hint = None
            if abs(got - errors_40.mean().item()) <= 5 * errors_40.std().item() * math.sqrt(2 / 1000):
                hint = LENGTH_40
            elif abs(got**2 - want) <= tol:
                hint = RMSE
            raise Mismatch(
                f"short_mse[{n}] is {got:.4g}, but that network's MSE on {n_test:,} fresh sequences "
                f"of length {n} is {want:.4g} (± {tol:.2g})",
                hint,
            )
        facts.append(f"{n}: {got:.4f} vs {want:.4f}")
    return (
        f"{len(nets)} separate plain RNNs; each reported MSE agrees with its network's MSE on "
        f"{n_test:,} fresh sequences of its own length ({', '.join(facts)}) within 5 standard errors"
    )


class _Probe(nn.Module):
    """A small network shaped like chapter 4's Summariser: ``.rnn`` and ``.head``."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, 4, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1]).squeeze(1)


COPY = "copy.deepcopy(net), then scale the copy: scaling `net` changes what every later factor starts from"
SHALLOW = "copy.copy, or a new module around the same layers, shares `net`'s weights: use copy.deepcopy"
UNSCALED = "`w = w * k` makes a new tensor and leaves the layer as it was: scale in place, w.mul_(k)"
NO_GRAD = "an in-place change of a parameter must run under `with torch.no_grad():`"
REBUILT = "scaled_copy is checked on a smaller network: copy the one you are given (copy.deepcopy)"
EVERYTHING = "only the recurrent weights weight_hh_l0 are to be scaled, not all of the layer's parameters"


@checker("4.4", "scaled_copy")
def check_scaled_copy(scaled_copy: Any) -> str:
    """Exercise 4.4: a copy of the network whose ``rnn.weight_hh_l0`` is ``factor`` times larger."""
    net = _build(_Probe, "_Probe", seed=44)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, gap = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(44)), 0.0
    for factor in (2.5, 6.0):
        try:
            scaled = scaled_copy(net, factor)
        except NotImplementedError:  # a RuntimeError too: the skeleton, not a failure
            raise
        except RuntimeError as error:
            hint = (
                NO_GRAD
                if "leaf Variable" in str(error)
                else REBUILT
                if "size mismatch" in str(error)
                else None
            )
            raise Mismatch(f"your code raised RuntimeError: {error}", hint) from None
        expect(isinstance(scaled, nn.Module), f"scaled_copy returned a {type(scaled).__name__}")
        expect(scaled is not net, "scaled_copy returned `net` itself, not a copy", COPY)
        changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
        shared = {p.data_ptr() for p in net.parameters()} & {p.data_ptr() for p in scaled.parameters()}
        expect(
            not changed, f"the original network changed ({', '.join(changed)})", SHALLOW if shared else COPY
        )
        after = scaled.state_dict()
        expect(set(after) == set(before), f"the copy has the entries {sorted(after)}, not {sorted(before)}")
        key = "rnn.weight_hh_l0"
        mistakes = {UNSCALED: before[key]}
        gap = max(
            gap, expect_tensor(after[key], factor * before[key], f"the copy's {key}", mistakes=mistakes)
        )
        others = [k for k in before if k != key and not torch.equal(after[k], before[k])]
        every = {k for k in before if k.startswith("rnn.")} - {key} <= set(others)
        expect(not others, f"{', '.join(others)} changed too", EVERYTHING if every else None)
        weight = scaled.get_parameter(key)
        expect(weight.requires_grad, f"the copy's {key} no longer requires a gradient")
        scaled.zero_grad()
        scaled(x).sum().backward()
        missing = _without_grads(scaled)
        expect(not missing, f"no gradient reaches the copy's {', '.join(missing)}")
    return (
        f"copies the network and scales its weight_hh_l0 by 2.5 and by 6 {_within(gap)}; every other "
        "parameter and the original stay as they were, and gradients reach the copy"
    )


SINGULAR = (
    "that is the largest singular value (the spectral norm): the spectral radius is the "
    "largest absolute eigenvalue, torch.linalg.eigvals(W).abs().max()"
)
REAL_PART = "W_hh's eigenvalues are complex in general: take their absolute values before the maximum"
LAST_STATE = "average tanh's slope over the states at every step (the RNN's output), not only h_n"
RADIUS_ONLY = "multiply the spectral radius by tanh's mean slope 1 - h_t² over those states"


def _eigen_probe(factor: float) -> nn.Module:
    """A _Probe whose W_hh has eigenvalues ±0.9i, 0.5 and -0.3, times ``factor``."""
    net = _build(_Probe, "_Probe", seed=44)
    block = torch.tensor([[0, -0.9, 0, 0], [0.9, 0, 0, 0], [0, 0, 0.5, 0.1], [0, 0, 0, -0.3]])
    change = torch.eye(4) + 0.3 * torch.randn(4, 4, generator=torch.Generator().manual_seed(44))
    with torch.no_grad():  # the same eigenvalues in a basis that hides them
        net.rnn.weight_hh_l0.copy_(factor * change @ block @ torch.linalg.inv(change))
    return net


@checker("4.4", "step_estimate")
def check_step_estimate(step_estimate: Any) -> str:
    """Exercise 4.4: spectral radius of ``rnn.weight_hh_l0`` times tanh's mean slope on x."""
    x, facts = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(45)), []
    for factor in (1.0, 3.0):
        net = _eigen_probe(factor)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        got = _number(step_estimate(net, x.clone()), "the estimate")
        changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
        expect(not changed, f"step_estimate changed the network ({', '.join(changed)})")
        w = before["rnn.weight_hh_l0"].double()
        eigenvalues = torch.linalg.eigvals(w)
        radius = eigenvalues.abs().max().item()
        with torch.no_grad():
            h_all, h_n = net.rnn(x)
        slope = (1 - h_all.pow(2)).mean().item()
        want = radius * slope
        mistakes = {
            SINGULAR: torch.linalg.matrix_norm(w, ord=2).item() * slope,
            REAL_PART: eigenvalues.real.max().item() * slope,
            LAST_STATE: radius * (1 - h_n.pow(2)).mean().item(),
            RADIUS_ONLY: radius,
        }
        tol = 1e-4 * max(1.0, abs(want))
        hint = next((h for h, value in mistakes.items() if abs(got - value) <= tol), None)
        expect_close(got, want, f"the estimate for W_hh x {factor:g}", tol=tol, hint=hint)
        facts.append(f"{want:.3f}")
    return (
        f"gives spectral radius x mean tanh slope ({' and '.join(facts)}) for a W_hh with complex "
        "leading eigenvalues, scaled by 1 and by 3, and leaves the network as it was"
    )


NO_PACKING = "the GRU read the padding: pack the embedded batch with each name's own length"
OUTPUT_LAST = "output[:, -1] is the backward direction after one step (zeros after a short name): use h_n"
RESHAPE = "h_n is (2, B, hidden): reshaping it to (B, 2 * hidden) mixes names; cat h_n[-2] and h_n[-1]"
ORDER = "the head reads the forward direction, h_n[-2], first, then the backward one, h_n[-1]"
SORTED = "the names are not sorted by length: pack with enforce_sorted=False"


@checker("4.5", "BiNameClassifier")
def check_bi_classifier(cls: Any) -> str:
    """Exercise 4.5: embed, pack, run a bidirectional GRU, classify both directions' h_n."""
    vocab, classes, embed, hidden = 11, 4, 5, 3
    model = _build(cls, "BiNameClassifier", vocab, classes, embed=embed, hidden=hidden, seed=45)
    embedding, gru, head = _only(model, nn.Embedding), _only(model, nn.GRU), _only(model, nn.Linear)
    expect(gru.bidirectional, "its nn.GRU is not bidirectional", "pass bidirectional=True")
    sizes = (gru.input_size, gru.hidden_size, gru.num_layers)
    expect(sizes == (embed, hidden, 1), f"expected a one-layer nn.GRU({embed}, {hidden}), got {gru}")
    expect(head.in_features == 2 * hidden, f"the head reads {head.in_features} numbers, not 2 * hidden")
    expect(embedding.padding_idx == 0, f"the embedding's padding_idx is {embedding.padding_idx}, not 0")
    reference = _build(nn.GRU, "nn.GRU", embed, hidden, batch_first=True, bidirectional=True, seed=0)
    reference.load_state_dict(gru.state_dict())
    lengths = torch.tensor([4, 1, 7, 2, 5])  # unsorted, one name of one character
    ids = torch.randint(2, vocab, (len(lengths), 7), generator=torch.Generator().manual_seed(45))
    ids[torch.arange(7) >= lengths[:, None]] = 0  # padding after each name
    with torch.no_grad():
        alone = [reference(embedding(row[:n])[None])[1] for row, n in zip(ids, lengths, strict=True)]
        want = head(torch.cat([torch.cat([h[0], h[1]], dim=1) for h in alone]))
        _, h_padded = reference(embedding(ids))
        packed = pack_padded_sequence(embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        output_packed, h_n = reference(packed)
        output, _ = pad_packed_sequence(output_packed, batch_first=True)
        mistakes = {
            NO_PACKING: head(torch.cat([h_padded[-2], h_padded[-1]], dim=1)),
            OUTPUT_LAST: head(output[:, -1]),
            RESHAPE: head(h_n.reshape(len(lengths), 2 * hidden)),
            ORDER: head(torch.cat([h_n[-1], h_n[-2]], dim=1)),
        }
    try:
        got = model(ids)
    except NotImplementedError:
        raise
    except RuntimeError as error:
        raise Mismatch(
            f"your code raised RuntimeError: {error}", SORTED if "sorted" in str(error) else None
        ) from None
    gap = expect_tensor(got, want, "the logits", mistakes=mistakes)
    got.pow(2).sum().backward()
    missing = _without_grads(model)
    expect(not missing, f"no gradient reaches {', '.join(missing)}")
    return (
        f"matches torch's bidirectional nn.GRU run on each name alone {_within(gap)} "
        "(5 padded, unsorted names of 1 to 7 characters); gradients reach every parameter"
    )
