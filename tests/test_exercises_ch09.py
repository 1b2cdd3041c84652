"""Chapter 9's exercise checkers: references pass, starters are "not attempted", mistakes get hints."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from exercise_cells import run_starter, starter_cells
from torch import nn
from torch.distributed import all_reduce as imported_all_reduce
from torch.utils.data import DistributedSampler, TensorDataset

from helpers.exercises import ch09, ch09_collectives

STARTERS = starter_cells("09")


def test_each_exercise_has_one_starter():
    assert len(STARTERS) == 5


@pytest.mark.parametrize(
    ("index", "name"),
    [
        (0, "sharded_accuracy"),
        (1, "rescaled_loss"),
        (2, "ddp_gradients"),
        (3, "mismatch_output"),
        (4, "average_gradients"),
    ],
)
def test_an_untouched_starter_is_not_attempted(index, name):
    start = time.perf_counter()
    out = run_starter(STARTERS[index], nn=nn, torch=torch, Iterator=Iterator)
    assert time.perf_counter() - start < 1.0
    names = [name, "stream_share"] if index == 0 else [name]  # exercise 1 has two parts
    assert out == "".join(
        f"… Exercise 9.{index + 1}: not attempted yet: fill in `{n}` above\n" for n in names
    )


def failed(verdict, hint=None, message=""):
    """The verdict failed with ``hint`` (None: no hint) and a message containing ``message``."""
    return verdict.status == "failed" and verdict.hint == hint and message in verdict.message


def test_checks_leave_the_global_random_state_as_it_was():
    state = torch.random.get_rng_state()
    for verdict in (
        ch09.check_sharded_accuracy(accuracy_right),
        ch09.check_sharded_accuracy(accuracy_in_training_mode),
        ch09.check_rescaled_loss(loss_right),
        ch09.check_ddp_gradients(gradients_right),
        ch09.check_mismatch_reports(REPORTS),
        ch09.check_average_gradients(flattened),
    ):
        assert verdict.passed or verdict.hint == ch09.TRAIN_MODE
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize(
    "check",
    [
        ch09.check_sharded_accuracy,
        ch09.check_rescaled_loss,
        ch09.check_ddp_gradients,
        ch09.check_average_gradients,
    ],
)
def test_a_check_wants_a_function(check):
    assert failed(check(3), message="should be a function")


# Exercise 9.1 ------------------------------------------------------------------------


def sharded(model, x, y, world_size, shares, *, eval_mode=True, per_rank_mean=False):
    """Score each rank's share of ``shares(r)``; add the counts (or average the ranks' accuracies)."""
    if eval_mode:
        model.eval()
    correct = seen = 0
    accuracies = []
    for r in range(world_size):
        index = shares(r)
        with torch.no_grad():
            right = (model(x[index]).argmax(dim=1) == y[index]).sum().item()
        correct, seen = correct + right, seen + len(index)
        accuracies.append(right / len(index))
    return sum(accuracies) / world_size if per_rank_mean else correct / seen


def sampler(x, world_size, **options):
    return lambda r: list(DistributedSampler(TensorDataset(x), world_size, r, **options))


def accuracy_right(model, x, y, world_size):
    return sharded(model, x, y, world_size, lambda r: list(range(r, len(y), world_size)))


def accuracy_in_training_mode(model, x, y, world_size):
    return sharded(model, x, y, world_size, lambda r: list(range(r, len(y), world_size)), eval_mode=False)


def test_the_sharded_accuracy_reference_passes(capsys):
    verdict = ch09.check_sharded_accuracy(accuracy_right)
    assert verdict.passed
    assert "exactly (8 of 10 on 3 ranks and 4 of 11 on 4 ranks)" in capsys.readouterr().out
    # a tensor holding the accuracy is a number too
    assert ch09.check_sharded_accuracy(lambda *args: torch.tensor(accuracy_right(*args))).passed


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (lambda m, x, y, w: sharded(m, x, y, w, sampler(x, w, shuffle=False)), ch09.PADDED),
        (lambda m, x, y, w: sharded(m, x, y, w, sampler(x, w)), ch09.PADDED),
        (lambda m, x, y, w: sharded(m, x, y, w, sampler(x, w, shuffle=False, drop_last=True)), ch09.DROPPED),
        (lambda m, x, y, w: sharded(m, x, y, w, sampler(x, w, drop_last=True)), ch09.DROPPED),
        (
            lambda m, x, y, w: sharded(
                m, x, y, w, lambda r: list(range(r * (len(y) // w), (r + 1) * (len(y) // w)))
            ),
            ch09.DROPPED,
        ),
        (
            lambda m, x, y, w: sharded(m, x, y, w, lambda r: list(range(r, len(y), w)), per_rank_mean=True),
            ch09.MEAN_OF_RANKS,
        ),
        (accuracy_in_training_mode, ch09.TRAIN_MODE),
        # the right accuracy, but from one pass over all examples: nothing was sharded
        (lambda m, x, y, w: sharded(m, x, y, 1, lambda r: list(range(len(y)))), ch09.UNSHARDED),
    ],
)
def test_sharded_accuracy_mistakes_get_their_hints(attempt, hint):
    assert failed(ch09.check_sharded_accuracy(attempt), hint)


def test_sharded_accuracy_other_wrong_answers_fail_without_a_hint():
    # the model scored on rank 0's share only
    assert failed(
        ch09.check_sharded_accuracy(
            lambda m, x, y, w: sharded(m, x, y, 1, lambda r: list(range(0, len(y), w)))
        ),
        message="the single process scores 8 of 10 right, 0.8000",
    )
    assert failed(ch09.check_sharded_accuracy(lambda m, x, y, w: (8, 10)), message="got tuple")
    assert failed(ch09.check_sharded_accuracy(lambda m, x, y, w: True), message="got bool")


def share_right(stream, rank, world_size, worker, workers):
    return itertools.islice(stream, rank * workers + worker, None, world_size * workers)


def share_worker_major(stream, rank, world_size, worker, workers):
    # another numbering of the copies: still every example once
    return itertools.islice(stream, worker * world_size + rank, None, world_size * workers)


def share_in_blocks(stream, rank, world_size, worker, workers):
    items, copies = list(stream), world_size * workers
    size = -(-len(items) // copies)
    k = rank * workers + worker
    return items[k * size : (k + 1) * size]


def test_the_stream_share_reference_passes(capsys):
    assert ch09.check_stream_share(share_right).passed
    assert "7 examples over 3 ranks of 2 workers gave the ranks [3, 2, 2]" in capsys.readouterr().out
    for right in (share_worker_major, share_in_blocks):
        assert ch09.check_stream_share(right).passed


def share_by_length(stream, rank, world_size, worker, workers):
    step = len(stream) // (world_size * workers)
    return list(stream)[step * rank : step * (rank + 1)]


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (lambda stream, rank, world_size, worker, workers: stream, ch09.WHOLE_STREAM),
        (
            lambda stream, rank, world_size, worker, workers: itertools.islice(
                stream, rank, None, world_size
            ),
            ch09.WORKERS_IGNORED,
        ),
        (
            lambda stream, rank, world_size, worker, workers: itertools.islice(
                stream, worker, None, world_size * workers
            ),
            ch09.RANK_IGNORED,
        ),
        (share_by_length, ch09.STREAM_LENGTH),
    ],
)
def test_stream_share_mistakes_get_their_hints(attempt, hint):
    assert failed(ch09.check_stream_share(attempt), hint)


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        (
            # copies numbered rank + worker: rank 0's worker 1 and rank 1's worker 0 collide
            lambda stream, rank, world_size, worker, workers: itertools.islice(
                stream, rank + worker, None, world_size * workers
            ),
            "11 examples over 2 ranks of 2 workers: counted more than once [1, 5, 9], never [3, 7]",
        ),
        (
            lambda stream, rank, world_size, worker, workers: range(3),
            "stream_share should yield the stream's own examples, got [0, 1, 2]",
        ),
        (lambda *args: 3, "object is not iterable"),
    ],
)
def test_stream_share_other_wrong_answers_fail_without_a_hint(attempt, message):
    assert failed(ch09.check_stream_share(attempt), None, message)


# Exercise 9.2 ------------------------------------------------------------------------


def exchanged_count(targets, all_reduce):
    """The number of examples of all ranks together, exchanged as a job would."""
    count = torch.tensor(len(targets))
    all_reduce(count)
    return count


def loss_right(outputs, targets, world_size, all_reduce):
    total = exchanged_count(targets, all_reduce)
    return F.cross_entropy(outputs, targets, reduction="sum") * world_size / total


def loss_by_the_fraction(outputs, targets, world_size, all_reduce):
    """Right too: the count exchanged first, then each rank's share of it, summed to 1."""
    total = exchanged_count(targets, all_reduce)
    share = torch.tensor(len(targets) / total.item())
    all_reduce(share)  # 1, a second exchange that depends on the first
    return F.cross_entropy(outputs, targets) * share * len(targets) * world_size / total


