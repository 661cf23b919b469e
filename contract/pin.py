"""The pin file ``promotion/model-version.yaml``: which model version serves.

Contract: ``model: spy-direction`` and ``version: <int>`` (or ``null`` before
the first promotion). Anything else is rejected with a message naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from contract.errors import PrimerError
from contract.names import MODEL_NAME
from contract.yaml_files import parse_model


class PinError(PrimerError, ValueError):
    """The pin file is missing or malformed; the message names the problem."""


class Pin(BaseModel):
    """``model: spy-direction`` and ``version: <int >= 1 | null>``, nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    version: int | None  # None: nothing promoted yet

    @field_validator("model", mode="before")
    @classmethod
    def _our_model(cls, value: Any) -> Any:
        if value != MODEL_NAME:
            raise ValueError(f"field 'model' is {value!r}, expected '{MODEL_NAME}'")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _whole_positive(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):  # bool is an int subclass: refuse it
            raise ValueError(f"field 'version' must be an integer or null, got {type(value).__name__} {value!r}")
        if value <= 0:
            raise ValueError(f"field 'version' must be >= 1, got {value}")
        return value

    @property
    def model_uri(self) -> str | None:
        return None if self.version is None else f"models:/{self.model}/{self.version}"


_MISSING = {
    "model": f"missing field 'model' (expected '{MODEL_NAME}')",
    "version": "missing field 'version' (an integer >= 1, or null)",
}


def parse_pin(text: str, source: str = "pin") -> Pin:
    """Validate pin YAML text; raise :class:`PinError` naming the problem."""
    return parse_model(Pin, text, source, PinError, missing=_MISSING,
                       empty=f"file is empty; expected 'model: {MODEL_NAME}' and 'version: <int or null>'")


def read_pin(path: str | Path) -> Pin:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PinError(f"{path}: pin file not found") from exc
    except UnicodeDecodeError as exc:
        raise PinError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return parse_pin(text, str(path))


# Written when the pin file does not exist yet; the comment is the human's manual.
PIN_TEMPLATE = f"""\
# Which registered MLflow model version serves. Git decides; MLflow's
# "champion" alias only mirrors this file.
#   promote:   primer promote <VERSION>   (or merge a promote/... pull request)
#   roll back: primer rollback            (or git revert the promoting commit)
model: {MODEL_NAME}
version: null
"""


def _yaml_rt() -> Any:
    """A round-trip YAML instance that keeps comments and writes ``null`` (not an empty value)."""
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.representer.add_representer(
        type(None), lambda rep, _data: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return rt


def render_pin(text: str | None, version: int | None, source: str = "pin") -> str:
    """Return ``text`` with ``version`` replaced, comments kept; validated by :func:`parse_pin`.

    ``text`` must itself be a valid pin (we never "repair" a broken file
    silently: a human should see what was wrong). ``None`` starts from the template.
    """
    import io

    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version <= 0):
        raise PinError(f"{source}: version must be an integer >= 1 or None, got {version!r}")
    base = PIN_TEMPLATE if text is None else text
    parse_pin(base, source)
    rt = _yaml_rt()
    data = rt.load(base)
    data["version"] = version
    buf = io.StringIO()
    rt.dump(data, buf)
    out = buf.getvalue()
    pin = parse_pin(out, source)  # the single validator also checks what we write
    if pin.version != version:  # pragma: no cover - guards a ruamel behaviour change
        raise PinError(f"{source}: writing version {version} produced {pin.version}")
    return out


def write_pin(path: str | Path, version: int | None) -> Pin:
    """Set ``version`` in the pin file at ``path`` (created from the template if missing)."""
    path = Path(path)
    text = path.read_text() if path.exists() else None
    out = render_pin(text, version, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out)
    return parse_pin(out, str(path))
