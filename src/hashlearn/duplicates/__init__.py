"""Near-duplicate search in a folder (``hashlearn duplicates``): :func:`find_duplicates` → a
:class:`DuplicateReport` (groups of files within a Hamming radius), shown as text, JSON or HTML.

Heavy imports (numpy, torch) happen on first use, so ``import hashlearn.duplicates`` is cheap.
"""

from __future__ import annotations

from hashlearn._lazy import lazy_exports

_EXPORTS = {
    "find_duplicates": "hashlearn.duplicates.find",
    "DuplicateReport": "hashlearn.duplicates.find",
    "Group": "hashlearn.duplicates.find",
    "group_codes": "hashlearn.duplicates.find",
    "list_images": "hashlearn.duplicates.find",
    "CodeCache": "hashlearn.duplicates.find",
    "html_page": "hashlearn.duplicates.report",
    "write_html": "hashlearn.duplicates.report",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
