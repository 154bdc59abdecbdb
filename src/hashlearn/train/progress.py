"""Progress output of training: bars only on a terminal, plain lines (one per epoch) in a log."""

from __future__ import annotations

import sys


def bars_enabled(progress: bool) -> bool:
    """Progress bars only when ``progress`` is on and stderr is a terminal; a log (stderr
    redirected to a file) gets the per-epoch lines only."""
    return bool(progress) and sys.stderr.isatty()


def progress_bar(iterable, enabled: bool, desc: str, **kw):
    """``iterable`` with a tqdm bar when ``enabled`` and stderr is a terminal, else itself."""
    if not bars_enabled(enabled):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, **kw)


def say(text: str, enabled: bool = True) -> None:
    """One line on stderr (above any bar)."""
    if enabled:
        print(text, file=sys.stderr, flush=True)
