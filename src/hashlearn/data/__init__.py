"""Datasets and retrieval protocols.

Load (decode) a dataset, or prepare it once into a memory-mapped cache and open it after::

    from hashlearn.data import prepare, open_prepared, get_protocol

    prepare("cifar10", source="/data/cifar10-jpeg/CIFAR-10-images.tar.gz")   # once, ~10 s
    ds = open_prepared("cifar10")            # ImageDataset: images (60000, 32, 32, 3) uint8 memmap
    split = get_protocol("cifar10-1").split(ds, seed=0)
    split.sizes    # {'query': 1000, 'train': 4500, 'val': 500, 'database': 59000}
    default_protocol(ds)                     # 'cifar10-1': what `hashlearn train` uses without --protocol

Images are ``uint8 (N, H, W, C)`` with ``C = 3`` (RGB) or ``1`` (sets that are grey by nature,
and folders whose images are all grey); labels are ``int64 (N,)`` class indices or
``uint8 (N, C)`` multi-hot.

Layout: :mod:`~hashlearn.data.images` (the one decoder), :mod:`~hashlearn.data.sources`
(folders and archives, the decoding loop, memory checks, locations),
:mod:`~hashlearn.data.datasets` (one module per dataset family, registered by name;
:func:`load_dataset`), :mod:`~hashlearn.data.store` (what the cache holds, opening it),
:mod:`~hashlearn.data.cache` (:func:`prepare`) and :mod:`~hashlearn.data.protocols` (splits,
:func:`default_protocol`).
"""

from hashlearn.data.cache import prepare, prepared_name
from hashlearn.data.dataset import ImageDataset
from hashlearn.data.datasets import DATASETS, default_source, load_all, load_dataset, register_dataset
from hashlearn.data.datasets.mosaic import make_mosaics
from hashlearn.data.images import decode_image, read_image
from hashlearn.data.protocols import (
    PROTOCOLS,
    PerClassProtocol,
    PerLabelProtocol,
    Protocol,
    Split,
    default_protocol,
    get_protocol,
    protocol_params,
    register_protocol,
)
from hashlearn.data.sources import cache_root, data_root
from hashlearn.data.store import open_prepared, prepared_names, prepared_path, read_manifest

load_all()  # every dataset module registers itself: DATASETS is complete from here on

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
    "default_protocol",
    "default_source",
    "get_protocol",
    "load_all",
    "load_dataset",
    "make_mosaics",
    "open_prepared",
    "prepare",
    "prepared_name",
    "prepared_names",
    "prepared_path",
    "protocol_params",
    "read_image",
    "read_manifest",
    "register_dataset",
    "register_protocol",
]
