"""The package's structure, read with ``ast`` (nothing is imported): the Triton layer is a leaf, no
import cycles (imports inside functions count), no test module imports another, and every Python
file of the package stays within 450 lines."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450
# compiled from csrc/ by setup.py (present or not in a checkout): a module, not a name of the package
EXTENSION_MODULES = {"unet_fast._C"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(*tops: str, root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every .py file under these top-level directories."""
    return {module_name(p, root): p for top in tops for p in sorted((root / top).rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path], root: Path = ROOT) -> set[str]:
    """The modules of ``modules`` that ``path`` imports, anywhere in the file (inside functions too).

    ``from pkg import name`` counts as importing the submodule ``pkg.name`` when it is one of
    ``modules``, else ``pkg``; ``import a.b.c`` counts as importing ``a.b.c`` (Python runs the
    packages above it too, but those run first and are not what the line depends on)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules or submodule in EXTENSION_MODULES else base)
    return {name for name in found if name in modules}


def import_graph(*tops: str, root: Path = ROOT) -> dict[str, set[str]]:
    modules = python_files(*tops, root=root)
    return {name: imported_modules(path, modules, root) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_sees_function_level_and_from_imports(tmp_path):
    # the detector itself: a cycle only through an import inside a function, and a relative one
    package = tmp_path / "cyc"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyc import b\n")
    (package / "b.py").write_text("def f():\n    from .a import x\n")
    (package / "c.py").write_text("import cyc.a\n")
    graph = import_graph("cyc", root=tmp_path)
    assert graph["cyc.c"] == {"cyc.a"}
    assert find_cycle(graph) == ["cyc.a", "cyc.b", "cyc.a"]
    (package / "b.py").write_text("from cyc import c\n")
    assert find_cycle(import_graph("cyc", root=tmp_path)) == ["cyc.a", "cyc.b", "cyc.c", "cyc.a"]
    (package / "c.py").write_text("")
    assert find_cycle(import_graph("cyc", root=tmp_path)) is None


def test_no_import_cycle_in_the_package_and_benchmarks():
    cycle = find_cycle(import_graph("unet_fast", "benchmarks"))
    assert cycle is None, " -> ".join(cycle)


def test_the_triton_layer_imports_nothing_else_of_the_package():
    graph = import_graph("unet_fast")
    offending = {
        name: sorted(m for m in imports if not m.startswith("unet_fast.triton"))
        for name, imports in graph.items() if name.startswith("unet_fast.triton")
    }
    assert not {name: m for name, m in offending.items() if m}


def test_no_test_module_imports_another_test_module():
    modules = python_files("tests", "benchmarks")
    tests = {name for name, path in modules.items() if path.name.startswith("test_")}
    offending = {
        name: sorted(imports & tests)
        for name, path in modules.items() if (imports := imported_modules(path, modules)) & tests
    }
    assert not offending


def test_every_python_file_of_the_package_is_at_most_450_lines():
    long_files = {
        str(path.relative_to(ROOT)): count
        for path in sorted((ROOT / "unet_fast").rglob("*.py"))
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long_files, f"longer than {MAX_LINES} lines: {long_files}"