def loss_over_a_float32_count(outputs, targets, world_size, all_reduce):
    """Right in float32: the count of shape (1,) demotes the float64 loss to float32."""
    total = torch.tensor([float(len(targets))])
    all_reduce(total)
    return F.cross_entropy(outputs, targets, reduction="sum") * world_size / total


def loss_over_a_0_dim_float32_count(outputs, targets, world_size, all_reduce):
    total = torch.tensor(float(len(targets)))
    all_reduce(total)
    return F.cross_entropy(outputs, targets, reduction="sum") * world_size / total


def test_the_rescaled_loss_reference_passes(capsys):
    assert ch09.check_rescaled_loss(loss_right).passed
    assert "for ranks of 3 + 9 and of 2 + 4 + 7 examples" in capsys.readouterr().out
    # a loss of shape (1,) is one number too
    assert ch09.check_rescaled_loss(lambda *args: loss_right(*args).reshape(1)).passed
    assert ch09.check_rescaled_loss(loss_by_the_fraction).passed
    # a 0-dim float32 count does not demote the loss
    assert ch09.check_rescaled_loss(loss_over_a_0_dim_float32_count).passed


def test_simulated_ranks_add_up_what_each_rank_passes():
    outputs = [torch.zeros(n, 2) for n in (3, 9)]
    targets = [torch.zeros(n, dtype=torch.long) for n in (3, 9)]
    totals = ch09.simulate_ranks(
        lambda o, t, w, all_reduce: (exchanged_count(t, all_reduce).item(), w), outputs, targets
    )
    assert totals == [(12, 2), (12, 2)]


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (lambda o, t, w, ar: F.cross_entropy(o, t), ch09.OWN_MEAN),
        (
            lambda o, t, w, ar: F.cross_entropy(o, t, reduction="sum") / exchanged_count(t, ar),
            ch09.NO_WORLD_SIZE,
        ),
        (lambda o, t, w, ar: F.cross_entropy(o, t, reduction="sum"), ch09.PLAIN_SUM),
        (lambda o, t, w, ar: F.cross_entropy(o, t, reduction="sum") * w / len(t), ch09.OWN_COUNT),
        (lambda o, t, w, ar: ar(len(t)), ch09_collectives.NOT_A_TENSOR),
        (lambda o, t, w, ar: exchanged_count(t, dist.all_reduce), ch09_collectives.OWN_COLLECTIVE),
    ],
)
def test_rescaled_loss_mistakes_get_their_hints(attempt, hint):
    verdict = ch09.check_rescaled_loss(attempt)
    assert failed(verdict, hint)
    if hint not in (ch09_collectives.NOT_A_TENSOR, ch09_collectives.OWN_COLLECTIVE):
        assert "DDP's average of the gradients of ranks of 3 + 9 examples" in verdict.message


