"""DTSH — Deep Supervised Hashing with Triplet Labels (Wang, Shi, Kitani, ACCV 2016); spec §8, the
triplet baseline of ATH (§2).

The triplet negative log-likelihood (spec §8), with ``Θ_ij = ½ u_i^T u_j`` and the triplets
``T = {(q, p, n)}`` mined in the batch::

    L = −Σ_T (Θ_qp − Θ_qn − α − log(1 + e^{Θ_qp − Θ_qn − α})) + η Σ_i ‖b_i − u_i‖²

on a linear hash layer over the backbone's pooled feature (as DPSH: ``head``, ``activation``,
``tap`` are the same settings). :meth:`DTSH.loss` returns two named parts:

* ``likelihood`` = ``mean_T softplus(−(Θ_qp − Θ_qn − α))`` — the term above as a mean over the
  triplets (:class:`~hashlearn.methods.losses.TripletLikelihood`), since
  ``−(x − log(1 + e^x)) = log(1 + e^{−x})``;
* ``quantization`` = ``η · mean_{i,d} (u_id − sgn(u_id))²`` over the batch.

Triplets come from the same mining objects as ATH (``triplets``: ``all`` — every valid triplet of
the batch, the default —, ``random`` (``per_anchor`` per anchor), ``batch_hard``, ``semi_hard``;
:mod:`hashlearn.methods.miners`), and the method prefers the class-balanced batch sampler
(``train.sampler: auto``), so every class is in every batch.

Defaults: ``α = 5`` ([INFER]: the value of the DeepHash-pytorch re-implementation, third-party
[CODE]; the paper's value was not read) and ``η = 0.1`` (this library's DPSH normalisation: means
over triplets and code entries instead of sums).
"""

from __future__ import annotations

from torch import Tensor

from hashlearn.errors import InputError
from hashlearn.methods import register_method
from hashlearn.methods.base import Batch, Method, MethodOutput, check_choice, check_int, check_number, quantization_loss
from hashlearn.methods.dpsh import PooledLinearHead
from hashlearn.methods.losses import TripletLikelihood
from hashlearn.methods.miners import TRIPLET_MINERS, RandomTripletMiner, batch_generator, triplet_miner


@register_method(
    "dtsh",
    paper="Wang, Shi, Kitani. Deep Supervised Hashing with Triplet Labels. ACCV 2016",
    kind="deep",
)
class DTSH(PooledLinearHead, Method):
    """Triplet likelihood on inner products of relaxed codes + quantization (baseline)."""

    name = "dtsh"
    #: the batch sampler this method prefers (``train.sampler: auto``)
    sampler = "class_balanced"

    def __init__(self, bits: int, margin: float = 5.0, eta: float = 0.1, triplets: str = "all", per_anchor: int = 1,
                 activation: str = "none", tap: str | None = None, head: str = "linear", mid_channels: int = 256):
        super().__init__(bits)
        who = self.name
        self.margin = check_number(who, "margin", margin, minimum=0)
        self.eta = check_number(who, "eta", eta, minimum=0)
        self.triplets = check_choice(who, "triplets", triplets, TRIPLET_MINERS)
        self.per_anchor = check_int(who, "per_anchor", per_anchor, minimum=1)
        if self.per_anchor != 1 and self.triplets != "random":
            raise InputError(f"dtsh: per_anchor is the number of random triplets per anchor of triplets='random'; "
                             f"with triplets={self.triplets!r} leave it 1")
        self.set_head(activation, tap, head, mid_channels)
        args = {"per_anchor": self.per_anchor} if self.triplets == "random" else {}
        self._miner = triplet_miner(self.triplets, who, **args)
        self._likelihood = TripletLikelihood(self.margin, self._miner)

    def loss(self, out: MethodOutput, batch: Batch) -> dict[str, Tensor]:
        u = out.codes
        if isinstance(self._miner, RandomTripletMiner):
            self._miner.generator = batch_generator(batch.index)
        return {
            "likelihood": self._likelihood(u, batch.labels.to(u.device)),
            "quantization": self.eta * quantization_loss(u),
        }
