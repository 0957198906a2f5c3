"""'Did you mean …?' hints for unknown config and preset keys."""

from __future__ import annotations

import difflib
import typing

from pydantic import BaseModel


def _submodel(annotation) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed beside the last element of ``loc`` (a pydantic error location)."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return []
        current = _submodel(current.model_fields[part].annotation)
    return list(current.model_fields) if current is not None else []


def did_you_mean(model: type[BaseModel], loc: tuple) -> str:
    """`` (did you mean 'chunk_size'?)`` for a misspelled key, or an empty string."""
    key = str(loc[-1]) if loc else ""
    close = difflib.get_close_matches(key, known_keys(model, loc), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
