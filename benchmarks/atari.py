"""Pixel Decision Transformer against behaviour cloning on a DQN-replay-style Atari dataset.

Runs the whole path at a budget given on the command line: collect the
dataset (``dtrl.data.collect_atari.collect_atari``: a PPO agent's every training
transition, then the paper's trajectory subset), train a DT and a BC model
(the same transformer without return tokens) per seed from
``configs/atari_<game>.yaml`` with the overrides given, and evaluate each in
parallel ALE envs with DQN-replay's wrappers next to a uniformly random
policy, reporting the gamer-normalised score. Each model is evaluated twice
on the same seeds: at the end of training with the most likely action
(full recompute of the last K steps), then with actions sampled from the
predicted distribution as the paper's Atari evaluation does (decoded with the
key/value cache where the model has one; the paper's minGPT network, which the
Atari configs use, recomputes the window). Writes ``results/<out-name>.json``.

    OMP_NUM_THREADS=1 python benchmarks/atari.py --game breakout --agent-steps 100000 \\
        --transitions 50000 --steps 400 --batch-size 16 --seeds 0 --episodes 10 --max-episode-steps 2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common import environment, save
from dtrl.collect.atari import collect_atari
from dtrl.config import load_config
from dtrl.data.episodes import EpisodeDataset
from dtrl.envs import atari
from dtrl.evaluate import evaluate, evaluate_random
from dtrl.io import write_json
from dtrl.policy import DecisionTransformerPolicy
from dtrl.train import train

ROOT = Path(__file__).resolve().parent.parent


def summary(returns: np.ndarray, lengths: np.ndarray, env_id: str) -> dict:
    """Returns, their mean and spread, episode length and the gamer-normalised score."""
    return {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "length_mean": float(lengths.mean()),
        "gamer_normalised": float(atari.gamer_normalized(returns.mean(), env_id)),
        "returns": returns.tolist(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--game", default="breakout", choices=sorted(atari.GAMER_REF_SCORES))
    p.add_argument("--agent-steps", type=int, default=100_000)
    p.add_argument("--agent-epochs", type=int, default=1, help="PPO epochs per rollout (the zoo's 4 is 4x slower)")
    p.add_argument("--transitions", type=int, default=50_000)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context-length", type=int, default=0, help="0: the config's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--max-episode-steps", type=int, default=atari.MAX_EPISODE_STEPS)
    p.add_argument("--work-dir", type=Path, default=Path("runs/atari-bench"))
    p.add_argument("--out-name", default="atari", help="results/<name>.json")
    p.add_argument(
        "--reuse-runs", action="store_true", help="keep finished runs (eval.json) and cells (row.json) in --work-dir"
    )
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="more config overrides, for every run")
    args = p.parse_args()
    torch.set_num_threads(1)
    env_id = f"ALE/{args.game.capitalize()}-v5"
    out: dict = {"settings": vars(args) | {"work_dir": str(args.work_dir)}, "env_id": env_id}

    t0 = time.perf_counter()
    path = collect_atari(
        env_id,
        transitions=args.transitions,
        agent_steps=args.agent_steps,
        cache_dir=args.work_dir / "data",
        hyperparams={"n_epochs": args.agent_epochs},
        log=print,
    )
    data = EpisodeDataset.load(path)
    returns = data.episode_returns
    out["dataset"] = {
        "path": str(path),
        "collect_wall_s": round(time.perf_counter() - t0, 1),
        "agent": data.metadata["agent"],
        "episodes": data.num_episodes,
        "transitions": len(data),
        "return_mean": float(returns.mean()),
        "return_max": float(returns.max()),
        "frame_bytes": int(data.observations[0].nbytes),
        "observations_nbytes": int(data.observations.nbytes),
        "npz_bytes": path.stat().st_size,
        "gamer_normalised_mean": float(atari.gamer_normalized(returns.mean(), env_id)),
    }
    config_file = ROOT / "configs" / f"atari_{args.game}.yaml"
    target = atari.TARGET_RETURNS[args.game]
    rows = []
    for seed in args.seeds:
        for method, conditioned in (("DT", True), ("BC", False)):
            run_dir = args.work_dir / f"{method.lower()}-seed{seed}"
            if args.reuse_runs and (run_dir / "row.json").is_file():  # a finished cell: both evaluations done
                rows.append(json.loads((run_dir / "row.json").read_text()) | {"reused": True})
                print(rows[-1])
                continue
            overrides = [
                f"dataset={path}",
                f"out_dir={run_dir}",
                f"seed={seed}",
                f"steps={args.steps}",
                f"batch_size={args.batch_size}",
                "num_threads=1",
                f"checkpoint_every={args.steps}",
                f"eval_episodes={args.episodes}",
                f"eval_max_episode_steps={args.max_episode_steps}",
                f"target_returns=[{target}]",
                f"model.condition_on_return={str(conditioned).lower()}",
                "eval_sample_actions=false",
            ]
            if args.context_length:
                overrides.append(f"model.context_length={args.context_length}")
            overrides += args.set
            row: dict = {"method": method, "seed": seed, "target_return": target}
            t1 = time.perf_counter()
            if not (args.reuse_runs and (run_dir / "eval.json").is_file()):
                train(
                    load_config(config_file, overrides)
                )  # then evaluates into eval.json: episode i from seed `seed + i`
                row["train_and_eval_wall_s"] = round(time.perf_counter() - t1, 1)
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            losses = [m["train/loss"] for m in metrics if "train/loss" in m]
            row["loss_first_last"] = [losses[0], losses[-1]]
            (argmax,) = json.loads((run_dir / "eval.json").read_text())
            row["argmax"] = summary(np.asarray(argmax["returns"]), np.asarray([argmax["length_mean"]]), env_id)
            # The paper's evaluation: actions sampled from the predicted distribution; the KV cache where there is one.
            policy = DecisionTransformerPolicy.load(run_dir, device="cpu", kv_cache=True)
            policy.sample_actions(seed)
            t2 = time.perf_counter()
            (res,) = evaluate(
                policy, env_id, [target], args.episodes, seed=seed, max_episode_steps=args.max_episode_steps
            )
            row["sampled"] = summary(res.returns, res.lengths, env_id) | {"wall_s": round(time.perf_counter() - t2, 1)}
            rows.append(row)
            write_json(run_dir / "row.json", row)
            print(row)
    rand = evaluate_random(env_id, args.episodes, seed=0, max_episode_steps=args.max_episode_steps)
    out["random"] = summary(rand.returns, rand.lengths, env_id)
    out["runs"] = rows
    for method in ("DT", "BC"):
        for mode in ("argmax", "sampled"):
            scores = [r[mode]["gamer_normalised"] for r in rows if r["method"] == method]
            out[f"{method}_{mode}_gamer_normalised_mean_over_seeds"] = float(np.mean(scores))
    out["total_wall_s"] = round(time.perf_counter() - t0, 1)
    save(args.out_name, {**environment(), **out})


if __name__ == "__main__":
    main()
