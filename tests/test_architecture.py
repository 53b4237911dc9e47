"""ARCHITECTURE.md's layer rule, checked: a package imports only from the layers below it, and no
module imports another that (directly or not) imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "attnlab"

# Low to high, as ARCHITECTURE.md draws them; a package may import from the packages before it.
LAYERS = [
    "errors", "validation", "precision", "config_tree", "config", "io", "attention", "layers", "blocks", "models",
    "data", "eval", "generate", "train", "interop", "finetune", "viz", "serve", "bench", "cli", "__main__",
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The attnlab modules ``path`` imports, at module level or inside functions alike."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("attnlab"):
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("attnlab"))
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_package_has_a_layer():
    packages = {_package(m) for m in _graph() if m != "attnlab"}
    assert packages <= set(LAYERS), f"packages missing from LAYERS (and ARCHITECTURE.md): {packages - set(LAYERS)}"


def test_no_upward_imports():
    rank = {p: i for i, p in enumerate(LAYERS)}
    upward = sorted(
        f"{src} imports {dst}"
        for src, dsts in _graph().items() if src != "attnlab"
        for dst in dsts if dst != "attnlab" and rank[_package(dst)] > rank[_package(src)]
    )
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    # A package __init__ re-exporting its modules is not a cycle with them.
    edges = {m: {d for d in ds if not m.startswith(d + ".") and d != "attnlab"} for m, ds in graph.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else nxt)
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
