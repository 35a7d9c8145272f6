"""The house rules that the code's layout must keep: no import circle among the project's packages, no
import that runs back up a floor (textexplain < data < lstmvis < server), and command lines in their own
room (no argparse or print in the textexplain library).

Every import counts, also one inside a function, and a module named in a string where ``importlib`` loads
modules by name; an import under ``if TYPE_CHECKING:`` does not (it never runs), nor a package's
``__init__`` importing its own children.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["textexplain", "data", "lstmvis", "server"]  # from the bottom: a floor imports only those below it


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages in ``FLOORS``."""
    found = {}
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (a ``from x import y`` counts ``x.y`` when it is a module)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    if "importlib" in out:  # modules loaded by name (importlib.import_module("server.x")) are imports too
        out |= {n.value for n in _runtime_nodes(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {t for t in out if t in known and t != name and not (is_package and t.startswith(name + "."))}


def import_graph() -> dict[str, set[str]]:
    known = project_modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per back edge of a depth-first walk (``a -> b -> a``)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif not state.get(v):
                visit(v)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if not state.get(u):
            visit(u)
    return found


def floor_of(module: str) -> int:
    return FLOORS.index(module.split(".")[0])


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_runs_up_a_floor():
    upward = [f"{a} -> {b}" for a, targets in sorted(import_graph().items()) for b in sorted(targets)
              if floor_of(b) > floor_of(a)]
    assert not upward, f"imports from a lower floor to a higher one ({' < '.join(FLOORS)}):\n" + "\n".join(upward)


def test_the_checks_see_circles_and_upward_imports():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    known = project_modules()
    render = imports_of("textexplain.render", known["textexplain.render"], known)
    assert "textexplain.explanation" not in render  # under TYPE_CHECKING: not a runtime arrow
    explanation = imports_of("textexplain.explanation", known["textexplain.explanation"], known)
    assert "textexplain.render" in explanation  # inside a method: counted
    assert floor_of("server.app") > floor_of("lstmvis.store") > floor_of("data.provider") > floor_of("textexplain")


LIBRARY = [p for package in ("textexplain", "lstmvis", "server") for p in sorted((ROOT / package).rglob("*.py"))
           if "cli" not in p.relative_to(ROOT).parts and p.relative_to(ROOT).as_posix() != "server/cli.py"]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_libraries_have_no_argparse_and_print_nothing(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    prints = [n.lineno for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
    assert "argparse" not in imported, "argparse belongs in a command line module (lstmvis/cli/, textexplain/cli/, server/cli.py)"
    assert not prints, f"print() on lines {prints}: the command line prints, the library returns"


PACKAGES = ["lstmvis", "lstmvis.capture", "lstmvis.cli", "textexplain", "textexplain.image", "textexplain.cli", "server",
            "data"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_shadowed_by_a_name_of_its_package(package):
    """``lstmvis.extract`` once named both a function and a module: a module is reached by its name only."""
    import importlib
    import pkgutil
    import types

    pkg = importlib.import_module(package)
    shadowed = [f"{package}.{name} is a {type(getattr(pkg, name)).__name__}"
                for _, name, _ in pkgutil.iter_modules(pkg.__path__)
                if not isinstance(getattr(pkg, name, types), types.ModuleType)]
    assert not shadowed, "a package attribute hides its submodule of the same name: " + "; ".join(shadowed)