@pytest.mark.parametrize(
    ("attempt", "message", "hint_says"),
    [
        (lambda *args: loss_right(*args).item(), "should be a tensor to backpropagate, got float", ".item()"),
        (
            lambda o, t, w, ar: F.cross_entropy(o, t, reduction="none") * w / exchanged_count(t, ar),
            "has shape (3,), expected one number",
            "reduction='sum'",
        ),
        (lambda o, t, w, ar: loss_right(o.detach(), t, w, ar), "has no gradient to give", ".detach()"),
        (loss_over_a_float32_count, "has dtype torch.float32, but the outputs", "shape (1,)"),
    ],
)
def test_rescaled_loss_that_cannot_backpropagate_is_named(attempt, message, hint_says):
    verdict = ch09.check_rescaled_loss(attempt)
    assert failed(verdict, verdict.hint, message) and hint_says in verdict.hint


def only_the_larger_rank_exchanges(outputs, targets, world_size, all_reduce):
    if len(targets) > 3:
        all_reduce(torch.tensor(len(targets)))
    return loss_right(outputs, targets, world_size, lambda tensor: tensor.fill_(12))


def changes_every_time(outputs, targets, world_size, all_reduce, calls=[]):  # noqa: B006
    calls.append(1)
    all_reduce(torch.tensor(float(len(calls))))
    return F.cross_entropy(outputs, targets, reduction="sum")


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        (
            lambda o, t, w, n: F.cross_entropy(o, t, reduction="sum") * w / 64,
            "entries differ from the reference",
        ),
        # a total typed in instead of exchanged: right for one split only
        (
            lambda o, t, w, n: F.cross_entropy(o, t, reduction="sum") * w / 12,
            "ranks of 2 + 4 + 7 examples",
        ),
        (only_the_larger_rank_exchanges, "the ranks called all_reduce 0 / 1 times"),
        (changes_every_time, "changes every time they run the same code"),
        (
            lambda o, t, w, ar: ar(torch.tensor(len(t)), op=dist.ReduceOp.MAX),
            "all_reduce with op=",
        ),
    ],
)
def test_rescaled_loss_other_wrong_answers_fail_without_a_hint(attempt, message):
    assert failed(ch09.check_rescaled_loss(attempt), None, message)


