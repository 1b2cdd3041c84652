"""Checkers for chapter 4's exercises (recurrent networks); see :mod:`helpers.exercises`.

This module holds exercises 4.1 to 4.3 and re-exports the checkers of exercise 4.4
(:mod:`helpers.exercises.ch04_gradients`) and 4.5 (:mod:`helpers.exercises.ch04_names`);
the helpers they share are in :mod:`helpers.exercises.ch04_common`. Each checker builds
the reader's object on fresh, seeded inputs on the CPU and compares it with torch's own
layers (``nn.LSTM``, ``nn.GRU``) or with a statistic computed here. The global random
state is left as it was, so a check does not change a chapter's run.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from helpers.exercises import Mismatch, checker, expect, expect_close, expect_tensor
from helpers.exercises.ch04_common import UNREGISTERED, _build, _number, _only, _within, _without_grads
from helpers.exercises.ch04_gradients import check_jacobian_growth, check_scaled_copy
from helpers.exercises.ch04_names import check_bi_classifier
from helpers.sequences import adding_problem

__all__ = [
    "UNREGISTERED",
    "check_bi_classifier",
    "check_block_se",
    "check_jacobian_growth",
    "check_scaled_copy",
    "check_seq2seq_forecaster",
    "check_short_rnns",
]

CELL_STATE = "an LSTM returns (h_n, c_n): start the decoder from (h_n[-1], c_n[-1]), in that order"
ZERO_STATE = (
    "the decoder started from zeros: start it from the encoder's final state, "
    "(h_n[-1], c_n[-1]), so that it knows what the window held"
)
ZERO_INPUT = "the decoder's first input is the window's last value, x[:, -1], not zeros"
SKIPPED = "the first forecast comes from one decoder step on x[:, -1], not from the encoder's h_n alone"
DETACHED = (
    "the forecasts fed back are detached: keep them in the graph, so that training "
    "learns from what each forecast does to the ones after it"
)


def _decode(encoder: nn.LSTM, cell: nn.LSTMCell, head: nn.Linear, x: torch.Tensor, horizon: int, **how: bool):
    """The reference decoder of exercise 4.1, and its known mistakes (``how``)."""
    _, (h_n, c_n) = encoder(x)  # (1, B, hidden) each
    h, c = h_n[-1], c_n[-1]
    if how.get("swap"):
        h, c = c, h
    if how.get("zero_state"):
        h, c = torch.zeros_like(h), torch.zeros_like(c)
    value = torch.zeros_like(x[:, -1]) if how.get("zero_input") else x[:, -1]  # (B, 1)
    forecasts = []
    for step in range(horizon):
        if how.get("skip") and step == 0:
            value = head(h)
        else:
            h, c = cell(value, (h, c))
            value = head(h)  # (B, 1)
        forecasts.append(value)
        if how.get("detach"):
            value = value.detach()
    return torch.cat(forecasts, dim=1)  # (B, horizon)


@checker("4.1", "Seq2SeqForecaster")
def check_seq2seq_forecaster(cls: Any) -> str:
    """Exercise 4.1: an encoder LSTM, then an LSTMCell decoder fed its own forecasts."""
    horizon, hidden = 7, 6
    model = _build(cls, "Seq2SeqForecaster", horizon, hidden_size=hidden, seed=41)
    encoder, cell = _only(model, nn.LSTM), _only(model, nn.LSTMCell)
    head = _only(model, nn.Linear)
    shape = (encoder.input_size, encoder.hidden_size, encoder.num_layers, encoder.bidirectional)
    expect(shape == (1, hidden, 1, False), f"expected an encoder nn.LSTM(1, {hidden}), got {encoder}")
    sizes = (cell.input_size, cell.hidden_size)
    expect(sizes == (1, hidden), f"the decoder is {cell}, expected nn.LSTMCell(1, {hidden})")
    expect(
        (head.in_features, head.out_features) == (hidden, 1),
        f"the head is {head}, expected nn.Linear({hidden}, 1)",
    )
    # batch-first or time-first with a transpose, either is right: judge the outputs
    reference = _build(nn.LSTM, "nn.LSTM", 1, hidden, batch_first=True, seed=0)
    reference.load_state_dict(encoder.state_dict())
    generator, gap = torch.Generator().manual_seed(41), 0.0
    for length in (9, 4, 12):
        x = torch.randn(5, length, 1, generator=generator)
        with torch.no_grad():
            want = _decode(reference, cell, head, x, horizon)
            mistakes = {
                hint: _decode(reference, cell, head, x, horizon, **{how: True})
                for hint, how in (
                    (CELL_STATE, "swap"),
                    (ZERO_STATE, "zero_state"),
                    (ZERO_INPUT, "zero_input"),
                    (SKIPPED, "skip"),
                )
            }
        model.zero_grad()
        got = model(x)
        gap = max(gap, expect_tensor(got, want, f"the forecasts for windows of {length}", mistakes=mistakes))
        got.pow(2).sum().backward()
        missing = _without_grads(model)
        expect(not missing, f"no gradient reaches {', '.join(missing)}: is something detached?")
        mine = cell.weight_ih.grad.clone()  # the attempt's own gradient
        # the gradient must also flow back through the forecasts fed back
        grads = {}
        for detach in (False, True):
            cell.zero_grad()
            _decode(reference, cell, head, x, horizon, detach=detach).pow(2).sum().backward()
            grads[detach] = cell.weight_ih.grad.clone()
        what = "the gradient of the decoder's weight_ih"
        expect_tensor(mine, grads[False], what, mistakes={DETACHED: grads[True]})
    return (
        f"matches an encoder nn.LSTM and an nn.LSTMCell decoder fed its own forecasts {_within(gap)} "
        f"on 3 random batches (windows of 9, 4 and 12 steps, {horizon} values ahead); "
        "gradients flow through the forecasts fed back"
    )


ORDINARY = (
    "that is the ordinary standard error, std / √n, which treats the years as independent: "
    "average each block of consecutive years first and use the spread of those block means"
)
STRIDED = (
    "gain.reshape(block, -1) puts every (n / block)-th year into a row: reshape(-1, block) "
    "makes each row `block` consecutive years"
)
OVER_YEARS = "divide the block means' standard deviation by √(number of blocks), not by √n"
POPULATION_SD = (
    "that standard deviation divides by the number of blocks; the sample one divides by "
    "that number - 1 (torch's default)"
)


@checker("4.2", "block_se")
def check_block_se(block_se: Any) -> str:
    """Exercise 4.2: the standard error of a mean from the means of consecutive blocks."""
    generator, gap = torch.Generator().manual_seed(42), 0.0
    for n, block in ((12, 3), (40, 5), (30, 6)):
        # correlated neighbours, as in a series of yearly differences: a random walk
        # pulled back towards 0 (an AR(1) process), around a mean of 50
        noise = 100 * torch.randn(n, generator=generator)
        gain = torch.empty(n)
        gain[0] = noise[0]
        for t in range(1, n):
            gain[t] = 0.6 * gain[t - 1] + noise[t]
        gain += 50
        given = gain.clone()
        got = _number(block_se(given, block), f"the standard error for {n} values in blocks of {block}")
        expect(torch.equal(given, gain), "block_se changed its input tensor (an in-place operation)")
        d, k = gain.double(), n // block
        means = d.reshape(k, block).mean(dim=1)  # (k,): one mean per block
        want = (means.std() / math.sqrt(k)).item()
        mistakes = {
            ORDINARY: (d.std() / math.sqrt(n)).item(),
            STRIDED: (d.reshape(block, k).mean(dim=0).std() / math.sqrt(k)).item(),
            OVER_YEARS: (means.std() / math.sqrt(n)).item(),
            POPULATION_SD: (means.std(correction=0) / math.sqrt(k)).item(),
        }
        tol = 1e-5 * abs(want)
        hint = next((h for h, value in mistakes.items() if abs(got - value) <= tol), None)
        expect_close(got, want, f"the standard error for {n} values in blocks of {block}", tol=tol, hint=hint)
        gap = max(gap, abs(got - want) / want)
    return (
        f"gives the block standard error {_within(gap)} (relative) on 3 correlated series "
        "(12 values in blocks of 3, 40 in blocks of 5, 30 in blocks of 6)"
    )


SAME_NETWORK = "build a fresh Summariser(nn.RNN) inside the loop, one per length, before training it"
LENGTH_40 = "that is its error on sequences of length 40: test each network on sequences of its own length"
UNTRAINED = (
    "train each fresh network with train_on_adding(net, length, seed) before measuring it: "
    "an untrained network stays near chance, 1/6"
)
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
        if n == 5:
            # a trained plain RNN solves length 5 (MSE 0.005 to 0.008 in the chapter's
            # runs); one that reads a single number gets 1/12 = 0.083, chance 1/6
            expect(
                want < 0.5 / 12,
                f"short_rnns[5]'s MSE is {want:.3g}: not below half of 1/12 ({0.5 / 12:.3g}), "
                "what reading just one of the two marked numbers would give",
                UNTRAINED,
            )
        facts.append(f"{n}: {got:.4f} vs {want:.4f}")
    return (
        f"{len(nets)} separate plain RNNs, the length-5 one well below 1/12; each reported MSE "
        "agrees with its network's MSE on "
        f"{n_test:,} fresh sequences of its own length ({', '.join(facts)}) within 5 standard errors"
    )
