"""Chapter 4's exercise checkers: references pass, starters are "not attempted", mistakes get hints."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import torch
from exercise_cells import run_starter, starter_cells
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers.exercises import ch04, ch04_gradients, ch04_names

STARTERS = starter_cells("04")


def test_each_exercise_has_one_starter():
    assert len(STARTERS) == 5


@pytest.mark.parametrize(
    ("index", "name", "namespace"),
    [
        (0, "Seq2SeqForecaster", {"nn": nn, "torch": torch}),
        (1, "block_se", {"torch": torch}),
        (2, "make_irnn", {"Summariser": nn.Module}),
        (3, "scaled_copy", {"Summariser": nn.Module}),
        (4, "BiNameClassifier", {"nn": nn, "torch": torch}),
    ],
)
def test_an_untouched_starter_is_not_attempted(index, name, namespace):
    start = time.perf_counter()
    out = run_starter(STARTERS[index], **namespace)
    assert time.perf_counter() - start < 1.0
    expected = f"… Exercise 4.{index + 1}: not attempted yet: fill in `{name}` above\n"
    if index == 3:  # exercise 4's starter has a second function, and a second check
        expected += "… Exercise 4.4: not attempted yet: fill in `jacobian_growth` above\n"
    assert out == expected


def test_checks_leave_the_global_random_state_as_it_was():
    state = torch.random.get_rng_state()
    for verdict in (
        ch04.check_seq2seq_forecaster(Seq2Seq),
        ch04.check_block_se(block_se_right),
        ch04.check_irnn(irnn()),
        ch04_gradients.check_scaled_copy(scale_right),
        ch04_gradients.check_jacobian_growth(growth_right),
        ch04_names.check_bi_classifier(Bi),
    ):
        assert verdict.passed
    assert torch.equal(torch.random.get_rng_state(), state)


def failed(verdict, hint=None, message=""):
    """The verdict failed with ``hint`` (None: no hint) and a message containing ``message``."""
    return verdict.status == "failed" and verdict.hint == hint and message in verdict.message


# Exercise 4.1 ------------------------------------------------------------------------


class Seq2Seq(nn.Module):
    """A correct encoder-decoder forecaster; ``how`` selects the mistakes."""

    how = "right"
    batch_first = True

    def __init__(self, horizon: int, hidden_size: int = 32) -> None:
        super().__init__()
        self.horizon = horizon
        self.encoder = nn.LSTM(1, hidden_size, batch_first=self.batch_first)
        self.decoder = nn.LSTMCell(1, hidden_size)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            _, (h_n, c_n) = self.encoder(x)
        else:  # a correct time-first encoder: (L, B, 1) in
            _, (h_n, c_n) = self.encoder(x.transpose(0, 1))
        h, c = (c_n[-1], h_n[-1]) if self.how == "swap" else (h_n[-1], c_n[-1])
        if self.how == "zero state":
            h, c = torch.zeros_like(h), torch.zeros_like(c)
        value = torch.zeros_like(x[:, -1]) if self.how == "zero input" else x[:, -1]
        forecasts = []
        for step in range(self.horizon):
            if self.how == "skip" and step == 0:
                value = self.head(h)
            else:
                h, c = self.decoder(value, (h, c))
                value = self.head(h)
            forecasts.append(value)
            if self.how == "detach":
                value = value.detach()
            elif self.how == "detach all":  # the forecast kept is detached too
                value = forecasts[-1] = value.detach()
            elif self.how == "window input":  # always fed the window's last value
                value = x[:, -1]
        return torch.cat(forecasts, dim=1)


def seq2seq(how: str, batch_first: bool = True) -> type[Seq2Seq]:
    return type("Variant", (Seq2Seq,), {"how": how, "batch_first": batch_first})


def test_seq2seq_forecaster_passes_right_answers():
    verdict = ch04.check_seq2seq_forecaster(Seq2Seq)
    assert verdict.passed and "on 3 random batches" in verdict.message
    # time-first is right too, with the windows transposed to (L, B, 1)
    assert ch04.check_seq2seq_forecaster(seq2seq("right", batch_first=False)).passed


@pytest.mark.parametrize(
    ("how", "hint", "message"),
    [
        ("swap", ch04.CELL_STATE, "the forecasts for windows of 9"),
        ("zero state", ch04.ZERO_STATE, "the forecasts for windows of 9"),
        ("zero input", ch04.ZERO_INPUT, "the forecasts for windows of 9"),
        ("skip", ch04.SKIPPED, "the forecasts for windows of 9"),
        ("window input", None, "the forecasts for windows of 9"),
        ("detach", ch04.DETACHED, "the gradient of the decoder's weight_ih"),
        ("detach all", ch04.DETACHED, "does not require grad"),
    ],
)
def test_seq2seq_forecaster_mistakes(how, hint, message):
    assert failed(ch04.check_seq2seq_forecaster(seq2seq(how)), hint, message)


def test_seq2seq_forecaster_probes():
    class InAList(Seq2Seq):
        def __init__(self, horizon: int, hidden_size: int = 32) -> None:
            super().__init__(horizon, hidden_size)
            self.layers = [self.encoder]
            del self.encoder

    assert failed(ch04.check_seq2seq_forecaster(InAList), ch04.UNREGISTERED, "found no nn.LSTM")

    class FixedSize(Seq2Seq):
        def __init__(self, horizon: int, hidden_size: int = 32) -> None:
            super().__init__(horizon, 32)

    assert failed(ch04.check_seq2seq_forecaster(FixedSize), None, "expected an encoder nn.LSTM(1, 6)")

    class WideCell(Seq2Seq):
        def __init__(self, horizon: int, hidden_size: int = 32) -> None:
            super().__init__(horizon, hidden_size)
            self.decoder = nn.LSTMCell(2, hidden_size)

    assert failed(ch04.check_seq2seq_forecaster(WideCell), None, "expected nn.LSTMCell(1, 6)")

    class WideHead(Seq2Seq):
        def __init__(self, horizon: int, hidden_size: int = 32) -> None:
            super().__init__(horizon, hidden_size)
            self.head = nn.Linear(hidden_size, horizon)

    assert failed(ch04.check_seq2seq_forecaster(WideHead), None, "expected nn.Linear(6, 1)")

    class Unused(Seq2Seq):
        def __init__(self, horizon: int, hidden_size: int = 32) -> None:
            super().__init__(horizon, hidden_size)
            self.scale = nn.Parameter(torch.ones(1))

    assert failed(ch04.check_seq2seq_forecaster(Unused), None, "no gradient reaches scale")

    def fail(grad):
        raise RuntimeError("some other failure")

    class FailsBackward(Seq2Seq):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            out.register_hook(fail)
            return out

    message = "your code raised RuntimeError: some other failure"
    assert failed(ch04.check_seq2seq_forecaster(FailsBackward), None, message)
    instance = Seq2Seq(7, 6)
    assert failed(ch04.check_seq2seq_forecaster(instance), None, "got Seq2Seq")


# Exercise 4.2 ------------------------------------------------------------------------


def block_se_right(gain, block):
    means = gain.reshape(-1, block).mean(dim=1)  # one mean per block of years
    return means.std() / math.sqrt(len(means))  # a tensor is fine too


def test_block_se_passes_the_right_statistic():
    verdict = ch04.check_block_se(block_se_right)
    assert verdict.passed and "40 in blocks of 5" in verdict.message
    as_numpy = ch04.check_block_se(lambda g, b: np.float32(block_se_right(g, b).item()))
    assert as_numpy.passed

    # computed another way: the blocks by a loop, in float64
    def by_loop(gain, block):
        means = [gain[i : i + block].double().mean() for i in range(0, len(gain), block)]
        return torch.stack(means).std().item() / math.sqrt(len(means))

    assert ch04.check_block_se(by_loop).passed


def block_mistake(kind):
    def block_se(gain, block):
        n, k = len(gain), len(gain) // block
        means = gain.reshape(k, block).mean(dim=1)
        return {
            "ordinary": lambda: gain.std() / math.sqrt(n),
            "strided": lambda: gain.reshape(block, k).mean(dim=0).std() / math.sqrt(k),
            "over years": lambda: means.std() / math.sqrt(n),
            "population": lambda: means.std(correction=0) / math.sqrt(k),
            "overlapping": lambda: gain.unfold(0, block, 1).mean(dim=1).std() / math.sqrt(k),
        }[kind]()

    return block_se


@pytest.mark.parametrize(
    ("kind", "hint"),
    [
        ("ordinary", ch04.ORDINARY),
        ("strided", ch04.STRIDED),
        ("over years", ch04.OVER_YEARS),
        ("population", ch04.POPULATION_SD),
        ("overlapping", None),
    ],
)
def test_block_se_mistakes(kind, hint):
    assert failed(ch04.check_block_se(block_mistake(kind)), hint, "for 12 values in blocks of 3 is")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda g, b: g.sub_(1).std(), "changed its input tensor"),
        (lambda g, b: g.reshape(-1, b).mean(dim=1), "should be one number, got shape (4,)"),
        (lambda g, b: "1", "should be a real number, got str"),
        (lambda g, b: math.inf, "is inf, not a finite number"),
    ],
)
def test_block_se_says_what_is_off(answer, message):
    assert failed(ch04.check_block_se(answer), None, message)


# Exercise 4.3 ------------------------------------------------------------------------


class IRNN(nn.Module):
    """Chapter 4's Summariser with an IRNN layer; ``how`` selects the mistakes."""

    def __init__(self, hidden_size: int = 32, how: str = "right") -> None:
        super().__init__()
        relu = "relu" if how != "tanh" else "tanh"
        bias = how != "no bias"
        batch_first = how != "time first"
        self.rnn = nn.RNN(2, hidden_size, nonlinearity=relu, bias=bias, batch_first=batch_first)
        self.head = nn.Linear(hidden_size, 1)
        self.how = how
        with torch.no_grad():
            if how != "random W_hh":
                nn.init.eye_(self.rnn.weight_hh_l0)
            if how == "half":
                self.rnn.weight_hh_l0.mul_(0.5)
            if bias and how != "random biases":
                nn.init.zeros_(self.rnn.bias_ih_l0)
                if how != "random bias_hh":
                    nn.init.zeros_(self.rnn.bias_hh_l0)
            if how == "zero W_ih":
                nn.init.zeros_(self.rnn.weight_ih_l0)
            if how == "eye W_ih":
                nn.init.eye_(self.rnn.weight_ih_l0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(x)
        last = output[:, 0] if self.how == "first step" else output[:, -1]
        return self.head(last).squeeze(1)


def irnn(how: str = "right"):
    return lambda hidden_size=32: IRNN(hidden_size, how)


def test_irnn_passes_right_answers():
    verdict = ch04.check_irnn(irnn())
    assert verdict.passed and "W_hh = I" in verdict.message
    assert ch04.check_irnn(irnn("no bias")).passed  # an IRNN without biases is one too

    class NoNoGrad(IRNN):  # nn.init switches autograd off itself
        def __init__(self, hidden_size: int = 32) -> None:
            super().__init__(hidden_size, "random W_hh")
            nn.init.eye_(self.rnn.weight_hh_l0)
            assert self.rnn.weight_hh_l0.is_leaf and self.rnn.weight_hh_l0.requires_grad

    assert ch04.check_irnn(NoNoGrad).passed


@pytest.mark.parametrize(
    ("how", "hint", "message"),
    [
        ("tanh", ch04.TANH, "units are tanh"),
        ("random W_hh", ch04.NOT_IDENTITY, "not the identity"),
        ("random biases", ch04.BIASES, "bias_ih_l0 is not zero"),
        ("random bias_hh", ch04.BIASES, "bias_hh_l0 is not zero"),
        ("zero W_ih", ch04.INPUT_WEIGHTS, "weight_ih_l0 lost"),
        ("eye W_ih", ch04.INPUT_WEIGHTS, "weight_ih_l0 lost"),
        ("time first", ch04.BATCH_FIRST, "the outputs of make_irnn(6)"),
    ],
)
def test_irnn_mistakes(how, hint, message):
    assert failed(ch04.check_irnn(irnn(how)), hint, message)


def test_irnn_says_what_is_off():
    class Frozen(IRNN):
        def __init__(self, hidden_size: int) -> None:
            super().__init__(hidden_size)
            self.rnn.bias_hh_l0.requires_grad_(False)

    cases = [
        (irnn("half"), "weight_hh_l0 is not the identity"),  # a multiple of I: no hint
        (irnn("first step"), "the outputs of make_irnn(6)"),
        (lambda hidden_size=32: "net", "returned a str, not a network"),
        (lambda hidden_size=32: IRNN(4), "make_irnn(6) built RNN(2, 4"),
        (lambda hidden_size=32: nn.Linear(2, 1), "found no nn.RNN"),
        (Frozen, "no gradient reaches rnn.bias_hh_l0"),
    ]
    for attempt, message in cases:
        assert failed(
            ch04.check_irnn(attempt), None if "nn.RNN" not in message else ch04.UNREGISTERED, message
        ), message


# Exercise 4.4 ------------------------------------------------------------------------


def scale_right(net, factor):
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        scaled.rnn.weight_hh_l0.mul_(factor)
    return scaled


def scale_in_place(net, factor):
    with torch.no_grad():
        net.rnn.weight_hh_l0.mul_(factor)
    return net


def scale_shallow(net, factor):
    return scale_in_place(copy.copy(net), factor)


def scale_then_copy(net, factor):
    return copy.deepcopy(scale_in_place(net, factor))


def scale_not_assigned(net, factor):
    scaled = copy.deepcopy(net)
    w = scaled.rnn.weight_hh_l0
    w = w * factor  # the mistake: a new tensor, the layer unchanged
    return scaled


def scale_without_no_grad(net, factor):
    scaled = copy.deepcopy(net)
    scaled.rnn.weight_hh_l0.mul_(factor)
    return scaled


def scale_layer(net, factor):
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        for parameter in scaled.rnn.parameters():
            parameter.mul_(factor)
    return scaled


def scale_with_bias(net, factor):
    scaled = scale_right(net, factor)
    with torch.no_grad():
        scaled.rnn.bias_hh_l0.mul_(factor)
    return scaled


def test_scaled_copy_passes_a_deep_copy_scaled_in_place():
    verdict = ch04_gradients.check_scaled_copy(scale_right)
    assert verdict.passed and "by 2.5 and by 6 exactly;" in verdict.message


@pytest.mark.parametrize(
    ("answer", "hint", "message"),
    [
        (scale_in_place, ch04_gradients.COPY, "returned `net` itself"),
        (scale_shallow, ch04_gradients.SHALLOW, "the original network changed (rnn.weight_hh_l0)"),
        (scale_then_copy, ch04_gradients.COPY, "the original network changed (rnn.weight_hh_l0)"),
        (scale_not_assigned, ch04_gradients.UNSCALED, "the copy's rnn.weight_hh_l0: 16 of 16 entries differ"),
        (scale_without_no_grad, ch04_gradients.NO_GRAD, "a leaf Variable that requires grad"),
        (
            scale_layer,
            ch04_gradients.EVERYTHING,
            "rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.bias_hh_l0 changed too",
        ),
        (scale_with_bias, None, "rnn.bias_hh_l0 changed too"),
    ],
)
def test_scaled_copy_mistakes(answer, hint, message):
    assert failed(ch04_gradients.check_scaled_copy(answer), hint, message)


def test_scaled_copy_rebuilding_the_chapter_network_gets_a_hint():
    def scale_rebuilt(net, factor):
        scaled = nn.Sequential()  # the chapter's size, not the checker's
        scaled.rnn = nn.RNN(1, 32, batch_first=True)
        scaled.head = nn.Linear(32, 1)
        scaled.load_state_dict(net.state_dict())
        with torch.no_grad():
            scaled.rnn.weight_hh_l0.mul_(factor)
        return scaled

    assert failed(ch04_gradients.check_scaled_copy(scale_rebuilt), ch04_gradients.REBUILT, "size mismatch")


def frozen(part):
    def scaled_copy(net, factor):
        scaled = scale_right(net, factor)
        scaled.get_parameter(part).requires_grad_(False)
        return scaled

    return scaled_copy


def test_scaled_copy_says_what_is_off():
    def broken(net, factor):
        raise RuntimeError("some other failure")

    cases = [
        (lambda net, factor: net.rnn.weight_hh_l0 * factor, "scaled_copy returned a Tensor"),
        (lambda net, factor: nn.Linear(2, 2), "the copy has the entries ['bias', 'weight']"),
        (frozen("rnn.weight_hh_l0"), "the copy's rnn.weight_hh_l0 no longer requires a gradient"),
        (frozen("head.weight"), "no gradient reaches the copy's head.weight"),
        (broken, "your code raised RuntimeError: some other failure"),
    ]
    for answer, message in cases:
        assert failed(ch04_gradients.check_scaled_copy(answer), None, message), message


def growth(order="latest left", slope="h_t", root=True, norm="singular", steps="2..T"):
    """jacobian_growth, right by default; the arguments pick the mistakes."""

    def jacobian_growth(net, x):
        w = net.rnn.weight_hh_l0.detach().double()
        with torch.no_grad():
            h_all, _ = net.rnn(x)
        rates = []
        for h in h_all.double():
            slopes = 1 - h.pow(2)  # (T, H)
            if slope == "h_t-1":
                slopes = torch.cat([torch.ones_like(slopes[:1]), slopes[:-1]])
            factors = slopes if steps == "1..T" else slopes[1:]
            product = torch.eye(len(w), dtype=w.dtype)
            for s in factors:
                j = w * s[None, :] if slope == "columns" else s[:, None] * w
                product = j @ product if order == "latest left" else product @ j
            value = (
                torch.linalg.matrix_norm(product, ord=2)
                if norm == "singular"
                else torch.linalg.matrix_norm(product)
                if norm == "frobenius"
                else torch.linalg.eigvals(product).abs().max()
            ).item()
            rates.append(value ** (1 / len(factors)) if root else value)
        return sum(rates) / len(rates)

    return jacobian_growth


growth_right = growth()


def crude(net, x):
    w = net.rnn.weight_hh_l0.detach()
    with torch.no_grad():
        h_all, _ = net.rnn(x)
    return torch.linalg.eigvals(w).abs().max() * (1 - h_all.pow(2)).mean()


def test_jacobian_growth_passes_the_right_rate():
    verdict = ch04_gradients.check_jacobian_growth(growth_right)
    assert verdict.passed and "scaled by 1 and by 3" in verdict.message
    as_tensor = ch04_gradients.check_jacobian_growth(lambda net, x: torch.tensor(growth_right(net, x)))
    assert as_tensor.passed


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (growth(order="latest right"), ch04_gradients.REVERSED),
        (growth(slope="columns"), ch04_gradients.W_FIRST),
        (growth(slope="h_t-1"), ch04_gradients.SLOPE_BEFORE),
        (growth(root=False), ch04_gradients.NO_ROOT),
        (growth(norm="eigenvalues"), ch04_gradients.EIGEN),
        (growth(steps="1..T"), ch04_gradients.ALL_STEPS),
        (crude, ch04_gradients.CRUDE),
        (growth(norm="frobenius"), None),
    ],
)
def test_jacobian_growth_mistakes(answer, hint):
    verdict = ch04_gradients.check_jacobian_growth(answer)
    assert failed(verdict, hint, "the growth per step for W_hh x 1 is"), verdict


