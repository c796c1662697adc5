"""dtrl's import graph points down: no module imports from a layer above its own, and no import circle.

Every ``import`` counts, at module level, inside functions and under ``if TYPE_CHECKING:`` alike: an
import inside a function is still a dependency, only a later one. ``scripts/import_graph.py`` prints
the same graph's figures (modules, arrows, upward imports, circles, largest file).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

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


def layer_of(module: str, aliases: dict[str, str] | None = None) -> int | None:
    """The index of ``module``'s layer in LAYERS, or None for the facade and unknown names.
    ``aliases`` maps a module to the one whose layer it takes (for trees that predate a move)."""
    module = (aliases or {}).get(module, module)
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


def upward(edges: dict[str, set[str]], aliases: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The arrows from a module to one in a higher layer, or to or from a module with no layer (the
    facade excepted)."""
    found = []
    for module, targets in sorted(edges.items()):
        if module == FACADE:
            continue
        for target in sorted(targets):
            low, high = layer_of(module, aliases), layer_of(target, aliases)
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


def test_every_module_has_a_layer():
    edges, _ = graph(SRC)
    assert not [m for m in edges if m != FACADE and layer_of(m) is None], "add new modules to LAYERS"


def test_no_module_imports_from_a_layer_above_its_own():
    edges, _ = graph(SRC)
    assert upward(edges) == []


def test_no_import_circle():
    edges, _ = graph(SRC)
    assert circles(edges) == []


def test_the_walk_sees_imports_inside_functions_and_type_checking_blocks():
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import dtrl.cli\n"
        "def f():\n    from dtrl.train import step\n"
    )
    known = {"dtrl.cli", "dtrl.train", "dtrl.train.step", "dtrl.io"}
    assert imports_of(ast.parse(source), "dtrl.io", False, known) == {"dtrl.cli", "dtrl.train.step"}


def test_the_checks_catch_an_upward_arrow_and_a_circle():
    # main before issue 19 had both: the data commands imported the CLI, and the model and its
    # decoding cache imported each other
    edges = {
        "dtrl.data.commands": {"dtrl.cli", "dtrl.data.readers"},
        "dtrl.cli": {"dtrl.data.commands"},
        "dtrl.models.decision_transformer": {"dtrl.models.fast_decode", "dtrl"},
        "dtrl.models.fast_decode": {"dtrl.models.decision_transformer"},
        "dtrl.data.readers": {"dtrl.errors"},
    }
    assert upward(edges) == [("dtrl.data.commands", "dtrl.cli")]
    assert circles(edges) == [
        ["dtrl.cli", "dtrl.data.commands"],
        ["dtrl.models.decision_transformer", "dtrl.models.fast_decode"],
    ]
