"""Miners, the recent-codes memory and the loss terms they plug into, on hand-made codes."""

import torch

from hashlearn.methods.base import pairwise_likelihood_loss, similarity
from hashlearn.methods.losses import PairwiseLikelihood, TripletLikelihood
from hashlearn.methods.memory import CrossBatchMemory, batch_reference
from hashlearn.methods.miners import (
    AllPairsMiner,
    AllTripletsMiner,
    BatchHardMiner,
    SemiHardMiner,
    code_distances,
)

# four ±1 codes of 4 bits; images 0, 1 are class 0, images 2, 3 class 1
CODES = torch.tensor([[1.0, 1, 1, 1], [1, 1, -1, -1], [1, 1, 1, -1], [-1, -1, -1, -1]])
LABELS = torch.tensor([0, 0, 1, 1])


def triplets(result):
    return sorted(zip(*(t.tolist() for t in result), strict=True))


def test_distances_are_hamming_distances_for_pm1_codes():
    assert code_distances(CODES, CODES).tolist() == [[0, 2, 1, 4], [2, 0, 1, 2], [1, 1, 0, 3], [4, 2, 3, 0]]


def test_all_pairs_and_all_triplets():
    i, j = AllPairsMiner()(CODES, LABELS)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(a, b) for a in range(4) for b in range(4) if a != b]
    assert triplets(AllTripletsMiner()(CODES, LABELS)) == [
        (0, 1, 2), (0, 1, 3), (1, 0, 2), (1, 0, 3), (2, 3, 0), (2, 3, 1), (3, 2, 0), (3, 2, 1)]


def test_batch_hard_takes_the_farthest_positive_and_the_closest_negative():
    # anchor 0: its only positive is 1; negatives 2 (d=1) and 3 (d=4) → 2
    # anchor 2: positive 3; negatives 0 (d=1), 1 (d=1) → the first, 0
    assert triplets(BatchHardMiner()(CODES, LABELS)) == [(0, 1, 2), (1, 0, 2), (2, 3, 0), (3, 2, 1)]


def test_semi_hard_negatives_are_farther_than_the_positive_within_the_margin():
    # anchor 0, positive 1 (d=2): negatives 2 (d=1, closer: not semi-hard), 3 (d=4: within a margin of 3, not 2)
    # anchor 1, positive 0 (d=2): negatives 2 (d=1), 3 (d=2, not farther) → none
    # anchor 3, positive 2 (d=3): negatives 0 (d=4), 1 (d=2) → 0 within a margin of 2, not 1
    assert triplets(SemiHardMiner(margin=3)(CODES, LABELS)) == [(0, 1, 3), (3, 2, 0)]
    assert triplets(SemiHardMiner(margin=2)(CODES, LABELS)) == [(3, 2, 0)]
    assert triplets(SemiHardMiner(margin=1)(CODES, LABELS)) == []


def test_miners_respect_the_reference_valid_pairs():
    ref = batch_reference(CODES, LABELS)
    valid = ref.valid.clone()
    valid[0, 2] = False  # e.g. an empty memory row
    a, p, n = BatchHardMiner()(CODES, LABELS, CODES, LABELS, valid)
    assert (0, 1, 3) in triplets((a, p, n))


def test_pairwise_likelihood_with_a_miner_equals_the_dense_form():
    u = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    dense = PairwiseLikelihood()(u, labels)
    mined = PairwiseLikelihood(miner=AllPairsMiner())(u, labels)
    assert torch.isclose(dense, mined)
    s = similarity(labels, labels)
    assert torch.isclose(dense, pairwise_likelihood_loss(u, u, s, mask=1 - torch.eye(6)))
    # a miner that keeps fewer pairs gives another value
    assert not torch.isclose(PairwiseLikelihood(miner=BatchHardPairs())(u, labels), dense)


class BatchHardPairs(BatchHardMiner):
    """A pair miner built on a triplet miner: the hardest positive and negative pair of each anchor."""

    def mine(self, codes, ref_codes, pos, neg):
        a, p, n = super().mine(codes, ref_codes, pos, neg)
        return torch.cat([a, a]), torch.cat([p, n])


def test_triplet_likelihood_matches_the_dtsh_formula():
    u = torch.tensor([[1.0, 0.0], [0.5, 0.5], [-1.0, 0.2]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss = TripletLikelihood(margin=1.0)(u, labels)
    theta = 0.5 * u.detach() @ u.detach().T
    # triplets (0, 1, 2) and (1, 0, 2): −(Θ_qp − Θ_qn − α − log(1 + e^{Θ_qp − Θ_qn − α}))
    expected = 0.0
    for q, p, n in ((0, 1, 2), (1, 0, 2)):
        x = theta[q, p] - theta[q, n] - 1.0
        expected += -(x - torch.log1p(torch.exp(x)))
    assert torch.isclose(loss, expected / 2)
    loss.backward()
    assert u.grad.abs().sum() > 0
    single = TripletLikelihood()(u[:1], labels[:1])  # no triplet: zero, and backward still works
    assert single.item() == 0 and single.requires_grad


def test_cross_batch_memory_is_first_in_first_out_and_skips_the_same_image():
    memory = CrossBatchMemory(size=3)
    memory.update(torch.tensor([0, 1]), CODES[:2], LABELS[:2])
    memory.update(torch.tensor([2, 3]), CODES[2:], LABELS[2:])
    assert memory.index.tolist() == [1, 2, 3] and torch.equal(memory.codes, CODES[1:])
    u = torch.zeros(2, 4, requires_grad=True)
    ref = memory.reference(u, torch.tensor([0, 1]), torch.tensor([7, 2]))
    assert ref.codes.shape == (5, 4) and not ref.codes.requires_grad  # the batch, then the memory
    # batch row 1 is image 2: its own row (column 1) and its memory copy (column 3) are no pairs
    assert ref.valid.tolist() == [[False, True, True, True, True], [True, False, True, False, True]]
    fresh = CrossBatchMemory(size=2)
    fresh.load_state_dict(memory.state_dict())
    assert fresh.index.tolist() == [2, 3]  # a shorter memory keeps the newest rows
