"""Atari: the Nature CNN, uint8 frames stacked per batch, the DQN-replay reader, the ALE path end to end."""

from __future__ import annotations

import gzip
import importlib.util
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from dtrl.config import ModelConfig
from dtrl.data.dqn_replay import checkpoint_numbers, read_checkpoint, read_dqn_replay, write_checkpoint
from dtrl.data.episodes import EpisodeDataset
from dtrl.data.normalizer import Normalizer
from dtrl.data.readers import open_dataset as load_dataset
from dtrl.data.sampler import SegmentSampler
from dtrl.envs import atari
from dtrl.envs.scores import env_family
from dtrl.errors import DtrlError
from dtrl.models import DecisionTransformer
from dtrl.models.encoders import NatureCNN

HAVE_ALE = importlib.util.find_spec("ale_py") is not None and importlib.util.find_spec("cv2") is not None
needs_ale = pytest.mark.skipif(not HAVE_ALE, reason="ale-py and opencv are not installed (pip install 'dtrl[atari]')")
SIDE = 12  # small frames keep the pure-data tests fast; the CNN and env tests use 84x84


def frame_dataset(
    lengths: list[int], side: int = SIDE, n_actions: int = 4, env_id: str | None = None
) -> EpisodeDataset:
    """Frames whose every pixel is (global step + 1) % 256, so a stacked frame says which step it came from."""
    n = sum(lengths)
    frames = ((np.arange(n) + 1) % 256).astype(np.uint8)[:, None, None] * np.ones((1, side, side), np.uint8)
    ends = np.cumsum(lengths) - 1
    terminations = np.zeros(n, bool)
    terminations[ends] = True
    return EpisodeDataset.from_arrays(
        observations=frames,
        actions=np.arange(n, dtype=np.int64) % n_actions,
        rewards=np.ones(n, np.float32),
        terminations=terminations,
        truncations=np.zeros(n, bool),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
        observation_space=gym.spaces.Box(0, 255, (4, side, side), np.uint8),
        action_space=gym.spaces.Discrete(n_actions),
        env_id=env_id,
        metadata={"frame_stack": 4},
    )


def write_replay(directory: Path, episodes_per_checkpoint: list[list[int]], side: int = SIDE, cut: int = 0) -> None:
    """DQN-replay checkpoints of episodes with the given lengths; ``cut`` extra steps of an unfinished episode."""
    for number, lengths in enumerate(episodes_per_checkpoint):
        n = sum(lengths) + cut
        terminal = np.zeros(n, np.uint8)
        terminal[np.cumsum(lengths) - 1] = 1
        obs = np.full((n, side, side), number, np.uint8)
        write_checkpoint(directory, number, obs, np.arange(n) % 4, np.ones(n), terminal)


# --------------------------------------------------------------------------- encoder and model
def test_nature_cnn_embeds_flat_uint8_stacks_as_their_float_values():
    torch.manual_seed(0)
    cnn = NatureCNN((4, 84, 84), 128)
    pixels = torch.randint(0, 256, (2, 3, 4 * 84 * 84), dtype=torch.uint8)
    out = cnn(pixels)
    assert out.shape == (2, 3, 128) and out.dtype == torch.float32
    torch.testing.assert_close(out, cnn(pixels.float()))
    assert cnn.linear.in_features == 64 * 7 * 7  # the Nature-DQN torso on 84x84: 20x20 -> 9x9 -> 7x7
    with pytest.raises(ValueError):
        cnn(torch.zeros(1, 100))