# Exercise 9.3 ------------------------------------------------------------------------


def gradients(model, criterion, x, y, world_size, *, split="blocks", zero="each", divide=True, step=False):
    """DDP's gradient in one process, and its usual mistakes."""
    size = len(y) // world_size
    if split == "blocks":
        parts = [slice(r * size, (r + 1) * size) for r in range(world_size)]
    elif split == "interleaved":
        parts = [slice(r, None, world_size) for r in range(world_size)]
    else:  # the first example of each block only
        parts = [slice(r * size, r * size + 1) for r in range(world_size)]
    if zero == "first":
        model.zero_grad()
    copies = []
    for part in parts:
        if zero == "each":
            model.zero_grad()
        criterion(model(x[part]), y[part]).backward()
        copies.append([p.grad.clone() for p in model.parameters()])
    for p, *grads in zip(model.parameters(), *copies, strict=True):
        p.grad = sum(grads) / (world_size if divide else 1)
    if step:
        torch.optim.SGD(model.parameters(), lr=0.1).step()


def gradients_right(model, criterion, x, y, world_size):
    gradients(model, criterion, x, y, world_size)


def accumulated(model, criterion, x, y, world_size, *, zero=True):
    """The other right way: backward on each block into .grad, then divide once."""
    size = len(y) // world_size
    if zero:
        model.zero_grad()
    for r in range(world_size):
        criterion(model(x[r * size : (r + 1) * size]), y[r * size : (r + 1) * size]).backward()
    for p in model.parameters():
        p.grad /= world_size


