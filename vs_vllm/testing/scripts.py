"""The repository's scripts (benchmarks/, not part of the package) imported as modules, once per process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["load_script"]


def load_script(path: str | Path, name: str) -> ModuleType:
    """The script at ``path`` as module ``name``, executed on first use and then taken from ``sys.modules`` (where
    dataclasses look their module up while the script runs)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path} as a module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
