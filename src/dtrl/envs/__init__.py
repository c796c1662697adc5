"""Gymnasium environments: the one place an env is made (with one-line errors), fit checks, reference scores."""

from __future__ import annotations

import functools
import sys
from typing import Any

import gymnasium as gym
import numpy as np

from dtrl.envs import atari
from dtrl.envs.atari import is_atari
from dtrl.envs.scores import D4RL_REF_SCORES, env_family
from dtrl.errors import DtrlError

# MuJoCo warnings that gymnasium's own model files trigger on every env creation (HalfCheetah's XML
# sets `settotalmass`, deprecated since MuJoCo 3.3): one line per parallel env, nothing a user can fix.
MUJOCO_NOISE = ("compiler attribute 'settotalmass' is deprecated",)


@functools.cache
def quiet_mujoco_warnings() -> None:
    """Drop :data:`MUJOCO_NOISE` from MuJoCo's warnings; every other warning still goes to stderr."""

    def warn(message: str) -> None:
        if not message.startswith(MUJOCO_NOISE):
            print(f"WARNING: {message}", file=sys.stderr)

    try:
        import mujoco
    except ImportError:  # creating the env then says, in one line, which package is missing
        return
    mujoco.set_mju_user_warning(warn)


def check_env_id(env_id: str) -> None:
    """Fail early, in one line, on an id gymnasium does not know."""
    if is_atari(env_id):
        atari.make_env(env_id).close()  # registers the ALE games, or says what is missing
        return
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as e:
        known = sorted(k for k in gym.registry if k.split("-")[0].lower() in env_id.lower())[:5]
        hint = (
            f" (similar: {', '.join(known)})"
            if known
            else '; `python -c "import gymnasium; gymnasium.pprint_registry()"` lists them'
        )
        raise DtrlError(f"unknown environment id {env_id!r}: {str(e).splitlines()[0].rstrip('.')}{hint}") from None
    if "mujoco" in str(spec.entry_point):
        quiet_mujoco_warnings()


def make_env(env_id: str, max_episode_steps: int | None = None, **kwargs: Any) -> gym.Env:
    """One env, made the one way dtrl makes envs: ``gym.make`` (or :func:`dtrl.envs.atari.make_env`
    for ALE games, with DQN-replay's wrappers) and a one-line :class:`DtrlError` for an unknown or
    unusable env id."""
    if is_atari(env_id):
        return atari.make_env(env_id, max_episode_steps, **kwargs)
    try:
        return gym.make(env_id, max_episode_steps=max_episode_steps, **kwargs)
    except gym.error.Error as e:
        raise DtrlError(f"cannot make environment {env_id!r}: {e}") from None
    except ImportError as e:
        raise DtrlError(
            f"environment {env_id!r} needs a package that is not installed ({e}); "
            "for MuJoCo envs: pip install 'gymnasium[mujoco]'"
        ) from None


def make_vector_env(env_id: str, num_envs: int, max_episode_steps: int | None = None) -> gym.vector.VectorEnv:
    """Synchronous vector env: one process, one batched model call per step; ``max_episode_steps``
    caps episodes. Atari games get DQN-replay's wrappers (:func:`dtrl.envs.atari.make_env`)."""
    if is_atari(env_id):
        return atari.make_vector_env(env_id, num_envs, max_episode_steps)
    check_env_id(env_id)
    try:
        limit = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", **limit)
    except gym.error.DependencyNotInstalled as e:
        raise DtrlError(f"environment {env_id} needs a missing package: {str(e).splitlines()[0]}") from None


def check_fits(
    observation_space: gym.Space,
    action_space: gym.Space,
    spec_obs: dict[str, Any],
    spec_act: dict[str, Any],
    env_id: str,
    trained_on: str | None,
) -> None:
    """Raise if a policy trained for one env's spaces is pointed at another's."""
    where = f" (the policy was trained for {trained_on})" if trained_on else ""
    obs_size = int(np.prod(observation_space.shape))
    want_obs = int(np.prod(spec_obs["shape"])) if spec_obs["type"] == "box" else 1
    if obs_size != want_obs:
        raise DtrlError(
            f"{env_id} gives observations of size {obs_size} but the policy expects {want_obs}{where}: "
            "evaluate on a matching environment"
        )
    if spec_act["type"] == "discrete":
        if not isinstance(action_space, gym.spaces.Discrete) or action_space.n != spec_act["n"]:
            raise DtrlError(
                f"{env_id} has action space {action_space} but the policy outputs "
                f"{spec_act['n']} discrete actions{where}: evaluate on a matching environment"
            )
    elif not isinstance(action_space, gym.spaces.Box) or list(action_space.shape) != list(spec_act["shape"]):
        raise DtrlError(
            f"{env_id} has action space {action_space} but the policy outputs continuous actions "
            f"of shape {tuple(spec_act['shape'])}{where}: evaluate on a matching environment"
        )


def reference_scores(env_id: str | None, known: dict[str, float] | None = None) -> dict[str, float]:
    """Random / expert reference returns: the dataset's own, else D4RL's for its gym tasks, or the
    published random / gamer scores for Atari games (the gamer-normalised score)."""
    if known and "random" in known and "expert" in known:
        return {"random": float(known["random"]), "expert": float(known["expert"])}
    if is_atari(env_id) and env_family(str(env_id)) in atari.GAMER_REF_SCORES:
        return atari.gamer_reference(str(env_id))
    family = env_family(env_id or "")
    if family in D4RL_REF_SCORES:
        low, high = D4RL_REF_SCORES[family]
        return {"random": low, "expert": high}
    return {}


def success_return(env_id: str | None) -> float | None:
    """The return that marks a success for envs that declare one (``metadata["success_return"]``,
    e.g. Key-to-Door's 1), so evaluation can report the success rate; None for the others."""
    if not env_id or is_atari(env_id):
        return None
    try:
        creator = gym.envs.registration.load_env_creator(gym.spec(env_id).entry_point)
    except (gym.error.Error, ImportError, AttributeError):
        return None
    value = getattr(creator, "metadata", {}).get("success_return")
    return None if value is None else float(value)
