"""NetVLAD (Arandjelović, Gronat, Torii, Pajdla, Sivic, CVPR 2016) as a hashing baseline of RV-SSDH; spec §8.

A *learned* VLAD layer (:class:`hashlearn.nn.VLAD`, ``mode="learned"``) over the local descriptors
of a map, with ``w``, ``β`` and the centres ``c`` initialised from k-means of descriptors of
training images (``on_train_start``: :func:`kmeans_init`, once — a resumed run keeps its trained
layer) and then trained. NetVLAD was trained with a weakly supervised triplet loss on places; with
class labels the supervision here is a linear classifier on the VLAD vector ``v`` [INFER]:

    L = classification · CE(y, W_C^T v)                       (the one named part ``classification``)

Codes, as the spec's hashing baselines binarise NetVLAD (``codes``): ``"itq"`` (default; ITQ, Gong &
Lazebnik 2011) or ``"pca"`` (PCA + sign, :class:`~hashlearn.methods.shallow.PCAH`), fitted on the
VLAD vectors of ``code_samples`` training images after every epoch (``on_epoch_end``, so the
validation that selects the epoch sees that epoch's codes) with the shallow estimators of
:mod:`hashlearn.methods.shallow`. The fitted mean and projection are buffers of the head, saved
with its weights; the head returns ``u = (v − mean) P`` (``P`` = PCA directions, times the ITQ
rotation), whose signs are the codes. Before the first fit ``P`` is a random Gaussian projection.

Settings: ``clusters`` K (64), ``alpha`` α (100; the assignment's hardness at initialisation),
``normalize_descriptors``, ``tap`` (None: the backbone's last default tap, a map),
``kmeans_images`` / ``kmeans_iterations`` (the initialisation), ``codes``, ``code_samples``,
``itq_iterations``, ``classification`` (the loss weight), ``vlad_norm`` (what the classifier reads of
``v``: :class:`VLADRescale`; the codes are always fitted on ``v`` itself), ``classes`` (set from the dataset by
``hashlearn train`` when not given), ``seed`` (k-means, sampling and ITQ).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import (
    Batch,
    Method,
    MethodOutput,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_tap,
)
from hashlearn.methods.ssdh import check_classes, classification_loss, need_classes
from hashlearn.nn.vlad import VLAD

VLAD_NORMS = ("scale", "bn", "none")


def set_vlad_settings(method: Method, *, clusters, alpha, normalize_descriptors, tap, kmeans_images,
                      kmeans_iterations, vlad_norm) -> None:
    """Check the VLAD settings NetVLAD and RV-SSDH share and set them as ``method``'s attributes of the same
    names; a bad one is an :class:`InputError` naming the method."""
    who = method.name
    method.clusters = check_int(who, "clusters", clusters, minimum=1)
    method.alpha = check_number(who, "alpha", alpha, minimum=0)
    if method.alpha <= 0:
        raise InputError(f"{who}: alpha must be > 0, got {alpha!r}")
    method.normalize_descriptors = check_bool(who, "normalize_descriptors", normalize_descriptors)
    method.tap = check_tap(who, tap)
    method.kmeans_images = check_int(who, "kmeans_images", kmeans_images, minimum=1)
    method.kmeans_iterations = check_int(who, "kmeans_iterations", kmeans_iterations, minimum=0)
    method.vlad_norm = check_choice(who, "vlad_norm", vlad_norm, VLAD_NORMS)


def vlad_tap(tap: str | None, default_taps: list[str]) -> list[str]:
    """The tap a VLAD head reads: the one set, else the backbone's last default tap (a map)."""
    return [tap] if tap else [list(default_taps)[-1]]


def kmeans_init(vlad: VLAD, state, tap: str, images: int, iterations: int, seed: int) -> bool:
    """Initialise a learned ``vlad`` from k-means of the descriptors of ``images`` training images
    at ``tap`` (``state.head_inputs``: what the head reads). Returns False, changing nothing, when
    the layer is already initialised (a resumed run) or the state gives no training images (a
    stand-in state in unit tests)."""
    if bool(vlad.initialised) or not hasattr(state, "head_inputs"):
        return False
    chunks = []
    for inputs in state.head_inputs(limit=images, seed=seed):
        desc = vlad.descriptors(inputs[tap].to(vlad.centres.device))  # (B, C, N)
        chunks.append(desc.transpose(1, 2).reshape(-1, vlad.channels).cpu())
    if not chunks:
        return False
    vlad.init_from_descriptors(torch.cat(chunks), iterations=iterations, seed=seed)
    return True


class VLADRescale(nn.Module):
    """What the transform layer reads of a unit-norm VLAD vector ``v`` of D = K·C dims: ``"scale"``
    ``√D · v`` (entries of unit RMS, as a default-initialised linear layer expects), ``"bn"`` a
    BatchNorm over the D dims (the default of both heads), ``"none"`` ``v`` itself. [INFER] Its
    entries are ~1/√D, so default-initialised layers above start with almost constant outputs: on
    CIFAR-10 stage5 maps (1,000 training images, 3 epochs, 48 bits) RV-SSDH's quantization term
    saturated ``h`` before the classifier learned with ``"none"`` (validation mAP at chance, 0.106),
    reached 0.197 with ``"scale"`` and 0.487 with ``"bn"``."""

    def __init__(self, dims: int, kind: str):
        super().__init__()
        self.kind = kind
        self.factor = float(dims) ** 0.5 if kind == "scale" else 1.0
        self.norm = nn.BatchNorm1d(dims) if kind == "bn" else None

    def forward(self, v: Tensor) -> Tensor:
        return self.norm(v) if self.norm is not None else v * self.factor


