"""Key-to-Door (Chen et al. 2021, section 5.3): DT, %BC, BC, discrete CQL and random on random-walk data.

    dtrl data collect dtrl/KeyToDoor-v0 --kinds random --episodes 1000
    OMP_NUM_THREADS=1 python benchmarks/key_to_door.py --episodes 1000 --seeds 0 1 2

Every method trains on the cached dataset ``keytodoor-random-<N>ep`` with each
training seed and is evaluated on the same held-out episode seeds
(``--eval-seed`` onwards, never used while choosing settings): success rate =
fraction of episodes that reach the door holding the key. DT is dtrl's transformer
(configs/key_to_door.yaml); BC and %BC are the paper's gym MLP BC on the same config
(``model.kind=mlp``; %BC on the best episodes holding 10% of the timesteps, docs/baselines.md),
and ``tbc`` the transformer without return tokens; CQL is d3rlpy's DiscreteCQL
(``pip install -e ".[bench]"``) on the same transitions. For the DT of the first
seed the script also records, per evaluation episode, whether the key was picked
up, and the last layer's attention from the door-room steps back to every earlier
step: ``key_to_door_<N>.json`` / ``.csv`` and ``key_to_door_<N>_analysis.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import RESULTS, environment
from dtrl.config import load_config
from dtrl.data.episodes import EpisodeDataset
from dtrl.data.readers import open_dataset
from dtrl.envs.key_to_door import ENV_ID, MOVES, KeyToDoorEnv
from dtrl.errors import DtrlError
from dtrl.evaluate import EvalResult, evaluate, evaluate_random, rollout
from dtrl.io import atomic_write
from dtrl.policy import DecisionTransformerPolicy
from dtrl.train import train

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "key_to_door.yaml"
METHODS = ("dt", "pbc", "bc", "tbc", "cql", "random")
LABELS = {"dt": "DT", "pbc": "%BC (MLP, 10%)", "bc": "BC (MLP)", "tbc": "BC (transformer, no returns)",
          "cql": "CQL (discrete)", "random": "random"}  # fmt: skip
DTRL_OVERRIDES = {
    "dt": [],
    "pbc": ["model.kind=mlp", "top_fraction=0.1"],
    "bc": ["model.kind=mlp"],
    "tbc": ["model.condition_on_return=false"],
}
#: Published success rates (Chen et al. 2021, table 5), on the paper's own Key-to-Door.
PAPER = {
    1000: {"dt": 71.8, "pbc": 69.9, "cql": 13.1, "bc": 1.4, "random": 3.1},
    10000: {"dt": 94.6, "pbc": 95.1, "cql": 13.3, "bc": 1.6, "random": 3.1},
}
#: DiscreteCQL on an 8-number observation: small Q-network, d3rlpy's DQN-style defaults otherwise.
CQL_SETTINGS = {
    "learning_rate": 3e-4,
    "batch_size": 64,
    "alpha": 1.0,
    "gamma": 0.99,
    "target_update_interval": 500,
    "hidden_units": [64, 64],
}


def train_dtrl(method: str, dataset: str, seed: int, steps: int | None, out_dir: Path) -> DecisionTransformerPolicy:
    overrides = [f"dataset={dataset}", f"seed={seed}", f"out_dir={out_dir}", "eval_episodes=1", "num_threads=1"]
    if steps:
        overrides.append(f"steps={steps}")
    config = load_config(CONFIG, DTRL_OVERRIDES[method] + overrides)
    result = train(config)
    return DecisionTransformerPolicy.load(result.checkpoint, device="cpu")


def train_cql(dataset: EpisodeDataset, seed: int, steps: int) -> Any:
    try:
        import d3rlpy
    except ImportError:
        raise DtrlError('the CQL peer comes from d3rlpy: pip install -e ".[bench]"') from None
    d3rlpy.seed(seed)
    last = np.zeros(len(dataset), dtype=bool)
    last[dataset.episode_starts[1:] - 1] = True
    mdp = d3rlpy.dataset.MDPDataset(
        observations=dataset.observations.astype(np.float32),
        actions=dataset.actions.astype(np.int64),
        rewards=dataset.rewards.astype(np.float32),
        terminals=(dataset.terminations & last).astype(np.float32),
        timeouts=(last & ~dataset.terminations).astype(np.float32),
        action_space=d3rlpy.ActionSpace.DISCRETE,
        action_size=int(dataset.action_space.n),
    )
    s = CQL_SETTINGS
    algo = d3rlpy.algos.DiscreteCQLConfig(
        learning_rate=s["learning_rate"],
        batch_size=s["batch_size"],
        alpha=s["alpha"],
        gamma=s["gamma"],
        target_update_interval=s["target_update_interval"],
        encoder_factory=d3rlpy.models.encoders.VectorEncoderFactory(s["hidden_units"]),
    ).create(device=False)
    algo.fit(
        mdp,
        n_steps=steps,
        n_steps_per_epoch=steps,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        show_progress=False,
        save_interval=10**9,
    )
    return algo


def episode_analysis(policy: DecisionTransformerPolicy, seeds: np.ndarray) -> dict[str, Any]:
    """Roll the DT out at target 1 episode by episode, recording whether the key was picked up and the
    last layer's attention (mean over heads) from each door-room state token to every earlier step."""
    model = policy.model
    attn = model.transformer.blocks[-1].attn
    captured: dict[str, torch.Tensor] = {}
    hook = attn.register_forward_hook(lambda module, args, out: captured.__setitem__("x", args[0]))
    env = KeyToDoorEnv()
    key_steps, wait_steps = env.key_steps, env.wait_steps
    per_episode, door_rows = [], []
    try:
        for seed in seeds.tolist():
            obs, info = env.reset(seed=seed)
            policy.reset(1.0)
            reward, done, pickup, t = 0.0, False, None, 0
            while not done:
                action = policy.act(obs, reward)
                obs, reward, done, _, info = env.step(action)
                if pickup is None and info["has_key"]:
                    pickup = t  # the step whose action picked the key up
                t += 1
            per_episode.append(
                {"seed": seed, "key": info["has_key"], "success": reward == 1.0, "pickup_step": pickup, "length": t}
            )
            if pickup is None or t <= key_steps + wait_steps:
                continue
            # the last act() call saw the whole episode (K = the episode's maximum length): recompute its attention
            with torch.inference_mode():
                x = captured["x"][0]
                T, C = x.shape
                q, k, _ = attn.qkv(x).view(T, 3, attn.n_head, C // attn.n_head).permute(1, 2, 0, 3)
                scores = (q @ k.transpose(-1, -2)) / (C // attn.n_head) ** 0.5
                weights = torch.softmax(scores + torch.full((T, T), float("-inf")).triu(1), dim=-1).mean(0)
                per_step = weights.reshape(T, T // 3, 3).sum(-1)  # attention each token pays to each timestep
                rows = per_step[1::3][key_steps + wait_steps :]  # queries: the door-room state tokens
            door_rows.append({"pickup_step": pickup, "attention": rows.mean(0).tolist()})
    finally:
        hook.remove()
    return {"episodes": per_episode, "door_attention": door_rows}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [100.0 * r["success_rate"] for r in runs]
    return {"mean": float(np.mean(rates)), "std": float(np.std(rates)), "per_seed": rates}


def plot(analysis: dict[str, Any], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    eps = analysis["episodes"]
    for i, with_key in enumerate((True, False)):
        group = [e for e in eps if e["key"] == with_key]
        rate = 100.0 * np.mean([e["success"] for e in group]) if group else 0.0
        left.bar(i, rate, color="tab:green" if with_key else "tab:gray")
        left.text(i, rate + 1, f"{rate:.0f}%\n({len(group)} episodes)", ha="center")
    left.set_xticks([0, 1], ["key picked up", "key not picked up"])
    left.set_ylim(0, 115)
    left.set_ylabel("DT success rate (%)")
    left.set_title(f"DT (target return 1), seed 0, {n} episodes of data")
    offsets = np.arange(-9, 30)
    mass = np.zeros(len(offsets))
    count = np.zeros(len(offsets))
    for row in analysis["door_attention"]:
        for t, w in enumerate(row["attention"]):
            j = t - row["pickup_step"] + 9
            if 0 <= j < len(offsets):
                mass[j] += w
                count[j] += 1
    right.bar(offsets, np.where(count > 0, mass / np.maximum(count, 1), 0.0), color="tab:blue")
    right.axvline(0, color="tab:red", linestyle="--", label="key pick-up step")
    right.set_xlabel("timestep relative to the key pick-up")
    right.set_ylabel("attention from door-room states")
    right.set_title(f"last layer, mean over {len(analysis['door_attention'])} episodes with the key")
    right.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def key_pickup_rate(dataset: EpisodeDataset) -> float:
    """Fraction of the dataset's episodes in which the key was picked up: some key-room step moved onto the key."""
    obs, size = dataset.observations, KeyToDoorEnv().size
    landed = np.clip(obs[:, :2] + MOVES[dataset.actions.astype(np.int64)], 0, size - 1)
    picked = (obs[:, 5] == 1) & (obs[:, 4] == 1) & (landed == obs[:, 2:4]).all(1)
    episode = np.searchsorted(dataset.episode_starts, np.arange(len(dataset)), side="right") - 1
    return float(np.bincount(episode[picked], minlength=dataset.num_episodes).astype(bool).mean())


def write_report() -> Path:
    """``results/key_to_door.md`` from the ``key_to_door_<N>.json`` files there: the table beside the paper's."""
    found = {int(p.stem.split("_")[-1]): json.loads(p.read_text()) for p in sorted(RESULTS.glob("key_to_door_*.json"))}
    sizes = sorted(found)
    cell = {
        n: {
            m: f"{r['mean']:.1f}" + (f" ± {r['std']:.1f}" if len(r["per_seed"]) > 1 else "")
            for m, r in found[n]["success_rate_percent"].items()
        }
        for n in sizes
    }
    head = " | ".join(f"{n:,} ours | {n:,} paper" for n in sorted(set(sizes) | set(PAPER)))
    lines = [
        "# Key-to-Door: success rate (%)",
        "",
        "Made by `benchmarks/key_to_door.py` (docs/key-to-door.md). Ours: mean ± std over training seeds, each "
        "evaluated on the same held-out episode seeds (random: one evaluation, nothing to train); a blank cell was not run. Paper: Chen et al. 2021, "
        "table 5, on the paper's own Key-to-Door (random policy 3.1 % there, about 7 % here): context, not a "
        "comparison of numbers.",
        "",
        f"| method | {head} |",
        "| --- |" + " ---: |" * (2 * len(set(sizes) | set(PAPER))),
    ]
    for m in METHODS:
        row = [
            f"{cell[n].get(m, '')} | {PAPER.get(n, {}).get(m, '')}" if n in cell else f" | {PAPER[n].get(m, '')}"
            for n in sorted(set(sizes) | set(PAPER))
        ]
        lines.append(f"| {LABELS[m]} | " + " | ".join(row) + " |")
    for n in sizes:
        r = found[n]
        env, st = r["environment"], r["settings"]
        per_seed = "; ".join(
            f"{LABELS[m]} {', '.join(f'{x:.0f}' for x in v['per_seed'])}" for m, v in r["success_rate_percent"].items()
        )
        lines += [
            "",
            f"## {n:,} trajectories",
            "",
            f"- data: `{r['dataset']['name']}`, {r['dataset']['episodes']} episodes, "
            f"{r['dataset']['transitions']} transitions, mean return {r['dataset']['return_mean']:.3f}; the random "
            f"policy picked the key up in {100 * key_pickup_rate(open_dataset(r['dataset']['name'])):.0f} % of them",
            f"- command: `{env['command']}`; config `{st['config']}`"
            + (f", steps={st['steps']}" if st["steps"] else "")
            + f"; CQL {st['cql_steps']} steps, {st['cql']}",
            f"- training seeds {st['seeds']}; {st['eval_episodes']} evaluation episodes each on seeds {st['eval_seeds']}",
            f"- per seed (%): {per_seed}",
            f"- wall time {r['wall_time_s'] / 60:.1f} min for everything above (data collection apart: "
            "`dtrl data collect` takes seconds); machine: "
            + env["machine"]
            + "; load average (1, 5, 15 min)"
            + (f" at the start {r['load_average_at_start']}," if "load_average_at_start" in r else "")
            + f" at the end {env['load_average_1_5_15min']} (a machine shared with other jobs)",
            f"- versions: {env['versions']}; date {env['date']}",
        ]
        lines += [
            f"- superseded, in the JSON's `superseded`: {k} = {v['what']}: {v['mean']:.1f} ± {v['std']:.1f} "
            f"(per seed {', '.join(f'{x:.0f}' for x in v['per_seed'])})"
            for k, v in r.get("superseded", {}).items()
        ]
        if "dt_analysis" in r:
            a = r["dt_analysis"]
            eps = a["episodes"]
            env = KeyToDoorEnv()
            rows = a["door_attention"]
            on_pickup = np.mean([row["attention"][row["pickup_step"]] for row in rows])
            on_key_room = np.mean([np.mean(row["attention"][: env.key_steps]) for row in rows])
            on_door_room = np.mean([np.mean(row["attention"][env.key_steps + env.wait_steps :]) for row in rows])
            lines += [
                "",
                f"DT of seed {st['seeds'][0]}, target return 1, the {len(eps)} evaluation episodes: the key was picked up "
                f"in {a['episodes_with_key']}; success {100 * a['success_with_key']:.0f} % of those with the key, "
                f"{100 * a['success_without_key']:.0f} % without (no reward is possible without it). Right: the "
                "last layer's attention from the door-room state tokens to each earlier timestep, aligned on the "
                f"key pick-up step and averaged over the episodes with the key: {on_pickup:.3f} on the pick-up step "
                f"against {on_key_room:.3f} per key-room step on average"
                f" and {on_door_room:.3f} per door-room step.",
                "",
                f"![DT analysis, {n} trajectories](key_to_door_{n}_analysis.png)",
            ]
    text = "\n".join(lines) + "\n"
    path = RESULTS / "key_to_door.md"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train (where it applies) and evaluate one method with one training seed, in its own process."""
    torch.set_num_threads(1)
    name = f"keytodoor-random-{args.episodes}ep"
    eval_seeds = args.eval_seed + np.arange(args.eval_episodes)
    t0 = time.perf_counter()
    analysis = None
    if method == "random":
        result = evaluate_random(ENV_ID, args.eval_episodes, seed=args.eval_seed)
    elif method == "cql":
        algo = train_cql(open_dataset(name), seed, args.cql_steps)
        returns, lengths = rollout(ENV_ID, eval_seeds, lambda obs, reward: algo.predict(obs.astype(np.float32)))
        result = EvalResult(None, returns, lengths, success_return=1.0)
    else:
        policy = train_dtrl(method, name, seed, args.steps, args.runs_dir / f"{args.episodes}ep-{method}-seed{seed}")
        result = evaluate(policy, ENV_ID, [1.0], args.eval_episodes, seed=args.eval_seed)[0]
        if method == "dt" and seed == args.seeds[0]:
            analysis = episode_analysis(policy, eval_seeds)
    wall = round(time.perf_counter() - t0, 1)
    print(f"{method} seed {seed}: success {100 * result.success_rate:.1f}% ({wall} s)", flush=True)
    return {"method": method, "seed": seed, "success_rate": result.success_rate, "wall_s": wall, "analysis": analysis}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1000, help="dataset size: keytodoor-random-<N>ep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--eval-seed", type=int, default=10_000, help="held-out episode seeds start here")
    parser.add_argument("--steps", type=int, default=0, help="gradient steps of the dtrl methods (0: the config's)")
    parser.add_argument("--cql-steps", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one CPU thread each")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/key_to_door"))
    parser.add_argument("--report-only", action="store_true", help="only rewrite key_to_door.md from the JSON files")
    args = parser.parse_args()
    if args.report_only:
        print(write_report())
        return
    name = f"keytodoor-random-{args.episodes}ep"
    dataset = open_dataset(name)  # fails early, in one line, when the dataset was not collected
    started, load_at_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    tasks = [(m, s) for m in args.methods for s in (args.seeds if m != "random" else args.seeds[:1])]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(run_one, *zip(*tasks), [args] * len(tasks)))
    runs: dict[str, list[dict[str, Any]]] = {}
    analysis = None
    for r in done:
        analysis = r.pop("analysis") or analysis
        runs.setdefault(r.pop("method"), []).append(r)
    table = {m: {**summarise(r), "runs": r, "paper": PAPER.get(args.episodes, {}).get(m)} for m, r in runs.items()}
    out = {
        "environment": environment(),
        "dataset": {
            "name": name,
            **{k: v for k, v in dataset.summary().items() if k in ("episodes", "transitions", "return_mean")},
        },
        "settings": {
            "config": str(CONFIG.relative_to(CONFIG.parent.parent)),
            "steps": args.steps or None,
            "cql_steps": args.cql_steps,
            "cql": CQL_SETTINGS,
            "eval_episodes": args.eval_episodes,
            "eval_seeds": f"{args.eval_seed}..{args.eval_seed + args.eval_episodes - 1}",
            "seeds": args.seeds,
        },
        "success_rate_percent": table,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "load_average_at_start": load_at_start,
    }
    if analysis is not None:
        eps = analysis["episodes"]
        out["dt_analysis"] = {
            "episodes_with_key": sum(e["key"] for e in eps),
            "success_with_key": float(np.mean([e["success"] for e in eps if e["key"]] or [0.0])),
            "success_without_key": float(np.mean([e["success"] for e in eps if not e["key"]] or [0.0])),
            **analysis,
        }
        plot(analysis, args.episodes, RESULTS / f"key_to_door_{args.episodes}_analysis.png")
    text = json.dumps(out, indent=1).encode()
    atomic_write(RESULTS / f"key_to_door_{args.episodes}.json", lambda f: f.write(text))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["episodes", "method", "seed", "success_rate_percent", "wall_s"])
    for method, rs in runs.items():
        for r in rs:
            writer.writerow([args.episodes, method, r["seed"], round(100 * r["success_rate"], 1), r["wall_s"]])
    atomic_write(RESULTS / f"key_to_door_{args.episodes}.csv", lambda f: f.write(buf.getvalue().encode()))
    for method, row in table.items():
        print(f"{LABELS[method]:>16}: {row['mean']:.1f} ± {row['std']:.1f} % (paper: {row['paper']})")
    print(write_report())


if __name__ == "__main__":
    main()
