"""The package's floors, as docs/design.md ("Layers") states them: a module imports only from its
floor or below, two top-level modules of one floor import each other only where the design allows
it, nothing imports the command line, and no two modules import each other, even through others.

Every import counts: those inside functions, and ``importlib.import_module`` loads of srn modules.
The floors and the allowed same-floor imports are read from docs/design.md, the one place they are
written.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "srn"
DESIGN = ROOT / "docs" / "design.md"


def read_layers(text: str) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """The floor of every top-level module, and the allowed same-floor imports, from the
    "## Layers" section of docs/design.md."""
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    floors: dict[str, int] = {}
    allowed: set[tuple[str, str]] = set()
    current = None
    describing = False  # module names are the backticked words before the dash of the description
    for line in section.splitlines():
        numbered = re.match(r"(\d+)\. ", line)
        if numbered:
            current, describing = int(numbered.group(1)), False
        elif not line.startswith("   "):
            current = None
        if current is not None and not describing:
            for name in re.findall(r"`(srn(?:\.\w+)*)`", line.split(" — ")[0]):
                floors[name] = current
            describing = " — " in line
        arrow = re.match(r"- `(srn(?:\.\w+)*)` → (.*)", line)
        if arrow:
            for target in re.findall(r"`(srn(?:\.\w+)*)`", arrow.group(2)):
                allowed.add((arrow.group(1), target))
    return floors, allowed


FLOORS, ALLOWED = read_layers(DESIGN.read_text())


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str | None:
    """The top-level module of the floor table that ``module`` belongs to (the longest prefix)."""
    prefixes = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    return max(prefixes, key=len) if prefixes else None


def floor(module: str) -> int | None:
    owner = unit(module)
    return FLOORS[owner] if owner else None


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _calls_importlib(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__")


def imports_of(path: Path, module: str) -> set[str]:
    """The srn modules that ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    dynamic = False
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
                if _is_module(f"{target}.{alias.name}"):
                    found.add(f"{target}.{alias.name}")
        elif _calls_importlib(node):
            argument = node.args[0] if node.args else None
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                found.add(argument.value)
            else:
                dynamic = True
    if dynamic:
        # A load whose name is computed (a table of lazy exports, say): every string of the file
        # that names an srn module may be what it loads.
        found.update(
            node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("srn") and _is_module(node.value)
        )
    return {name for name in found if name == "srn" or name.startswith("srn.")}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        graph[module] = imports_of(path, module) - {module}
    return graph


GRAPH = import_graph()


def test_design_states_six_floors_and_every_name_is_a_module():
    assert sorted(set(FLOORS.values())) == [1, 2, 3, 4, 5, 6]
    assert [name for name in FLOORS if not _is_module(name)] == []
    assert [pair for pair in ALLOWED if not all(name in FLOORS for name in pair)] == []
    assert [(a, b) for a, b in ALLOWED if FLOORS[a] != FLOORS[b]] == [], "an allowed import must stay within a floor"


def test_every_module_has_a_floor():
    assert [m for m in GRAPH if floor(m) is None] == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    upward = sorted(t for t in GRAPH[module] if (floor(t) or 0) > floor(module))
    assert upward == [], f"{module} (floor {floor(module)}) imports from above: {upward}"


def same_floor_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    found = set()
    for module, targets in graph.items():
        for target in targets:
            a, b = unit(module), unit(target)
            if a and b and a != b and FLOORS[a] == FLOORS[b] and (a, b) not in ALLOWED:
                found.add((module, target))
    return sorted(found)


def test_no_same_floor_import_the_design_does_not_allow():
    assert same_floor_violations(GRAPH) == []


def test_nothing_imports_the_command_line():
    offenders = sorted(m for m, targets in GRAPH.items() if unit(m) != "srn.cli" and m != "srn.__main__" and any(t.startswith("srn.cli") for t in targets))
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


def test_the_checker_sees_planted_violations(tmp_path):
    # The checks above are only worth something if they can fail: a floor-1 module importing the
    # CLI lazily, a feature loading another feature of its floor through importlib, and a computed
    # importlib load are all found.
    planted = tmp_path / "srn" / "errors.py"
    planted.parent.mkdir()
    planted.write_text((PACKAGE / "errors.py").read_text() + "\n\ndef _planted():\n    from srn.cli.common import UserError\n")
    assert "srn.cli.common" in imports_of(planted, "srn.errors")
    assert floor("srn.cli.common") > floor("srn.errors")

    loader = tmp_path / "srn" / "media_planted.py"
    loader.write_text("import importlib\n\ndef _load():\n    return importlib.import_module('srn.evaluation.widerface')\n")
    found = imports_of(loader, "srn.media.planted")
    assert found == {"srn.evaluation.widerface"}
    assert same_floor_violations({"srn.media.planted": found}) == [("srn.media.planted", "srn.evaluation.widerface")]

    computed = tmp_path / "srn" / "computed.py"
    computed.write_text("import importlib\nTABLE = {'x': 'srn.engine.trainer'}\n\ndef f(k):\n    return importlib.import_module(TABLE[k])\n")
    assert imports_of(computed, "srn.computed") == {"srn.engine.trainer"}


def test_the_design_reader_reads_floors_and_arrows():
    text = "# x\n\n## Layers\n\n1. `srn.a`, `srn.b` — words `srn.c`.\n2. `srn.d`,\n   `srn.e` — more\n   `srn.f`.\n\n- `srn.a` → `srn.b`\n\n## Next\n1. `srn.z`\n"
    floors, allowed = read_layers(text)
    assert floors == {"srn.a": 1, "srn.b": 1, "srn.d": 2, "srn.e": 2}
    assert allowed == {("srn.a", "srn.b")}