def test_decision_transformer_uses_the_cnn_for_image_observations():
    config = ModelConfig(
        observation_dim=4 * 84 * 84,
        observation_shape=[4, 84, 84],
        action_dim=4,
        discrete=True,
        context_length=3,
        n_layer=1,
        n_head=2,
        n_embd=16,
    )
    model = DecisionTransformer(config)
    assert isinstance(model.embed_state, NatureCNN)
    states = torch.randint(0, 256, (2, 3, 4 * 84 * 84), dtype=torch.uint8)
    logits = model(torch.zeros(2, 3), states, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    assert logits.shape == (2, 3, 4) and torch.isfinite(logits).all()
    assert isinstance(DecisionTransformer(ModelConfig(observation_dim=5, action_dim=2)).embed_state, torch.nn.Linear)
    with pytest.raises(DtrlError, match="observation_shape"):
        ModelConfig(observation_shape=[84, 84]).validate()


def test_policy_samples_discrete_actions_when_asked_as_the_paper_evaluates_atari():
    from dtrl.checkpoint import PolicySpec
    from dtrl.data.spaces import space_to_dict
    from dtrl.policy import DecisionTransformerPolicy

    torch.manual_seed(0)
    config = ModelConfig(
        observation_dim=3, action_dim=4, discrete=True, context_length=2, n_layer=1, n_head=1, n_embd=8
    )
    spec = PolicySpec(
        model=config,
        reward_scale=1.0,
        normalizer=Normalizer(np.zeros(3, np.float32), np.ones(3, np.float32)).to_dict(),
        observation_space=space_to_dict(gym.spaces.Box(-1, 1, (3,))),
        action_space=space_to_dict(gym.spaces.Discrete(4)),
    )
    policy = DecisionTransformerPolicy(DecisionTransformer(config), spec)
    obs = np.zeros((64, 3), np.float32)

    def first_actions(seed: int | None) -> np.ndarray:
        if seed is not None:
            policy.sample_actions(seed)
        policy.reset(1.0, num_envs=64)
        return policy.act(obs)

    greedy = first_actions(None)
    assert len(set(greedy.tolist())) == 1  # the same input gives the most likely action everywhere
    sampled = first_actions(7)
    assert len(set(sampled.tolist())) > 1 and np.array_equal(sampled, first_actions(7))


# --------------------------------------------------------------------------- uint8 storage and stacking
def test_stack_frames_takes_the_episode_history_zero_padded():
    data = frame_dataset([3, 5])
    frames = torch.from_numpy(data.observations)
    rows = torch.tensor([0, 2, 3, 7])
    timesteps = torch.tensor([0, 2, 0, 4])
    stacked = atari.stack_frames(frames, rows, timesteps)
    assert stacked.shape == (4, 4, SIDE, SIDE) and stacked.dtype == torch.uint8
    assert stacked[:, :, 0, 0].tolist() == [[0, 0, 0, 1], [0, 1, 2, 3], [0, 0, 0, 4], [5, 6, 7, 8]]


def test_image_dataset_stays_uint8_in_the_sampler_and_on_disk(tmp_path):
    data = frame_dataset([6, 9])
    assert data.observation_shape == (4, SIDE, SIDE)
    norm = Normalizer.from_dataset(data)
    assert norm.state_mean.tolist() == [0.0] and norm.state_std.tolist() == [1.0]  # pixels are scaled by the model
    sampler = SegmentSampler(data, context_length=4, reward_scale=1.0)
    assert sampler.frames.dtype == torch.uint8 and sampler.frames.shape == (15, SIDE, SIDE)
    assert not hasattr(sampler, "states")  # no float copy of the data
    batch = sampler.sample(32)
    assert batch.states.dtype == torch.uint8 and batch.states.shape == (32, 4, 4 * SIDE * SIDE)
    stacks = batch.states.reshape(32, 4, 4, SIDE, SIDE)[..., 0, 0].long()
    for b, k in torch.nonzero(batch.mask).tolist():
        newest = int(stacks[b, k, -1])  # the frame of this step is its row + 1
        t = int(batch.timesteps[b, k])
        want = [0] * max(0, 3 - t) + list(range(newest - min(t, 3), newest + 1))
        assert stacks[b, k].tolist() == want
    assert not batch.states[~batch.mask].any()
    loaded = EpisodeDataset.load(data.save(tmp_path / "frames.npz"))
    assert loaded.observations.dtype == np.uint8 and loaded.frame_stack == 4
    with pytest.raises(DtrlError, match="stacks of 4 frames"):
        EpisodeDataset.from_arrays(
            observations=data.observations,
            actions=data.actions,
            rewards=data.rewards,
            terminations=data.terminations,
            truncations=data.truncations,
            episode_starts=data.episode_starts,
            observation_space=gym.spaces.Box(0, 255, (SIDE, SIDE), np.uint8),
            metadata={"frame_stack": 4},
        )


# --------------------------------------------------------------------------- the DQN-replay reader
def test_written_checkpoints_are_dopamines_gzipped_npy_files(tmp_path):
    write_replay(tmp_path, [[5, 7]])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "$store$_action_ckpt.0.gz",
        "$store$_observation_ckpt.0.gz",
        "$store$_reward_ckpt.0.gz",
        "$store$_terminal_ckpt.0.gz",
        "add_count_ckpt.0.gz",
    ]
    with gzip.open(tmp_path / "$store$_observation_ckpt.0.gz") as f:
        obs = np.load(f)
    assert obs.shape == (12, SIDE, SIDE) and obs.dtype == np.uint8
    with gzip.open(tmp_path / "$store$_action_ckpt.0.gz") as f:
        assert np.load(f).dtype == np.int32
    assert checkpoint_numbers(tmp_path) == [0]
    assert len(read_checkpoint(tmp_path, 0, rows=4)["terminal"]) == 4


