"""Checkers for chapter 4's exercise 4.5 (a bidirectional name classifier); see
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
OUTPUT_LAST = "output[:, -1] is the backward direction after one step (zeros after a short name): use h_n"
RESHAPE = "h_n is (2, B, hidden): reshaping it to (B, 2 * hidden) mixes names; cat h_n[-2] and h_n[-1]"
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
        # each name's last forward and backward states, (B, hidden) each
        forward, backward = torch.cat([h[0] for h in alone]), torch.cat([h[1] for h in alone])
        _, h_padded = reference(embedding(ids))
        packed = pack_padded_sequence(embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        output_packed, h_n = reference(packed)
        output, _ = pad_packed_sequence(output_packed, batch_first=True)

        def read(first: torch.Tensor, second: torch.Tensor, swap: bool) -> torch.Tensor:
            """The head on both directions side by side, in either order."""
            return head(torch.cat([second, first] if swap else [first, second], dim=1))

        # either order of the two summaries is right: the head's weights are learned
        wants = {swap: read(forward, backward, swap) for swap in (False, True)}
        padded_reads = {swap: read(h_padded[-2], h_padded[-1], swap) for swap in (False, True)}
        common = {
            OUTPUT_LAST: head(output[:, -1]),
            RESHAPE: head(h_n.reshape(len(lengths), 2 * hidden)),
        }
    try:
        got = model(ids)
    except NotImplementedError:
        raise
    except RuntimeError as error:
        raise Mismatch(
            f"your code raised RuntimeError: {error}", SORTED if "sorted" in str(error) else None
        ) from None
    # judge against the order the attempt is nearer to (forward first when unclear)
    swap = (
        isinstance(got, torch.Tensor)
        and got.shape == wants[True].shape
        and bool((got.detach() - wants[True]).abs().max() < (got.detach() - wants[False]).abs().max())
    )
    mistakes = {NO_PACKING: padded_reads[swap], **common}
    gap = expect_tensor(got, wants[swap], "the logits", mistakes=mistakes)
    got.pow(2).sum().backward()
    missing = _without_grads(model)
    expect(not missing, f"no gradient reaches {', '.join(missing)}")
    order = "backward summary first" if swap else "forward summary first"
    return (
        f"matches torch's bidirectional nn.GRU run on each name alone {_within(gap)} "
        f"(5 padded, unsorted names of 1 to 7 characters; {order}); gradients reach every parameter"
    )