def test_jacobian_growth_says_what_is_off():
    def scales_in_place(net, x):
        with torch.no_grad():
            net.rnn.weight_hh_l0.mul_(2)
        return growth_right(net, x)

    cases = [
        (scales_in_place, "jacobian_growth changed the network (rnn.weight_hh_l0)"),
        (lambda net, x: torch.ones(2), "the growth per step should be one number, got shape (2,)"),
        (lambda net, x: "1", "the growth per step should be a real number, got str"),
        (lambda net, x: math.nan, "the growth per step for W_hh x 1 is nan, not a finite number"),
    ]
    for answer, message in cases:
        assert failed(ch04_gradients.check_jacobian_growth(answer), None, message), message


# Exercise 4.5 ------------------------------------------------------------------------


class Bi(nn.Module):
    """A correct two-layer bidirectional name classifier; ``read`` selects the mistakes."""

    read, bidirectional, layers, head_in, padding_idx = "h_n", True, 2, 4, 0

    def __init__(self, vocab_size: int, n_classes: int, embed: int = 32, hidden: int = 16):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=self.padding_idx)
        self.rnn = nn.GRU(
            embed, hidden, num_layers=self.layers, batch_first=True, bidirectional=self.bidirectional
        )
        self.head = nn.Linear(self.head_in * hidden, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != 0).sum(dim=1).cpu()
        embedded, batch = self.embedding(ids), len(ids)
        if self.read == "no packing":
            _, h_n = self.rnn(embedded)
            return self.head(h_n.transpose(0, 1).reshape(batch, -1))
        packed = pack_padded_sequence(
            embedded, lengths, batch_first=True, enforce_sorted=self.read == "sorted"
        )
        output, h_n = self.rnn(packed)
        padded = pad_packed_sequence(output, batch_first=True)[0]  # (B, T, 2 * hidden)
        hidden = h_n.shape[-1]
        both = {
            "h_n": lambda: h_n.transpose(0, 1).reshape(batch, -1),
            "sorted": lambda: h_n.transpose(0, 1).reshape(batch, -1),
            "view": lambda: h_n.view(2, 2, batch, hidden).permute(2, 0, 1, 3).reshape(batch, -1),
            "cat": lambda: torch.cat(list(h_n), dim=1),
            "reshape": lambda: h_n.reshape(batch, -1),
            "direction major": lambda: torch.cat([h_n[0], h_n[2], h_n[1], h_n[3]], dim=1),
            "last both": lambda: torch.cat([h_n[0], h_n[1], padded[torch.arange(batch), lengths - 1]], dim=1),
            "output": lambda: torch.cat([h_n[0], h_n[1], padded[:, -1]], dim=1),
            "top twice": lambda: torch.cat([h_n[2], h_n[3], h_n[2], h_n[3]], dim=1),
            "reversed": lambda: torch.cat(list(h_n.flip(0)), dim=1),
            "top first": lambda: torch.cat([h_n[2], h_n[3], h_n[0], h_n[1]], dim=1),
        }[self.read]()
        return self.head(both)


