"""The one evaluator: Hamming-ranking retrieval metrics, reports and plots.

Everything comes from :func:`evaluate` (the other functions are views of it)::

    from hashlearn.eval import evaluate
    result = evaluate(query_codes, db_codes, query_labels, db_labels, topk=(1000, "all"))
    result["mAP@1000"], result["P@r2"], result.to_json()

Definitions and conventions
---------------------------
* **Ranking**: the database is ranked by Hamming distance to the query.
* **Relevance**: labels are class indices ``(n,)`` (relevant = same class) or multi-hot
  ``(n, C)`` (relevant = at least one shared label). Graded relevance ``r`` = number of
  shared labels (``r ∈ {0, 1}`` for class indices).
* **mAP@R**: ``AP@R = (1/#rel in top R) Σ_{n≤R} P@n · rel(n)``, averaged over queries. ``R =
  "all"`` means all N database items (none is dropped); an R larger than N is clipped to N.
  A query with no relevant item in its top R scores **0** and still counts in the mean;
  ``skip_empty=True`` averages over the other queries instead. With ``expected`` ties a
  query is skipped only if *no* order of the ties puts a relevant item in its top R; orders
  that leave the top R empty contribute AP 0 to its expectation.
* **Ties** (items at equal Hamming distance): ``ties="expected"`` (default) reports the
  exact expectation of each metric over all orders of the tied items, each order equally
  likely — independent of database order and deterministic. At a cutoff R that splits a tie
  group, the number of relevant items inside the top R is hypergeometric; the expectation is
  taken exactly over it (McSherry & Najork, ECIR 2008). ``ties="index"`` breaks ties by
  database index (a stable sort), what most published code effectively does.
* **Precision@N / recall@N**: relevant items among the top N over N, and over all relevant
  items in the database (0 for a query with none). Expected over tie orders, or by index.
* **Hamming radius r**: the retrieved set is every item within distance ``≤ r`` (ties do not
  matter). Precision = relevant retrieved / retrieved, **0 when nothing is retrieved**;
  recall = relevant retrieved / relevant in the database (0 when there are none); F1 is
  computed per query (0 when P + R = 0), and all three are averaged over queries. The
  precision–recall curve is these means for r = 0 .. bits.
* **Graded metrics** (reported for multi-hot labels, or with ``graded=True``), at each R of
  ``topk``: ``NDCG@p = DCG@p / IDCG@p`` with gain ``2^r − 1`` and discount ``log2(1 + n)``
  (0 when the query has no relevant item); ``ACG@p = (1/p) Σ_{n≤p} r(n)``; weighted mAP =
  AP with ``P@n`` replaced by ``ACG@n`` (normaliser: relevant items in the top R), as in
  the DSRH paper. p is clipped to N. Ties follow the same rule as mAP: with ``expected``
  the exact expectation over tie orders (DCG and ACG are linear, so each tied position gets
  the group's mean gain; weighted mAP uses the same hypergeometric conditioning as mAP);
  with ``index`` the stable database-index order. The ideal ranking for IDCG sorts by ``r``.

Implementation: per query, one pass over the database (numba, parallel over queries)
computes integer Hamming distances (popcount on 64-bit words) and relevance (class
equality, or popcount of AND of label bitmasks), accumulating per-distance counts; the
metrics follow from the counts. Queries are processed in chunks; no query × database
matrix is ever built.
"""

from __future__ import annotations

from hashlearn._lazy import lazy_exports

_EXPORTS = {
    "evaluate": "hashlearn.eval.metrics",
    "chance_map": "hashlearn.eval.metrics",
    "mean_average_precision": "hashlearn.eval.metrics",
    "precision_recall_curve": "hashlearn.eval.metrics",
    "precision_at_n": "hashlearn.eval.metrics",
    "radius_metrics": "hashlearn.eval.metrics",
    "ndcg_at": "hashlearn.eval.metrics",
    "acg_at": "hashlearn.eval.metrics",
    "weighted_map": "hashlearn.eval.metrics",
    "parse_topk": "hashlearn.eval.metrics",
    "EvalResult": "hashlearn.eval.result",
    "compare_markdown": "hashlearn.eval.result",
    "write_report": "hashlearn.eval.result",
    "plot_curves": "hashlearn.eval.plots",
    "plot_pr_curves": "hashlearn.eval.plots",
    "plot_precision_at_n": "hashlearn.eval.plots",
    "plot_query_results": "hashlearn.eval.plots",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
