"""The one evaluator: every retrieval metric of hashlearn from one pass per query.

See the :mod:`hashlearn.eval` docstring for the definitions and conventions.
"""

from __future__ import annotations

import numpy as np

from hashlearn.codes.binary import as_packed
from hashlearn.errors import InputError
from hashlearn.eval.result import EvalResult

TIE_RULES = ("expected", "index")
# queries per kernel call: bounds memory (per-query rows of bits+1 counts, never query × database)
QUERY_CHUNK = 4096


def parse_topk(topk) -> list[int | str]:
    """``(1000, "all")``, ``"1000,all"`` or ``1000`` → a list of ints ≥ 1 and/or ``"all"``."""
    if isinstance(topk, (str, int, np.integer)):
        items = [t for t in str(topk).split(",")] if isinstance(topk, str) else [topk]
    else:
        items = list(topk)
    out: list[int | str] = []
    for item in items:
        text = str(item).strip().lower()
        if text == "all":
            value: int | str = "all"
        else:
            try:
                value = int(text)
            except ValueError:
                raise InputError(f"topk: expected positive integers or 'all', got {item!r}") from None
            if value < 1:
                raise InputError(f"topk: values must be at least 1, got {value}")
        if value not in out:
            out.append(value)
    if not out:
        raise InputError("topk: give at least one value (e.g. 1000,all)")
    return out


