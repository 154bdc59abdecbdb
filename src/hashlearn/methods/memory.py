"""Memories of codes that a pairwise or triplet loss compares the batch with.

A loss term compares the batch's relaxed codes ``u_i`` (i in the batch) with the codes of a
:class:`Reference` set ``j``. Three reference sets, one shape:

* :func:`batch_reference` — the batch itself, pairs ``i ≠ j``; both sides carry gradient;
* :class:`CrossBatchMemory` — the batch followed by a first-in-first-out memory of the last
  ``size`` training codes (pytorch-metric-learning's ``CrossBatchMemory``; Wang et al., Cross-Batch
  Memory for Embedding Learning, CVPR 2020);
* :class:`PerImageMemory` — ``U``, the relaxed codes of *all* N training images, each row
  rewritten when its image is in a batch (DPSH, Li, Wang, Kang, IJCAI 2016; its public
  re-implementations keep ``U`` so, updating ``U[index] = u`` every step).

In both memories the reference rows are detached: the gradient reaches ``u_i`` through the
batch side of each pair only, as in those re-implementations. A memory's ``reference``
never changes it; :meth:`update` does, called by ``Method.on_batch_end`` with the batch's
``(index, codes, labels)``. Both keep plain tensors (``state_dict`` / ``load_state_dict``),
so they travel in checkpoints read with ``torch.load(weights_only=True)``.

**Data parallelism.** Each rank computes its loss against its own copy of a memory, so every
rank must write every rank's rows: the distributed trainer all-gathers ``index``, ``codes`` and
``labels`` (in rank order) and calls ``update`` with the gathered tensors on every rank
(``Method.update_memories(..., gather=...)``, or a ``TrainState.all_gather`` that
``Method.on_batch_end`` uses). Within a step a rank's reference then holds its own batch's
current codes and, for the images in the other ranks' batches, the codes last written for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hashlearn.errors import InputError


@dataclass
class Reference:
    """What the batch is compared with: ``codes`` ``(M, k)``, their ``labels`` ``(M,)`` or
    ``(M, C)``, and ``valid`` ``(B, M)`` bool, the pairs (batch row i, reference row j) that
    exist (self-pairs and empty memory rows excluded); ``None`` means all."""

    codes: Tensor
    labels: Tensor
    valid: Tensor | None = None


def _not_self(n_batch: int, n_ref: int, ref_rows: Tensor, device) -> Tensor:
    """``(B, M)`` bool, False at ``(i, ref_rows[i])``: the batch's own rows in the reference."""
    valid = torch.ones(n_batch, n_ref, dtype=torch.bool, device=device)
    valid[torch.arange(n_batch, device=device), ref_rows.to(device)] = False
    return valid


def batch_reference(codes: Tensor, labels: Tensor) -> Reference:
    """The batch against itself: pairs ``(i, j)``, ``i ≠ j``, gradient through both codes."""
    n = len(codes)
    return Reference(codes, labels, _not_self(n, n, torch.arange(n), codes.device))


def _check_rows(where: str, state: dict[str, Tensor], names: tuple[str, ...]) -> None:
    for key in names:
        if not isinstance(state.get(key), Tensor):
            raise ValueError(f"{where}: {key} is missing or not a tensor")
    rows = {len(state[key]) for key in names}
    if len(rows) != 1 or state["codes"].dim() != 2:
        raise ValueError(f"{where}: {', '.join(names)} do not have one row per code")


class CrossBatchMemory:
    """A first-in-first-out memory of the last ``size`` detached codes, with their labels and
    training-set indices, so a pairwise loss also compares the batch with recent batches.

    Its reference is the batch (detached) followed by the memory; pairs of an image with
    itself (the same training index) are excluded."""

    def __init__(self, size: int):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"memory size must be a positive integer, got {size!r}")
        self.size = size
        self.codes: Tensor | None = None
        self.labels: Tensor | None = None
        self.index: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.codes is None else len(self.codes)

    def update(self, index: Tensor, codes: Tensor, labels: Tensor) -> None:
        """Append the rows (oldest rows drop out past ``size``)."""
        codes, labels, index = codes.detach().float(), labels.detach(), index.detach().long().to(codes.device)
        if self.codes is not None:
            codes = torch.cat([self.codes.to(codes.device), codes])
            labels = torch.cat([self.labels.to(labels.device), labels])
            index = torch.cat([self.index.to(index.device), index])
        self.codes, self.labels, self.index = codes[-self.size:], labels[-self.size:], index[-self.size:]

    def reference(self, codes: Tensor, labels: Tensor, index: Tensor) -> Reference:
        device = codes.device
        ref_codes, ref_labels, ref_index = codes.detach(), labels, index.to(device)
        if self.codes is not None:
            ref_codes = torch.cat([ref_codes, self.codes.to(device, codes.dtype)])
            ref_labels = torch.cat([ref_labels, self.labels.to(labels.device)])
            ref_index = torch.cat([ref_index, self.index.to(device)])
        valid = index.to(device)[:, None] != ref_index[None, :]
        return Reference(ref_codes, ref_labels, valid)

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.codes is None else {"codes": self.codes, "labels": self.labels, "index": self.index}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:
            self.codes = self.labels = self.index = None
            return
        _check_rows("recent-codes memory", state, ("codes", "labels", "index"))
        self.codes = state["codes"][-self.size:]
        self.labels = state["labels"][-self.size:]
        self.index = state["index"][-self.size:].long()


