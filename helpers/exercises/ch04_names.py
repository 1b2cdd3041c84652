"""Checkers for chapter 4's exercise 4.5 (a two-layer bidirectional name classifier); see
:mod:`helpers.exercises`.

Split from :mod:`helpers.exercises.ch04`, which re-exports them; the shared helpers are in
:mod:`helpers.exercises.ch04_common`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers.exercises import Mismatch, checker, expect, expect_tensor
from helpers.exercises.ch04_common import _build, _only, _within, _without_grads

__all__ = ["check_bi_classifier"]


NO_PACKING = "the GRU read the padding: pack the embedded batch with each name's own length"
RESHAPE = (
    "h_n is (num_layers * 2, B, hidden), not batch-first: reshaping it to (B, 4 * hidden) "
    "mixes names; move the batch first, h_n.transpose(0, 1), then flatten"
)
DIRECTION_MAJOR = (
    "h_n's first axis runs layer by layer, each layer's forward then backward state "
    "(index 2 * layer + direction): h_n.view(num_layers, 2, B, hidden)"
)
LAST_BOTH = (
    "the backward direction reads a name from its end to its start: its output at the last "
    "character has read only that one character; its summary of the whole name is at "
    "position 0 (or in h_n)"
)
TOP_FIRST = (
    "the head reads the top layer's summaries first: keep h_n's own order, the bottom "
    "layer first (index 2 * layer + direction)"
)
OUTPUT_LAST = "output[:, -1] is past the end of every shorter name (zeros there): use h_n"
SORTED = "the names are not sorted by length: pack with enforce_sorted=False"


@checker("4.5", "BiNameClassifier")
def check_bi_classifier(cls: Any) -> str:
    """Exercise 4.5: embed, pack, run a 2-layer bidirectional GRU, classify all four h_n."""
    vocab, classes, embed, hidden = 11, 4, 5, 3
    model = _build(cls, "BiNameClassifier", vocab, classes, embed=embed, hidden=hidden, seed=45)
    embedding, gru, head = _only(model, nn.Embedding), _only(model, nn.GRU), _only(model, nn.Linear)
    expect(gru.bidirectional, "its nn.GRU is not bidirectional", "pass bidirectional=True")
    sizes = (gru.input_size, gru.hidden_size, gru.num_layers)
    expect(sizes == (embed, hidden, 2), f"expected a two-layer nn.GRU({embed}, {hidden}), got {gru}")
    expect(head.in_features == 4 * hidden, f"the head reads {head.in_features} numbers, not 4 * hidden")
    expect(embedding.padding_idx == 0, f"the embedding's padding_idx is {embedding.padding_idx}, not 0")
    reference = _build(
        nn.GRU, "nn.GRU", embed, hidden, num_layers=2, batch_first=True, bidirectional=True, seed=0
    )
    reference.load_state_dict(gru.state_dict())
    lengths = torch.tensor([4, 1, 7, 2, 5])  # unsorted, one name of one character
    batch = len(lengths)
    ids = torch.randint(2, vocab, (batch, 7), generator=torch.Generator().manual_seed(45))
    ids[torch.arange(7) >= lengths[:, None]] = 0  # padding after each name
    with torch.no_grad():
        # each name alone: h (4, 1, hidden), layer by layer, forward then backward
        alone = torch.cat(
            [reference(embedding(row[:n])[None])[1] for row, n in zip(ids, lengths, strict=True)], dim=1
        )  # (4, B, hidden)
        want = head(alone.transpose(0, 1).reshape(batch, 4 * hidden))
        _, h_padded = reference(embedding(ids))
        packed = pack_padded_sequence(embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        output_packed, h_n = reference(packed)
        output, _ = pad_packed_sequence(output_packed, batch_first=True)  # (B, 7, 2 * hidden)
        bottom = [h_n[0], h_n[1]]
        mistakes = {
            NO_PACKING: head(h_padded.transpose(0, 1).reshape(batch, -1)),
            RESHAPE: head(h_n.reshape(batch, 4 * hidden)),
            DIRECTION_MAJOR: head(torch.cat([h_n[0], h_n[2], h_n[1], h_n[3]], dim=1)),
            TOP_FIRST: head(torch.cat([h_n[2], h_n[3], h_n[0], h_n[1]], dim=1)),
            LAST_BOTH: head(torch.cat([*bottom, output[torch.arange(batch), lengths - 1]], dim=1)),
            OUTPUT_LAST: head(torch.cat([*bottom, output[:, -1]], dim=1)),
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
        f"matches torch's two-layer bidirectional nn.GRU run on each name alone {_within(gap)} "
        "(5 padded, unsorted names of 1 to 7 characters; the head reads all four final states "
        "in h_n's order); gradients reach every parameter"
    )