def one_forward(model, criterion, x, y, world_size):
    """Right too: one forward pass on the whole batch, each rank's loss on its rows of it."""
    size, params = len(y) // world_size, list(model.parameters())
    outputs = model(x)
    grads = [
        torch.autograd.grad(
            criterion(outputs[r * size : (r + 1) * size], y[r * size : (r + 1) * size]),
            params,
            retain_graph=True,
        )
        for r in range(world_size)
    ]
    for p, *per_rank in zip(params, *grads, strict=True):
        p.grad = sum(per_rank) / world_size


def whole_batch(model, criterion, x, y, world_size, *, zero=True):
    if zero:
        model.zero_grad()
    criterion(model(x), y).backward()


def test_the_ddp_gradients_reference_passes(capsys):
    assert ch09.check_ddp_gradients(gradients_right).passed
    out = capsys.readouterr().out
    assert "in float32 with 2 ranks; " in out and "in float64 with 3 ranks)" in out
    assert ch09.check_ddp_gradients(accumulated).passed
    assert ch09.check_ddp_gradients(one_forward).passed


def test_the_whole_batch_gradient_differs_from_ddps_in_the_check():
    # with the check's class weights a rank's mean is over its own block's weights: the
    # whole batch's gradient is not DDP's average, by far more than the float32 tolerance
    criterion = nn.CrossEntropyLoss(weight=torch.tensor(ch09.CLASS_WEIGHTS))
    torch.manual_seed(0)
    model, x, y = nn.Linear(6, 3), torch.randn(10, 6), torch.tensor([0, 0, 1, 1, 2, 1, 1, 1, 2, 0])
    whole_batch(model, criterion, x, y, 2)
    whole = model.weight.grad.clone()
    gradients_right(model, criterion, x, y, 2)
    assert (whole - model.weight.grad).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("attempt", "hint", "message"),
    [
        (whole_batch, ch09.WHOLE_BATCH, "0.weight.grad (float32, 2 ranks of 5 examples)"),
        (lambda *args: whole_batch(*args, zero=False), ch09.WHOLE_BATCH, "entries differ"),
        (lambda *args: gradients(*args, split="interleaved"), ch09.INTERLEAVED, "entries differ"),
        (lambda *args: gradients(*args, divide=False), ch09.SUMMED, "0.weight.grad (float32, 2 ranks of 5"),
        (lambda *args: gradients(*args, zero="first"), ch09.NOT_ZEROED, "entries differ"),
        (lambda *args: accumulated(*args, zero=False), ch09.STALE, "entries differ"),
        (lambda *args: gradients(*args, zero="never"), ch09.STALE_NOT_ZEROED, "entries differ"),
    ],
)
def test_ddp_gradients_mistakes_get_their_hints(attempt, hint, message):
    assert failed(ch09.check_ddp_gradients(attempt), hint, message)


def test_ddp_gradients_other_wrong_answers_fail_without_a_hint():
    assert failed(
        ch09.check_ddp_gradients(lambda *args: gradients(*args, split="first rows")),
        message="0.weight.grad (float32, 2 ranks of 5 examples): ",
    )
    assert failed(
        ch09.check_ddp_gradients(lambda *args: gradients(*args, step=True)), message="changed the parameters"
    )

    def no_bias_grad(*args):
        gradients(*args)
        args[0][0].bias.grad = None

    assert failed(ch09.check_ddp_gradients(no_bias_grad), message="0.bias.grad is None")

    def doubled(*args):
        gradients(*args)
        args[0][0].weight.grad *= 3

    assert failed(ch09.check_ddp_gradients(doubled), message="0.weight.grad (float32, 2 ranks of 5 examples)")


# Exercise 9.4 ------------------------------------------------------------------------

