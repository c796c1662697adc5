"""Memory and throughput of configs/large.yaml (12 layers x 768, 12 heads) on this CPU.

    python benchmarks/large_model.py [--batch 8 32] [--steps 2]

For each batch size, with and without ``model.activation_checkpointing``,
a fresh process builds the model of configs/large.yaml (K = 30) for
HalfCheetah-sized data (17-d observations, 6-d actions), runs one warm-up
training step and ``--steps`` timed ones (forward, backward, clipping, AdamW)
on one torch thread, and reports:

* activation bytes saved for the backward pass (summed over the distinct
  tensors autograd keeps; exact and independent of the allocator). With
  checkpointing, the block inputs that the recomputation needs are kept
  outside autograd's saved tensors and are added (n_layer x B x 3K x width
  float32);
* peak resident memory of the process (ru_maxrss), and that after building
  the model, before the first step (AdamW allocates its state in the first step);
* seconds per step, samples and tokens (3 per timestep) per second.

Results: benchmarks/results/large_model.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save
from dtrl.config import ModelConfig, load_config
from dtrl.data.sampler import Batch
from dtrl.models import DecisionTransformer
from dtrl.train.step import action_loss, build_optimizer

SEED = 0
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "large.yaml"


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(batch_size: int, checkpointing: bool, steps: int) -> dict[str, Any]:
    """Runs in its own process so that peak memory belongs to this configuration alone."""
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    config = load_config(
        CONFIG, [f"batch_size={batch_size}", f"model.activation_checkpointing={str(checkpointing).lower()}"]
    )
    model_config = ModelConfig(**{**config.model.__dict__, "observation_dim": 17, "action_dim": 6})
    model = DecisionTransformer(model_config).train()
    optimizer, scheduler = build_optimizer(model, config)
    B, K = batch_size, model_config.context_length
    g = torch.Generator().manual_seed(SEED)
    batch = Batch(
        returns_to_go=torch.randn(B, K, generator=g),
        states=torch.randn(B, K, 17, generator=g),
        actions=torch.rand(B, K, 6, generator=g) * 2 - 1,
        timesteps=torch.arange(K).repeat(B, 1),
        mask=torch.ones(B, K, dtype=torch.bool),
    )
    rss_before = max_rss_mib()
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:  # saved weights are no activation memory
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        if i == 0:
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
                loss = action_loss(model, batch)
        else:
            loss = action_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        if i:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    saved = sum(seen.values())
    if checkpointing:
        saved += model_config.n_layer * B * 3 * K * model_config.n_embd * 4
    return {
        "batch_size": B,
        "context_length": K,
        "activation_checkpointing": checkpointing,
        "parameters_M": round(model.num_parameters() / 1e6, 2),
        "saved_activations_MiB": round(saved / 2**20, 1),
        "rss_after_building_model_MiB": round(rss_before),
        "peak_rss_MiB": round(max_rss_mib()),
        "seconds_per_step": [round(t, 2) for t in times],
        "samples_per_second": round(B / step, 2),
        "tokens_per_second": round(3 * K * B / step, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--one", nargs=2, metavar=("BATCH", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1] == "1", args.steps)))
        return
    runs = []
    for batch in args.batch:
        for checkpointing in (False, True):
            cmd = [sys.executable, __file__, "--one", str(batch), str(int(checkpointing)), "--steps", str(args.steps)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    save("large_model", {"seed": SEED, "config": "configs/large.yaml", "torch_threads": 1, "runs": runs})


if __name__ == "__main__":
    main()