def test_reader_samples_whole_episodes_from_random_checkpoints(tmp_path):
    replay = tmp_path / "Breakout" / "1" / "replay_logs"
    write_replay(replay, [[10] * 6, [20] * 3, [5] * 8], cut=4)
    data = read_dqn_replay(replay, transitions=60, trajectories_per_buffer=2, seed=3)
    assert data.env_id == "ALE/Breakout-v5" and data.action_space == gym.spaces.Discrete(4)
    assert data.ref_scores == {"random": 1.7, "expert": 30.5}
    assert data.observations.dtype == np.uint8 and data.observation_shape == (4, SIDE, SIDE)
    assert 60 <= len(data) < 60 + 20 and data.terminations.sum() == data.num_episodes
    for episode in data:  # each episode is one whole episode of one checkpoint
        assert len(set(episode.observations[:, 0, 0].tolist())) == 1
        assert len(episode) == {0: 10, 1: 20, 2: 5}[int(episode.observations[0, 0, 0])]
    again = read_dqn_replay(replay, transitions=60, trajectories_per_buffer=2, seed=3)
    np.testing.assert_array_equal(again.observations, data.observations)
    everything = read_dqn_replay(replay, transitions=10_000, seed=0)  # runs out: all whole episodes, no cut-off one
    assert len(everything) == 60 + 60 + 40 and everything.num_episodes == 17
    capped = read_dqn_replay(replay, transitions=10_000, buffer_capacity=25)
    assert len(capped) == 20 + 20 + 25
    via_loader = load_dataset(replay)
    assert via_loader.frame_stack == 4 and via_loader.metadata["source"] == "dqn-replay"


def test_reader_rejects_corrupt_truncated_and_inconsistent_files(tmp_path):
    write_replay(tmp_path / "ok", [[5, 5]])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "ok", corrupt)
    (corrupt / "$store$_reward_ckpt.0.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DtrlError, match=r"reward_ckpt\.0\.gz is not a readable gzipped"):
        read_dqn_replay(corrupt)
    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "ok", truncated)
    obs_file = truncated / "$store$_observation_ckpt.0.gz"
    with gzip.open(obs_file, "wb") as f:
        f.write(gzip.decompress((tmp_path / "ok" / obs_file.name).read_bytes())[:-50])
    with pytest.raises(DtrlError, match="truncated"):
        read_dqn_replay(truncated)
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tmp_path / "ok", mismatched)
    (mismatched / "add_count_ckpt.0.gz").unlink()
    with gzip.open(mismatched / "$store$_action_ckpt.0.gz", "wb") as f:
        np.save(f, np.zeros(7, np.int32))
    with pytest.raises(DtrlError, match="10 observations but 7 actions"):
        read_dqn_replay(mismatched)
    (mismatched / "$store$_action_ckpt.0.gz").unlink()
    with pytest.raises(DtrlError, match="missing"):
        read_dqn_replay(mismatched)
    with pytest.raises(DtrlError, match="no DQN-replay checkpoint"):
        read_dqn_replay(tmp_path)


