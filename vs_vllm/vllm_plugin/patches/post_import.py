"""Run a callback right after a module is first imported (so a patch never forces an expensive import)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["run_after_import"]


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after ``name`` is executed, then removes itself."""

    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        original_exec = spec.loader.exec_module
        callback, finder = self.callback, self

        def exec_module(module):
            original_exec(module)
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            callback(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def run_after_import(name: str, callback: Callable[[Any], None]) -> None:
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    if not any(isinstance(f, _PostImportFinder) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder(name, callback))
