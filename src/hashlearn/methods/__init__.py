"""Hashing methods, registered by name.

Each method lives in one module of this package and registers itself with
``@register_method("name", paper="...")``. Adding a method = adding one file: every
module here is imported by :func:`load_all`, so nothing outside ``methods/`` needs to know
a method by name.
"""

from __future__ import annotations

from hashlearn.registry import Registry

METHODS = Registry("method")
register_method = METHODS.register


def load_all() -> Registry:
    """Import every method module (deep ones import torch) and return the registry."""
    return METHODS.fill_from_package(__name__, __path__)


def get_method(name: str):
    """The class registered as ``name`` (loading all method modules first)."""
    return load_all().get(name)


__all__ = ["METHODS", "register_method", "load_all", "get_method"]
