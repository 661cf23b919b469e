"""The pin file ``promotion/model-version.yaml``: which model version serves.

Contract: ``model: spy-direction`` and ``version: <int>`` (or ``null`` before
the first promotion). Anything else is rejected with a message naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from contract.errors import PrimerError
from contract.names import MODEL_NAME

ALLOWED_KEYS = ("model", "version")


class PinError(PrimerError, ValueError):
    """The pin file is missing or malformed; the message names the problem."""


@dataclass(frozen=True)
class Pin:
    model: str
    version: int | None  # None: nothing promoted yet

    @property
    def model_uri(self) -> str | None:
        return None if self.version is None else f"models:/{self.model}/{self.version}"


def parse_pin(text: str, source: str = "pin") -> Pin:
    """Validate pin YAML text; raise :class:`PinError` naming the problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PinError(f"{source}: YAML syntax error: {exc}") from exc
    if data is None:
        raise PinError(f"{source}: file is empty; expected 'model: {MODEL_NAME}' and 'version: <int or null>'")
    if not isinstance(data, dict):
        raise PinError(f"{source}: expected a mapping with 'model' and 'version', got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - set(ALLOWED_KEYS))
    if unknown:
        raise PinError(f"{source}: unknown key(s) {', '.join(unknown)}; only 'model' and 'version' are allowed")
    if "model" not in data:
        raise PinError(f"{source}: missing field 'model' (expected '{MODEL_NAME}')")
    if data["model"] != MODEL_NAME:
        raise PinError(f"{source}: field 'model' is {data['model']!r}, expected '{MODEL_NAME}'")
    if "version" not in data:
        raise PinError(f"{source}: missing field 'version' (an integer >= 1, or null)")
    version = data["version"]
    if version is not None:
        # bool is a subclass of int: reject it explicitly.
        if isinstance(version, bool) or not isinstance(version, int):
            kind = type(version).__name__
            raise PinError(f"{source}: field 'version' must be an integer or null, got {kind} {version!r}")
        if version <= 0:
            raise PinError(f"{source}: field 'version' must be >= 1, got {version}")
    return Pin(model=data["model"], version=version)


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
