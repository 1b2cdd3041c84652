"""Checkers for chapter 4's exercises (recurrent networks); see :mod:`helpers.exercises`.

This module holds exercises 4.1 to 4.3 and re-exports the checkers of exercise 4.4
(:mod:`helpers.exercises.ch04_gradients`) and 4.5 (:mod:`helpers.exercises.ch04_names`);
the helpers they share are in :mod:`helpers.exercises.ch04_common`. Each checker builds
the reader's object on fresh, seeded inputs on the CPU and compares it with torch's own
layers (``nn.LSTM``, ``nn.RNN``, ``nn.GRU``) or with a statistic computed here. The
global random state is left as it was, so a check does not change a chapter's run.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from helpers.exercises import Mismatch, checker, expect, expect_close, expect_tensor
from helpers.exercises.ch04_common import UNREGISTERED, _build, _number, _only, _within, _without_grads
from helpers.exercises.ch04_gradients import check_jacobian_growth, check_scaled_copy
from helpers.exercises.ch04_names import check_bi_classifier

__all__ = [
    "UNREGISTERED",
    "check_bi_classifier",
    "check_block_se",
    "check_irnn",
    "check_jacobian_growth",
    "check_scaled_copy",
    "check_seq2seq_forecaster",
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
        try:
            got.pow(2).sum().backward()
        except RuntimeError as error:  # every forecast detached: no graph at all
            hint = DETACHED if "does not require grad" in str(error) else None
            raise Mismatch(f"your code raised RuntimeError: {error}", hint) from None
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


TANH = "nn.RNN's units are tanh by default: build the layer with nonlinearity='relu'"
NOT_IDENTITY = (
    "weight_hh_l0 still has its random start: set it to the identity with nn.init.eye_(...) "
    "(nn.init switches autograd off itself)"
)
BIASES = (
    "the biases keep their random start: zero bias_ih_l0 and bias_hh_l0 (nn.init.zeros_); "
    "with W_hh = I a constant bias is added to the state again at every step"
)
INPUT_WEIGHTS = (
    "only W_hh starts at the identity, and only the biases at zero: weight_ih_l0 keeps "
    "its random start, or the network cannot tell its inputs apart"
)
BATCH_FIRST = "Summariser reads output[:, -1], the last step: build the layer with batch_first=True"


@checker("4.3", "make_irnn")
def check_irnn(make_irnn: Any) -> str:
    """Exercise 4.3: an IRNN, nn.RNN with ReLU units, W_hh = I and zero biases."""
    generator, gap = torch.Generator().manual_seed(43), 0.0
    for hidden in (6, 3):
        with torch.random.fork_rng(devices=[]):  # the reader's layers draw from it
            torch.random.default_generator.manual_seed(43 + hidden)
            model = make_irnn(hidden)
        expect(
            isinstance(model, nn.Module),
            f"make_irnn({hidden}) returned a {type(model).__name__}, not a network",
        )
        rnn, head = _only(model, nn.RNN), _only(model, nn.Linear)
        sizes = (rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bidirectional)
        expect(
            sizes == (2, hidden, 1, False), f"make_irnn({hidden}) built {rnn}, expected nn.RNN(2, {hidden})"
        )
        expect(rnn.nonlinearity == "relu", f"the layer's units are {rnn.nonlinearity}, not ReLU", TANH)
        w_hh, eye = rnn.weight_hh_l0.detach().cpu(), torch.eye(hidden)
        scaled = torch.equal(w_hh, w_hh[0, 0] * eye)  # a multiple of I: no random start
        expect(torch.equal(w_hh, eye), "weight_hh_l0 is not the identity", None if scaled else NOT_IDENTITY)
        if rnn.bias:  # bias=False is an IRNN too: no bias to zero
            for name in ("bias_ih_l0", "bias_hh_l0"):
                bias = rnn.get_parameter(name)
                expect(not bias.any(), f"{name} is not zero", BIASES)
        w_ih = rnn.weight_ih_l0.detach().cpu()
        expect(
            w_ih.any() and not torch.equal(w_ih, torch.eye(hidden, 2)),
            "weight_ih_l0 lost its random start",
            INPUT_WEIGHTS,
        )
        reference = {}
        for batch_first in (True, False):
            layer = _build(
                nn.RNN,
                "nn.RNN",
                2,
                hidden,
                nonlinearity="relu",
                bias=rnn.bias,
                batch_first=batch_first,
                seed=0,
            )
            layer.load_state_dict(rnn.state_dict())
            reference[batch_first] = layer
        x = torch.randn(5, 9, 2, generator=generator)
        with torch.no_grad():
            want = head(reference[True](x)[0][:, -1]).squeeze(1)  # (5,)
            time_first = head(reference[False](x)[0][:, -1]).squeeze(1)
        model.zero_grad()
        got = model(x)
        what = f"the outputs of make_irnn({hidden})"
        gap = max(gap, expect_tensor(got, want, what, mistakes={BATCH_FIRST: time_first}))
        got.pow(2).sum().backward()
        missing = _without_grads(model)
        expect(not missing, f"no gradient reaches {', '.join(missing)}")
    return (
        "builds an IRNN (ReLU units, W_hh = I, zero biases, W_ih at its random start) for 6 "
        f"and 3 units, whose outputs match torch's nn.RNN(nonlinearity='relu') {_within(gap)}; "
        "gradients reach every parameter"
    )