class PerImageMemory:
    """``U``: the relaxed codes of every training image (DPSH's ``U``), with their labels.

    Row ``j`` holds the code ``u_j`` of training image ``j`` from the last step that had ``j``
    in its batch. :meth:`reserve` sets the number of images N (``Method.on_train_start``, from
    the training labels); without it the memory grows to the largest index written. Rows not
    written yet are *empty* and take part in no pair. The reference of a batch is ``U`` with
    the batch's rows replaced by the batch's current (detached) codes, without the pairs of
    an image with itself — exactly ``U[index] = u`` before the loss, as the re-implementations
    do, except that they also count the pair ``(i, i)`` and the empty (zero) rows.
    """

    def __init__(self) -> None:
        self.size: int | None = None
        self.codes: Tensor | None = None
        self.labels: Tensor | None = None
        self.filled: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.codes is None else len(self.codes)

    def reserve(self, n_images: int) -> None:
        """Hold N rows; a memory restored from a checkpoint must already have N rows."""
        if self.codes is not None and len(self.codes) > n_images:
            raise InputError(f"the per-image code memory holds {len(self.codes)} images, but the training set has "
                             f"{n_images}; train again without resuming (--no-resume)")
        self.size = int(n_images)
        if self.codes is not None:
            self._grow(self.size)

    def _grow(self, rows: int) -> None:
        extra = rows - len(self.codes)
        if extra > 0:
            self.codes = torch.cat([self.codes, self.codes.new_zeros((extra, *self.codes.shape[1:]))])
            self.labels = torch.cat([self.labels, self.labels.new_zeros((extra, *self.labels.shape[1:]))])
            self.filled = torch.cat([self.filled, self.filled.new_zeros(extra)])

    def update(self, index: Tensor, codes: Tensor, labels: Tensor) -> None:
        """``U[index] = codes`` (detached), with the labels; the hook a distributed trainer
        calls with the rows gathered from every rank."""
        codes, labels = codes.detach().float(), labels.detach()
        index = index.detach().long().to(codes.device)
        rows = max(self.size or 0, int(index.max()) + 1 if len(index) else 0)
        if self.codes is None:
            self.codes = codes.new_zeros((rows, codes.shape[1]))
            self.labels = labels.new_zeros((rows, *labels.shape[1:])).to(codes.device)
            self.filled = torch.zeros(rows, dtype=torch.bool, device=codes.device)
        self._grow(rows)
        self.codes[index] = codes.to(self.codes.device)
        self.labels[index] = labels.to(self.labels.device, self.labels.dtype)
        self.filled[index] = True

    def reference(self, codes: Tensor, labels: Tensor, index: Tensor) -> Reference:
        n, device = len(codes), codes.device
        index = index.long().to(device)
        if self.codes is None:  # nothing written yet: the batch alone (detached)
            return Reference(codes.detach(), labels, _not_self(n, n, torch.arange(n), device))
        rows = max(len(self.codes), int(index.max()) + 1)
        pad = rows - len(self.codes)
        ref_codes = self.codes.to(device, codes.dtype)
        ref_labels = self.labels.to(labels.device, labels.dtype)
        filled = self.filled.to(device)
        if pad:
            ref_codes = torch.cat([ref_codes, ref_codes.new_zeros((pad, ref_codes.shape[1]))])
            ref_labels = torch.cat([ref_labels, ref_labels.new_zeros((pad, *ref_labels.shape[1:]))])
            filled = torch.cat([filled, filled.new_zeros(pad)])
        ref_codes, ref_labels, filled = ref_codes.clone(), ref_labels.clone(), filled.clone()
        ref_codes[index] = codes.detach()
        ref_labels[index.to(ref_labels.device)] = labels
        filled[index] = True
        valid = _not_self(n, rows, index, device) & filled[None, :]
        return Reference(ref_codes, ref_labels, valid)

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.codes is None else {"codes": self.codes, "labels": self.labels, "filled": self.filled}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:
            self.codes = self.labels = self.filled = None
            return
        _check_rows("per-image code memory", state, ("codes", "labels", "filled"))
        if self.size is not None and len(state["codes"]) != self.size:
            raise ValueError(f"per-image code memory: {len(state['codes'])} rows, the training set has {self.size}")
        self.codes, self.labels, self.filled = state["codes"], state["labels"], state["filled"].bool()
