"""Data-parallel scaling on this machine's CPUs: 1 process vs 2 torchrun processes (gloo).

    python benchmarks/ddp_scaling.py [--steps 120] [--repeats 2]

Data: the quickstart Hopper dataset (11-d observations, 3-d actions) saved
without its env id, so runs do no evaluation. Model: the paper's gym default
(3 layers, width 128, 1 head, K = 20, dropout 0.1). One torch thread per process.

  1proc-b64   1 process, batch 64: the baseline
  2proc-b64   2 processes x batch 64 (weak scaling: global batch 128)
  2proc-b32   2 processes x batch 32 (strong scaling: global batch 64)

Throughput is rank 0's ``train/steps_per_second`` averaged over the logging
windows after the first (start-up excluded). Every run uses the same seed.
A probe also times gloo's all-reduce of the model's gradient (one flat
float32 tensor of its parameter count) between the 2 processes, to separate
communication from the processes' competition for the cores.
Results: benchmarks/results/ddp_scaling.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save
from dtrl.config import ModelConfig
from dtrl.data.readers import QUICKSTART_DATASET, open_dataset
from dtrl.models import DecisionTransformer

SEED = 0
RUNS = {
    "1proc-b64": {"procs": 1, "batch": 64},
    "2proc-b64": {"procs": 2, "batch": 64},
    "2proc-b32": {"procs": 2, "batch": 32},
}


def run(name: str, spec: dict[str, int], data: Path, work: Path, steps: int) -> float:
    """Train and return rank 0's steady-state steps per second."""
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={spec['procs']}"]
    cmd = (launcher if spec["procs"] > 1 else [sys.executable]) + [
        "-m",
        "dtrl",
        "train",
        f"dataset={data}",
        f"out_dir={out}",
        f"steps={steps}",
        f"batch_size={spec['batch']}",
        "num_threads=1",
        f"log_every={steps // 6}",
        f"checkpoint_every={steps}",
        f"seed={SEED}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=1800)
    rates = [json.loads(line)["train/steps_per_second"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.mean(rates[1:])


def allreduce_probe() -> None:
    """Under torchrun: print rank 0's median all-reduce time of a gradient-sized tensor."""
    import time

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    numel = DecisionTransformer(ModelConfig(observation_dim=11, action_dim=3)).num_parameters()
    grad = torch.zeros(numel)
    times = []
    for _ in range(60):
        start = time.perf_counter()
        dist.all_reduce(grad)
        times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        print(json.dumps({"parameters": numel, "allreduce_ms_median": round(1e3 * statistics.median(times[10:]), 2)}))
    dist.destroy_process_group()


def probe() -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__, "--probe"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all configurations (interleaved)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        allreduce_probe()
        return
    load_before = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews all of this
    work = Path(tempfile.mkdtemp(prefix="dtrl-ddp-scaling-"))
    try:
        data = dataclasses.replace(open_dataset(QUICKSTART_DATASET), env_id=None).save(work / "hopper.npz")
        rates: dict[str, list[float]] = {name: [] for name in RUNS}
        for _ in range(args.repeats):
            for name, spec in RUNS.items():
                rates[name].append(run(name, spec, data, work, args.steps))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results: dict[str, Any] = {}
    for name, spec in RUNS.items():
        steps_s = statistics.median(rates[name])
        results[name] = {
            **spec,
            "steps_per_second_each_round": [round(r, 2) for r in rates[name]],
            "steps_per_second": round(steps_s, 2),
            "samples_per_second": round(steps_s * spec["batch"] * spec["procs"], 1),
        }
    base = results["1proc-b64"]
    efficiency = {
        "weak_2proc": round(results["2proc-b64"]["samples_per_second"] / (2 * base["samples_per_second"]), 3),
        "strong_2proc": round(results["2proc-b32"]["steps_per_second"] / (2 * base["steps_per_second"]), 3),
    }
    save(
        "ddp_scaling",
        {
            "seed": SEED,
            "steps": args.steps,
            "torch_threads_per_process": 1,
            "load_average_before": load_before,
            "runs": results,
            "efficiency": efficiency,
            "gloo_allreduce_2proc": probe(),
        },
    )


if __name__ == "__main__":
    main()
