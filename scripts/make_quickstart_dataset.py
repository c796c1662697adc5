#!/usr/bin/env python
"""Build the dataset shipped as ``src/dtrl/assets/quickstart.npz`` for ``dtrl quickstart``.

Trains a PPO agent on Hopper-v5 (about 20 minutes on one CPU core), records a
mixed-quality dataset from its snapshots plus random episodes, and saves it.
See src/dtrl/assets/README.md and dtrl.collect.quickstart.make_quickstart_dataset.

    OMP_NUM_THREADS=1 python scripts/make_quickstart_dataset.py --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dtrl.collect.quickstart import make_quickstart_dataset
from dtrl.errors import DtrlError

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "dtrl" / "assets" / "quickstart.npz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output .npz (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed for training and recording (default 0)")
    args = parser.parse_args(argv)
    try:
        make_quickstart_dataset(args.out, seed=args.seed)
    except DtrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
