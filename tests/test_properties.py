"""Property-based tests: invariants of the helpers, checked on inputs Hypothesis draws.

Each property is computed independently of the code under test (a direct sum, set
arithmetic, the concatenated batch), so a helper that is wrong in some corner fails
here even where the example-based tests pass.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers.data import split_images
from helpers.rl import discounted_returns
from helpers.sequences import CharVocab
from helpers.training import train_one_epoch

# No per-example deadline: on a shared 2-core machine one example can stall for a
# second, which says nothing about the helper. Fewer examples keep the file fast.
settings.register_profile("book", deadline=None, max_examples=50)
settings.load_profile("book")

rewards_lists = st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=40)
gammas = st.floats(0.0, 1.0)


@given(rewards=rewards_lists, gamma=gammas, bootstrap=st.floats(-50, 50))
def test_discounted_returns_equal_the_direct_sum(rewards, gamma, bootstrap):
    returns = discounted_returns(rewards, gamma, bootstrap=bootstrap)
    n = len(rewards)
    for t in range(n):
        direct = sum(gamma ** (k - t) * rewards[k] for k in range(t, n)) + gamma ** (n - t) * bootstrap
        assert math.isclose(returns[t].item(), direct, rel_tol=1e-5, abs_tol=1e-3), (t, direct)


@given(rewards=rewards_lists)
def test_the_first_return_is_the_episode_return_when_nothing_is_discounted(rewards):
    assert math.isclose(discounted_returns(rewards, 1.0)[0].item(), sum(rewards), rel_tol=1e-5, abs_tol=1e-3)
    # gamma = 0: each step's return is its own reward
    torch.testing.assert_close(discounted_returns(rewards, 0.0), torch.tensor(rewards, dtype=torch.float32))


@st.composite
def labelled_images(draw):
    classes = draw(st.integers(2, 5))
    per_class = draw(st.integers(6, 15))
    labels = torch.arange(classes).repeat_interleave(per_class)
    labels = labels[
        torch.randperm(len(labels), generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    ]
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1).expand(-1, 2, 2).clone()
    val_size = draw(st.integers(classes, 2 * classes))
    test_size = draw(st.integers(classes, 2 * classes))
    return images, labels, val_size, test_size, draw(st.integers(0, 10_000))


@settings(max_examples=30)
@given(labelled_images())
def test_split_images_parts_are_disjoint_complete_and_stratified(case):
    images, labels, val_size, test_size, seed = case
    split = split_images(images, labels, val_size=val_size, test_size=test_size, seed=seed)
    # every image carries its own index as its pixel value: recover where each one went
    ids = {
        name: (getattr(split, f"x_{name}")[:, 0, 0, 0] * 255).round().long()
        for name in ("train", "val", "test")
    }
    sets = {name: set(v.tolist()) for name, v in ids.items()}
    assert len(sets["val"]) == val_size and len(sets["test"]) == test_size
    assert sets["train"].isdisjoint(sets["val"]) and sets["train"].isdisjoint(sets["test"])
    assert sets["val"].isdisjoint(sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(range(len(labels)))
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(split, f"y_{name}"), labels[ids[name]]), name
    # stratified: each class's share in a part is within one image of its overall share
    for name in ("val", "test"):
        part = labels[ids[name]]
        for c in labels.unique():
            expected = (labels == c).float().mean().item() * len(part)
            assert abs((part == c).sum().item() - expected) <= 1, (name, int(c))
    again = split_images(images, labels, val_size=val_size, test_size=test_size, seed=seed)
    assert torch.equal(again.x_test, split.x_test)


texts = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8)


@given(texts=texts, data=st.data())
def test_char_vocab_decodes_what_it_encodes(texts, data):
    vocab = CharVocab(texts)
    text = data.draw(st.sampled_from(texts))
    ids = vocab.encode(text)
    assert ids.dtype == torch.long and len(ids) == len(text)
    assert vocab.decode(ids) == text
    assert (ids >= 2).all(), "known characters never map to padding or unknown"


@given(texts=texts, unseen=st.text(min_size=1, max_size=5))
def test_char_vocab_maps_unseen_characters_to_unknown(texts, unseen):
    vocab = CharVocab(texts)
    known = set("".join(texts))
    ids = vocab.encode(unseen)
    for char, i in zip(unseen, ids.tolist(), strict=True):
        assert (i == CharVocab.UNKNOWN) == (char not in known)


@settings(max_examples=25)
@given(k=st.integers(1, 4), batch=st.integers(1, 6), seed=st.integers(0, 1_000))
def test_accumulating_k_batches_equals_one_step_on_their_concatenation(k, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(k * batch, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(k * batch, generator=generator, dtype=torch.float64)

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    accumulated, optimizer = fresh()
    batches = [(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]) for i in range(k)]
    train_one_epoch(accumulated, batches, nn.MSELoss(), optimizer, "cpu", accumulation_steps=k)
    whole, optimizer = fresh()
    train_one_epoch(whole, [(x, y)], nn.MSELoss(), optimizer, "cpu")
    for a, b in zip(accumulated.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
