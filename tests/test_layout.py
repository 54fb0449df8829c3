"""The code's shape stays one that people can live in: small modules, a thin CLI, packages that say
what belongs in them, and no import circle among the modules' top-level imports."""
from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "fusegpt"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SOURCE.rglob("*.py")}


def _top_level_imports(name: str) -> set[str]:
    """The fusegpt modules that `name` imports when it is imported (not those imported inside functions)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:  # a name may be a submodule
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


def test_no_module_is_over_400_lines_and_the_cli_is_under_250():
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lengths.items() if n > 400} == {}
    assert lengths["fusegpt.cli"] < 250


def test_every_package_says_what_belongs_in_it():
    packages = [name for name, path in MODULES.items() if path.name == "__init__.py"]
    assert len(packages) >= 9  # fusegpt and its data, evaluation, export, fusion, importance, methods, models, runtime, tuning
    assert [name for name in packages if not ast.get_docstring(ast.parse(MODULES[name].read_text()))] == []


def test_no_import_circle():
    graph = {name: _top_level_imports(name) for name in MODULES}
    assert graph["fusegpt.pipeline"] >= {"fusegpt.calibrate", "fusegpt.runtime.plan"}  # the parse sees imports
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
