"""Print dtrl's import-graph figures: modules, import arrows, upward imports, circles, largest file.

    python scripts/import_graph.py [SRC_DIR]      # SRC_DIR defaults to this checkout's src/

The walk and the layer table are tests/quality/test_layers.py's, which fails on any upward arrow or circle.
Pointed at an older tree (``git worktree add /tmp/old <commit>``, then ``/tmp/old/src``), it places
the top-level modules that issue 19 moved by :data:`FORMERLY`; modules in packages count where they lay.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_TEST = Path(__file__).resolve().parent.parent / "tests" / "quality" / "test_layers.py"
_spec = importlib.util.spec_from_file_location("test_layers", _TEST)
layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layers)

# Top-level modules of trees from before issue 19, by the layer their role puts them in, so that the
# walk measures those trees too. Modules in a package (``dtrl.data.collect``) count where they lay.
FORMERLY = {
    "dtrl.atari": "dtrl.envs.atari",
    "dtrl.key_to_door": "dtrl.envs.key_to_door",
    "dtrl.video": "dtrl.evaluate",  # it recorded a policy's videos; its env part is dtrl.envs.video now
    "dtrl.quickstart": "dtrl.cli.quickstart",
    "dtrl.stacked": "dtrl.train.stacked",
    "dtrl.finetune": "dtrl.train.finetune",
    "dtrl.optimizers": "dtrl.train.optimizers",
}


def main(src: Path) -> None:
    edges, lines = layers.graph(src)
    largest = max(lines, key=lines.__getitem__)
    up, loops = layers.upward(edges, FORMERLY), layers.circles(edges)
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
