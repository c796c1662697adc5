"""Atari as in DQN-replay (Dopamine): the standard wrappers, frame stacking, gamer-normalised scores.

An Atari environment here is ``ALE/<Game>-v5`` with sticky actions
(repeat probability 0.25, as in Dopamine and DQN-replay), the full episode
(no end on life loss, no no-op starts), 4 frames skipped with the last two
max-pooled, 84×84 grayscale frames and a stack of the last 4, zero-padded at
the start of an episode as Dopamine's replay buffer pads: observations are
``(4, 84, 84)`` uint8. Datasets keep one 84×84 frame per step and
:func:`stack_frames` rebuilds the stack of any step from its episode, which
costs a quarter of storing stacks. ``ale-py`` is imported only when an
environment is made (``pip install 'dtrl[atari]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from dtrl.envs.scores import env_family, normalized_score
from dtrl.errors import DtrlError

if TYPE_CHECKING:
    import torch

FRAME_STACK = 4
FRAME_SIZE = 84
STICKY_ACTION_PROBABILITY = 0.25
#: Dopamine's (and ALE v5's) episode limit: 108,000 frames = 27,000 agent steps at frame skip 4.
MAX_EPISODE_STEPS = 27_000
#: Random and human-gamer scores used by the Decision Transformer paper's gamer-normalised score
#: (Hafner et al. / Agarwal et al.'s tables): game -> (random, gamer).
GAMER_REF_SCORES: dict[str, tuple[float, float]] = {
    "breakout": (1.7, 30.5),
    "qbert": (163.9, 13455.0),
    "pong": (-20.7, 14.6),
    "seaquest": (68.4, 42054.7),
}
#: Size of each game's minimal action set (ALE v5's default, as DQN-replay used).
NUM_ACTIONS: dict[str, int] = {"breakout": 4, "qbert": 6, "pong": 6, "seaquest": 18}
#: The paper's return-to-go targets (its code; returns are not rescaled for Atari).
TARGET_RETURNS: dict[str, float] = {"breakout": 90.0, "qbert": 14000.0, "pong": 20.0, "seaquest": 1150.0}


def is_atari(env_id: str | None) -> bool:
    """Whether ``env_id`` names an ALE game (``ALE/Breakout-v5``)."""
    return bool(env_id) and str(env_id).startswith("ALE/")


def gamer_reference(env_id: str) -> dict[str, float]:
    """The published random and gamer scores as dtrl's reference-score pair (``expert`` = gamer)."""
    game = env_family(env_id)
    if game not in GAMER_REF_SCORES:
        raise DtrlError(f"no published gamer score for {env_id!r}: dtrl knows {', '.join(sorted(GAMER_REF_SCORES))}")
    random, gamer = GAMER_REF_SCORES[game]
    return {"random": random, "expert": gamer}


def gamer_normalized(score: float | np.ndarray, env_id: str) -> float | np.ndarray:
    """100 · (score − random) / (gamer − random)."""
    return normalized_score(score, gamer_reference(env_id))


class ClipReward(gym.Wrapper):
    """Rewards clipped to [-1, 1] for training an agent (DQN's convention); the raw one is in ``info``."""

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(np.clip(reward, -1.0, 1.0)), terminated, truncated, {**info, "raw_reward": float(reward)}


def make_env(env_id: str, max_episode_steps: int | None = None, clip_reward: bool = False) -> gym.Env:
    """One wrapped Atari env: observations (4, 84, 84) uint8, the game's raw rewards unless ``clip_reward``."""
    try:
        import ale_py
    except ImportError:
        raise DtrlError(f"{env_id} needs ale-py: pip install 'dtrl[atari]'") from None
    gym.register_envs(ale_py)
    try:
        env = gym.make(
            env_id, frameskip=1, repeat_action_probability=STICKY_ACTION_PROBABILITY, full_action_space=False
        )
    except gym.error.Error as e:
        raise DtrlError(f"unknown Atari environment {env_id!r}: {str(e).splitlines()[0]}") from None
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=0, frame_skip=4, screen_size=FRAME_SIZE, terminal_on_life_loss=False, grayscale_obs=True
    )
    env = gym.wrappers.TimeLimit(env, max_episode_steps or MAX_EPISODE_STEPS)
    if clip_reward:
        env = ClipReward(env)
    return gym.wrappers.FrameStackObservation(env, FRAME_STACK, padding_type="zero")


def make_vector_env(env_id: str, num_envs: int, max_episode_steps: int | None = None) -> gym.vector.VectorEnv:
    """``num_envs`` wrapped Atari envs stepped together in this process."""
    make_env(env_id).close()  # fail here, in one line, on a missing package or an unknown game
    return gym.vector.SyncVectorEnv([lambda: make_env(env_id, max_episode_steps) for _ in range(num_envs)])


def stack_frames(
    frames: torch.Tensor, rows: torch.Tensor, timesteps: torch.Tensor, stack: int = FRAME_STACK
) -> torch.Tensor:
    """The stacked observations of steps ``rows``: frames ``rows - stack + 1 .. rows``, oldest first.

    ``frames`` (N, H, W) holds one frame per step; ``timesteps`` gives each
    row's step within its episode, and frames from before the episode's start
    are zeros, as the environment's :class:`~gymnasium.wrappers.FrameStackObservation`
    gives them. Returns (*rows.shape, stack, H, W) in the frames' dtype.
    """
    import torch  # here, not at the top: `import dtrl` registers envs without loading torch

    back = torch.arange(stack - 1, -1, -1, device=rows.device)  # oldest first
    index = rows.unsqueeze(-1) - back
    inside = timesteps.unsqueeze(-1) >= back
    stacked = frames[index.clamp(min=0)]
    return stacked * inside.reshape(*inside.shape, 1, 1).to(stacked.dtype)
