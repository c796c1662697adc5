"""dtrl: reinforcement learning via sequence modeling (the Decision Transformer family).

import dtrl
policy = dtrl.load("runs/quickstart")
policy.reset(target_return=3000)
action = policy.act(observation, reward)
"""

from __future__ import annotations

import importlib
from typing import Any

from dtrl.envs import key_to_door

__version__ = "0.1.0"

# The public API by its short names, lazy so that `dtrl --version` and `import dtrl` do not pay for
# importing torch. Issue 19 moved several modules; these names stay where users find them.
_API = {
    "load": "dtrl.policy",
    "train_stacked": "dtrl.train.stacked",
    "finetune": "dtrl.train.finetune",
    "open_dataset": "dtrl.data.readers",
    "EpisodeDataset": "dtrl.data.episodes",
    "record_episodes": "dtrl.collect.recorder",
    "collect_d4rl": "dtrl.collect.d4rl",
    "KeyToDoorEnv": "dtrl.envs.key_to_door",
}
__all__ = ["__version__", *_API]

key_to_door.register()  # gymnasium.make("dtrl/KeyToDoor-v0") works after `import dtrl`


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dtrl' has no attribute {name!r}")