class NetVLADHead(nn.Module):
    def __init__(self, tap: str, channels: int, bits: int, classes: int, clusters: int, alpha: float,
                 normalize: bool, seed: int, vlad_norm: str = "bn"):
        super().__init__()
        self.tap = tap
        self.vlad = VLAD(channels, clusters, alpha, mode="learned", seed=seed, normalize_input=normalize)
        self.rescale = VLADRescale(self.vlad.out_dim, vlad_norm)
        self.classifier = nn.Linear(self.vlad.out_dim, classes)
        self.register_buffer("code_mean", torch.zeros(self.vlad.out_dim))
        self.register_buffer("code_projection", torch.randn(self.vlad.out_dim, bits))

    def vectors(self, features: dict[str, Tensor]) -> Tensor:
        return self.vlad(features[self.tap])

    def forward(self, features: dict[str, Tensor]) -> MethodOutput:
        v = self.vectors(features)
        u = (v.detach() - self.code_mean) @ self.code_projection
        return MethodOutput(codes=u, extras={"logits": self.classifier(self.rescale(v))})


@register_method(
    "netvlad",
    paper="Arandjelović, Gronat, Torii, Pajdla, Sivic. NetVLAD: CNN architecture for weakly supervised place "
          "recognition. CVPR 2016",
    kind="deep",
)
class NetVLAD(Method):
    """Learned, k-means initialised VLAD; classification on the VLAD vector; codes by ITQ or PCA + sign."""

    name = "netvlad"
    spatial = True

    def __init__(self, bits: int, clusters: int = 64, alpha: float = 100.0, normalize_descriptors: bool = True,
                 tap: str | None = None, kmeans_images: int = 1000, kmeans_iterations: int = 20,
                 codes: str = "itq", code_samples: int = 2000, itq_iterations: int = 50,
                 classification: float = 1.0, vlad_norm: str = "bn", classes: int | None = None, seed: int = 0):
        super().__init__(bits)
        who = self.name
        set_vlad_settings(self, clusters=clusters, alpha=alpha, normalize_descriptors=normalize_descriptors, tap=tap,
                          kmeans_images=kmeans_images, kmeans_iterations=kmeans_iterations, vlad_norm=vlad_norm)
        self.codes = check_choice(who, "codes", codes, ("itq", "pca"))
        self.code_samples = check_int(who, "code_samples", code_samples, minimum=2)
        self.itq_iterations = check_int(who, "itq_iterations", itq_iterations, minimum=0)
        self.classification = check_number(who, "classification", classification, minimum=0)
        self.classes = check_classes(who, classes)
        self.seed = check_int(who, "seed", seed, minimum=0)

    def taps(self, default_taps: list[str]) -> list[str]:
        return vlad_tap(self.tap, default_taps)

    def build_head(self, tap_channels: dict[str, int], pooled: bool) -> nn.Module:
        (tap,) = tap_channels
        return NetVLADHead(tap, tap_channels[tap], self.bits, need_classes(self.name, self.classes), self.clusters,
                           self.alpha, self.normalize_descriptors, self.seed, self.vlad_norm)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        """One named part, ``classification``: the weighted cross-entropy of the linear classifier
        on the VLAD vector (the codes are fitted after each epoch, not trained)."""
        return {"classification": self.classification * classification_loss(out.extras["logits"], batch.labels)}

    def on_train_start(self, state) -> None:
        head = getattr(state, "head", None)
        if head is not None:
            kmeans_init(head.vlad, state, head.tap, self.kmeans_images, self.kmeans_iterations, self.seed)

    def on_epoch_end(self, state) -> None:
        head = getattr(state, "head", None)
        if head is not None and hasattr(state, "head_inputs"):
            self.fit_codes(head, state)

    def fit_codes(self, head: NetVLADHead, state) -> None:
        """Fit ITQ (or PCA) on the VLAD vectors of ``code_samples`` training images and store its
        mean and projection in the head's buffers."""
        from hashlearn.methods.shallow import ITQ, PCAH

        with torch.no_grad():
            vectors = [head.vectors({k: v.to(head.code_mean.device) for k, v in inputs.items()}).cpu()
                       for inputs in state.head_inputs(limit=self.code_samples, seed=self.seed)]
        x = torch.cat(vectors).double().numpy()
        if len(x) < 2 or min(x.shape) < self.bits:
            raise InputError(f"{self.name}: {self.codes} codes of {self.bits} bits need at least {self.bits} training "
                             f"images and VLAD dimensions, got {x.shape[0]} images of {x.shape[1]} dimensions")
        if self.codes == "itq":
            model = ITQ(bits=self.bits, n_iter=self.itq_iterations, random_state=self.seed).fit(x)
            projection = model.components_ @ model.rotation_
        else:
            model = PCAH(bits=self.bits, random_state=self.seed).fit(x)
            projection = model.components_
        head.code_mean.copy_(torch.as_tensor(np.asarray(model.mean_), dtype=head.code_mean.dtype))
        head.code_projection.copy_(torch.as_tensor(np.asarray(projection), dtype=head.code_projection.dtype))
