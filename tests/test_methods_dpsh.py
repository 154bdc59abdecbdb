"""DPSH as published: each batch's likelihood runs over (i in the batch, j in all training images)
through U, the per-image memory of relaxed codes, updated at the batch's indices."""

import io
import math
from types import SimpleNamespace

import pytest
import torch

from hashlearn.errors import InputError
from hashlearn.methods import get_method
from hashlearn.methods.base import Batch, MethodOutput, total_loss
from hashlearn.methods.memory import PerImageMemory

LABELS = torch.tensor([0, 0, 1, 1])  # four training images, two classes
U_BEFORE = torch.tensor([[0.2, 0.2], [1.0, 1.0], [0.0, 0.0], [-1.0, 1.0]])


def dpsh_with_u(**kw):
    """DPSH (2 bits) whose U holds U_BEFORE for all four training images."""
    m = get_method("dpsh")(bits=2, **kw)
    m.on_train_start(SimpleNamespace(train_labels=LABELS))
    m.update_memories(torch.arange(4), U_BEFORE, LABELS)
    return m


def by_hand(u, index, U, labels, eta):
    """The published objective written out: mean over i in the batch and every other image j of
    log(1 + e^Θ) − s Θ, Θ = ½ u_i·u_j, with U's batch rows replaced by the batch's codes, plus
    η · mean (u − sgn u)²."""
    U = U.clone()
    U[index] = u
    terms = []
    for a, i in enumerate(index.tolist()):
        for j in range(len(U)):
            if j != i:
                theta = 0.5 * float(u[a] @ U[j])
                s = float(labels[i] == labels[j])
                terms.append(math.log1p(math.exp(theta)) - s * theta)
    quant = sum((float(x) - (1.0 if x >= 0 else -1.0)) ** 2 for x in u.flatten()) / u.numel()
    return sum(terms) / len(terms), eta * quant


def test_loss_runs_over_the_batch_against_all_training_images():
    m = dpsh_with_u(eta=0.5)
    assert m.pairs == "all"  # the default: as published
    u = torch.tensor([[1.0, 0.5], [-0.5, 2.0]], requires_grad=True)
    index = torch.tensor([0, 2])
    parts = m.loss(MethodOutput(codes=u), Batch(labels=LABELS[index], index=index))
    likelihood, quantization = by_hand(u.detach(), index, U_BEFORE, LABELS, eta=0.5)
    assert list(parts) == ["likelihood", "quantization"]
    assert parts["likelihood"].item() == pytest.approx(likelihood, rel=1e-6)
    assert parts["quantization"].item() == pytest.approx(quantization, rel=1e-6)
    assert total_loss(parts).item() == pytest.approx(likelihood + quantization, rel=1e-6)
    total_loss(parts).backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    # the loss reads U but does not change it
    assert torch.equal(m.state_dict()["images.codes"], U_BEFORE)


def test_u_is_updated_at_the_batch_indices_only():
    m = dpsh_with_u()
    u = torch.tensor([[1.0, 0.5], [-0.5, 2.0]], requires_grad=True)
    index = torch.tensor([3, 1])
    batch = Batch(labels=LABELS[index], index=index)
    m.on_batch_end(None, batch, MethodOutput(codes=u))
    after = m.state_dict()["images.codes"]
    assert torch.equal(after[[3, 1]], u.detach())
    assert torch.equal(after[[0, 2]], U_BEFORE[[0, 2]])
    assert not after.requires_grad


def test_images_not_seen_yet_take_part_in_no_pair():
    m = get_method("dpsh")(bits=2, eta=0.0)
    m.on_train_start(SimpleNamespace(train_labels=LABELS))
    assert m.state_dict() == {}  # nothing stored before the first batch
    m.update_memories(torch.tensor([1]), U_BEFORE[[1]], LABELS[[1]])
    u = torch.tensor([[1.0, 0.5], [-0.5, 2.0]])
    index = torch.tensor([0, 2])
    parts = m.loss(MethodOutput(codes=u), Batch(labels=LABELS[index], index=index))
    # pairs: (0, 1), (0, 2), (2, 0), (2, 1) — image 3 is empty, (i, i) is no pair
    U = U_BEFORE.clone()
    U[index] = u
    expected = []
    for a, i in enumerate(index.tolist()):
        for j in (1, 2 - i):
            theta = 0.5 * float(u[a] @ U[j])
            expected.append(math.log1p(math.exp(theta)) - float(LABELS[i] == LABELS[j]) * theta)
    assert parts["likelihood"].item() == pytest.approx(sum(expected) / 4, rel=1e-6)
    assert m.state_dict()["images.filled"].tolist() == [False, True, False, False]


