"""kill -9 during ``compact`` and during ``index build``: the collection opens with exactly the codes
and metadata it had, and a killed build never leaves anything that blocks a rebuild.

The tests run a few bounded trials; ``python tests/test_index_crash.py --trials 20`` runs the
campaign whose figures docs/architecture.md quotes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from hashlearn.index.collection import Collection

BITS = 256
SRC = str(Path(__file__).resolve().parents[1] / "src")

COMPACTOR = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {src!r})
    import hashlearn.index.collection as collection
    collection.SEGMENT_MAX_BYTES = 64 * 1024  # many segments, each written and fsync'ed
    coll = collection.Collection.open(sys.argv[1])
    print("start", flush=True)
    coll.compact()
    print("done", flush=True)
    """
)

BUILDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {src!r})
    import numpy
    import hashlearn.index.collection as collection
    from hashlearn.cli import main
    collection.SEGMENT_MAX_BYTES = 256 * 1024
    print("start", flush=True)
    rc = main(["index", "build", "--codes", sys.argv[1], "--labels", sys.argv[2], "--out", sys.argv[3]])
    print("done", rc, flush=True)
    sys.exit(rc)
    """
)


def codes_for(ids) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)[:, None]
    bits = ((ids * 2654435761 + np.arange(BITS) * 40503) >> 7) & 1
    return np.packbits(bits.astype(np.uint8), axis=1)


def _state(path: Path):
    with Collection.open(path) as coll:
        packed, ids = coll.read()
        meta = coll.metadata(ids)
        sound = coll.verify()["sound"]
        segs = [r[0] for r in coll._conn.execute("SELECT seg FROM segments")]
    return packed, ids, meta, sound, segs


def _run_until(script: Path, args: list[str], delay: float) -> tuple[bool, float]:
    """Start ``script``, wait for its ``start`` line (its imports done), then at most ``delay`` seconds,
    then kill -9 it. Returns (whether it finished before the kill, seconds from ``start`` to the end)."""
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.strip() == "start", first
    t0 = time.monotonic()
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    return "done" in out, time.monotonic() - t0


def compact_campaign(tmp: Path, trials: int, deadline_s: float, seed: int = 0) -> dict:
    """Kill ``compact`` at random moments; after each kill the collection must open with exactly
    the codes and metadata it had, and verify as sound."""
    path = tmp / "coll"
    coll = Collection.create(path, BITS)
    rng = np.random.default_rng(seed)
    nxt = 0
    for _ in range(40):  # 40 adds, 1/4 of the codes removed: 30,000 live codes of 32 bytes
        n = 1000
        ids = np.arange(nxt, nxt + n)
        coll.add(codes_for(ids), ids=ids, paths=[f"img{i}.jpg" for i in ids], labels=[str(i % 10) for i in ids])
        nxt += n
    coll.remove(rng.choice(nxt, nxt // 4, replace=False))
    coll.close()
    want_packed, want_ids, want_meta, sound, _ = _state(path)
    assert sound
    script = tmp / "compactor.py"
    script.write_text(COMPACTOR.format(src=SRC))
    finished, span = _run_until(script, [str(path)], 30.0)  # one full run: how long compaction takes
    assert finished
    stats = {
        "trials": 0,
        "opened": 0,
        "codes_lost": 0,
        "codes_changed": 0,
        "metadata_changed": 0,
        "killed_before_switch": 0,
        "killed_after_switch": 0,
        "finished": 0,
        "unsound": 0,
    }
    end = time.monotonic() + deadline_s
    while stats["trials"] < trials and time.monotonic() < end:
        before = _state(path)[4]
        finished, _ = _run_until(script, [str(path)], float(rng.uniform(0, span)))
        stats["trials"] += 1
        packed, ids, meta, sound, segs = _state(path)  # raises if it does not open
        stats["opened"] += 1
        stats["codes_lost"] += len(set(want_ids.tolist()) - set(ids.tolist()))
        stats["codes_changed"] += int(not (np.array_equal(ids, want_ids) and np.array_equal(packed, want_packed)))
        stats["metadata_changed"] += int(meta != want_meta)
        stats["unsound"] += int(not sound)
        if finished:
            stats["finished"] += 1
        elif segs == before:
            stats["killed_before_switch"] += 1
        else:
            stats["killed_after_switch"] += 1
    stats["compact_seconds"] = round(span, 2)
    return stats


def build_campaign(tmp: Path, trials: int, deadline_s: float, seed: int = 0) -> dict:
    """Kill ``index build`` at random moments; --out must then be absent or a whole collection, and
    the next build must succeed (removing the dead builds' temporary folders)."""
    n = 60_000
    np.save(tmp / "codes.npy", codes_for(np.arange(n)))
    (tmp / "labels.txt").write_text("\n".join(str(i % 10) for i in range(n)))
    out = tmp / "out"
    script = tmp / "builder.py"
    script.write_text(BUILDER.format(src=SRC))
    args = [str(tmp / "codes.npy"), str(tmp / "labels.txt"), str(out)]
    finished, span = _run_until(script, args, 30.0)
    assert finished and _state(out)[1].size == n
    shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    stats = {
        "trials": 0,
        "out_absent": 0,
        "out_complete": 0,
        "out_partial": 0,
        "finished": 0,
        "temp_folders_left": 0,
        "temp_folders_max": 0,
    }
    end = time.monotonic() + deadline_s
    while stats["trials"] < trials and time.monotonic() < end:
        finished, _ = _run_until(script, args, float(rng.uniform(0, span)))
        stats["trials"] += 1
        stats["finished"] += int(finished)
        temps = [p for p in tmp.iterdir() if p.name.startswith(".out.building-")]
        stats["temp_folders_left"] += int(bool(temps))
        stats["temp_folders_max"] = max(stats["temp_folders_max"], len(temps))
        if out.exists():
            packed, ids, meta, sound, _ = _state(out)
            whole = sound and np.array_equal(ids, np.arange(n)) and np.array_equal(packed, codes_for(ids))
            stats["out_complete" if whole else "out_partial"] += 1
            shutil.rmtree(out)  # the test's own: the next trial builds it again
        else:
            stats["out_absent"] += 1
    finished, _ = _run_until(script, args, 60.0)  # a build that is not killed: succeeds, cleans up
    stats["rebuild_ok"] = finished and _state(out)[1].size == n
    stats["temp_folders_after_rebuild"] = len([p for p in tmp.iterdir() if p.name.startswith(".out.building-")])
    stats["build_seconds"] = round(span, 2)
    return stats


def test_kill_minus_9_during_compact_keeps_exactly_the_codes_and_metadata(tmp_path):
    stats = compact_campaign(tmp_path, trials=6, deadline_s=20)
    assert stats["trials"] >= 3
    assert stats["opened"] == stats["trials"]
    assert stats["codes_lost"] == stats["codes_changed"] == stats["metadata_changed"] == stats["unsound"] == 0


def test_kill_minus_9_during_build_never_blocks_a_rebuild(tmp_path):
    stats = build_campaign(tmp_path, trials=5, deadline_s=20)
    assert stats["trials"] >= 3
    assert stats["out_partial"] == 0
    assert stats["temp_folders_max"] <= 1  # each build removes the dead ones' folders
    assert stats["rebuild_ok"] and stats["temp_folders_after_rebuild"] == 0


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "c").mkdir()
        (Path(d) / "b").mkdir()
        print(json.dumps({"compact": compact_campaign(Path(d) / "c", args.trials, args.deadline)}))
        print(json.dumps({"build": build_campaign(Path(d) / "b", args.trials, args.deadline)}))
