"""Name → constructor tables (timm-style registries).

Each kind of pluggable thing (datasets, protocols, backbones, methods) has one
:class:`Registry`, filled by a decorator where the thing is defined::

    METHODS = Registry("method")

    @METHODS.register("dpsh", paper="Li et al., IJCAI 2016")
    class DPSH(Method): ...

    METHODS.get("dpsh")          # the class
    METHODS.info("dpsh")["paper"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from hashlearn.errors import NotFoundError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._filled: set[str] = set()

    def register(self, name: str, **info: Any) -> Callable[[Any], Any]:
        key = name.lower()

        def decorator(obj: Any) -> Any:
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[key] = obj
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._info[key] = {"name": key, "summary": doc[0] if doc else "", **info}
            return obj

        return decorator

    def get(self, name: str) -> Any:
        key = name.lower()
        if key not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise NotFoundError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._items[key]

    def info(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._info[name.lower()])

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def fill_from_package(self, package: str, path: Any) -> Registry:
        """Import every module of ``package`` (its ``__path__`` is ``path``; names starting with ``_``
        excepted), once: each registers itself here, so adding an entry is adding one module."""
        if package not in self._filled:
            import importlib
            import pkgutil

            for info in pkgutil.iter_modules(path):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{package}.{info.name}")
            self._filled.add(package)
        return self
