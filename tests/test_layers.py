"""The package's floors (docs/design.md, "Layers"): a module imports only from its floor or below,
nothing imports the command line, and no two modules import each other, even through others.

Every import counts, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "srn"

# Module-name prefixes -> floor, lowest first. The longest matching prefix decides.
FLOORS: dict[str, int] = {
    "srn": 1,  # the package itself: __version__ and lazy re-exports only
    "srn.errors": 1,
    "srn.config": 1,
    "srn.atomic": 1,
    "srn.paths": 1,
    "srn.anchors": 1,
    "srn.box_coder": 1,
    "srn.matcher": 1,
    "srn.losses": 1,
    "srn.model": 2,
    "srn.data": 2,
    "srn.criterion": 3,
    "srn.postprocess": 3,
    "srn.weights": 3,
    "srn.inference": 4,
    "srn.engine": 5,
    "srn.export": 5,
    "srn.evaluation": 5,
    "srn.media": 5,
    "srn.analysis": 5,
    "srn.cli": 6,
    "srn.__main__": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int | None:
    prefixes = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    return FLOORS[max(prefixes, key=len)] if prefixes else None


def imports_of(path: Path, module: str) -> set[str]:
    """The srn modules that ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from srn.cli import detect` imports the submodule srn.cli.detect.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or (
                    PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py"
                ).is_file():
                    found.add(candidate)
    return {name for name in found if name == "srn" or name.startswith("srn.")}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        graph[module] = imports_of(path, module) - {module}
    return graph


GRAPH = import_graph()


def test_every_module_has_a_floor():
    assert [m for m in GRAPH if floor(m) is None] == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    upward = sorted(t for t in GRAPH[module] if (floor(t) or 0) > floor(module))
    assert upward == [], f"{module} (floor {floor(module)}) imports from above: {upward}"


def test_nothing_imports_the_command_line():
    offenders = sorted(m for m, targets in GRAPH.items() if floor(m) < 6 and any(t.startswith("srn.cli") for t in targets))
    assert offenders == []


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles of ``graph`` (module -> imported modules), each as the path that closes it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle():
    assert find_cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"srn.a": {"srn.b"}, "srn.b": {"srn.c"}, "srn.c": {"srn.a"}, "srn.d": {"srn.a"}}
    assert find_cycles(graph) == [["srn.a", "srn.b", "srn.c", "srn.a"]]


def test_the_checker_sees_a_planted_violation(tmp_path):
    # The checks above are only worth something if they can fail: a floor-1 module importing the
    # CLI is found as upward, and a lazy import inside a function counts.
    planted = PACKAGE / "errors.py"
    source = planted.read_text() + "\n\ndef _planted():\n    from srn.cli.common import UserError\n"
    copy = tmp_path / "srn" / "errors.py"
    copy.parent.mkdir()
    copy.write_text(source)
    found = imports_of(copy, "srn.errors")
    assert "srn.cli.common" in found
    assert floor("srn.cli.common") > floor("srn.errors")
