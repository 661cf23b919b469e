"""`primer data fetch`: the replay's history saved once and read back unchanged."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ml.data import load_prices
from primer.cli import main as primer
from tests.support import scrub_environ


def test_fetch_writes_a_history_that_reads_back_as_the_source_and_is_kept(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    scrub_environ(monkeypatch)
    monkeypatch.setenv("PRIMER_DATA_SOURCE", "synthetic:7")
    out = tmp_path / "history" / "spy-daily.csv"
    r = CliRunner().invoke(primer, ["data", "fetch", "--if-missing", "--out", str(out)])
    assert r.exit_code == 0, r.output
    source = load_prices("synthetic:7")
    cached = load_prices(f"csv:{out}")  # what the trainer reads (PRIMER_DATA_SOURCE=csv:PATH)
    pd.testing.assert_frame_equal(cached, source, check_dtype=False, atol=1e-4)
    assert f"{len(source)} daily bars" in r.output
    # Fetched once: a second run (every 5 minutes in the lab) keeps the file as it is.
    before = out.stat().st_mtime_ns
    monkeypatch.setenv("PRIMER_DATA_SOURCE", "synthetic:8")
    r = CliRunner().invoke(primer, ["data", "fetch", "--if-missing", "--out", str(out)])
    assert r.exit_code == 0 and "kept" in r.output and out.stat().st_mtime_ns == before
    # Without --if-missing it fetches again (a fresh history on purpose).
    r = CliRunner().invoke(primer, ["data", "fetch", "--out", str(out)])
    assert r.exit_code == 0 and out.stat().st_mtime_ns != before
    assert not list(out.parent.glob("*.part"))


def test_fetch_of_an_empty_source_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scrub_environ(monkeypatch)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    monkeypatch.setenv("PRIMER_DATA_SOURCE", f"csv:{empty}")
    out = tmp_path / "spy-daily.csv"
    r = CliRunner().invoke(primer, ["data", "fetch", "--out", str(out)])
    assert r.exit_code != 0 and "returned no daily bars" in r.output and not out.exists()
