"""Checkers for chapter 9's exercises on collectives: a job's reports of mismatched
collectives and mismatched shapes (9.4) and a hand-written gradient all-reduce (9.5), and
the simulated ranks of exercise 9.2, which exchange a number with a stand-in all-reduce.
Exported by :mod:`helpers.exercises.ch09`, where the starters import them.

Exercise 9.4's job runs in the reader's notebook; its checker reads the reports the
ranks printed. Exercise 9.5's checker runs the reader's function as one rank of a job of
2 and of 3: ``dist.all_reduce`` is replaced, for the length of the call, by a stand-in that
adds what the other ranks would contribute when they run the same code on their own
gradients, so no process group is needed. Exercise 9.2's reader function is handed its
stand-in as an argument (:func:`simulate_ranks`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
from torch import nn

from helpers.exercises import Mismatch, checker, expect, expect_tensor

__all__ = ["check_average_gradients", "check_mismatch_reports", "first_match", "simulate_ranks", "within"]


def within(gap: float) -> str:
    """How closely an attempt matched: "exactly", or "to 3e-7" (not Python's 3e-07)."""
    if gap == 0:
        return "exactly"
    mantissa, exponent = f"{gap:.0e}".split("e")
    return f"to {mantissa}e{int(exponent)}"


def first_match(
    got: Any, mistakes: list[tuple[str, torch.Tensor]], atol: float = 1e-6
) -> dict[str, torch.Tensor]:
    """``{hint: tensor}`` for the first mistake whose tensor ``got`` matches, for ``expect_tensor``.

    Unlike a dict, the list may give one hint for several tensors (two ways to the same mistake).
    """
    for hint, produced in mistakes:
        same_shape = isinstance(got, torch.Tensor) and got.shape == produced.shape
        if same_shape and torch.allclose(got.detach().double(), produced.double(), atol=atol, rtol=1e-4):
            return {hint: produced}
    return {}


# ---- Exercise 9.2's ranks ----------------------------------------------------------------

OWN_COLLECTIVE = (
    "call the all_reduce that rescaled_loss is handed (its fourth argument), not dist.all_reduce: "
    "it stands in for the collective, so the check needs no process group"
)
NOT_A_TENSOR = "all_reduce takes a tensor, as dist.all_reduce does: wrap the number, torch.tensor(n)"


class _Exchange:
    """``dist.all_reduce(tensor, op=SUM)`` for ranks played one after the other.

    A call records what this rank passes and replaces ``tensor`` in place by the sum of what
    every rank passed in the same call of the round before (unchanged in the first round).
    """

    def __init__(self, world_size: int, previous: list[list[torch.Tensor]] | None) -> None:
        self.previous, self.sent = previous, [[] for _ in range(world_size)]

    def stand_in(self, rank: int) -> Callable[..., None]:
        def all_reduce(tensor: Any, op: Any = dist.ReduceOp.SUM) -> None:
            expect(
                isinstance(tensor, torch.Tensor), f"all_reduce got a {type(tensor).__name__}", NOT_A_TENSOR
            )
            expect(op == dist.ReduceOp.SUM, f"all_reduce with op={op}: add the ranks' numbers up, op SUM")
            call, sent = len(self.sent[rank]), self.sent[rank]
            sent.append(tensor.detach().clone())
            if self.previous is not None and call < len(self.previous[0]):
                with torch.no_grad():
                    tensor.copy_(sum(p[call] for p in self.previous))

        return all_reduce

    def agrees(self) -> bool:
        """Whether every rank passed what it passed in the round before."""
        return self.previous is not None and all(
            len(s) == len(p)
            and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(s, p, strict=True))
            for s, p in zip(self.sent, self.previous, strict=True)
        )


def simulate_ranks(
    rescaled_loss: Callable[..., Any], outputs: list[torch.Tensor], targets: list[torch.Tensor]
) -> list[Any]:
    """What ``rescaled_loss(outputs, targets, world_size, all_reduce)`` returns on each rank.

    The ``len(outputs)`` ranks run one after the other, handed a stand-in for
    ``dist.all_reduce`` with ``SUM`` (:class:`_Exchange`); they are played in rounds until
    what they pass to it is the same in two rounds running. Used by exercise 9.2's checker
    and its solution.
    """
    world_size, previous = len(outputs), None
    for _ in range(4):
        exchange = _Exchange(world_size, previous)
        try:
            losses = [
                rescaled_loss(outputs[r], targets[r].clone(), world_size, exchange.stand_in(r))
                for r in range(world_size)
            ]
        except (RuntimeError, ValueError) as error:
            if "process group has not been initialized" not in str(error):
                raise
            raise Mismatch(f"rescaled_loss raised {type(error).__name__}: {error}", OWN_COLLECTIVE) from None
        calls = [len(s) for s in exchange.sent]
        expect(
            len(set(calls)) == 1,
            f"the ranks called all_reduce {' / '.join(map(str, calls))} times: every rank must call "
            "a collective, and as often as the others",
        )
        if exchange.agrees():
            return losses
        previous = exchange.sent
    raise Mismatch("what your ranks pass to all_reduce changes every time they run the same code")


