"""dtrl: reinforcement learning via sequence modeling (the Decision Transformer family).

    import dtrl
    policy = dtrl.load("runs/quickstart")
    policy.reset(target_return=3000)
    action = policy.act(observation, reward)
"""

from __future__ import annotations

from typing import Any

from dtrl.envs import key_to_door

__version__ = "0.1.0"
__all__ = ["load", "__version__"]

key_to_door.register()  # gymnasium.make("dtrl/KeyToDoor-v0") works after `import dtrl`


def __getattr__(name: str) -> Any:
    # Lazy, so `dtrl --version` and `import dtrl` do not pay for importing torch.
    if name == "load":
        from dtrl.policy import load

        return load
    raise AttributeError(f"module 'dtrl' has no attribute {name!r}")