TIMED_OUT = "collectives OFF: after 3.0 s: [unbound_buffer.cc:78] Timed out waiting 3000ms for recv"
CLOSED = "collectives OFF: after 3.0 s: [pair.cc:561] Connection closed by peer [127.0.0.1]:6332"
NAMED = "{} DETAIL: after 0.0 s: Detected mismatch between collectives on ranks. Rank {}"
WRONG_SUM = "shapes OFF: no error, holds [1.0, 2.0, 2.0]"
LEFT = "shapes OFF: after 0.5 s: [pair.cc:561] Connection closed by peer [127.0.0.1]:6333"


def reports(rank, **replace):
    """Rank ``rank``'s four report lines, with ``replace={kind_mode: line}`` swapped in."""
    lines = {
        "collectives_OFF": TIMED_OUT if rank == 0 else CLOSED,
        "collectives_DETAIL": NAMED.format("collectives", rank),
        "shapes_OFF": LEFT if rank == 0 else WRONG_SUM,
        "shapes_DETAIL": NAMED.format("shapes", rank),
    }
    lines.update(replace)
    return ["attempt 0: gloo on cpu", *lines.values()]


REPORTS = {0: reports(0), 1: reports(1)}


def test_the_reports_of_the_solution_pass(capsys):
    assert ch09.check_mismatch_reports(REPORTS).passed
    out = capsys.readouterr().out
    assert "gave up after 3.0 and 3.0 s" in out
    assert "rank 1 went on with no error, holds [1.0, 2.0, 2.0]" in out
    assert "rank 0 failed after 0.5 s (Connection closed by peer" in out
    assert "named both mismatches at once" in out


def test_any_outcome_of_the_mismatched_shapes_without_detail_passes():
    # what gloo does with mismatched shapes is the exercise's question, not its check
    timed_out = TIMED_OUT.replace("collectives", "shapes")
    both_waited = {0: reports(0, shapes_OFF=timed_out), 1: reports(1, shapes_OFF=timed_out)}
    assert ch09.check_mismatch_reports(both_waited).passed


@pytest.mark.parametrize(
    ("output", "hint", "message"),
    [
        (
            {
                rank: reports(
                    rank,
                    collectives_OFF=NAMED.format("collectives", rank),
                    shapes_OFF=NAMED.format("shapes", rank),
                )
                for rank in (0, 1)
            },
            ch09_collectives.DETAIL_EVERYWHERE,
            "printed 0 `collectives OFF` reports",
        ),
        (
            {
                rank: reports(rank, collectives_DETAIL="collectives DETAIL: no error, holds [2.0]")
                for rank in (0, 1)
            },
            ch09_collectives.MATCHING,
            "rank 0 reports no error, holds [2.0] for collectives with DETAIL",
        ),
        (
            {0: reports(0, collectives_OFF="collectives OFF: no error, holds [2.0]"), 1: reports(1)},
            ch09_collectives.MATCHING,
            "rank 0 reports no error, holds [2.0] for collectives with OFF",
        ),
        (
            {
                rank: reports(rank, shapes_DETAIL="shapes DETAIL: no error, holds [2.0, 2.0]")
                for rank in (0, 1)
            },
            ch09_collectives.SAME_SHAPES,
            "for shapes with DETAIL",
        ),
        (
            {rank: reports(rank, collectives_DETAIL=TIMED_OUT.replace("OFF", "DETAIL")) for rank in (0, 1)},
            ch09_collectives.DETAIL_TOO_LATE,
            "with DETAIL rank 0 reported",
        ),
        (
            {0: reports(0, collectives_OFF=TIMED_OUT.replace("3.0", "30.0")), 1: reports(1)},
            ch09_collectives.WAITED,
            "gave up on the collectives after 30.0 s, not 3",
        ),
        (
            {
                0: reports(0, collectives_OFF=NAMED.format("collectives", 0).replace("DETAIL", "OFF")),
                1: reports(1),
            },
            ch09_collectives.DETAIL_EVERYWHERE,
            "without DETAIL rank 0 reported",
        ),
        (
            {0: reports(0, shapes_OFF=NAMED.format("shapes", 0).replace("DETAIL", "OFF")), 1: reports(1)},
            ch09_collectives.DETAIL_EVERYWHERE,
            "without DETAIL rank 0 named the mismatch of shapes",
        ),
        ({0: ["all_reduce failed"], 1: [CLOSED]}, ch09_collectives.FORMAT, "rank 0 printed no report"),
    ],
)
def test_mismatch_report_mistakes_get_their_hints(output, hint, message):
    assert failed(ch09.check_mismatch_reports(output), hint, message)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ([TIMED_OUT], "should be the {rank: lines} dict that launch returns"),
        ({0: REPORTS[0]}, "expected the lines of ranks 0 and 1, got ranks [0]"),
        ({0: "collectives OFF", 1: REPORTS[1]}, "mismatch_output[0] should be the list of lines"),
        (
            {0: [TIMED_OUT.replace("OFF", "INFO"), *REPORTS[0]], 1: REPORTS[1]},
            "TORCH_DISTRIBUTED_DEBUG=['INFO']",
        ),
        ({0: REPORTS[0][:-1], 1: REPORTS[1]}, "rank 0 printed 0 `shapes DETAIL` reports"),
        ({0: [*REPORTS[0], WRONG_SUM], 1: REPORTS[1]}, "rank 0 printed 2 `shapes OFF` reports"),
        (
            {0: reports(0, collectives_OFF=TIMED_OUT.replace("Timed out", "Aborted")), 1: REPORTS[1]},
            "expected a timeout",
        ),
        (
            {
                0: reports(
                    0,
                    collectives_DETAIL=NAMED.format("collectives", 0).replace(
                        "Detected mismatch between collectives", "Aborted"
                    ),
                ),
                1: REPORTS[1],
            },
            "reported 'Aborted on ranks",
        ),
    ],
)
def test_mismatch_report_other_wrong_answers_fail_without_a_hint(output, message):
    assert failed(ch09.check_mismatch_reports(output), None, message)


