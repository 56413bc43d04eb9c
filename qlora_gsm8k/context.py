"""What fits a model's context window (max_position_embeddings): torch-free, so check_params can ask it
before any model loads."""

from __future__ import annotations

from .errors import UserError


def model_context(model) -> int | None:
    """A model's (or a config's) context length, when its config names one."""
    config = getattr(model, "config", model)
    context = getattr(config, "max_position_embeddings", None)
    return context if isinstance(context, int) else None


def check_fits_context(
    context: int | None, lengths: list[int], what: str, fix: str = "shorten or drop them from the eval data"
) -> None:
    """Rows the model cannot attend over would be scored on garbage (and a 6,552-token prompt took 8x the time):
    refused, counted, before any of them runs."""
    if context is None:
        return
    too_long = [i for i, n in enumerate(lengths) if n > context]
    if too_long:
        longest = max(lengths)
        raise UserError(
            f"{len(too_long)} of {len(lengths)} eval rows do not fit the model's context of {context} tokens "
            f"({what}; the longest needs {longest}; rows {', '.join(map(str, too_long[:5]))}"
            f"{'…' if len(too_long) > 5 else ''} of the slice): {fix}"
        )
