"""Argument checks shared by the core modules (one wording for one rule)."""

from __future__ import annotations

import numbers

__all__ = ["whole_number"]


def whole_number(value: object, what: str) -> int:
    """``value`` as an int >= 1 (Python or numpy integers; bools, floats and strings refused).

    Raises:
        ValueError: ``"<what> must be a whole number >= 1, got <value>"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be a whole number >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be a whole number >= 1, got {value}")
    return int(value)
