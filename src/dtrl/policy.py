"""A return-conditioned policy around a trained Decision Transformer.

``reset(target_return)`` starts an episode; each ``act(observation, reward)``
subtracts the reward of the previous step from the return-to-go (in the scale
used in training), appends the observation to a sliding window of the last K
steps and returns the predicted action. Observations may be batched (one row
per parallel environment): then the target return may be one value or one per
row, and ``act`` returns one action per row. By default the policy acts with the
most likely action (the mean of a stochastic head); :meth:`DecisionTransformerPolicy.sample_actions`
draws from the predicted distribution instead (Atari's evaluation, Online DT's rollouts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from dtrl.checkpoint import PolicySpec, load_policy_files
from dtrl.data.normalizer import Normalizer
from dtrl.data.spaces import space_from_dict
from dtrl.envs import check_fits
from dtrl.errors import DtrlError
from dtrl.fields import check_device
from dtrl.hf import StateStats, is_transformers_dir, read_transformers
from dtrl.models import DecisionTransformer, build_model
from dtrl.models.decoding import DecodingCache, FastDecodingCache, new_cache
from dtrl.models.gaussian import sample


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU; asking for CUDA without one is a user error."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DtrlError(f"device {device!r} requested but CUDA is not available: use device=cpu")
    return torch.device(device)


def model_with_weights(spec: PolicySpec, weights: dict[str, torch.Tensor], directory: Path) -> DecisionTransformer:
    """The model of ``spec`` with ``weights``; weights of another shape are one line naming the directory."""
    model = build_model(spec.model)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise DtrlError(
            f"weights in {directory} do not match its config.json ({str(e).splitlines()[0]}): "
            "the checkpoint is from another model shape"
        ) from None
    return model


class DecisionTransformerPolicy:
    def __init__(
        self, model: DecisionTransformer, spec: PolicySpec, device: str | torch.device = "cpu", kv_cache: bool = False
    ) -> None:
        """``kv_cache=True`` decodes incrementally (three new tokens per step, see
        :class:`~dtrl.models.decoding.DecodingCache`) where the model supports it
        (:attr:`~dtrl.models.decision_transformer.DecisionTransformer.supports_kv_cache`); otherwise,
        and by default, each action recomputes the last :attr:`context_length` steps."""
        self.device = torch.device(device)
        self.kv_cache = kv_cache and isinstance(model, DecisionTransformer) and model.supports_kv_cache
        self._sampler: torch.Generator | None = None
        self._cache: DecodingCache | FastDecodingCache | None = None
        self._previous_actions: torch.Tensor | None = None
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.normalizer = Normalizer.from_dict(spec.normalizer)
        self.observation_space = space_from_dict(spec.observation_space)
        self.action_space = space_from_dict(spec.action_space)
        self._batched = False
        self._t = 0
        self._rtg: torch.Tensor | None = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        kv_cache: bool = False,
        state_stats: StateStats | None = None,
    ) -> DecisionTransformerPolicy:
        """``state_stats``: for a transformers ``save_pretrained`` directory without state_stats.json
        (see :func:`dtrl.hf.read_transformers`); dtrl's own directories carry theirs."""
        if is_transformers_dir(path):
            spec, weights, directory = read_transformers(path, state_stats)
        else:
            if state_stats is not None:
                raise DtrlError(f"{path} is a dtrl policy, which carries its own state statistics: drop --state-stats")
            spec, weights, directory = load_policy_files(path)
        return cls(model_with_weights(spec, weights, directory), spec, pick_device(device), kv_cache)

    def check_env(self, env: gym.Env | gym.vector.VectorEnv, env_id: str) -> None:
        """Fail in one line if ``env`` does not have the spaces the policy was trained on."""
        obs_space = getattr(env, "single_observation_space", env.observation_space)
        act_space = getattr(env, "single_action_space", env.action_space)
        check_fits(obs_space, act_space, self.spec.observation_space, self.spec.action_space, env_id, self.spec.env_id)

    def sample_actions(self, seed: int = 0, generator: torch.Generator | None = None) -> None:
        """Draw actions from the predicted distribution instead of taking its mode: the softmax of a
        discrete policy, the tanh-squashed Gaussian of a stochastic continuous one (Online DT's rollouts).

        ``generator`` continues a caller's random stream (on the CPU for a discrete policy, on the
        policy's device for a Gaussian); without one, a new one is seeded with ``seed``. Sampling a
        Gaussian recomputes the window at every step: the key/value cache is not used.
        """
        cfg = self.spec.model
        if not self.has_distribution:
            raise DtrlError(
                "this policy has a deterministic action head, there is no distribution to sample: "
                "train with model.stochastic_policy=true"
            )
        if not cfg.discrete and self._cache is not None and self._t > 0:
            raise DtrlError("call sample_actions() before reset(): this episode already uses the key/value cache")
        self._sampler = generator or torch.Generator(device="cpu" if cfg.discrete else self.device).manual_seed(seed)
        if not cfg.discrete:
            self._cache = None

    @property
    def has_distribution(self) -> bool:
        """Whether :meth:`sample_actions` applies: a discrete or a stochastic continuous head."""
        return self.spec.model.discrete or self.spec.model.stochastic_policy

    @property
    def context_length(self) -> int:
        """Steps the policy acts on: ``model.eval_context_length``, or the model's K when that is 0."""
        return self.spec.model.eval_context_length or self.spec.model.context_length

    @property
    def _samples_gaussian(self) -> bool:
        return self._sampler is not None and not self.spec.model.discrete

    # ------------------------------------------------------------------ episode API
    def reset(self, target_return: float | Sequence[float] | np.ndarray, num_envs: int | None = None) -> None:
        """Start new episodes with the return each should achieve (in the env's reward units)."""
        targets = finite_numbers(target_return, "target_return")
        self._batched = num_envs is not None or np.ndim(target_return) > 0
        n = num_envs or len(targets)
        if len(targets) not in (1, n):
            raise DtrlError(f"got {len(targets)} target returns for {n} environments: give one or one per env")
        cfg = self.spec.model
        K = self.context_length
        self._rtg = torch.zeros(n, K, device=self.device)
        self._states = torch.zeros(n, K, cfg.observation_dim, device=self.device)
        shape = (n, K) if cfg.discrete else (n, K, cfg.action_dim)
        self._actions = torch.zeros(shape, device=self.device, dtype=torch.long if cfg.discrete else torch.float32)
        self._timesteps = torch.zeros(n, K, dtype=torch.long, device=self.device)
        self._next_rtg = torch.as_tensor(
            np.broadcast_to(targets, (n,)) / self.spec.reward_scale, device=self.device
        ).float()
        self._t = 0
        self._cache = new_cache(self.model, n, self.device) if self.kv_cache and not self._samples_gaussian else None
        self._previous_actions = None

    @torch.inference_mode()
    def act(self, observation: np.ndarray, reward: float | np.ndarray = 0.0) -> np.ndarray:
        """The action for ``observation``; ``reward`` is what the previous action earned."""
        if self._rtg is None:
            raise DtrlError("call policy.reset(target_return=...) before policy.act(...)")
        obs = self._observations(observation)
        K = self.context_length
        if self._t > 0:
            rewards = finite_numbers(reward, "reward")
            if len(rewards) not in (1, obs.shape[0]):
                raise DtrlError(f"got {len(rewards)} rewards for {obs.shape[0]} environments: give one per env")
            r = torch.as_tensor(rewards / self.spec.reward_scale, device=self.device)
            self._next_rtg = self._next_rtg - r.float()
        states = torch.from_numpy(self.normalizer.states(obs)).to(self.device)
        if self._cache is not None:
            timesteps = torch.full((obs.shape[0],), self._t, dtype=torch.long, device=self.device)
            pred = self._cache.step(self._next_rtg, states, timesteps, self._previous_actions)
            return self._to_env(pred)
        # Slide the window: slot n-1 holds the current step once it is full.
        n = min(self._t + 1, K)
        if self._t >= K:
            for buf in (self._rtg, self._states, self._actions, self._timesteps):
                buf[:, :-1] = buf[:, 1:].clone()
        i = n - 1
        self._rtg[:, i] = self._next_rtg
        self._states[:, i] = states
        self._actions[:, i] = 0
        self._timesteps[:, i] = self._t
        window = (self._rtg[:, :n], self._states[:, :n], self._actions[:, :n], self._timesteps[:, :n])
        if self._samples_gaussian:
            mean, log_std = self.model(*window, distribution=True)
            pred = sample(mean[:, -1].float(), log_std[:, -1].float(), self._sampler)
        else:
            pred = self.model(*window)[:, -1]
        action = self._to_env(pred)
        self._actions[:, i] = self._previous_actions
        return action

    def _observations(self, observation: np.ndarray) -> np.ndarray:
        """``observation`` as (envs, observation_dim) float32, checked: its size, and finite."""
        try:
            obs = np.asarray(observation, dtype=np.float32)
        except (TypeError, ValueError):
            raise DtrlError(f"the observation must be an array of numbers, got {type(observation).__name__}") from None
        dim, envs = self.spec.model.observation_dim, self._rtg.shape[0]
        if self._batched and obs.size % dim == 0 and obs.size // dim != envs:
            raise DtrlError(f"got {obs.size // dim} observations for {envs} environments set by reset()")
        if obs.size != dim * envs:
            per_env = f" for each of {envs} environments" if self._batched else ""
            raise DtrlError(
                f"got an observation of shape {obs.shape}, but the policy expects {dim} numbers{per_env} "
                f"(observation space {tuple(self.observation_space.shape or ())})"
            )
        if not np.isfinite(obs).all():
            raise DtrlError(
                f"the observation holds NaN or Inf (at index {int(np.flatnonzero(~np.isfinite(obs))[0])}): "
                "the policy needs finite numbers"
            )
        return obs.reshape(envs, dim)

    def _to_env(self, pred: torch.Tensor) -> np.ndarray:
        """Model output -> env action(s); remembers the model-space action, the next step's input."""
        if self.spec.model.discrete:
            if self._sampler is None:
                action_ids = pred.argmax(dim=-1)
            else:  # the paper's Atari evaluation samples from the predicted distribution
                action_ids = torch.multinomial(torch.softmax(pred.float(), -1).cpu(), 1, generator=self._sampler)[:, 0]
                action_ids = action_ids.to(pred.device)
            self._previous_actions = action_ids
            action = action_ids.cpu().numpy() + getattr(self.action_space, "start", 0)
        else:
            self._previous_actions = pred.float()
            action = self.normalizer.actions_to_env(pred.float().cpu().numpy())
            if isinstance(self.action_space, gym.spaces.Box):
                action = np.clip(action, self.action_space.low.reshape(-1), self.action_space.high.reshape(-1))
                action = action.reshape((-1, *self.action_space.shape)).astype(self.action_space.dtype)
        self._t += 1
        return action if self._batched else action[0]


def finite_numbers(value: float | Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """``value`` as a 1-d float64 array, or a one-line error when it is not numbers or not finite."""
    try:
        array = np.atleast_1d(np.asarray(value, dtype=np.float64)).reshape(-1)
    except (TypeError, ValueError):
        raise DtrlError(f"{name} must be a number or numbers, got {value!r}") from None
    if not np.isfinite(array).all():
        raise DtrlError(f"{name} must be finite, got {value!r}")
    return array


def load(
    path: str | os.PathLike, device: str = "auto", kv_cache: bool = False, state_stats: StateStats | None = None
) -> DecisionTransformerPolicy:
    """Load a policy from a run directory, a checkpoint, an exported policy directory or a transformers
    ``DecisionTransformerModel.save_pretrained`` directory."""
    return DecisionTransformerPolicy.load(path, device, kv_cache, state_stats)
