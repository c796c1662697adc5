"""Train a tiny Decision Transformer on the shipped Hopper data, then drive the simulator with it.

    python examples/train_and_act.py                       # runs/example, 300 steps (about a minute)
    python examples/train_and_act.py /tmp/dt --steps 50   # what the test suite runs

Everything goes through the Python API: a config from key=value overrides, ``train``,
``dtrl.load`` and the policy's ``reset`` / ``act`` loop. Running it again continues the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym

import dtrl
from dtrl.config import load_config
from dtrl.train import train

TARGET_RETURN = 3000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=Path("runs/example"))
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    config = load_config(
        None,
        [
            "dataset=quickstart",  # the Hopper-v5 dataset inside the package
            f"out_dir={args.out_dir}",
            f"steps={args.steps}",
            "model.n_layer=1",
            "model.n_embd=32",
            "model.context_length=10",
            "batch_size=32",
            "learning_rate=1e-3",
            "warmup_steps=20",
            f"log_every={max(args.steps // 5, 1)}",
            f"checkpoint_every={args.steps}",
            "eval_episodes=1",
            f"target_returns=[{TARGET_RETURN}]",
            "device=cpu",
        ],
    )
    result = train(config, resume=(args.out_dir / "config.yaml").is_file())
    if result.losses:
        print(f"train/loss {result.losses[0][1]:.4f} -> {result.losses[-1][1]:.4f}")

    policy = dtrl.load(result.checkpoint, device="cpu")
    env = gym.make("Hopper-v5")
    obs, _ = env.reset(seed=0)
    policy.reset(target_return=TARGET_RETURN)
    reward, done, episode_return, steps = 0.0, False, 0.0, 0
    while not done:
        action = policy.act(obs, reward)  # reward: what the previous action earned
        obs, reward, terminated, truncated, _ = env.step(action)
        episode_return += float(reward)
        steps += 1
        done = terminated or truncated
    print(f"episode return {episode_return:.1f} in {steps} steps (target {TARGET_RETURN:g})")


if __name__ == "__main__":
    main()
