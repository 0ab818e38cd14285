"""Config files (experiments/*.py): Python files with `get_config(variant)` returning an
`ml_collections.ConfigDict`, read by path (they are not a package)."""

from __future__ import annotations

import importlib.util
import pathlib


def load_module(path):
    """The config file at `path` as a module (not registered in sys.modules); a config
    that extends another loads it with `load_module(Path(__file__).with_name(...))`."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_wsl_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(path, variant: str | None = None):
    """`get_config(variant)` of the config file at `path` (default variant when None)."""
    module = load_module(path)
    return module.get_config() if variant is None else module.get_config(variant)
