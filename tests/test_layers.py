"""The package's layering, read from its own imports (module-level and function-local alike).

data/ is the bottom layer, then models/, then engine/ (the generic training and inference machinery), then
adapt/ (the methods), then the commands at the package root. A layer imports only from those below it and
from the shared root modules (config, io, errors, checkpoint_io), and no module imports itself back through
others. These rules keep adding a dataset or a method to a few files (README, "Layout").
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "proda"
#: what each layer must not import
FORBIDDEN = {"data": {"models", "engine", "adapt"}, "models": {"engine", "adapt"}, "engine": {"adapt"}}
SHARED_ROOT = {"proda.config", "proda.io", "proda.errors", "proda.checkpoint_io"}
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """proda modules that ``name`` imports anywhere in its file (resolved to the longest existing module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            candidates = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for c in candidates:
            while c and c not in MODULES:
                c = c.rpartition(".")[0]
            if c and c != name and c != "proda":
                found.add(c)
    return found


GRAPH = {name: imported_modules(name) for name in MODULES}


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else "root"


def test_layers_point_down():
    broken = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in sorted(deps)
              if layer(d) in FORBIDDEN.get(layer(m), set())]
    assert broken == []


def test_lower_layers_use_only_the_shared_root_modules():
    broken = [f"{m} imports {d}" for m, deps in GRAPH.items() if layer(m) in FORBIDDEN for d in sorted(deps)
              if layer(d) == "root" and d not in SHARED_ROOT]
    assert broken == []


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_engine_knows_nothing_of_prodas_stages():
    mentions = [f"{name}: {key}" for name, path in MODULES.items() if layer(name) == "engine"
                for key in ("cfg.stage1", "cfg.distill", '"stage1"', "'stage1'") if key in path.read_text(encoding="utf-8")]
    assert mentions == []


def test_no_module_is_a_god_file():
    sizes = {name: sum(1 for _ in path.open(encoding="utf-8")) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_cycle_finder_finds_a_cycle():
    """The rules above are only as good as the graph reader: a fabricated cycle must be seen."""
    saved = dict(GRAPH)
    try:
        GRAPH["proda.data.labels"] = GRAPH["proda.data.labels"] | {"proda.data.readers"}
        GRAPH["proda.data.readers"] = GRAPH["proda.data.readers"] | {"proda.data.labels"}
        try:
            test_no_import_cycle()
        except AssertionError:
            return
        raise AssertionError("a two-module cycle went unnoticed")
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_the_graph_reader_resolves_relative_and_local_imports():
    assert {"proda.data.readers", "proda.engine.dist", "proda.adapt.base"} <= GRAPH["proda.adapt.stage1"]
    assert "proda.adapt.registry" in GRAPH["proda.cli"]  # imported inside a function
    assert layer("proda.engine.trainer") == "engine" and layer("proda.config") == "root"