def _label_words(labels, n_codes: int, name: str, codes_name: str):
    """Labels → (uint64 words, single_label, n_classes). Class indices (n,) or multi-hot (n, C)."""
    arr = np.asarray(labels)
    if arr.ndim not in (1, 2):
        raise InputError(f"{name}: expected class indices (n,) or multi-hot labels (n, C), got shape {arr.shape}")
    if arr.shape[0] != n_codes:
        raise InputError(f"{name}: {arr.shape[0]} labels for {n_codes} {codes_name}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: expected numeric labels, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise InputError(f"{name}: labels must be whole numbers (class indices or 0/1 multi-hot)")
    if arr.ndim == 1:
        if arr.size and arr.min() < 0:
            raise InputError(f"{name}: class indices must be non-negative, found {arr.min()}")
        words = arr.astype(np.uint64).reshape(-1, 1)
        n_classes = int(arr.max()) + 1 if arr.size else 0
        return np.ascontiguousarray(words), True, n_classes
    if arr.size and not ((arr == 0) | (arr == 1)).all():
        raise InputError(f"{name}: multi-hot labels must be 0/1 (found values in [{arr.min()}, {arr.max()}])")
    n, c = arr.shape
    packed = np.packbits(arr.astype(np.uint8), axis=1, bitorder="little")
    nbytes = max(8, ((packed.shape[1] + 7) // 8) * 8)
    padded = np.zeros((n, nbytes), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64).reshape(n, nbytes // 8), False, c


def _default_grid(n_db: int, cutoffs: list[int]) -> np.ndarray:
    steps = []
    base = 1
    while base <= n_db:
        steps.extend(v for v in (base, 2 * base, 5 * base) if v <= n_db)
        base *= 10
    return np.unique(np.array(steps + cutoffs + [n_db], dtype=np.int64))


def evaluate(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    topk=(1000, "all"),
    radius: int = 2,
    ties: str = "expected",
    skip_empty: bool = False,
    bits: int | None = None,
    graded: bool | None = None,
    curve_n=None,
) -> EvalResult:
    """Evaluate Hamming ranking of ``db_codes`` for each of ``query_codes``.

    Codes: ``(n, bits)`` 0/1 or ±1 values, or packed ``uint8`` ``(n, ceil(bits/8))`` with
    ``bits`` given. Labels: class indices ``(n,)`` or multi-hot ``(n, C)``; an item is relevant
    to a query when they share a label. ``topk``: cutoffs R for mAP@R (and NDCG/ACG/weighted
    mAP@R); ``"all"`` means all N database items. ``ties``: ``"expected"`` (exact expectation
    over all orders of equal-distance items) or ``"index"`` (stable by database index).
    ``skip_empty``: average mAP@R only over queries that can have a relevant item in their top
    R (default: such queries score 0). ``graded``: report NDCG/ACG/weighted mAP (default: for
    multi-hot labels). ``curve_n``: the N values of the precision@N curve (default: 1, 2, 5,
    10, 20, 50, … up to N, plus the cutoffs).
    """
    import numba

    from hashlearn.codes._kernels import to_words
    from hashlearn.eval._kernels import evaluate_chunk

    if ties not in TIE_RULES:
        raise InputError(f"ties: expected one of {', '.join(TIE_RULES)}, got {ties!r}")
    q_packed, q_bits = as_packed(query_codes, bits, name="query codes")
    d_packed, d_bits = as_packed(db_codes, bits, name="database codes")
    if q_bits != d_bits:
        raise InputError(f"bit-length mismatch: query codes have {q_bits} bits, database codes have {d_bits}")
    n_query, n_db = len(q_packed), len(d_packed)
    if n_query == 0:
        raise InputError("query codes: no codes")
    if n_db == 0:
        raise InputError("database codes: no codes")
    q_lab, q_single, q_classes = _label_words(query_labels, n_query, "query labels", "query codes")
    d_lab, d_single, d_classes = _label_words(db_labels, n_db, "database labels", "database codes")
    if q_single != d_single:
        kinds = {True: "class indices (n,)", False: "multi-hot (n, C)"}
        raise InputError(
            f"label kinds differ: query labels are {kinds[q_single]}, database labels are {kinds[d_single]}"
        )
    if not q_single and q_classes != d_classes:
        raise InputError(
            f"label widths differ: query labels have {q_classes} classes, database labels have {d_classes}"
        )
    try:
        radius = int(radius)
    except (TypeError, ValueError):
        raise InputError(f"radius: expected a non-negative integer, got {radius!r}") from None
    if radius < 0:
        raise InputError(f"radius: expected a non-negative integer, got {radius}")
    if graded is None:
        graded = not q_single

    topk_list = parse_topk(topk)
    cut_of = {t: (n_db if t == "all" else min(int(t), n_db)) for t in topk_list}
    cutoffs = np.unique(np.array(list(cut_of.values()), dtype=np.int64))
    if curve_n is None:
        grid = _default_grid(n_db, [int(c) for c in cutoffs])
    else:
        grid = np.unique(np.clip(np.asarray([int(v) for v in curve_n], dtype=np.int64), 1, n_db))

    if q_single:
        max_r = 1
    else:
        max_r = int(min(np.bitwise_count(q_lab).sum(axis=1).max(), np.bitwise_count(d_lab).sum(axis=1).max()))
        max_r = max(max_r, 1)
    gain = np.exp2(np.arange(max_r + 1, dtype=np.float64)) - 1.0
    positions = np.arange(1, n_db + 1, dtype=np.float64)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / positions)])
    discount = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(1.0 + positions))])

    q_words, d_words = to_words(q_packed), to_words(d_packed)
    nb = q_bits + 1
    nc, ng = len(cutoffs), len(grid)
    ap = np.empty((n_query, nc))
    wap = np.empty((n_query, nc))
    ndcg = np.empty((n_query, nc))
    acg = np.empty((n_query, nc))
    has = np.empty((n_query, nc))
    rel_at = np.empty((n_query, ng))
    total_rel = np.empty(n_query, dtype=np.int64)
    radius_sums = np.zeros((3, nb))  # precision, recall, F1 summed over queries, per radius
    for start in range(0, n_query, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, n_query)
        cnt = np.empty((stop - start, nb), dtype=np.int64)
        rel = np.empty((stop - start, nb), dtype=np.int64)
        evaluate_chunk(
            q_words[start:stop],
            d_words,
            q_lab[start:stop],
            d_lab,
            q_single,
            ties == "expected",
            gain,
            cutoffs,
            grid,
            harmonic,
            discount,
            ap[start:stop],
            wap[start:stop],
            ndcg[start:stop],
            acg[start:stop],
            has[start:stop],
            rel_at[start:stop],
            cnt,
            rel,
            numba.get_num_threads(),
        )
        retrieved = np.cumsum(cnt, axis=1)
        relevant = np.cumsum(rel, axis=1)
        n_rel = relevant[:, -1:]
        total_rel[start:stop] = n_rel[:, 0]
        prec = np.divide(relevant, retrieved, out=np.zeros(retrieved.shape), where=retrieved > 0)
        recall = np.divide(relevant, n_rel, out=np.zeros(relevant.shape), where=n_rel > 0)
        denom = prec + recall
        f1 = np.divide(2 * prec * recall, denom, out=np.zeros(denom.shape), where=denom > 0)
        radius_sums += np.stack([prec.sum(0), recall.sum(0), f1.sum(0)])

    col = {int(c): i for i, c in enumerate(cutoffs)}
    map_at, wmap_at, ndcg_at, acg_at, scored = {}, {}, {}, {}, {}
    for t in topk_list:
        i = col[cut_of[t]]
        mask = has[:, i] > 0 if skip_empty else np.ones(n_query, dtype=bool)
        scored[t] = int(mask.sum())
        map_at[t] = float(ap[mask, i].mean()) if mask.any() else 0.0
        wmap_at[t] = float(wap[mask, i].mean()) if mask.any() else 0.0
        ndcg_at[t] = float(ndcg[:, i].mean())
        acg_at[t] = float(acg[:, i].mean())
    precision_n = rel_at.mean(0) / grid
    recall_n = np.divide(rel_at, total_rel[:, None], out=np.zeros(rel_at.shape), where=total_rel[:, None] > 0).mean(0)
    pr_precision, pr_recall, pr_f1 = radius_sums / n_query
    r_idx = min(radius, q_bits)
    return EvalResult(
        bits=q_bits,
        n_query=n_query,
        n_db=n_db,
        ties=ties,
        skip_empty=bool(skip_empty),
        relevance="same class" if q_single else "share at least one label",
        multi_label=not q_single,
        graded=bool(graded),
        topk=topk_list,
        cutoffs={t: cut_of[t] for t in topk_list},
        radius=radius,
        map=map_at,
        queries_scored=scored,
        wmap=wmap_at if graded else {},
        ndcg=ndcg_at if graded else {},
        acg=acg_at if graded else {},
        precision_radius=float(pr_precision[r_idx]),
        recall_radius=float(pr_recall[r_idx]),
        f1_radius=float(pr_f1[r_idx]),
        pr_radii=np.arange(nb),
        pr_precision=pr_precision,
        pr_recall=pr_recall,
        pr_f1=pr_f1,
        curve_n=grid,
        precision_at_n=precision_n,
        recall_at_n=recall_n,
        per_query_ap={t: ap[:, col[cut_of[t]]].copy() for t in topk_list},
        queries_without_relevant=int((total_rel == 0).sum()),
    )


