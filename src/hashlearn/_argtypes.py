"""argparse ``type=`` functions the ``commands.py`` modules share (standard library only, as they are).

A value outside its range is a one-line usage error: argparse names the option, the function says
what was expected and what was given.
"""

from __future__ import annotations

import argparse
import math


def int_arg(lo: int, hi: int | None = None):
    """argparse type: an integer in [lo, hi] (no upper bound when ``hi`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"expected an integer {span}, got {text!r}")
        return value

    return parse


def positive_float_arg(hi: float | None = None):
    """argparse type: a finite number > 0 (and at most ``hi`` when it is given)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0 or (hi is not None and value > hi):
            span = f" and at most {hi:g}" if hi is not None else ""
            raise argparse.ArgumentTypeError(f"expected a finite number > 0{span}, got {text!r}")
        return value

    return parse
