"""Measure dtrl's import graph: modules, import arrows, arrows that climb a layer, circles, largest file.

    python scripts/import_graph.py [SRC_DIR]      # SRC_DIR defaults to this checkout's src/

tests/test_layers.py runs the same walk and fails on any upward arrow or circle. Every ``import``
counts, at module level, inside functions and under ``if TYPE_CHECKING:`` alike: an import in a
function is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# The layers, lowest first: a module may import its own layer and those below it, never above.
# A name maps a module and, with a trailing ".", every module in that package.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("dtrl.errors", "dtrl.io", "dtrl.fields", "dtrl.runfiles", "dtrl.config", "dtrl.distributed")),
    ("envs", ("dtrl.envs", "dtrl.envs.")),
    ("data", ("dtrl.data", "dtrl.data.")),
    ("models", ("dtrl.models", "dtrl.models.")),
    ("runs", ("dtrl.checkpoint", "dtrl.hf", "dtrl.tracking", "dtrl.outputs", "dtrl.runs")),
    ("collect", ("dtrl.collect", "dtrl.collect.")),
    ("policy", ("dtrl.policy", "dtrl.validation", "dtrl.evaluate", "dtrl.calibrate")),
    ("train", ("dtrl.train", "dtrl.train.")),
    ("products", ("dtrl.export", "dtrl.plot")),
    ("cli", ("dtrl.cli", "dtrl.cli.", "dtrl.__main__")),
]

# The package root re-exports the public API (``dtrl.load``, ``__version__``) from any layer, so it
# stands outside the layers: importing ``dtrl`` itself is allowed everywhere and its own imports are
# not checked.
FACADE = "dtrl"

# Top-level modules of trees from before issue 19, by the layer their role puts them in, so that the
# walk measures those trees too. Modules in a package (``dtrl.data.collect``) count where they lay.
FORMERLY = {
    "dtrl.atari": "dtrl.envs.atari",
    "dtrl.key_to_door": "dtrl.envs.key_to_door",
    "dtrl.quickstart": "dtrl.cli.quickstart",
    "dtrl.stacked": "dtrl.train.stacked",
    "dtrl.finetune": "dtrl.train.finetune",
    "dtrl.optimizers": "dtrl.train.optimizers",
}


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer in LAYERS, or None for the facade and unknown names."""
    module = FORMERLY.get(module, module)
    for index, (_, names) in enumerate(LAYERS):
        if any(module == name or (name.endswith(".") and module.startswith(name)) for name in names):
            return index
    return None


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The dtrl modules ``tree`` imports anywhere in its body; ``from a import b`` names ``a.b``
    when ``a.b`` is a module, else ``a``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {name for name in found if name in known and name != module}


def graph(src: Path) -> tuple[dict[str, set[str]], dict[str, int]]:
    """Every dtrl module under ``src`` with the dtrl modules it imports, and its length in lines."""
    paths = {module_name(path, src): path for path in sorted((src / "dtrl").rglob("*.py"))}
    known = set(paths)
    edges, lines = {}, {}
    for module, path in paths.items():
        text = path.read_text()
        lines[module] = len(text.splitlines())
        edges[module] = imports_of(ast.parse(text), module, path.name == "__init__.py", known)
    return edges, lines


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The arrows from a module to one in a higher layer (the facade excepted)."""
    found = []
    for module, targets in sorted(edges.items()):
        if module == FACADE:
            continue
        for target in sorted(targets):
            low, high = layer_of(module), layer_of(target)
            if target != FACADE and (low is None or high is None or high > low):
                found.append((module, target))
    return found


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted. The facade is
    left out: every module imports it implicitly, as Python runs a package's ``__init__`` first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target == FACADE:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node != FACADE and node not in index:
            visit(node)
    return sorted(groups)


def main(src: Path) -> None:
    edges, lines = graph(src)
    largest = max(lines, key=lines.__getitem__)
    up, loops = upward(edges), circles(edges)
    print(f"modules: {len(edges)}")
    print(f"import arrows: {sum(len(targets) for targets in edges.values())}")
    print(f"upward imports: {len(up)}")
    for module, target in up:
        print(f"  {module} -> {target}")
    print(f"circles: {len(loops)}")
    for group in loops:
        print("  " + " <-> ".join(group))
    print(f"largest file: {largest} ({lines[largest]} lines)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "src")