def mean_average_precision(
    query_codes, db_codes, query_labels, db_labels, topk=(1000, "all"), ties="expected", skip_empty=False, bits=None
) -> dict:
    """mAP@R for each R of ``topk``: ``{R: value}`` (``R`` an int or ``"all"``)."""
    res = evaluate(
        query_codes,
        db_codes,
        query_labels,
        db_labels,
        topk=topk,
        ties=ties,
        skip_empty=skip_empty,
        bits=bits,
        graded=False,
    )
    return dict(res.map)


def precision_at_n(query_codes, db_codes, query_labels, db_labels, n=(100, 1000), ties="expected", bits=None):
    """Mean precision@N and recall@N: ``(N array, precision array, recall array)``."""
    res = evaluate(
        query_codes,
        db_codes,
        query_labels,
        db_labels,
        topk=("all",),
        ties=ties,
        bits=bits,
        graded=False,
        curve_n=np.atleast_1d(n),
    )
    return res.curve_n, res.precision_at_n, res.recall_at_n


def evaluate_per_class(query_codes, db_codes, query_labels, db_labels, n=(10,), topk=("all",), ties="expected",
                       bits=None, class_names=None) -> list[dict]:
    """The evaluator on each class's queries: one row per class that has queries, ``{"class",
    "queries", "P@<n>" for each n, "mAP@<R>" for each R}`` (class ids ``(n,)``: the queries of that
    class; multi-hot ``(n, C)``: the queries carrying label ``c``). Every figure is
    :func:`evaluate` run on that class's queries against the whole database, so a small class's
    precision is not averaged away by the large ones."""
    q_lab = np.asarray(query_labels)
    n_values = [int(v) for v in np.atleast_1d(n)]
    if q_lab.ndim == 1:
        classes = [int(c) for c in np.unique(q_lab)]
        members = {c: np.flatnonzero(q_lab == c) for c in classes}
    else:
        classes = [c for c in range(q_lab.shape[1]) if (q_lab[:, c] > 0).any()]
        members = {c: np.flatnonzero(q_lab[:, c] > 0) for c in classes}
    q_codes = np.asarray(query_codes)
    rows = []
    for c in classes:
        idx = members[c]
        res = evaluate(q_codes[idx], db_codes, q_lab[idx], db_labels, topk=topk, ties=ties, bits=bits,
                       graded=False, curve_n=n_values)
        name = class_names[c] if class_names is not None else c
        row = {"class": name, "queries": int(len(idx))}
        for value, precision in zip(res.curve_n.tolist(), res.precision_at_n.tolist(), strict=True):
            if value in n_values:
                row[f"P@{value}"] = float(precision)
        row.update({f"mAP@{t}": float(v) for t, v in res.map.items()})
        rows.append(row)
    return rows


