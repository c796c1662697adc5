"""Envs that render off-screen, for the videos :func:`dtrl.evaluate.record_videos` writes.

Videos are rendered off-screen. MuJoCo needs an off-screen OpenGL backend
without a display: when ``MUJOCO_GL`` is unset, EGL is tried, then OSMesa.
MuJoCo envs render through their ``track`` camera where the model has one:
gymnasium's default free camera does not follow the agent, which walks out of
the picture.
"""

from __future__ import annotations

import importlib.util
import os

import gymnasium as gym

from dtrl.envs import check_env_id, make_env
from dtrl.errors import DtrlError

_HEADLESS_BACKENDS = ("egl", "osmesa")


def require_moviepy() -> None:
    """Fail before a long evaluation, not after it, when videos cannot be written."""
    if importlib.util.find_spec("moviepy") is None:
        raise DtrlError("--video needs moviepy to write MP4 files: pip install 'dtrl[video]'")


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
            env = make_env(env_id, render_mode="rgb_array", **({"camera_name": "track"} if mujoco else {}))
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
