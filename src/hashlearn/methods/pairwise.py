"""What the DPSH-family methods share: which pairs the likelihood runs over (``pairs``) and the
memory that setting needs.

* ``pairs="batch"`` — pairs ``(i, j)`` of the batch, ``i ≠ j``; gradient through both codes.
* ``pairs="memory"`` — ``i`` in the batch, ``j`` in the batch and the last ``memory_size``
  training codes (:class:`~hashlearn.methods.memory.CrossBatchMemory`), pairs of an image
  with itself left out.
* ``pairs="all"`` — ``i`` in the batch, ``j`` over *all* N training images through ``U``,
  their relaxed codes from the last step that saw each
  (:class:`~hashlearn.methods.memory.PerImageMemory`; DPSH as published). N comes from the
  training labels in :meth:`PairwiseMethod.on_train_start`.

Reference rows from a memory are detached (the re-implementations' ``U[index] = u.data``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from hashlearn.errors import InputError
from hashlearn.methods.base import Batch, Method, check_choice, check_int
from hashlearn.methods.memory import CrossBatchMemory, PerImageMemory, Reference

PAIRS = ("all", "batch", "memory")


class PairwiseMethod(Method):
    """A :class:`Method` whose likelihood compares the batch with a reference set (``pairs``)."""

    def __init__(self, bits: int, pairs: str = "batch", memory_size: int = 0):
        super().__init__(bits)
        self.pairs = check_choice(self.name, "pairs", pairs, PAIRS)
        self.memory_size = check_int(self.name, "memory_size", memory_size, minimum=0)
        if self.pairs == "memory" and self.memory_size < 1:
            raise InputError(f"{self.name}: memory_size must be >= 1 with pairs='memory' (the number of recent "
                             f"codes kept), got {self.memory_size}")
        if self.pairs != "memory" and self.memory_size:
            raise InputError(f"{self.name}: memory_size is the length of the recent-codes memory of "
                             f"pairs='memory'; with pairs={self.pairs!r} leave it 0")
        if self.pairs == "all":
            self._memories["images"] = PerImageMemory()
        elif self.pairs == "memory":
            self._memories["recent"] = CrossBatchMemory(self.memory_size)

    def on_train_start(self, state: Any) -> None:
        """``pairs="all"``: ``U`` holds one row per training image."""
        if self.pairs == "all":
            self._memories["images"].reserve(len(state.train_labels))

    def reference(self, codes: Tensor, batch: Batch) -> Reference | None:
        """What the batch's codes are compared with; ``None`` for the batch itself."""
        if self.pairs == "batch":
            return None
        memory = self._memories["images" if self.pairs == "all" else "recent"]
        return memory.reference(codes, batch.labels, batch.index)