def test_batch_only_is_a_setting():
    m = get_method("dpsh")(bits=2, pairs="batch")
    assert m.state_dict() == {} and m._memories == {}
    u = torch.tensor([[1.0, 0.5], [-0.5, 2.0], [0.3, -0.1]])
    index = torch.tensor([0, 2, 3])
    parts = m.loss(MethodOutput(codes=u), Batch(labels=LABELS[index], index=index))
    theta = 0.5 * u @ u.T
    s = (LABELS[index, None] == LABELS[None, index]).float()
    off = 1 - torch.eye(3)
    expected = ((torch.log1p(torch.exp(theta)) - s * theta) * off).sum() / off.sum()
    assert torch.isclose(parts["likelihood"], expected)
    m.on_batch_end(None, Batch(labels=LABELS[index], index=index), MethodOutput(codes=u))
    assert m.state_dict() == {}


def test_u_is_checkpointed_as_plain_tensors_and_survives_a_resume():
    m = dpsh_with_u()
    buffer = io.BytesIO()
    torch.save(m.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {"images.codes", "images.labels", "images.filled"}
    fresh = get_method("dpsh")(bits=2)
    fresh.load_state_dict(state)  # the trainer restores method state before on_train_start
    fresh.on_train_start(SimpleNamespace(train_labels=LABELS))
    assert torch.equal(fresh.state_dict()["images.codes"], U_BEFORE)
    with pytest.raises(InputError, match="holds 4 images, but the training set has 3"):
        fresh.on_train_start(SimpleNamespace(train_labels=LABELS[:3]))
    with pytest.raises(KeyError):
        fresh.load_state_dict({"recent.codes": U_BEFORE})


def test_distributed_update_takes_the_rows_of_every_rank():
    """With a TrainState.all_gather (the ranks' tensors concatenated in rank order), each rank's
    U receives every rank's rows, so all ranks keep the same U."""
    rank1 = iter([torch.tensor([2, 3]), U_BEFORE[2:] - 1, LABELS[2:]])  # index, codes, labels of rank 1

    def all_gather(local):  # stands in for torch.distributed.all_gather on rank 0
        return torch.cat([local, next(rank1)])

    m = get_method("dpsh")(bits=2)
    m.on_train_start(SimpleNamespace(train_labels=LABELS))
    index = torch.tensor([0, 1])
    m.on_batch_end(SimpleNamespace(all_gather=all_gather), Batch(labels=LABELS[index], index=index),
                   MethodOutput(codes=U_BEFORE[:2] + 1))
    assert torch.equal(m.state_dict()["images.codes"], torch.cat([U_BEFORE[:2] + 1, U_BEFORE[2:] - 1]))
    assert m.state_dict()["images.filled"].all()


def test_per_image_memory_grows_when_not_reserved():
    memory = PerImageMemory()
    memory.update(torch.tensor([5]), torch.ones(1, 3), torch.tensor([2]))
    assert len(memory) == 6 and memory.filled.tolist() == [False] * 5 + [True]
    memory.reserve(8)
    assert len(memory) == 8 and memory.codes[5].tolist() == [1.0, 1.0, 1.0]


def test_dpsh_mlp_head_is_dmsh_pooled_scale_head_so_capacity_can_be_equal():
    linear = get_method("dpsh")(bits=16).build_head({"pool": 64}, pooled=True)
    mlp = get_method("dpsh")(bits=16, head="mlp", mid_channels=32).build_head({"pool": 64}, pooled=True)
    dmsh = get_method("dmsh")(bits=16, mid_channels=32, scale_head="mlp", taps=["pool"]).build_head(
        {"pool": 64}, pooled=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(linear) == 64 * 16 + 16
    assert count(mlp) == count(dmsh.scales["pool"])  # the same MLP as one DMSH scale
    out = mlp.eval()({"pool": torch.randn(5, 64)})
    assert out.codes.shape == (5, 16)
    with pytest.raises(InputError, match="head"):
        get_method("dpsh")(bits=16, head="conv")


def test_dmsh_conv_scale_head_takes_a_pooled_tap_as_a_1x1_map():
    """Fine-tuning with ``pool`` among DMSH's taps: the conv head gets a vector there, not an error."""
    head = get_method("dmsh")(bits=8, mid_channels=4, taps=["s", "pool"]).build_head({"s": 6, "pool": 5}, pooled=False)
    out = head.eval()({"s": torch.randn(3, 6, 4, 4), "pool": torch.randn(3, 5)})
    assert out.codes.shape == (3, 8)
    with pytest.raises(InputError, match="feature map"):
        head.scales["s"](torch.randn(3, 6, 4))