# ---- Exercise 9.4 -------------------------------------------------------------------------

KINDS = ("collectives", "shapes")
_REPORT = re.compile(
    r"\b(collectives|shapes) (\w+): (?:after ([\d.]+) s: (.*)|no error, holds (.*)|(no error))"
)
_TIMEOUT = re.compile(r"Timed out|Connection (closed|reset)")
_NAMED = "mismatch between collectives"

FORMAT = (
    "print each rank's report with rank_print(rank, f\"{kind} {mode}: after {seconds:.1f} s: "
    '{first_line}") (or f"{kind} {mode}: no error, holds {x.tolist()}"), kind being '
    '"collectives" or "shapes" and mode TORCH_DISTRIBUTED_DEBUG or "OFF"'
)
MATCHING = (
    "nothing went wrong with the collectives because both ranks called the same one: let rank 0 "
    "call dist.all_reduce and rank 1 dist.broadcast (an if on the rank around the call)"
)
SAME_SHAPES = (
    "nothing went wrong with the shapes because both ranks all-reduced tensors of one shape: "
    "give rank 0 four numbers and rank 1 three (torch.ones(4 if rank == 0 else 3))"
)
DETAIL_EVERYWHERE = (
    "both runs had TORCH_DISTRIBUTED_DEBUG=DETAIL: set it in the second command only (env "
    "TORCH_DISTRIBUTED_DEBUG=DETAIL as its first words), not in os.environ, which every launch inherits"
)
DETAIL_TOO_LATE = (
    "TORCH_DISTRIBUTED_DEBUG is read when the process group is created: give it to the command "
    "(env TORCH_DISTRIBUTED_DEBUG=DETAIL as its first words), not set it inside the script afterwards"
)
WAITED = (
    "give the collectives a group that times out after 3 seconds, dist.new_group(backend='gloo', "
    "timeout=timedelta(seconds=3)), and pass group=group to each collective"
)


def _reports(lines: Any, rank: Any) -> dict[tuple[str, str], list[tuple[float | None, str]]]:
    """``{(kind, mode): [(seconds or None, message), ...]}`` for the report lines of ``rank``."""
    expect(
        isinstance(lines, (list, tuple)) and all(isinstance(line, str) for line in lines),
        f"mismatch_output[{rank}] should be the list of lines rank {rank} printed",
    )
    found: dict[tuple[str, str], list[tuple[float | None, str]]] = {}
    for line in lines:
        match = _REPORT.search(line)
        if match:
            kind, mode, seconds, error, holds, _ = match.groups()
            if error is not None:
                report = (float(seconds), error)
            else:
                report = (None, "no error" + (f", holds {holds}" if holds else ""))
            found.setdefault((kind, mode), []).append(report)
    return found


def _failure_words(rank: int, seconds: float | None, message: str) -> str:
    if seconds is None:
        return f"rank {rank} went on with {message}"
    # the message without the source location gloo puts in front of it
    cause = re.sub(r"^\[[^\]]*\]\s*", "", message)
    return f"rank {rank} failed after {seconds:.1f} s ({cause[:40].rstrip()}...)"


def _seconds_words(seconds: float) -> str:
    return "at once" if seconds < 0.05 else f"within {seconds:.1f} s"


