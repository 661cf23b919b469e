"""Small YAML files in git (the pin, the gate policy, the candidate grid) as pydantic models.

Each file is a pydantic model with ``extra="forbid"``; :func:`parse_model` turns YAML
text into that model or raises the file's own error class with one message that names
the file and the field, in words a person editing the file can act on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from contract.errors import PrimerError

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], text: str, source: str, error: type[PrimerError],
                missing: dict[str, str] | None = None, empty: str | None = None) -> M:
    """``model`` validated from the YAML ``text`` of ``source``; ``error`` naming the problem otherwise.

    ``missing`` gives the message for a required field that is absent; ``empty`` the
    message for an empty file (default: "expected a mapping").
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{source}: YAML syntax error: {exc}") from exc
    if data is None and empty is not None:
        raise error(f"{source}: {empty}")
    if not isinstance(data, dict):
        fields = " and ".join(f"'{f}'" for f in model.model_fields if model.model_fields[f].is_required())
        raise error(f"{source}: expected a mapping{f' with {fields}' if fields else ' of fields'}, "
                    f"got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(model.model_fields))
    if unknown:
        allowed = ", ".join(f"'{f}'" for f in model.model_fields)
        raise error(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{source}: {describe(exc.errors()[0], missing or {})}") from None


def load_model(model: type[M], path: str | Path, error: type[PrimerError], what: str, **parse: Any) -> M:
    """:func:`parse_model` of the file at ``path``; a missing file is ``error`` naming it as ``what``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise error(f"{path}: {what} not found") from exc
    return parse_model(model, text, str(path), error, **parse)


def describe(err: Any, missing: dict[str, str]) -> str:
    """One pydantic error as a sentence: the field's own message from its validator when it has one."""
    loc = ".".join(str(part) for part in err.get("loc", ()))
    if err.get("type") == "missing":
        return missing.get(loc, f"missing field '{loc}'")
    if err.get("type") == "value_error":
        return str(err.get("ctx", {}).get("error", err.get("msg")))
    return f"{loc}: {err.get('msg', 'invalid value')}, got {err.get('input')!r}"


# Checks for the fields of these files, run before pydantic's coercion (``mode="before"``) so
# that YAML's ``true``, ``"5"`` or ``.nan`` are refused with a message naming the field.

def positive_int(field: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
    return value


def non_negative(field: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{field} must be a number >= 0, got {value!r}")
    return value


def one_sided_level(field: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 0.5:
        raise ValueError(f"{field} must be a number between 0 and 0.5, got {value!r}")
    return value