# Exercise 9.5 ------------------------------------------------------------------------


def average_right(model, world_size):
    count = 0
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world_size
        count += 1
    return count


def divided_first(model, world_size):
    for p in model.parameters():
        p.grad = p.grad / world_size  # a new tensor, then all-reduced in place: right too
        dist.all_reduce(p.grad, dist.ReduceOp.SUM)
    return 6


def averaged_by_the_backend(model, world_size, *, divide=False):
    for p in model.parameters():
        dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
        if divide:
            p.grad /= world_size
    return 6


def flattened(model, world_size):
    grads = [p.grad for p in model.parameters()]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    torch.nn.utils.vector_to_parameters(flat, grads)
    return 1


def asynchronous(model, world_size):
    works = [dist.all_reduce(p.grad, async_op=True) for p in model.parameters()]
    for work in works:
        work.wait()
    for p in model.parameters():
        p.grad /= world_size
    return len(works)


def bucket_divided_first(model, world_size):
    grads = [p.grad for p in model.parameters()]
    bucket = torch.cat([g.flatten() for g in grads]) / world_size
    dist.all_reduce(bucket)
    offset = 0
    for g in grads:
        g.copy_(bucket[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return 1


def bucket_averaged_by_the_backend(model, world_size):
    grads = [p.grad for p in model.parameters()]
    bucket = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(bucket, op=dist.ReduceOp.AVG)
    for g, piece in zip(grads, bucket.split([g.numel() for g in grads]), strict=True):
        g.copy_(piece.view_as(g))
    return 1


def bucket_not_copied_back(model, world_size):
    bucket = torch.cat([p.grad.flatten() for p in model.parameters()])
    dist.all_reduce(bucket)
    bucket /= world_size
    return 1


def test_the_average_gradients_reference_passes(capsys):
    assert ch09.check_average_gradients(flattened).passed
    out = capsys.readouterr().out
    assert "jobs of 2 and 3 ranks exactly, with one all-reduce of one bucket per call" in out
    assert "for 6 parameter tensors" in out
    for right in (bucket_divided_first, bucket_averaged_by_the_backend):
        assert ch09.check_average_gradients(right).passed


@pytest.mark.parametrize("attempt", [average_right, divided_first, averaged_by_the_backend, asynchronous])
def test_right_averages_one_all_reduce_per_tensor_are_told_to_use_one_bucket(attempt):
    verdict = ch09.check_average_gradients(attempt)
    assert failed(verdict, ch09_collectives.ONE_BUCKET, "made 6 all-reduces for 6 gradients, one per tensor")


def test_a_bucket_never_copied_back_gets_its_hint():
    assert failed(ch09.check_average_gradients(bucket_not_copied_back), ch09_collectives.NOT_COPIED_BACK)


def not_divided(model, world_size):
    for p in model.parameters():
        dist.all_reduce(p.grad)
    return 6


def a_copy(model, world_size):
    for p in model.parameters():
        dist.all_reduce(p.grad / world_size)
    return 6


def a_clone_then_divided(model, world_size):
    for p in model.parameters():
        dist.all_reduce(p.grad.clone())
        p.grad /= world_size
    return 6


def parameters(model, world_size):
    for p in model.parameters():
        dist.all_reduce(p.data)
        p.data /= world_size
    return 6


def direct_import(model, world_size):
    for p in model.parameters():
        imported_all_reduce(p.grad)
    return 6


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (not_divided, ch09_collectives.NOT_DIVIDED),
        (
            lambda model, world_size: averaged_by_the_backend(model, world_size, divide=True),
            ch09_collectives.TWICE,
        ),
        (a_copy, ch09_collectives.COPY),
        (a_clone_then_divided, ch09_collectives.COPY),
        (parameters, ch09_collectives.PARAMETERS),
        (direct_import, ch09_collectives.NO_GROUP),
    ],
)
def test_average_gradients_mistakes_get_their_hints(attempt, hint):
    assert failed(ch09.check_average_gradients(attempt), hint)


