"""Key-to-Door: the Decision Transformer paper's long-horizon credit-assignment grid world.

An episode has three phases, each in its own ``size x size`` room, and lasts
``key_steps + wait_steps + door_steps`` steps (defaults: 4 x 4 rooms, 8 + 10 + 8 = 26)
unless the door ends it early:

1. **key room** (``key_steps`` steps): the agent and a key at random cells; stepping onto
   the key picks it up (the key disappears).
2. **empty room** (``wait_steps`` steps): nothing to do; time passes.
3. **door room** (``door_steps`` steps): the agent and a door at random cells; stepping onto
   the door ends the episode, with reward 1 if the key was picked up in phase 1, else 0.

Every other step gives 0, so the return is 1 for a success and 0 otherwise. The episode
also ends (``terminated``) when phase 3 runs out: the fixed horizon is part of the task.

Observation (``Box(8,)``, float32): ``[agent_row, agent_col, object_row, object_col,
object_visible, phase_1, phase_2, phase_3]``; the object is the key in phase 1 (until picked
up) and the door in phase 3; ``object_visible`` is 0 and its coordinates 0 otherwise.
Whether the key is held is *not* observed in phases 2 and 3, so acting well at the door
needs the memory of phase 1: the credit-assignment problem of the paper. Actions
(``Discrete(4)``): 0 up, 1 right, 2 down, 3 left; moving into a wall stays put.

Seeding: ``reset(seed=s)`` draws all three rooms' layouts up front from the env's
generator, so a seed fixes the layout whatever the policy does. ``info`` carries
``phase`` and ``has_key`` (for analysis; the policy never sees ``info``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ENV_ID = "dtrl/KeyToDoor-v0"
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])  # up, right, down, left
KEY_ROOM, EMPTY_ROOM, DOOR_ROOM = 1, 2, 3


class KeyToDoorEnv(gym.Env[np.ndarray, np.int64]):
    """Three rooms: pick up the key, wait, reach the door (reward 1 only with the key)."""

    metadata: dict[str, Any] = {"render_modes": [], "success_return": 1.0}

    def __init__(self, size: int = 4, key_steps: int = 8, wait_steps: int = 10, door_steps: int = 8) -> None:
        if size < 2 or min(key_steps, wait_steps, door_steps) < 1:
            raise ValueError("KeyToDoor needs size >= 2 and positive phase lengths")
        self.size = size
        self.key_steps, self.wait_steps, self.door_steps = key_steps, wait_steps, door_steps
        self.max_steps = key_steps + wait_steps + door_steps
        self.observation_space = gym.spaces.Box(0.0, float(size - 1), shape=(8,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self._t = 0
        self._has_key = False
        self._ended = True  # no episode runs until reset()

    @property
    def phase(self) -> int:
        """1, 2 or 3 at the current step."""
        if self._t < self.key_steps:
            return KEY_ROOM
        return EMPTY_ROOM if self._t < self.key_steps + self.wait_steps else DOOR_ROOM

    def _two_cells(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.np_random.choice(self.size * self.size, 2, replace=False)
        return np.array(divmod(int(a), self.size)), np.array(divmod(int(b), self.size))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._agent, self._key = self._two_cells()
        self._wait_start = self._two_cells()[0]
        self._door_start, self._door = self._two_cells()
        self._t = 0
        self._has_key = False
        self._ended = False
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}: KeyToDoor takes 0 (up), 1 (right), 2 (down) or 3 (left)")
        if self._ended:  # after the door too, not only after the last step
            raise RuntimeError("no episode is running: call reset()")
        phase = self.phase
        self._agent = np.clip(self._agent + MOVES[int(action)], 0, self.size - 1)
        reward, terminated = 0.0, False
        if phase == KEY_ROOM and not self._has_key and (self._agent == self._key).all():
            self._has_key = True
        elif phase == DOOR_ROOM and (self._agent == self._door).all():
            reward, terminated = float(self._has_key), True
        self._t += 1
        if self._t == self.key_steps:
            self._agent = self._wait_start.copy()
        elif self._t == self.key_steps + self.wait_steps:
            self._agent = self._door_start.copy()
        terminated = terminated or self._t == self.max_steps
        self._ended = terminated
        return self._observation(), reward, terminated, False, self._info()

    def _observation(self) -> np.ndarray:
        phase = self.phase
        obs = np.zeros(8, dtype=np.float32)
        obs[:2] = self._agent
        target = self._key if phase == KEY_ROOM and not self._has_key else self._door if phase == DOOR_ROOM else None
        if target is not None:
            obs[2:4], obs[4] = target, 1.0
        obs[4 + phase] = 1.0
        return obs

    def _info(self) -> dict[str, Any]:
        return {"phase": self.phase, "has_key": self._has_key}


def register() -> None:
    """Register ``dtrl/KeyToDoor-v0`` with gymnasium (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="dtrl.envs.key_to_door:KeyToDoorEnv")
