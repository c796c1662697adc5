#!/usr/bin/env python
"""Score candidate target sweeps against issue 18's goal on models already evaluated at many targets.

Reads ``dtrl eval`` results at a dense set of targets (one JSON per trained model, as in
``benchmarks/results/quickstart_seeds/previous_dataset/dense/``) and, for each candidate sweep (a
subset of those targets), counts the models on which the goal of ``scripts/quickstart_seeds.py``
holds. No training and no simulator: this is how the quickstart's target spacing was compared.

    python scripts/quickstart_sweeps.py benchmarks/results/quickstart_seeds/previous_dataset/dense \
        --sweep 800 1700 2600 3300 --sweep 800 1400 2000 3300
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quickstart_seeds import meets_goal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dense", type=Path, help="folder of dtrl eval JSONs, one per model")
    parser.add_argument("--sweep", type=float, nargs="+", action="append", required=True, help="targets of one sweep")
    args = parser.parse_args(argv)
    models = {p.stem: json.loads(p.read_text()) for p in sorted(args.dense.glob("*.json"))}
    for sweep in args.sweep:
        missed = []
        for name, results in models.items():
            by_target = {r["target_return"]: r for r in results}
            absent = [t for t in sweep if t not in by_target]
            if absent:
                print(f"{name}: not evaluated at target(s) {absent}", file=sys.stderr)
                return 2
            ok, why = meets_goal([by_target[t] for t in sweep])
            missed += [] if ok else [f"{name} ({why})"]
        met = len(models) - len(missed)
        print(f"targets {' '.join(f'{t:g}' for t in sweep)}: goal met on {met} of {len(models)}")
        for m in missed:
            print(f"  missed: {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
