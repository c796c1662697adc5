"""Videos of a policy: one MP4 per target return, with gymnasium's RecordVideo.

Each video replays episode 0 of an evaluation (seed ``seed``, the same start
state), rendered off-screen. MuJoCo needs an off-screen OpenGL backend
without a display: when ``MUJOCO_GL`` is unset, EGL is tried, then OSMesa.
MuJoCo envs render through their ``track`` camera where the model has one:
gymnasium's default free camera does not follow the agent, which walks out of
the picture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import gymnasium as gym

from dtrl.envs import check_env_id
from dtrl.errors import DtrlError
from dtrl.policy import DecisionTransformerPolicy

_HEADLESS_BACKENDS = ("egl", "osmesa")


def require_moviepy() -> None:
    """Fail before a long evaluation, not after it, when videos cannot be written."""
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise DtrlError("--video needs moviepy to write MP4 files: pip install 'dtrl[video]'") from None


def make_render_env(env_id: str) -> gym.Env:
    """The env with ``render_mode='rgb_array'``, checked by rendering one frame."""
    check_env_id(env_id)
    mujoco = "mujoco" in str(gym.spec(env_id).entry_point)
    chosen = os.environ.get("MUJOCO_GL")
    backends = [chosen] if chosen or not mujoco else list(_HEADLESS_BACKENDS)
    errors = []
    for backend in backends:
        if mujoco and not chosen:
            os.environ["MUJOCO_GL"] = backend
        env = None
        try:
            env = gym.make(env_id, render_mode="rgb_array", **({"camera_name": "track"} if mujoco else {}))
            env.reset(seed=0)
            if env.render() is not None:
                return env
            errors.append(f"{backend}: no frame")
        except Exception as e:  # each backend fails in its own way (ImportError, AttributeError, FatalError)
            first_line = str(e).splitlines()[0] if str(e) else ""
            errors.append(f"{backend or 'rendering'}: {type(e).__name__}: {first_line}")
        if env is not None:
            env.close()
    if mujoco and not chosen:
        del os.environ["MUJOCO_GL"]
    fix = (
        "install EGL (libegl1) or OSMesa (libosmesa6) and set MUJOCO_GL=egl or MUJOCO_GL=osmesa"
        if mujoco
        else "install the env's rendering dependencies"
    )
    raise DtrlError(f"cannot render {env_id} off-screen ({'; '.join(errors)}): {fix}")


def record_videos(
    policy: DecisionTransformerPolicy, env_id: str, targets: Sequence[float], out_dir: Path, seed: int = 0
) -> list[Path]:
    """Record one episode per target into ``out_dir/target_<R>-episode-0.mp4``."""
    require_moviepy()
    from gymnasium.wrappers import RecordVideo

    out_dir = Path(out_dir)
    env = make_render_env(env_id)
    policy.check_env(env, env_id)
    written = []
    try:
        for target in targets:
            prefix = f"target_{target:g}"
            recorder = RecordVideo(env, str(out_dir), name_prefix=prefix, episode_trigger=lambda _: True, disable_logger=True)
            obs, _ = recorder.reset(seed=seed)
            policy.reset(target)
            reward, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = recorder.step(policy.act(obs, reward))
                done = terminated or truncated
            recorder.stop_recording()
            written.append(out_dir / f"{prefix}-episode-0.mp4")
    finally:
        env.close()
    return written
