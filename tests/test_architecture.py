"""The shape of the code, as the README's layout section draws it, checked on the source itself.

- Dependencies point one way: ``contract`` at the bottom; ``ml`` and ``promotion`` above it
  (neither imports the other); ``bentos`` beside them, importing only ``contract`` and ``ml``
  (never the gate, git or forge code); the ``primer`` shell on top, imported by nothing.
- No import cycle between modules.
- No function in product code over 60 lines.
- Only ``contract/settings.py`` reads the environment.
- docs/configuration.md is what the settings classes generate.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from contract.settings import reference_markdown

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("contract", "ml", "promotion", "bentos", "primer")
# What each package may import from the project, besides itself.
ALLOWED = {
    "contract": set(),
    "ml": {"contract"},
    "promotion": {"contract"},
    "bentos": {"contract", "ml"},
    "primer": {"contract", "ml", "promotion"},
}
MAX_FUNCTION_LINES = 60
SETTINGS_MODULE = "contract/settings.py"


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            out[name] = path
    return out


def _project_imports(path: Path) -> set[str]:
    """Project modules ``path`` imports, at any depth (lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _project_imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_packages_import_only_what_the_layout_allows() -> None:
    wrong = []
    for name, imports in _graph().items():
        package = name.split(".")[0]
        for target in imports:
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against the layout:\n" + "\n".join(sorted(wrong))


def test_the_service_imports_neither_gate_git_forge_nor_the_shell() -> None:
    graph = _graph()
    reached, todo = set(), ["bentos.service"]
    while todo:  # everything the service can import, transitively
        mod = todo.pop()
        if mod not in reached:
            reached.add(mod)
            todo.extend(graph.get(mod, ()))
    assert reached >= {"bentos.runtime", "contract.pin", "ml.features"}, "the walk did not follow imports"
    assert not {m for m in reached if m.split(".")[0] in ("promotion", "primer")}


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_function_in_product_code_is_over_60_lines() -> None:
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def _reads_environment(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb", "putenv") \
                and isinstance(node.value, ast.Name) and node.value.id == "os":  # not psutil's Process.environ()
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and \
                {a.name for a in node.names} & {"environ", "getenv", "environb"}:
            lines.append(node.lineno)
    return lines


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = []
    for path in _modules().values():
        if path.relative_to(REPO).as_posix() == SETTINGS_MODULE:
            continue
        readers += [f"{path.relative_to(REPO)}:{line}" for line in _reads_environment(ast.parse(path.read_text()))]
    assert not readers, f"environment read outside {SETTINGS_MODULE}:\n" + "\n".join(readers)


def test_the_environment_check_sees_a_read() -> None:
    """The check above would pass on anything if it could not see a read."""
    assert _reads_environment(ast.parse("import os\nos.environ.get('X')\n")) == [2]
    assert _reads_environment(ast.parse("import os\nos.getenv('X')\n")) == [2]
    assert _reads_environment(ast.parse("from os import getenv\n")) == [1]
    assert _reads_environment(ast.parse((REPO / SETTINGS_MODULE).read_text()))


@pytest.mark.parametrize("doc", ["docs/configuration.md"])
def test_configuration_reference_is_generated_from_the_settings(doc: str) -> None:
    path = REPO / doc
    assert path.read_text() == reference_markdown(), (
        f"{doc} is out of date: run `python -m contract.settings > {doc}`")


def test_every_public_error_class_has_the_one_root() -> None:
    """The CLI prints a PrimerError as one `error:` line; an error class outside the root would be a traceback."""
    import importlib
    import inspect

    from contract.errors import PrimerError

    found = []
    for name in _modules():
        if name == "bentos.service":  # routes only; importing it builds the BentoML service
            continue
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, Exception) and not cls_name.startswith("_"):
                found.append(cls)
    assert len(found) >= 15, "the walk found too few error classes"
    assert [c.__qualname__ for c in found if not issubclass(c, PrimerError)] == []
