"""Data-parallel training on PyTorch's own engine (``torchrun``).

``torchrun --nproc-per-node N -m hashlearn train ...`` starts N processes with ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK`` and the rendezvous address in their environment. :func:`setup` (called by
:func:`hashlearn.train.run.train`) then joins the process group — backend ``nccl`` when the device is
CUDA (each process on ``cuda:LOCAL_RANK``), ``gloo`` on the CPU — and :func:`teardown` leaves it at
the end. Without ``WORLD_SIZE > 1`` nothing here does anything, so one process trains exactly as
before.

Division of work: every rank trains (the model wrapped in ``DistributedDataParallel``, which
averages gradients), each on a disjoint shard of every global batch; rank 0 alone evaluates,
encodes and writes the run folder (checkpoints included) while the others wait at a barrier.
Nothing is pickled across ranks: only tensors travel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from hashlearn.errors import InputError


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


def active() -> bool:
    """True inside a process group of more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0") or 0)
    except ValueError:
        return 0


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (preparing a dataset, writing a cache); the others wait, then run it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def setup(device_name: str | None) -> bool:
    """Join the process group when ``WORLD_SIZE > 1``; True when this call created it (so the caller
    destroys it with :func:`teardown`)."""
    if env_world_size() <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return False
    from hashlearn.train.trainer import pick_device

    device = pick_device(device_name or "auto")
    if device.type == "cuda":
        torch.cuda.set_device(device.index if device.index is not None else local_rank())
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return True


def teardown(created: bool) -> None:
    if created:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """``cuda`` without an index means this rank's GPU (``cuda:LOCAL_RANK``) when data-parallel."""
    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """The ranks' (same-shaped) tensors concatenated along dim 0 in rank order (``TrainState.all_gather``)."""
    import torch.distributed as dist

    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    import torch.distributed as dist

    dist.broadcast(tensor, src=src)
    return tensor