def precision_recall_curve(query_codes, db_codes, query_labels, db_labels, bits=None):
    """Mean precision and recall within Hamming radius r for r = 0..bits: ``(radii, precision, recall)``."""
    res = evaluate(query_codes, db_codes, query_labels, db_labels, topk=("all",), bits=bits, graded=False)
    return res.pr_radii, res.pr_precision, res.pr_recall


def radius_metrics(query_codes, db_codes, query_labels, db_labels, radius=2, bits=None) -> dict:
    """Mean precision, recall and F1 within Hamming ``radius``: ``{"precision", "recall", "f1"}``."""
    res = evaluate(
        query_codes, db_codes, query_labels, db_labels, topk=("all",), radius=radius, bits=bits, graded=False
    )
    return {"precision": res.precision_radius, "recall": res.recall_radius, "f1": res.f1_radius}


def ndcg_at(query_codes, db_codes, query_labels, db_labels, p=(100, 1000), ties="expected", bits=None) -> dict:
    """Mean NDCG@p (gain ``2^r - 1``, discount ``log2(1 + n)``, r = shared labels): ``{p: value}``."""
    res = evaluate(query_codes, db_codes, query_labels, db_labels, topk=p, ties=ties, bits=bits, graded=True)
    return dict(res.ndcg)


def acg_at(query_codes, db_codes, query_labels, db_labels, p=(100, 1000), ties="expected", bits=None) -> dict:
    """Mean ACG@p (average number of shared labels in the top p): ``{p: value}``."""
    res = evaluate(query_codes, db_codes, query_labels, db_labels, topk=p, ties=ties, bits=bits, graded=True)
    return dict(res.acg)


def weighted_map(
    query_codes, db_codes, query_labels, db_labels, topk=("all",), ties="expected", skip_empty=False, bits=None
) -> dict:
    """Weighted mAP@R (AP with ``P@n`` replaced by ``ACG@n``): ``{R: value}``."""
    res = evaluate(
        query_codes,
        db_codes,
        query_labels,
        db_labels,
        topk=topk,
        ties=ties,
        skip_empty=skip_empty,
        bits=bits,
        graded=True,
    )
    return dict(res.wmap)


def chance_map(query_labels: np.ndarray, database_labels: np.ndarray, chunk: int = 1024) -> float:
    """The mAP@all of a random ranking, from the labels: the mean over queries of the expected AP
    of a uniformly random order of the database, ``E[AP] = a + H_N (1 − a) / N`` with
    ``a = (R − 1) / (N − 1)`` for a query with ``R ≥ 1`` relevant items among ``N`` (0 when
    ``R = 0``). About the fraction R/N of relevant items; it equals what
    :func:`hashlearn.eval.evaluate` gives for codes that are all equal (one tie, ``expected``).
    Relevance as the evaluator's: the same class, or a shared label for multi-hot labels."""
    q, d = np.asarray(query_labels), np.asarray(database_labels)
    n = len(d)
    if n == 0 or len(q) == 0:
        return 0.0
    if q.ndim == 1:
        classes, counts = np.unique(d, return_counts=True)
        lookup = dict(zip(classes.tolist(), counts.tolist(), strict=True))
        relevant = np.array([lookup.get(c, 0) for c in q.tolist()], dtype=np.float64)
    else:
        db = (d > 0).astype(np.float32)
        relevant = np.concatenate([((q[i:i + chunk] > 0).astype(np.float32) @ db.T > 0).sum(1)
                                   for i in range(0, len(q), chunk)]).astype(np.float64)
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    a = (relevant - 1) / max(n - 1, 1) if n > 1 else np.zeros_like(relevant)
    ap = np.where(relevant > 0, a + harmonic * (1 - a) / n, 0.0)
    return float(ap.mean())
