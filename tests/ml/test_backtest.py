"""``primer backtest``: the loop replayed in one process, through the real CLI, gate and policy file."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from primer.cli import main

GRID = """\
select_by: log_loss
validation_days: 120
fold_months: 6
candidates:
  - {name: climatology, family: climatology}
  - {name: logreg, family: logistic_regression, params: {C: 1.0}}
"""


def test_backtest_replays_decisions_and_writes_the_report(tmp_path: Path) -> None:
    """A planted signal a logistic regression learns: the first pin is the model, not climatology;
    every anchor gets a decision with its evidence; the report, its JSON and the PNG are written."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["backtest", "--source", "synthetic:5:1.0", "--from", "2010-01-04",
                                       "--to", "2010-02-26", "--every", "10", "--candidates", str(grid),
                                       "--eval-days", "250", "--train-years", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    decisions = report["decisions"]
    assert len(decisions) == 4 and decisions[0]["promoted"] and decisions[0]["challenger"] == "logreg"
    assert all("challenger_vs_climatology" in d["tests"] for d in decisions)
    assert all("challenger_vs_champion" in d["tests"] for d in decisions[1:])
    assert not any(d["promoted"] for d in decisions[1:])  # the same recipe never beats itself
    assert set(report["served"]) == {"gate", "every_challenger", "never_repromote", "climatology"}
    assert report["served_days"] == 40
    assert (out / "champion_timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| gate |" in (out / "report.md").read_text()
    assert "1 promotion(s) in 4 decisions; served 40 days" in result.output


def test_backtest_names_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["backtest", "--source", "synthetic:5", "--from", "2010-03-01", "--to", "2010-01-01"])
    assert result.exit_code == 2 and "--to is before --from" in result.output
    result = runner.invoke(main, ["backtest", "--source", f"csv:{tmp_path / 'none.csv'}", "--from", "2010-01-04",
                                  "--to", "2010-02-26"])
    assert result.exit_code == 1 and "error: CSV data file not found" in result.output
    result = runner.invoke(main, ["backtest", "--source", "synthetic:5", "--from", "1994-01-03", "--to", "1994-02-01",
                                  "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "walk-forward days" in result.output and "Traceback" not in result.output
