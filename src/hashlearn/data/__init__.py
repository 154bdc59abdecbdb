"""Datasets and retrieval protocols.

Load (decode) a dataset, or prepare it once into a memory-mapped cache and open it after::

    from hashlearn.data import prepare, open_prepared, get_protocol

    prepare("cifar10", source="/data/cifar10-jpeg/CIFAR-10-images.tar.gz")   # once, ~10 s
    ds = open_prepared("cifar10")            # ImageDataset: images (60000, 32, 32, 3) uint8 memmap
    split = get_protocol("cifar10-1").split(ds, seed=0)
    split.sizes    # {'query': 1000, 'train': 4500, 'val': 500, 'database': 59000}

Images are ``uint8 (N, H, W, C)`` with ``C = 3`` (RGB) or ``1`` (sets that are grey by nature);
labels are ``int64 (N,)`` class indices or ``uint8 (N, C)`` multi-hot. See
:mod:`hashlearn.data.images` for the decoding and resize rule, :mod:`hashlearn.data.loaders`
for the sources each dataset reads, :mod:`hashlearn.data.cache` for the cache, and
:mod:`hashlearn.data.protocols` for the splits.
"""

from hashlearn.data.cache import open_prepared, prepare, prepared_names, prepared_path, read_manifest
from hashlearn.data.dataset import ImageDataset
from hashlearn.data.images import decode_image, read_image
from hashlearn.data.loaders import DATASETS, default_source, load_dataset, make_mosaics, register_dataset
from hashlearn.data.protocols import (
    PROTOCOLS,
    PerClassProtocol,
    PerLabelProtocol,
    Protocol,
    Split,
    get_protocol,
    register_protocol,
)
from hashlearn.data.sources import cache_root, data_root

__all__ = [
    "DATASETS",
    "PROTOCOLS",
    "ImageDataset",
    "PerClassProtocol",
    "PerLabelProtocol",
    "Protocol",
    "Split",
    "cache_root",
    "data_root",
    "decode_image",
    "default_source",
    "get_protocol",
    "load_dataset",
    "make_mosaics",
    "open_prepared",
    "prepare",
    "prepared_names",
    "prepared_path",
    "read_image",
    "read_manifest",
    "register_dataset",
    "register_protocol",
]