def bi(**settings):
    return type("Variant", (Bi,), settings)


def test_bi_classifier_passes_right_answers():
    for read in ("h_n", "view", "cat"):
        verdict = ch04_names.check_bi_classifier(bi(read=read))
        assert verdict.passed and "all four final states" in verdict.message


@pytest.mark.parametrize(
    ("read", "hint"),
    [
        ("no packing", ch04_names.NO_PACKING),
        ("reshape", ch04_names.RESHAPE),
        ("direction major", ch04_names.DIRECTION_MAJOR),
        ("top first", ch04_names.TOP_FIRST),
        ("last both", ch04_names.LAST_BOTH),
        ("output", ch04_names.OUTPUT_LAST),
        ("top twice", None),
        ("reversed", None),
    ],
)
def test_bi_classifier_mistakes(read, hint):
    assert failed(ch04_names.check_bi_classifier(bi(read=read)), hint, "the logits"), read


def test_bi_classifier_says_what_is_off():
    assert failed(ch04_names.check_bi_classifier(bi(read="sorted")), ch04_names.SORTED, "must be sorted")
    verdict = ch04_names.check_bi_classifier(bi(bidirectional=False, head_in=2))
    assert failed(verdict, "pass bidirectional=True", "not bidirectional")
    one_layer = bi(layers=1, head_in=2)
    assert failed(ch04_names.check_bi_classifier(one_layer), None, "expected a two-layer nn.GRU(5, 3)")
    assert failed(ch04_names.check_bi_classifier(bi(head_in=2)), None, "the head reads 6 numbers")
    assert failed(ch04_names.check_bi_classifier(bi(padding_idx=None)), None, "padding_idx is None, not 0")

    class Unused(Bi):
        def __init__(self, vocab_size, n_classes, embed=32, hidden=16):
            super().__init__(vocab_size, n_classes, embed, hidden)
            self.scale = nn.Parameter(torch.ones(1))

    assert failed(ch04_names.check_bi_classifier(Unused), None, "no gradient reaches scale")

    class Broken(Bi):
        def forward(self, ids):
            raise RuntimeError("out of memory")

    assert failed(
        ch04_names.check_bi_classifier(Broken), None, "your code raised RuntimeError: out of memory"
    )

    class HalfDone(Bi):
        def forward(self, ids):
            raise NotImplementedError  # the reader wrote __init__ only

    assert ch04_names.check_bi_classifier(HalfDone).status == "not attempted"
