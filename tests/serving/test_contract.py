"""Contracts of the service that need no server: the /predict schema matches the features."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support import REPO_ROOT


def test_feature_row_schema_matches_feature_columns() -> None:
    from bentos.service import FeatureRow
    from ml.features import FEATURE_COLUMNS

    assert tuple(FeatureRow.model_fields) == FEATURE_COLUMNS


def test_service_module_import_is_light() -> None:
    """`bentoml serve`'s supervisor imports the module too: no numpy, pandas, MLflow or sklearn there."""
    code = ("import sys, bentos.service; "
            "print(sorted(m for m in ('numpy', 'pandas', 'mlflow', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ml_serve_does_not_import_bentos() -> None:
    """Dependencies point bentos -> ml: `primer serve` only runs bentoml as a subprocess."""
    code = ("import sys, primer.serve_command; "
            "print([m for m in sys.modules if m == 'bentos' or m.startswith('bentos.')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (lazy imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_project_dependencies_cover_every_package_the_service_code_imports() -> None:
    """The image installs the project's dependencies alone: a missing package only shows at run time
    (e.g. ml.data without tenacity: fresh features would never load, every answer stale)."""
    import tomllib
    from importlib.metadata import packages_distributions, requires

    from packaging.requirements import Requirement

    # The repository modules the service reaches, following imports from bentos/service.py.
    todo, seen, third_party = ["bentos.service"], set(), set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        for name in _imports(REPO_ROOT / (mod.replace(".", "/") + ".py")):
            top = name.split(".")[0]
            if top in ("bentos", "contract", "ml", "promotion", "primer"):
                if (REPO_ROOT / (name.replace(".", "/") + ".py")).is_file():
                    todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    dists = packages_distributions()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    listed = {Requirement(p).name.lower() for p in project["dependencies"]}
    # What a listed package itself requires is installed with it.
    provided = set(listed)
    for name in listed:
        provided.update(Requirement(r).name.lower() for r in requires(name) or () if "extra ==" not in r)
    provided = {p.replace("_", "-") for p in provided}
    missing = {top: dists.get(top) for top in third_party
               if not {d.lower().replace("_", "-") for d in dists.get(top, [top])} & provided}
    assert {"mlflow", "pandas", "tenacity", "yfinance"} <= third_party  # the walk reached ml.data and the loader
    assert not missing, f"pyproject.toml's dependencies lack {missing}"


def test_primer_serve_loads_no_pipeline_code_before_it_execs_bentoml() -> None:
    """`primer serve` resolves only its own subcommand: pandas, MLflow and git are not imported
    (they made the wrapper hold ~117 MB and slowed every cold start)."""
    code = ("import sys, click, primer.cli as c; "
            "c.main.get_command(click.Context(c.main), 'serve'); "
            "print(sorted(m for m in ('pandas', 'mlflow', 'git', 'sklearn', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