def stepped(model, world_size):
    count = average_right(model, world_size)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    return count


def tripled(model, world_size):
    count = average_right(model, world_size)
    for p in model.parameters():
        p.grad *= 3
    return count


def maximum(model, world_size):
    for p in model.parameters():
        dist.all_reduce(p.grad, op=dist.ReduceOp.MAX)
    return 6


def shapeless(model, world_size):
    dist.all_reduce(torch.zeros(7))
    return 1


def one_grad_dropped(model, world_size):
    first, *rest = model.parameters()
    first.grad = None
    for p in rest:
        dist.all_reduce(p.grad)
        p.grad /= world_size
    return 5


def raises(model, world_size):
    raise ValueError("no such rank")


@pytest.mark.parametrize(
    ("attempt", "message"),
    [
        (stepped, "average_gradients changed the parameters"),
        (tripled, "0.weight.grad on rank 1 of 2: 20 of 20 entries differ"),
        (maximum, "all_reduce with op="),
        (shapeless, "you all-reduced a tensor of shape (7,), which is no gradient"),
        (one_grad_dropped, "0.weight.grad on rank 1 of 2 should be a tensor, got NoneType"),
        (raises, "your code raised ValueError: no such rank"),
        (lambda model, world_size: average_right(model, world_size) and None, "got NoneType"),
        (lambda model, world_size: average_right(model, world_size) and True, "got bool"),
        (
            lambda model, world_size: average_right(model, world_size) + 1,
            "returned 7, but it made 6 all-reduces",
        ),
    ],
)
def test_average_gradients_other_wrong_answers_fail_without_a_hint(attempt, message):
    assert failed(ch09.check_average_gradients(attempt), None, message)


def test_within_rounds_to_one_digit():
    assert ch09_collectives.within(0.0) == "exactly"
    assert ch09_collectives.within(3.2e-07) == "to 3e-7"
