"""Collect offline datasets: train a behaviour agent, roll out its snapshots, record episodes.

The modules, from the bottom: :mod:`.recorder` (rollouts), :mod:`.agents` (SB3 behaviour agents and
their snapshots), :mod:`.quickstart` (the shipped dataset's recipe), :mod:`.d4rl` (D4RL's protocol) and
:mod:`.atari` (DQN-replay-style Atari datasets).

The recipe follows D4RL's mixed-quality datasets (``medium-replay``,
``medium-expert``): train one online agent, keep snapshots of its policy at
several points of training, roll each snapshot out (sampling from its action
distribution, so returns vary within a snapshot as well as between them), and
add episodes of a uniformly random policy. The three building blocks are
reusable on their own:

* :func:`train_behaviour_agent` trains a stable-baselines3 agent (PPO or SAC) on
  a gymnasium env and returns :class:`Snapshot` objects taken at chosen timesteps;
* :func:`record_episodes` rolls out any ``obs -> action`` callable and returns
  :class:`~dtrl.data.episodes.Episode` objects, with time-limit truncation
  recorded apart from termination;
* :func:`make_quickstart_dataset` builds the small Hopper dataset shipped as
  ``dtrl/assets/quickstart.npz`` for ``dtrl quickstart``;
* :func:`collect_d4rl` (``dtrl data collect``) makes D4RL's five gym datasets
  (random, medium, medium-replay, expert, medium-expert) for any gymnasium
  env into the dataset cache (:mod:`dtrl.data.cache`), resumably, recording
  with :func:`record_vector` (many envs, one batched policy call per step).

"""
