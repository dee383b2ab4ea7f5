"""The house's rules, checked on the source: layers point one way, no cycles, small modules.

``cli -> demo -> trainer / eval / analysis / config / integrations -> rl, sampling, rewards,
data -> models, io``: a module may import its own layer's units (without a cycle between
units) or any layer below, never one above. ``docs/architecture.md`` draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "calmrl"

# Units, lowest layer first; a module belongs to the unit with the longest matching prefix.
LAYERS: list[list[str]] = [
    ["calmrl", "calmrl.io", "calmrl.models"],
    ["calmrl.data", "calmrl.rewards", "calmrl.sampling", "calmrl.rl"],
    [
        "calmrl.config",
        "calmrl.preflight",
        "calmrl.rl.trainer",
        "calmrl.eval",
        "calmrl.analysis",
        "calmrl.integrations",
    ],
    ["calmrl.demo"],
    ["calmrl.cli", "calmrl.__main__"],
]
MAX_LINES = 450


def unit_of(module: str) -> str | None:
    """The unit of a module; the bare package ``calmrl`` holds only its own ``__init__``."""
    units = [
        u
        for layer in LAYERS
        for u in layer
        if module == u or (u != "calmrl" and module.startswith(u + "."))
    ]
    return max(units, key=len) if units else None


def layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every calmrl module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("calmrl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("calmrl"):
            found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in SRC.rglob("*.py")}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Upward imports, modules outside every layer, and cycles between units of one layer."""
    problems = []
    unit_edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = unit_of(module)
        if source is None:
            problems.append(f"{module}: in no layer")
            continue
        for target in targets:
            destination = unit_of(target)
            if destination is None:
                problems.append(f"{module} -> {target}: target in no layer")
            elif layer_of(destination) > layer_of(source):
                problems.append(f"{module} -> {target}: imports a layer above it")
            elif destination != source:
                unit_edges.setdefault(source, set()).add(destination)
    problems += [f"cycle: {' -> '.join(c)}" for c in _cycles(unit_edges)]
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_layers_point_one_way_and_units_form_no_cycle():
    assert violations(import_graph()) == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"calmrl.rl.losses": {"calmrl.config"}}, "imports a layer above it"),
        ({"calmrl.models.loading": {"calmrl.sampling"}}, "imports a layer above it"),
        ({"calmrl.sampling.engine": {"calmrl.rl.losses"}}, "cycle"),
        ({"calmrl.extras": set()}, "in no layer"),
    ],
)
def test_the_contract_fails_on_an_upward_import_or_a_cycle(extra, expected):
    """The checker itself can fail: an upward import or a cycle added to the real graph."""
    graph = import_graph()
    for module, targets in extra.items():
        graph[module] = graph.get(module, set()) | targets
    assert any(expected in problem for problem in violations(graph))


def test_no_module_is_longer_than_the_limit():
    long = {
        module_name(p): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_code_cites_the_repository_not_outside_documents():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "DESIGN" not in text and "../shared" not in text, path


OPTIONAL_ENGINES = {"vllm", "trl", "verl", "peft", "tensorboard"}


ALL_MODULES = sorted(
    p.relative_to(SRC.parent).with_suffix("").as_posix().replace("/", ".")
    for p in SRC.rglob("*.py")
)


@pytest.mark.parametrize("module", ALL_MODULES)
def test_every_module_imports(module):
    """A name removed from one module cannot linger in another's imports: each module imports
    here, unless what it lacks is an optional engine of this venv."""
    import importlib

    name = module.removesuffix(".__init__")
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] not in OPTIONAL_ENGINES:
            raise
        pytest.skip(f"{name} needs {error.name}")
