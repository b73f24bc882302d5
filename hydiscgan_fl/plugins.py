"""Users' extensions named 'package.module:NAME' (aggregation rules, MSA models, generators): one loader."""

from __future__ import annotations

import importlib


def is_import_path(name: str) -> bool:
    """True for 'package.module:NAME', the form every registry accepts besides its own entry names."""
    return ":" in name


def load_import_path(name: str, what: str) -> object:
    """The object NAME of module 'package.module'; a ValueError naming `what` (the config key) otherwise."""
    module_name, _, attribute = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{what} {name!r} cannot be imported: {err}") from None