def test_gamer_normalised_score_and_unknown_games():
    assert atari.gamer_normalized(1.7, "ALE/Breakout-v5") == pytest.approx(0.0)
    assert atari.gamer_normalized(14.6, "ALE/Pong-v5") == pytest.approx(100.0)
    assert (
        env_family("ALE/Qbert-v5") == "qbert" and atari.is_atari("ALE/Seaquest-v5") and not atari.is_atari("Hopper-v5")
    )
    with pytest.raises(DtrlError, match="no published gamer score"):
        atari.gamer_reference("ALE/Tetris-v5")


# --------------------------------------------------------------------------- the ALE environment
@needs_ale
def test_env_has_dqn_replay_wrappers():
    env = atari.make_env("ALE/Breakout-v5")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert not obs[:3].any() and obs[3].any()  # zero-padded like the stacks rebuilt from datasets
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    assert env.unwrapped._frameskip == 1  # AtariPreprocessing skips 4 frames and max-pools the last two
    env.close()
    with pytest.raises(DtrlError, match="unknown Atari environment"):
        atari.make_env("ALE/NoSuchGame-v5")


@needs_ale
def test_tiny_pixel_run_trains_and_evaluates_in_parallel(tmp_path):
    from dtrl.config import TrainConfig
    from dtrl.train import train

    data = frame_dataset([30, 40, 25], side=84, env_id="ALE/Breakout-v5")
    data.ref_scores = atari.gamer_reference("ALE/Breakout-v5")
    path = data.save(tmp_path / "tiny.npz")
    config = TrainConfig(
        dataset=str(path),
        out_dir=str(tmp_path / "run"),
        steps=2,
        batch_size=2,
        warmup_steps=1,
        reward_scale=1,
        log_every=1,
        eval_episodes=2,
        eval_max_episode_steps=15,
        target_returns=[90],
        num_threads=1,
        model=ModelConfig(context_length=4, n_layer=1, n_head=2, n_embd=16),
    )
    result = train(config)
    (res,) = result.eval_results
    assert len(res.returns) == 2 and res.lengths.max() <= 15
    assert res.normalized is not None  # the gamer-normalised score, from the published references
    assert res.normalized[0] == pytest.approx(float(atari.gamer_normalized(res.returns, "ALE/Breakout-v5").mean()))


@needs_ale
def test_collect_records_every_training_transition_as_dqn_replay(tmp_path):
    from dtrl.collect.atari import collect_atari

    path = collect_atari(
        "ALE/Breakout-v5",
        transitions=150,
        agent_steps=512,
        cache_dir=tmp_path,
        n_envs=2,
        checkpoints=2,
        hyperparams={"n_steps": 128, "batch_size": 64, "n_epochs": 1},
    )
    data = EpisodeDataset.load(path)
    assert path.name == "breakout-replay.npz" and data.frame_stack == 4 and data.observations.dtype == np.uint8
    assert len(data) >= 150 and data.terminations.sum() == data.num_episodes
    agent = data.metadata["agent"]
    replay = Path(data.metadata["agent_dir"]) / "replay_logs"
    recorded = sum(len(read_checkpoint(replay, n)["terminal"]) for n in checkpoint_numbers(replay))
    assert agent["agent_steps"] == 512 and 0 < recorded <= 512  # whole finished episodes of the training steps