@checker("9.4", "mismatch_output")
def check_mismatch_reports(mismatch_output: Mapping[int, list[str]]) -> str:
    """Exercise 9.4: mismatched collectives time out without DETAIL; DETAIL names both mismatches."""
    expect(
        isinstance(mismatch_output, Mapping),
        "mismatch_output should be the {rank: lines} dict that launch returns as its second "
        f"value, got {type(mismatch_output).__name__}",
    )
    ranks = sorted(mismatch_output)
    expect(ranks == [0, 1], f"expected the lines of ranks 0 and 1, got ranks {ranks}")
    by_rank = {}
    for rank in ranks:
        reports = _reports(mismatch_output[rank], rank)
        expect(bool(reports), f"rank {rank} printed no report `<kind> <mode>: ...`", FORMAT)
        others = sorted({mode for _, mode in reports} - {"OFF", "DETAIL"})
        expect(
            not others,
            f"rank {rank} reports a run with TORCH_DISTRIBUTED_DEBUG={others[:1]}, expected OFF and DETAIL",
        )
        for kind in KINDS:
            detail_only = len(reports.get((kind, "DETAIL"), [])) == 2
            for mode in ("OFF", "DETAIL"):
                count = len(reports.get((kind, mode), []))
                expect(
                    count == 1,
                    f"rank {rank} printed {count} `{kind} {mode}` reports, expected one "
                    "(each of the two launches reports each kind of mismatch once)",
                    DETAIL_EVERYWHERE if detail_only else None,
                )
        by_rank[rank] = {key: found[0] for key, found in reports.items()}
    for rank in ranks:
        for kind, hint in (("collectives", MATCHING), ("shapes", SAME_SHAPES)):
            seconds, message = by_rank[rank][kind, "DETAIL"]
            expect(seconds is not None, f"rank {rank} reports {message} for {kind} with DETAIL", hint)
            expect(
                _NAMED in message,
                f"with DETAIL rank {rank} reported {message[:80]!r} for {kind}, expected the mismatch named",
                DETAIL_TOO_LATE if _TIMEOUT.search(message) else None,
            )
        seconds, message = by_rank[rank]["collectives", "OFF"]
        expect(seconds is not None, f"rank {rank} reports {message} for collectives with OFF", MATCHING)
        expect(
            _TIMEOUT.search(message) is not None,
            f"without DETAIL rank {rank} reported {message[:80]!r} for collectives, expected a timeout",
            DETAIL_EVERYWHERE if _NAMED in message else None,
        )
        expect(
            2.5 <= seconds <= 15,
            f"without DETAIL rank {rank} gave up on the collectives after {seconds} s, not 3",
            WAITED,
        )
        _, shape_message = by_rank[rank]["shapes", "OFF"]
        expect(
            _NAMED not in shape_message,
            f"without DETAIL rank {rank} named the mismatch of shapes",
            DETAIL_EVERYWHERE,
        )
    off = " and ".join(f"{by_rank[rank]['collectives', 'OFF'][0]:.1f}" for rank in ranks)
    shapes = "; ".join(_failure_words(rank, *by_rank[rank]["shapes", "OFF"]) for rank in ranks)
    detail = max(by_rank[rank][kind, "DETAIL"][0] for rank in ranks for kind in KINDS)
    return (
        f"without DETAIL the mismatched collectives gave up after {off} s, the group's timeout, "
        f"and with mismatched shapes {shapes}; with DETAIL every rank named both mismatches "
        f"{_seconds_words(detail)}"
    )


# ---- Exercise 9.5 -------------------------------------------------------------------------

NOT_DIVIDED = "all_reduce leaves the sum over the ranks in p.grad: divide it by world_size"
TWICE = "the gradients were divided by world_size twice (ReduceOp.AVG already averages)"
COPY = (
    "p.grad did not change: all_reduce works in place on the tensor it is given, so pass p.grad "
    "itself (not a copy or a new tensor such as p.grad / world_size)"
)
PARAMETERS = "you all-reduced the parameters: it is their gradients, p.grad, that the ranks average"
NOT_COPIED_BACK = (
    "the bucket was all-reduced, but p.grad did not change: copy each piece of the averaged "
    "bucket back into its parameter's .grad"
)
ONE_BUCKET = (
    "one all-reduce per gradient pays the collective's fixed cost once per tensor: copy every "
    "gradient into one flat tensor (torch.cat of the flattened gradients), all-reduce that once, "
    "and copy the pieces back"
)
NO_GROUP = (
    "call the collective as dist.all_reduce(...), with import torch.distributed as dist: the "
    "check stands in for the other ranks there"
)


class _Done:
    """What an ``async_op=True`` collective returns; it has already finished."""

    def wait(self, timeout: Any = None) -> bool:
        return True


