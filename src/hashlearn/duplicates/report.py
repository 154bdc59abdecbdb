"""How a :class:`~hashlearn.duplicates.find.DuplicateReport` is shown: plain text, and a self-contained HTML
page (thumbnails embedded as base64 JPEG, no external file or script)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from hashlearn.duplicates.find import DuplicateReport
from hashlearn.errors import InputError

#: the longest side of an HTML thumbnail, in pixels
THUMB_PX = 160
#: unreadable files named one by one before "... and N more"
SHOW_SKIPPED = 10


def summary_lines(report: DuplicateReport) -> list[str]:
    """What was searched, with what, and what could not be read (for stderr)."""
    lines = [f"{len(report.files)} images in {report.folder} encoded with model {report.model} "
             f"({report.method}, {report.bits} bits; {report.encoded} new, {report.cached} from the cache), "
             f"threshold {report.threshold} bits"]
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} unreadable file{'s' if len(report.skipped) != 1 else ''}:")
        lines += [f"  {p}: {r}" for p, r in report.skipped[:SHOW_SKIPPED]]
        if len(report.skipped) > SHOW_SKIPPED:
            lines.append(f"  ... and {len(report.skipped) - SHOW_SKIPPED} more (--json lists them all)")
    if report.subfolders_not_searched:
        lines.append(f"{report.subfolders_not_searched} subfolder(s) not searched (add --recursive)")
    return lines


def text_lines(report: DuplicateReport) -> list[str]:
    """The groups as plain text: one header line per group, then one indented path per line."""
    n_images = sum(len(g.members) for g in report.groups)
    if not report.groups:
        return [f"no near-duplicates within {report.threshold} bits among {len(report.files)} images"]
    lines = [f"{len(report.groups)} group{'s' if len(report.groups) != 1 else ''} of near-duplicates "
             f"({n_images} of {len(report.files)} images) within {report.threshold} bits:"]
    for number, group in enumerate(report.groups, 1):
        lines += ["", f"group {number}: {len(group.members)} images, up to {group.max_distance} bits from the first"]
        for member, dist in zip(group.members, group.distances, strict=True):
            lines.append(f"  {report.files[member]}" + (f"  (distance {dist})" if member != group.members[0] else ""))
    return lines


def check_html_path(path, report_files: list[Path] | None = None) -> Path:
    """Refuse, before any work, an ``--html`` path that cannot be written or that is not ``.html``/``.htm``."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--html {path}: the report file must end in .html or .htm")
    if path.is_dir():
        raise InputError(f"--html {path} is a folder; name the report file (e.g. {path}/duplicates.html)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"--html {path}: folder {parent} does not exist")
    return path


def _thumbnail(path: Path) -> str | None:
    """A base64 JPEG thumbnail decoded by the one decoder (EXIF orientation applied), or None."""
    from PIL import Image

    from hashlearn.data import read_image
    from hashlearn.errors import HashlearnError

    try:
        array = read_image(path)
    except HashlearnError:
        return None
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode("ascii")


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.6em; }
.group { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 170px; } figure img { max-width: 160px; max-height: 160px; display: block; }
figcaption { font-size: 0.8em; word-break: break-all; } .missing { width: 160px; height: 120px; background: #ccc; }
.meta { color: #555; font-size: 0.9em; }
"""


def html_page(report: DuplicateReport) -> str:
    """The report as one HTML page; every path and message is escaped."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Near-duplicates in {esc(str(report.folder))}</title>",
             f"<style>{PAGE_STYLE}</style></head><body>",
             f"<h1>Near-duplicates in {esc(str(report.folder))}</h1>",
             '<p class="meta">' + "<br>".join(esc(line) for line in summary_lines(report)) + "</p>"]
    if not report.groups:
        parts.append(f"<p>{esc(text_lines(report)[0])}</p>")
    for number, group in enumerate(report.groups, 1):
        parts.append(f"<h2>Group {number}: {len(group.members)} images, up to {group.max_distance} bits "
                     f"from the first</h2>")
        parts.append('<div class="group">')
        for member, dist in zip(group.members, group.distances, strict=True):
            rel = report.files[member]
            thumb = _thumbnail(report.folder / rel)
            img = (f'<img alt="{esc(rel)}" src="data:image/jpeg;base64,{thumb}">' if thumb
                   else '<div class="missing">unreadable now</div>')
            parts.append(f"<figure>{img}<figcaption>{esc(rel)}<br>distance {dist}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(report: DuplicateReport, path) -> Path:
    from hashlearn._atomic import atomic_write_text

    return atomic_write_text(check_html_path(path), html_page(report))
