"""Cross-lingual retrieval (xlm/retrieval.py): accuracy with ties, cosine similarities (dense and sparse) against
a hand computation, bags of BPE pieces, and sentence embeddings against the model's own forward, one sentence at
a time."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import scaled_down, seeded_model

from xlm.config import PRESETS
from xlm.errors import InputError
from xlm.retrieval import (
    bag_of_pieces,
    cosine_similarities,
    retrieval,
    retrieval_accuracy,
    sentence_embeddings,
)


def test_retrieval_accuracy_counts_ties_as_a_random_choice():
    similarities = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # right
            [0.8, 0.2, 0.1],  # wrong: candidate 0 beats candidate 1
            [0.3, 0.3, 0.3],  # a three-way tie that includes the right one: 1/3
        ]
    )
    assert retrieval_accuracy(similarities) == pytest.approx((1 + 0 + 1 / 3) / 3, abs=1e-7)
    assert retrieval_accuracy(torch.eye(4)) == 1.0
    assert retrieval_accuracy(torch.eye(4).flip(0)) == 0.0
    with pytest.raises(InputError, match="M >= N"):
        retrieval_accuracy(torch.zeros(3, 2))


def test_cosine_similarities_dense_and_sparse_match_a_hand_computation():
    a = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0, 4.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0]])
    expected = torch.tensor(
        [
            [1.0, 0.0, 1 / (math.sqrt(5) * math.sqrt(2))],
            [0.0, 0.0, 0.0],  # a zero vector is similar to nothing
        ]
    )
    torch.testing.assert_close(cosine_similarities(a, b), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(cosine_similarities(a.to_sparse(), b.to_sparse()), expected, rtol=0, atol=1e-6)


def test_bag_of_pieces_counts_pieces_without_special_tokens():
    bags = bag_of_pieces([[1, 20, 21, 20, 1], [1, 1], [0, 30, 2]], vocab_size=40)
    dense = bags.to_dense()
    assert dense.shape == (3, 40)
    assert dense[0, 20] == 2 and dense[0, 21] == 1 and dense[0].sum() == 3  # </s> (1) not counted
    assert dense[1].sum() == 0 and dense[2].sum() == 1 and dense[2, 30] == 1  # <s> (0), <pad> (2) not counted


def test_retrieval_on_bags_of_pieces():
    english = [[1, 100, 101, 1], [1, 200, 1], [1, 300, 301, 1]]
    french = [[1, 100, 150, 1], [1, 300, 1], [1, 250, 1]]  # 0 shares a piece with 0; 1 and 2 share 300, crossed
    scores = retrieval(bag_of_pieces(english, 400), bag_of_pieces(french, 400))
    # en->fr: 0 -> 0 right; 1 has nothing in common with any French bag: a 3-way tie at 0 (1/3); 2 -> 1 wrong
    assert scores["forward"] == pytest.approx((1 + 1 / 3 + 0) / 3, abs=1e-7)
    # fr->en: 0 -> 0 right; 1 -> 2 wrong; 2 ties with everything at 0 (1/3)
    assert scores["backward"] == pytest.approx((1 + 0 + 1 / 3) / 3, abs=1e-7)
    assert scores["chance"] == pytest.approx(1 / 3) and scores["candidates"] == 3


@pytest.fixture(scope="module")
def tiny_model():
    return seeded_model(scaled_down(PRESETS["xlm-mlm-enfr-1024"]))


@pytest.mark.parametrize("causal", [False, True])
def test_sentence_embeddings_are_the_mean_of_the_last_layer(tiny_model, causal):
    generator = torch.Generator().manual_seed(1)
    sentences = [[1, *torch.randint(14, 512, (n,), generator=generator).tolist(), 1] for n in (3, 9, 1, 6, 4)]
    vectors = sentence_embeddings(tiny_model, sentences, lang_id=1, causal=causal, batch_size=2)
    assert vectors.shape == (5, tiny_model.config.dim)
    for i, ids in enumerate(sentences):  # one sentence at a time, no padding: the reference
        with torch.no_grad():
            h = tiny_model.encode(torch.tensor([ids]), 1, causal=causal)  # (1, T, C)
        # fp32, padded batch vs single row: the same sums in another order, so not bit-exact; 1e-6 is ~100 ulps
        torch.testing.assert_close(vectors[i], h[0].mean(0), rtol=0, atol=1e-6)
    assert not tiny_model.training
    with pytest.raises(InputError, match="no empty one"):
        sentence_embeddings(tiny_model, [[1, 20, 1], []], lang_id=0)


def test_identical_sentences_retrieve_each_other_across_languages(tiny_model):
    """A pipeline check: with the same ids in both "languages", an untrained model's vectors differ only through
    the language embedding. The plain cosine finds the copy well above chance but far from always (measured:
    0.30 and 0.22 of 50): the language offset and the common direction of mean-pooled states dominate. Centred,
    each set minus its mean, every copy is found."""
    generator = torch.Generator().manual_seed(2)
    sentences = [[1, *torch.randint(14, 512, (6,), generator=generator).tolist(), 1] for _ in range(50)]
    english = sentence_embeddings(tiny_model, sentences, lang_id=0)
    french = sentence_embeddings(tiny_model, sentences, lang_id=1)
    plain, centred = retrieval(english, french), retrieval(english, french, center=True)
    assert plain["chance"] == centred["chance"] == 1 / 50
    assert 5 * plain["chance"] <= plain["forward"] < 0.9 and 5 * plain["chance"] <= plain["backward"] < 0.9
    assert centred["forward"] == centred["backward"] == 1.0
    shuffled = retrieval(english, french[torch.randperm(50, generator=generator)], center=True)
    assert shuffled["forward"] < 0.2  # the pairing, not the vectors alone, makes the score
    with pytest.raises(InputError, match="dense"):
        retrieval(english.to_sparse(), french.to_sparse(), center=True)
