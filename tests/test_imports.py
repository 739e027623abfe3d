"""The package's import rules (README, "Code map"), checked on the real source.

Every `import mlrec...` / `from mlrec... import` in every module counts, including the ones
inside functions (deferred imports are still dependencies). A module belongs to the first
entry of LAYERS whose prefix it starts with; it may import its own layer and those listed for
it. The rules also forbid cycles between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mlrec"

BASE = ("mlrec.languages", "mlrec.io", "mlrec.log", "mlrec.runs", "mlrec.hub", "mlrec.locks")
# layer -> the layers it may import (besides itself); package-level modules count as layers
RULES: dict[str, tuple[str, ...]] = {
    "mlrec.__init__": (),
    "mlrec.languages": (),
    "mlrec.io": (),
    "mlrec.log": (),
    "mlrec.runs": (),
    "mlrec.hub": (),
    "mlrec.locks": (),
    "mlrec.config": BASE,
    "mlrec.data": (*BASE, "mlrec.config"),
    "mlrec.models": (*BASE, "mlrec.config"),
    "mlrec.evaluation": (*BASE, "mlrec.config", "mlrec.data", "mlrec.models"),
    "mlrec.train": (*BASE, "mlrec.config", "mlrec.data", "mlrec.models", "mlrec.evaluation"),
    "mlrec.export": (*BASE, "mlrec.config", "mlrec.data", "mlrec.models", "mlrec.evaluation"),
    "mlrec.serve": (
        *BASE,
        "mlrec.config",
        "mlrec.data",
        "mlrec.models",
        "mlrec.evaluation",
        "mlrec.export",
    ),  # fmt: skip
    "mlrec.distill": (
        *BASE,
        "mlrec.config",
        "mlrec.data",
        "mlrec.models",
        "mlrec.evaluation",
        "mlrec.train",
        "mlrec.export",
    ),  # fmt: skip
    # the entry points: they may import everything, nothing imports them
    "mlrec.pipeline": ("*",),
    "mlrec.cli": ("*",),
    "mlrec.__main__": ("*",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts == ("mlrec", "__init__"):
        return "mlrec.__init__"  # the package itself: a layer of its own, importing nothing
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    for name in RULES:
        if module == name or module.startswith(name + "."):
            return name
    return None


def imports(path: Path) -> set[str]:
    """The mlrec modules a file imports, anywhere in it (a `from pkg import mod` names pkg.mod
    when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mlrec"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlrec"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (REPO / Path(*sub.split(".")).with_suffix(".py")).is_file() or (
                    REPO / Path(*sub.split(".")) / "__init__.py"
                ).is_file()
                found.add(sub if is_module else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every edge that breaks a layer rule, and every module that is in no layer."""
    out = []
    for source, targets in sorted(graph.items()):
        mine = layer(source)
        if mine is None:
            out.append(f"{source}: in no layer of RULES (add it, and to the README's Code map)")
            continue
        allowed = RULES[mine]
        for target in sorted(targets):
            theirs = layer(target)
            if theirs is None or theirs == mine or "*" in allowed:
                continue
            if theirs not in allowed:
                out.append(f"{source} imports {target}: {mine} may not import {theirs}")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (Tarjan's strongly connected components of size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_keeps_its_import_rules():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert violations(graph) == []


def test_the_package_has_no_import_cycles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        # the back-arrows the package had before it was reshaped: each must be caught
        ("mlrec.config", "mlrec.data.synthetic"),
        ("mlrec.train.__main__", "mlrec.cli"),
        ("mlrec.data.items", "mlrec.models.tokenizer"),
        ("mlrec.export.hf", "mlrec.train.trainer"),
        ("mlrec.serve.vectors", "mlrec.train.trainer"),
        ("mlrec.evaluation.report", "mlrec.distill.align"),
        ("mlrec.data.loader", "mlrec.pipeline"),
        ("mlrec.models.recommender", "mlrec.data.layout"),
        ("mlrec.io", "mlrec.config"),
    ],
)
def test_each_back_arrow_is_caught(source, target):
    graph = import_graph()
    graph.setdefault(source, set()).add(target)
    assert any(v.startswith(f"{source} imports {target}:") for v in violations(graph))


def test_a_cycle_is_caught():
    graph = import_graph()
    graph["mlrec.data.layout"].add("mlrec.data.shards")  # shards imports layout already
    assert any({"mlrec.data.layout", "mlrec.data.shards"} <= set(c) for c in cycles(graph))


def test_a_module_outside_every_layer_is_caught():
    assert violations({"mlrec.utils": set()}) != []


def test_the_readme_code_map_names_every_layer():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code_map = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    for name in RULES:
        if name == "mlrec.__init__":
            continue
        path = name.replace(".", "/")
        assert path in code_map, f"README's Code map does not mention {path}"
