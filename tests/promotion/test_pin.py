"""The pin file: round-trip writing and `primer pin check` (schema + registry)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from contract.pin import PIN_TEMPLATE, PinError, parse_pin, read_pin, render_pin, write_pin
from primer.cli import PrimerGroup
from primer.promotion_commands import COMMANDS, EXIT_UNREACHABLE
from tests.promotion.conftest import Registry
from tests.support import free_port

CLI = PrimerGroup("primer", commands=list(COMMANDS))

HEADER = "# promote: primer promote N\n# keep this comment\n"

# (content, words the error message must contain)
MALFORMED = {
    "yaml_syntax": ("model: spy-direction\nversion: [1\n", "YAML syntax error"),
    "empty": ("", "empty"),
    "missing_model": ("version: 1\n", "missing field 'model'"),
    "wrong_model": ("model: other-model\nversion: 1\n", "field 'model' is 'other-model'"),
    "version_string": ("model: spy-direction\nversion: 'three'\n", "got str 'three'"),
    "version_float": ("model: spy-direction\nversion: 1.5\n", "got float 1.5"),
    "version_bool": ("model: spy-direction\nversion: true\n", "got bool True"),
    "version_zero": ("model: spy-direction\nversion: 0\n", "must be >= 1, got 0"),
    "version_negative": ("model: spy-direction\nversion: -2\n", "must be >= 1, got -2"),
    "unknown_key": ("model: spy-direction\nversion: 1\nstage: prod\n", "unknown key(s) stage"),
}


def test_write_pin_keeps_comments_and_validates(tmp_path: Path) -> None:
    pin = tmp_path / "model-version.yaml"
    pin.write_text(HEADER + "model: spy-direction\nversion: null  # set by primer\n")
    assert write_pin(pin, 7).version == 7
    text = pin.read_text()
    assert text.startswith(HEADER) and "version: 7" in text and "# set by primer" in text
    assert write_pin(pin, None).version is None
    assert "version: null" in pin.read_text()  # not an empty value
    for bad in (0, -1, True, 1.0, "2"):
        with pytest.raises(PinError, match="version"):
            write_pin(pin, bad)  # type: ignore[arg-type]
    assert read_pin(pin).version is None  # a refused write leaves the file alone


def test_render_pin_refuses_to_overwrite_a_broken_pin() -> None:
    with pytest.raises(PinError, match="unknown key"):
        render_pin("model: spy-direction\nversion: 1\nextra: 2\n", 3)
    assert parse_pin(render_pin(None, 4)).version == 4
    assert render_pin(None, None) == PIN_TEMPLATE


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_pin_check_rejects_malformed(case: str, tmp_path: Path, offline: None) -> None:
    content, words = MALFORMED[case]
    f = tmp_path / "pin.yaml"
    f.write_text(content)
    r = CliRunner().invoke(CLI, ["pin", "check", str(f)])
    assert r.exit_code == 1, r.output
    assert words in r.output and str(f) in r.output


def test_pin_check_names_a_pin_that_is_not_text(tmp_path: Path, offline: None) -> None:
    f = tmp_path / "pin.yaml"
    f.write_bytes(b"\xff\xfemodel: spy-direction\n")
    r = CliRunner().invoke(CLI, ["pin", "check", str(f)])
    assert r.exit_code == 1 and f"{f}: not UTF-8 text" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_pin_check_missing_file(tmp_path: Path, offline: None) -> None:
    r = CliRunner().invoke(CLI, ["pin", "check", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 1 and "pin file not found" in r.output


def test_pin_check_against_registry(tmp_path: Path, promo_mlflow: Registry, new_version: Callable[[], tuple[int, str]],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", promo_mlflow.uri)
    v, _ = new_version()
    f = tmp_path / "pin.yaml"
    f.write_text(render_pin(None, v))
    r = CliRunner().invoke(CLI, ["pin", "check", str(f), "--require-registry"])
    assert r.exit_code == 0, r.output
    assert f"spy-direction v{v} (exists in the registry)" in r.output

    f.write_text(render_pin(None, v + 1000))
    r = CliRunner().invoke(CLI, ["pin", "check", str(f)])
    assert r.exit_code == 1
    assert f"version {v + 1000} does not exist in registered model 'spy-direction'" in r.output

    f.write_text(PIN_TEMPLATE)  # null: valid, nothing to look up
    r = CliRunner().invoke(CLI, ["pin", "check", str(f)])
    assert r.exit_code == 0 and "nothing pinned yet" in r.output


def test_pin_check_registry_unreachable(tmp_path: Path, offline: None) -> None:
    f = tmp_path / "pin.yaml"
    f.write_text(render_pin(None, 3))
    r = CliRunner().invoke(CLI, ["pin", "check", str(f)])
    assert r.exit_code == 0, r.output
    assert "unreachable" in r.output and "registry not checked" in r.output
    r = CliRunner().invoke(CLI, ["pin", "check", str(f), "--require-registry"])
    assert r.exit_code == EXIT_UNREACHABLE and "unreachable" in r.output


def test_the_repository_pin_is_valid() -> None:
    pin = read_pin(Path(__file__).resolve().parents[2] / "promotion" / "model-version.yaml")
    assert pin.model == "spy-direction"


def test_primer_console_script_runs_pin_check(tmp_path: Path, offline: None) -> None:
    """The commands are registered on the real `primer` entry point."""
    import os
    import subprocess
    import sys

    f = tmp_path / "pin.yaml"
    f.write_text("model: spy-direction\nversion: 2\nowner: me\n")
    primer = Path(sys.executable).with_name("primer")
    r = subprocess.run([str(primer), "pin", "check", str(f)], capture_output=True, text=True, env=os.environ,
                       timeout=120)
    assert r.returncode == 1 and "unknown key(s) owner" in r.stderr
