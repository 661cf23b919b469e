"""The pin file ``promotion/model-version.yaml``: which model version serves.

Contract: ``model: spy-direction`` and ``version: <int>`` (or ``null`` before
the first promotion). Anything else is rejected with a message naming the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from promotion.names import MODEL_NAME, PIN_PATH

ALLOWED_KEYS = ("model", "version")


class PinError(ValueError):
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
            raise PinError(f"{source}: field 'version' must be an integer or null, got {type(version).__name__} {version!r}")
        if version <= 0:
            raise PinError(f"{source}: field 'version' must be >= 1, got {version}")
    return Pin(model=data["model"], version=version)


def read_pin(path: str | Path) -> Pin:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise PinError(f"{path}: pin file not found") from exc
    return parse_pin(text, str(path))


def repo_root() -> Path:
    """The repository the CLI works on: ``PRIMER_REPO_DIR``, else the git top level of the cwd, else the cwd."""
    env = os.environ.get("PRIMER_REPO_DIR")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for cand in (here, *here.parents):
        if (cand / ".git").exists():
            return cand
    return here


def default_pin_path() -> Path:
    """``PRIMER_PIN_FILE`` if set, else ``<repo>/promotion/model-version.yaml``."""
    env = os.environ.get("PRIMER_PIN_FILE")
    return Path(env) if env else repo_root() / PIN_PATH
