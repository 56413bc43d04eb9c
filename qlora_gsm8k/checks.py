"""Range checks of params values: one line naming the key and what it got."""

from __future__ import annotations

from .errors import UserError


def check_positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise UserError(f"{name} must be > 0, got {value}")


def check_non_negative(name: str, value: int | float) -> None:
    if value < 0:
        raise UserError(f"{name} must be >= 0, got {value}")
