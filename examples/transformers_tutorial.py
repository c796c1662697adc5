"""Train a Decision Transformer the transformers way, then evaluate it with dtrl.

The Hugging Face blog tutorial ("Train your first Decision Transformer") in a few lines:
its data collator's segments (random start, left padding, states normalised with the
dataset's mean and std + 1e-6, returns-to-go divided by 1000, padded actions -10) and its
``TrainableDT`` loss (MSE on the real steps' predicted actions), on dtrl's shipped Hopper
dataset, in a plain PyTorch loop rather than ``transformers.Trainer`` (which needs
accelerate). The model is saved with ``save_pretrained``; dtrl then evaluates it:

    python examples/transformers_tutorial.py runs/hf-dt --steps 2000
    dtrl eval runs/hf-dt --env Hopper-v5 --dataset quickstart -r 900 --episodes 10

Needs ``pip install 'dtrl[transformers]'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import DecisionTransformerConfig, DecisionTransformerModel

from dtrl.data.readers import open_dataset


def as_float(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def tutorial_batch(data, rng: np.random.Generator, mean: np.ndarray, std: np.ndarray, K: int, batch: int = 64):
    """The tutorial collator's batch: episodes drawn in proportion to their length, a random start in each."""
    lengths = data.episode_lengths
    episodes = rng.choice(len(lengths), size=batch, p=lengths / lengths.sum())
    s, a = np.zeros((batch, K, data.observations.shape[1])), np.zeros((batch, K, data.actions.shape[1]))
    rtg, ts, mask = np.zeros((batch, K, 1)), np.zeros((batch, K), np.int64), np.zeros((batch, K))
    for row, i in enumerate(episodes):
        first, length = data.episode_starts[i], lengths[i]
        start = rng.integers(length)
        n = min(K, length - start)
        rows = slice(first + start, first + start + n)
        returns = np.cumsum(data.rewards[first + start : first + length][::-1])[::-1][:n]
        s[row, K - n :] = (data.observations[rows] - mean) / std
        a[row, : K - n], a[row, K - n :] = -10.0, data.actions[rows]
        rtg[row, K - n :, 0] = returns / 1000.0
        ts[row, K - n :] = np.arange(start, start + n)
        mask[row, K - n :] = 1
    return as_float(s), as_float(a), as_float(rtg), torch.from_numpy(ts), torch.tensor(mask, dtype=torch.long)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="Where save_pretrained writes the model.")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--context", type=int, default=20, help="K, the tutorial's max_len.")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = open_dataset("quickstart")
    mean, std = data.observations.mean(axis=0), data.observations.std(axis=0) + 1e-6
    config = DecisionTransformerConfig(
        state_dim=data.observations.shape[1], act_dim=data.actions.shape[1], hidden_size=64, n_layer=2, max_ep_len=1000
    )
    model = DecisionTransformerModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    warmup = max(1, args.steps // 10)  # the tutorial's warmup_ratio=0.1
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    model.train()
    for step in range(1, args.steps + 1):
        states, actions, rtg, timesteps, mask = tutorial_batch(data, rng, mean, std, args.context)
        _, action_preds, _ = model(
            states=states,
            actions=actions,
            returns_to_go=rtg,
            timesteps=timesteps,
            attention_mask=mask,
            return_dict=False,
        )
        real = mask.reshape(-1) > 0
        loss = torch.mean(
            (action_preds.reshape(-1, config.act_dim)[real] - actions.reshape(-1, config.act_dim)[real]) ** 2
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        schedule.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}", flush=True)
    model.save_pretrained(args.out)
    print(f"saved {args.out}: dtrl eval {args.out} --env Hopper-v5 --dataset quickstart -r 900")


if __name__ == "__main__":
    main()
