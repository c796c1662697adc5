"""Training throughput and peak memory of dtrl against batch size and context length.

    python benchmarks/scaling_curves.py [--device cpu] [--threads 2] [--precision fp32] [--seconds 3]

The paper's gym model (3 layers, 1 head, width 128) on dtrl's Hopper-v5
dataset, one training step as in :mod:`benchmarks.perf` (the loop body of
``dtrl.train``). Batch size 64 … 4096 at K = 20, then K = 20 … 200 at batch 64.
Each point runs in a fresh process, so its peak memory is its own: CUDA peak
allocated on GPU, peak RSS on CPU (which includes the ~0.4 GB of the
interpreter, torch and the dataset). Results: benchmarks/results/scaling_<device>.json
and scaling_<device>.png.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see perf.py

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment

BATCHES = (64, 256, 1024, 4096)
CONTEXTS = (20, 50, 100, 200)


def measure(device: torch.device, batch: int, context: int, precision: str, seconds: float) -> dict[str, float]:
    """Steps/s and peak memory (MB) of one configuration, in this process."""
    from dtrl.config import ModelConfig, TrainConfig
    from perf import dtrl_trainer, quickstart, rate

    config = TrainConfig(batch_size=batch, precision=precision, model=ModelConfig(context_length=context))
    step = dtrl_trainer(quickstart(), device, precision, config)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = rate(step, seconds, 1, sync)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "batch_size": batch,
        "context_length": context,
        "steps_per_second": round(steps, 3),
        "samples_per_second": round(steps * batch, 1),
        "peak_memory_mb": round(peak, 1),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (key, label) in enumerate((("batch", "batch size (K = 20)"), ("context", "context length K (batch 64)"))):
        points = result[key]
        x = [p["batch_size" if key == "batch" else "context_length"] for p in points]
        axes[0, col].plot(x, [p["samples_per_second"] for p in points], "o-")
        axes[0, col].set_ylabel("training segments / s")
        axes[1, col].plot(x, [p["peak_memory_mb"] for p in points], "o-", color="C1")
        axes[1, col].set_ylabel("peak memory (MB)")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.set_xticks(x, [str(v) for v in x])
            ax.minorticks_off()
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
    env = result["environment"]
    fig.suptitle(
        f"dtrl training scaling, {result['settings']['device']} ({env['gpu'] if env['gpu'] != 'none' else env['machine']}),"
        f" {result['settings']['precision']}, load average {env['load_average_1_5_15min']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--point", nargs=2, type=int, metavar=("BATCH", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.point:
        print(json.dumps(measure(device, *args.point, args.precision, args.seconds)))
        return

    def point(batch: int, context: int) -> dict[str, float]:
        cmd = [
            sys.executable,
            __file__,
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            "--precision",
            args.precision,
            "--seconds",
            str(args.seconds),
            "--point",
            str(batch),
            str(context),
        ]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(out, flush=True)
        return out

    result = {
        "environment": environment(),
        "settings": {
            "device": args.device,
            "threads": args.threads,
            "precision": args.precision,
            "seconds": args.seconds,
            "model": "paper gym: 3 layers, 1 head, width 128",
            "seed": 0,
        },
        "batch": [point(b, 20) for b in BATCHES],
        "context": [point(64, k) for k in CONTEXTS],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"scaling_{device.type}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / f"scaling_{device.type}.png")
    print(f"wrote {RESULTS / f'scaling_{device.type}.json'} and .png")


if __name__ == "__main__":
    main()
