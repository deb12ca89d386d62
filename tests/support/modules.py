"""Load a script's module by its path (benchmarks share code without putting bench/ on sys.path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any


def load_by_path(path: Path, name: str) -> Any:
    """Import the file at ``path`` as module ``name`` (a folder that is never on sys.path,
    where a script's name could shadow a standard library module)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
