"""The code's shape, read from the source (AST): imports run one way, no cycles, no borrowed private
names, small files, and docs that stand alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import ROOT

# bench's stages, top to bottom: a module may import its own subpackage and stages below it, never above.
LAYERS = ("cli", "perf", "sweep", "generate", "sample_config", "report", "tracking", "metrics", "store", "console")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("ddim", "bench"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] in ("__init__", "__main__") else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module imported, name imported or '') for every import of ddim/bench, top-level or in a function."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append((full, "") if full in MODULES else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, "") for alias in node.names)
    return [(m, n) for m, n in out if m.split(".")[0] in ("ddim", "bench")]


GRAPH = {m: {t for t, _ in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}


def _stage(module: str) -> str:
    return module.split(".")[1] if module.startswith("bench.") else "ddim"


def test_no_import_cycles() -> None:
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for t in sorted(GRAPH[m]):
            if seen.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(t) :], t]))
            if t not in seen:
                visit(t, [*path, t])
        seen[m] = 2

    for m in sorted(GRAPH):
        if m not in seen:
            visit(m, [m])


def test_no_module_imports_another_modules_private_names() -> None:
    bad = [
        f"{m} imports {t}.{name}"
        for m, p in MODULES.items()
        for t, name in _imports(p)
        if name.startswith("_") and not name.startswith("__") and t != m
    ]
    assert not bad, bad


def test_ddim_imports_nothing_from_bench() -> None:
    bad = [f"{m} -> {t}" for m in GRAPH if m.startswith("ddim") for t in GRAPH[m] if t.startswith("bench")]
    assert not bad, bad


def test_bench_stages_import_downwards_only() -> None:
    bad = []
    for m, targets in GRAPH.items():
        if not m.startswith("bench.") or m == "bench":
            continue
        for t in targets:
            if not t.startswith("bench.") or _stage(t) == _stage(m):
                continue
            if LAYERS.index(_stage(t)) < LAYERS.index(_stage(m)):
                bad.append(f"{m} -> {t}")
    assert not bad, bad


def test_store_and_report_boundaries() -> None:
    """The store imports nothing else from bench; the report reads records and imports nothing of the sweep."""
    store = [
        f"{m} -> {t}" for m in GRAPH if _stage(m) == "store" for t in GRAPH[m] if _stage(t) not in ("store", "ddim")
    ]
    report = [f"{m} -> {t}" for m in GRAPH if _stage(m) == "report" for t in GRAPH[m] if _stage(t) == "sweep"]
    assert not store and not report, store + report


@pytest.mark.parametrize(
    "library, allowed",
    [
        ("typer", ("bench.cli",)),
        ("wandb", ("bench.tracking",)),
        ("optuna", ("bench.store", "bench.sweep", "bench.cli")),
    ],
)
def test_heavy_libraries_are_imported_where_they_belong(library: str, allowed: tuple[str, ...]) -> None:
    bad = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n.split(".")[0] == library for n in names) and not m.startswith(allowed):
                bad.append(m)
    assert not bad, f"{library} imported outside {allowed}: {sorted(set(bad))}"


def test_source_files_stay_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"over {MAX_LINES} lines: {big}"


def test_docs_do_not_point_outside_the_repository() -> None:
    notes = ("PAPER.md", "STYLE.md", "LIBRARIES.md", "seed-README")
    files = [*MODULES.values(), *(ROOT / "tests").rglob("*.py"), ROOT / "Makefile", ROOT / "README.md"]
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in files if p != Path(__file__) for n in notes if n in p.read_text()]
    assert not bad, bad