class _OtherRanks:
    """``dist.all_reduce`` as rank 1 of ``world_size`` sees it, the other ranks running the same code.

    A tensor all-reduced is recognised as a gradient, a parameter, or all gradients flattened
    into one; its scale against this rank's original values (1, or 1 / world_size when the
    reader divided first) is the scale the other ranks' values arrive with.
    """

    def __init__(self, model: nn.Module, world_size: int, generator: torch.Generator) -> None:
        self.params = list(model.parameters())
        self.world_size, self.calls = world_size, []
        self.own = [p.grad.clone() for p in self.params]
        self.others = [
            [torch.randn(p.shape, generator=generator) for p in self.params] for _ in range(world_size - 1)
        ]

    def _theirs(self, tensor: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
        """What ``tensor`` is, this rank's original values of it, and the others' sum of it."""
        for i, p in enumerate(self.params):
            if p.grad is not None and tensor.shape == p.shape and tensor.data_ptr() == p.grad.data_ptr():
                return "gradient", self.own[i], sum(other[i] for other in self.others)
            if tensor.shape == p.shape and tensor.data_ptr() == p.data_ptr():
                return "parameter", p.detach().clone(), (self.world_size - 1) * p.detach()
        flat = torch.cat([g.flatten() for g in self.own])
        if tensor.shape == flat.shape:
            return "all gradients", flat, sum(torch.cat([g.flatten() for g in o]) for o in self.others)
        for i, p in enumerate(self.params):
            if tensor.shape == p.shape:  # a copy of a gradient
                return "copy", self.own[i], sum(other[i] for other in self.others)
        raise Mismatch(f"you all-reduced a tensor of shape {tuple(tensor.shape)}, which is no gradient")

    def all_reduce(
        self, tensor: torch.Tensor, op: Any = dist.ReduceOp.SUM, group: Any = None, async_op: bool = False
    ) -> _Done | None:
        kind, original, others = self._theirs(tensor)
        self.calls.append(kind)
        expect(op in (dist.ReduceOp.SUM, dist.ReduceOp.AVG), f"all_reduce with op={op}: expected SUM")
        with torch.no_grad():
            # 1, or 1 / world_size when the reader divided first (``original`` is random, not 0)
            scale = (tensor * original).sum() / original.pow(2).sum()
            tensor.add_(scale * others)
            if op == dist.ReduceOp.AVG:
                tensor.div_(self.world_size)
        return _Done() if async_op else None


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


@checker("9.5", "average_gradients")
def check_average_gradients(average_gradients: Callable[[nn.Module, int], Any]) -> str:
    """Exercise 9.5: every ``.grad`` becomes the average over the ranks, all-reduced as one flat
    bucket; returns the all-reduce count (1)."""
    expect(callable(average_gradients), f"average_gradients should be a function, got {average_gradients!r}")
    generator, gap = torch.Generator().manual_seed(95), 0.0
    for world_size in (2, 3):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(95 + world_size)
            model = _net()
        params = list(model.parameters())
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        before = [p.detach().clone() for p in params]
        ranks = _OtherRanks(model, world_size, generator)
        patches = {"all_reduce": ranks.all_reduce, "get_world_size": lambda group=None, n=world_size: n}
        try:
            with mock.patch.multiple(dist, **patches, get_rank=lambda group=None: 1):
                count = average_gradients(model, world_size)
        except (ValueError, RuntimeError) as error:
            if "process group" not in str(error):
                raise
            raise Mismatch(f"your code raised {type(error).__name__}: {error}", NO_GROUP) from None
        expect(
            "parameter" not in ranks.calls,
            "average_gradients all-reduced the parameters themselves, which are now the ranks' sum",
            PARAMETERS,
        )
        expect(
            all(torch.equal(p, b) for p, b in zip(params, before, strict=True)),
            "average_gradients changed the parameters: it should only average their .grad",
        )
        for i, (name, p) in enumerate(model.named_parameters()):
            own, others = ranks.own[i], sum(o[i] for o in ranks.others)
            # a bucket all-reduced and never copied back leaves .grad as it was
            unchanged = NOT_COPIED_BACK if "all gradients" in ranks.calls else COPY
            mistakes = [
                (NOT_DIVIDED, own + others),
                (TWICE, (own + others) / world_size**2),
                (unchanged, own),
                (COPY, own / world_size),
            ]
            want, what = (own + others) / world_size, f"{name}.grad on rank 1 of {world_size}"
            gap = max(
                gap, expect_tensor(p.grad, want, what, atol=1e-6, mistakes=first_match(p.grad, mistakes))
            )
        calls = len(ranks.calls)
        expect(
            isinstance(count, int) and not isinstance(count, bool),
            f"average_gradients should return how many all-reduces it made ({calls}), "
            f"got {type(count).__name__}",
        )
        expect(count == calls, f"average_gradients returned {count}, but it made {calls} all-reduces")
        expect(
            calls == 1,
            f"average_gradients made {calls} all-reduces for {len(params)} gradients, "
            "one per tensor: the exercise asks for one bucket",
            ONE_BUCKET,
        )
    return (
        f"averages the gradients over simulated jobs of 2 and 3 ranks {within(gap)}, with "
        f"one all-reduce of one bucket per call for {len(params)} parameter tensors"
    )
