"""Figures for evaluation results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _as_dict(results) -> dict:
    from hashlearn.eval.result import EvalResult

    return {"codes": results} if isinstance(results, EvalResult) else dict(results)


def plot_formats() -> list[str]:
    """File extensions a plot can be written as (matplotlib's Agg formats; ``pgf`` needs LaTeX)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"})


def check_plot_path(path, what: str = "plot") -> Path:
    """The file a plot will be written to: ``path``, or ``path.png`` when it has no extension.

    Raises :class:`InputError` for an extension matplotlib cannot write (listing the supported
    ones), for a folder, and for a place that cannot be written (read-only, no permission), so
    callers can check before a long computation.
    """
    from hashlearn.errors import InputError

    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    ext = path.suffix[1:].lower()
    formats = plot_formats()
    if ext not in formats:
        raise InputError(f"{what} {path}: unknown image format '.{ext}'; supported: {', '.join(formats)}")
    check_writable(path, what)
    return path


def check_writable(path, what: str) -> None:
    """Raise :class:`InputError` unless file ``path`` can be created or overwritten (its missing
    parent folders would be created)."""
    import os

    from hashlearn.errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path}: is a folder, not a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{what} {path}: {folder} is not a folder")
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK) or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: cannot write there ({folder} is read-only or not writable)")


def _save(fig, path) -> Path:
    from hashlearn.errors import InputError

    try:
        path = check_plot_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as exc:
        raise InputError(f"plot {path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        _pyplot().close(fig)
    return path


def _draw_curves(ax, results: dict, x: str, y: str, xlabel: str, ylabel: str, title: str) -> None:
    """One curve per method (``EvalResult`` attributes ``x`` and ``y``) on a precision axis from 0 to 1."""
    for name, res in results.items():
        ax.plot(getattr(res, x), getattr(res, y), marker=".", label=f"{name} ({res.bits} bits)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _draw_pr(ax, results: dict) -> None:
    _draw_curves(ax, results, "pr_recall", "pr_precision", "recall", "precision", "precision-recall over Hamming radii")
    ax.set_xlim(0, 1.02)


def _draw_pn(ax, results: dict) -> None:
    _draw_curves(ax, results, "curve_n", "precision_at_n", "N (top N retrieved)", "precision@N", "precision@N")
    ax.set_xscale("log")


def plot_pr_curves(results, path) -> Path:
    """Precision–recall curves over Hamming radii; ``results``: ``{method: EvalResult}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    _draw_pr(ax, _as_dict(results))
    return _save(fig, path)


def plot_precision_at_n(results, path) -> Path:
    """Precision@N curves; ``results``: ``{method: EvalResult}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    _draw_pn(ax, _as_dict(results))
    return _save(fig, path)


def plot_curves(results, path) -> Path:
    """Both panels (precision–recall over radii, precision@N) in one PNG, several methods."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    results = _as_dict(results)
    _draw_pr(ax1, results)
    _draw_pn(ax2, results)
    return _save(fig, path)


def _image(img) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # CHW → HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if lo < 0 or hi > 1:  # e.g. normalised tensors: rescale for display
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return arr


def _tile(ax, text: str) -> None:
    """A grey tile with ``text`` in its middle (an image that could not be shown)."""
    ax.imshow(np.full((8, 8), 0.8), cmap="gray", vmin=0, vmax=1)
    ax.text(3.5, 3.5, text, ha="center", va="center", fontsize=7, color="#333333", wrap=True)


def plot_query_results(
    query_images, result_images, correct, path, distances=None, titles=None, query_titles=None
) -> Path:
    """Draw each query (left) with its top-k results; correct results get a green border,
    wrong ones red.

    ``query_images``: ``nq`` images (HW, HWC or CHW); ``result_images``: ``nq`` rows of up to ``k``
    images (rows may be shorter: the rest stays blank). An image may be ``None`` (drawn as a grey
    tile labelled "missing") or a string (a grey tile labelled with it, e.g. "unreadable"); a
    ``None`` query is a grey tile labelled "no image". ``correct``: ``(nq, k)`` booleans, or
    ``None`` when relevance is unknown (neutral grey borders). ``distances``: optional Hamming
    distances printed under each result (rows as ``result_images``); ``titles``: optional text per
    result (e.g. its label), ``query_titles`` one per query."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    nq = len(query_images)
    rows = [list(result_images[i]) for i in range(nq)]
    if correct is not None:
        correct = np.asarray(correct, dtype=bool).reshape(nq, -1)
    k = correct.shape[1] if correct is not None else max((len(r) for r in rows), default=0)
    row_height = 1.8 if titles is None and query_titles is None else 2.2  # room for two-line titles
    fig, axes = plt.subplots(nq, k + 1, figsize=(1.6 * (k + 1), row_height * nq), squeeze=False)
    for i in range(nq):
        ax = axes[i, 0]
        if query_images[i] is None:
            _tile(ax, "no image")
        else:
            img = _image(query_images[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title("query" if query_titles is None else f"query\n{query_titles[i]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for j in range(k):
            ax = axes[i, j + 1]
            if j >= len(rows[i]):
                ax.axis("off")
                continue
            item = rows[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if item is None or isinstance(item, str):
                _tile(ax, "missing" if item is None else item)
                h, w = 8, 8
            else:
                img = _image(item)
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
                h, w = img.shape[:2]
            color = "#888888" if correct is None else ("#1a9641" if correct[i, j] else "#d7191c")
            ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor=color, linewidth=4))
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3)
            label = f"#{j + 1}"
            if distances is not None:
                label += f"  d={int(distances[i][j])}"
            if titles is not None and titles[i][j] not in (None, ""):
                label += f"\n{titles[i][j]}"
            ax.set_title(label, fontsize=7, color=color if correct is not None else "black")
    fig.tight_layout()
    return _save(fig, path)
