"""Every registered method, on tiny random data — so a new method is tested the day it arrives.

Deep methods (each in fine-tune mode, on feature maps, and frozen mode, on pooled vectors): the
head gives (B, bits) codes; every trainable head parameter gets a gradient; every loss part is a
named finite scalar; a few optimizer steps on one fixed batch make the total loss fall; the
method's state and the head's weights survive ``torch.save`` / ``torch.load(weights_only=True)``;
signs of the codes pack to (B, ceil(bits/8)) bytes. Shallow methods: fit/encode gives packed codes
of that shape. The hooks are called in the trainer's order with a stand-in TrainState.
"""

import inspect
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hashlearn.codes import as_packed, pack_bits, packed_nbytes, sign
from hashlearn.methods import load_all
from hashlearn.methods.base import Batch, total_loss

REGISTRY = load_all()
DEEP = [n for n in REGISTRY.names() if REGISTRY.info(n).get("kind", "deep") == "deep"]
SHALLOW = [n for n in REGISTRY.names() if REGISTRY.info(n).get("kind") == "shallow"]
BITS = 12  # not a multiple of 8: the packed codes have a padded byte
N, CLASSES = 16, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_the_registry_holds_the_known_methods():
    assert {"dpsh", "dmsh"} <= set(DEEP) and {"lsh", "pcah", "itq", "sh"} <= set(SHALLOW)
    for name in REGISTRY.names():
        assert REGISTRY.info(name)["paper"], name


def tiny_features(taps: list[str], pooled: bool, seed: int = 0):
    """One tensor per tap the method asks for (feature maps or pooled vectors); the first
    channels carry the label so a loss can fall."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N) % CLASSES
    onehot = torch.nn.functional.one_hot(labels, CLASSES).float()
    features = {}
    for k, tap in enumerate(taps):
        x = torch.randn(N, 8 + 4 * k, 3, 3, generator=g)
        x[:, :CLASSES] += 2 * onehot[:, :, None, None]
        features[tap] = x.mean(dim=(2, 3)) if pooled else x
    return features, labels


def setup(name: str, pooled: bool):
    torch.manual_seed(0)
    cls = REGISTRY.get(name)
    # a method with a classification layer is told the class count (hashlearn train sets it from the dataset)
    args = {"classes": CLASSES} if "classes" in inspect.signature(cls).parameters else {}
    method = cls(bits=BITS, **args)
    taps = method.taps(["s1", "s2"])
    features, labels = tiny_features(taps, pooled)
    head = method.build_head({t: features[t].shape[1] for t in taps}, pooled=pooled)

    def encode_train():
        was = head.training
        head.eval()
        with torch.no_grad():
            codes = head(features).codes
        head.train(was)
        return codes

    state = SimpleNamespace(trainer=None, epoch=1, step=0, train_labels=labels, method_state={},
                            encode_train=encode_train)
    batch = Batch(labels=labels, index=torch.arange(N))
    return method, head, features, batch, state


def train_steps(method, head, features, batch, state, steps: int, lr: float = 3e-3) -> list[float]:
    """The trainer's order: on_train_start, on_epoch_start, (loss, step, on_batch_end)×steps, on_epoch_end."""
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)
    method.on_train_start(state)
    method.on_epoch_start(state)
    losses = []
    for _ in range(steps):
        out = head(features)
        loss = total_loss(method.loss(out, batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        state.step += 1
        method.on_batch_end(state, batch, out)
        losses.append(float(loss.detach()))
    method.on_epoch_end(state)
    return losses


@pytest.mark.parametrize("pooled", [False, True], ids=["maps", "pooled"])
@pytest.mark.parametrize("name", DEEP)
def test_head_shape_named_parts_and_gradients(name, pooled):
    method, head, features, batch, state = setup(name, pooled)
    method.on_train_start(state)
    out = head(features)
    assert out.codes.shape == (N, BITS)
    parts = method.loss(out, batch)
    assert isinstance(parts, dict) and parts
    for part, value in parts.items():
        assert isinstance(part, str) and part, f"{name}: a loss part needs a name"
        assert value.dim() == 0 and torch.isfinite(value), f"{name}: part {part} is {value}"
    total_loss(parts).backward()
    for pname, p in head.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"
    packed, bits = as_packed(sign(out.codes.detach().numpy()), bits=BITS)
    assert bits == BITS and packed.shape == (N, packed_nbytes(BITS)) == (N, 2) and packed.dtype == np.uint8


@pytest.mark.parametrize("pooled", [False, True], ids=["maps", "pooled"])
@pytest.mark.parametrize("name", DEEP)
def test_a_few_steps_on_a_fixed_batch_lower_the_loss(name, pooled):
    method, head, features, batch, state = setup(name, pooled)
    # 40 steps: bounded relaxations (IDHN's softsign codes with Θ = (β/k) u^T u ∈ [−β, β]) start slowly at
    # this learning rate on tiny features
    losses = train_steps(method, head, features, batch, state, steps=40)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], f"{name}: loss {losses[0]:.4f} → {losses[-1]:.4f}"


@pytest.mark.parametrize("name", DEEP)
def test_state_and_weights_round_trip_through_weights_only_load(name):
    method, head, features, batch, state = setup(name, pooled=True)
    train_steps(method, head, features, batch, state, steps=2)

    def round_trip(obj):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)

    saved = method.state_dict()
    loaded = round_trip(saved)
    fresh, fresh_head, *_ = setup(name, pooled=True)
    fresh.load_state_dict(loaded)  # the trainer's resume order: state first, then on_train_start
    fresh.on_train_start(state)
    again = fresh.state_dict()
    assert set(again) == set(saved)
    assert all(torch.equal(again[k], saved[k]) for k in saved)
    fresh_head.load_state_dict(round_trip(head.state_dict()))
    head.eval()
    fresh_head.eval()
    out, fresh_out = head(features), fresh_head(features)
    assert torch.equal(out.codes, fresh_out.codes)
    parts, fresh_parts = method.loss(out, batch), fresh.loss(fresh_out, batch)
    assert list(parts) == list(fresh_parts)
    assert all(torch.equal(parts[k], fresh_parts[k]) for k in parts)  # the memories came back too


@pytest.mark.parametrize("name", SHALLOW)
def test_shallow_fit_encode_gives_packed_codes(name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    model = REGISTRY.get(name)(bits=BITS)
    y = np.arange(len(x)) % CLASSES  # labels: supervised shallow methods need them, the others ignore them
    codes = model.fit(x, y).encode(x[:10])
    assert codes.shape == (10, BITS)
    packed = pack_bits(codes)
    assert packed.shape == (10, packed_nbytes(BITS)) == (10, 2) and packed.dtype == np.uint8
    assert np.array_equal(as_packed(codes)[0], packed)
