"""Plain Python containers from the mappings and sequences a host hands over (e.g. OmegaConf's)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["to_plain"]


def to_plain(value: Any) -> Any:
    """Mappings and sequences (e.g. OmegaConf containers from a Hydra config) as dicts and lists, recursively.

    Strings and bytes, and anything that is neither a mapping nor a sequence, are returned as they are.
    """
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [to_plain(v) for v in value]
    return value
