"""Online DT as its code defines it (facebookresearch/online-dt at c376fa1, the hopper defaults of main.py).

Every ODT value below is written out with the file and line it was read from, so a change to
configs/odt_hopper.yaml or to dtrl's optimisers that drifts from ODT fails here.
"""

from __future__ import annotations

import copy
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_variants import reach_dataset

from conftest import tiny_overrides
from dtrl.checkpoint import load_policy_files, load_train_state, write_policy
from dtrl.config import FinetuneConfig, ModelConfig, TrainConfig, load_config
from dtrl.errors import DtrlError
from dtrl.export import WindowPolicy
from dtrl.models import DecisionTransformer
from dtrl.models.gaussian import TEMPERATURE
from dtrl.policy import DecisionTransformerPolicy
from dtrl.train import train
from dtrl.train.finetune import finetune
from dtrl.train.optimizers import WithTemperatureOptimizer
from dtrl.train.stacked import train_stacked
from dtrl.train.step import build_optimizer

torch_optimizer = pytest.importorskip("torch_optimizer", reason='optimizer=lamb needs pip install "dtrl[odt]"')

ROOT = Path(__file__).resolve().parents[2]
ODT_CONFIG = ROOT / "configs" / "odt_hopper.yaml"

# ODT's hopper run, `python main.py` (facebookresearch/online-dt c376fa1), as dtrl config keys.
ODT_HOPPER = {
    "model.context_length": 20,  # main.py:472  --K 20
    "model.n_embd": 512,  # main.py:473  --embed_dim 512
    "model.n_layer": 4,  # main.py:474  --n_layer 4
    "model.n_head": 4,  # main.py:475  --n_head 4
    "model.activation": "relu",  # main.py:476  --activation_function relu
    "model.dropout": 0.1,  # main.py:477  --dropout 0.1 (resid_pdrop and attn_pdrop, main.py:58-59)
    "model.eval_context_length": 5,  # main.py:478  --eval_context_length 5
    "model.timestep_embedding": "none",  # main.py:480 --ordering 0; decision_transformer.py:220 `if self.ordering`
    "model.mlp_ratio": 4,  # main.py:56  n_inner=4 * embed_dim
    "model.max_episode_length": 1000,  # main.py:29  MAX_EPISODE_LEN = 1000
    "model.stochastic_policy": True,  # main.py:61  stochastic_policy=True
    "model.init_temperature": 0.1,  # main.py:487  --init_temperature 0.1
    "model.init": "odt",  # trajectory_gpt2.py:356-366 N(0, 0.02); decision_transformer.py:108-111 orthogonal heads
    "target_returns": [3600.0],  # main.py:483  --eval_rtg 3600
    "eval_episodes": 10,  # main.py:484  --num_eval_episodes 10
    "batch_size": 256,  # main.py:488  --batch_size 256
    "learning_rate": 1e-4,  # main.py:489  --learning_rate 1e-4
    "weight_decay": 5e-4,  # main.py:490  --weight_decay 5e-4
    "warmup_steps": 10_000,  # main.py:491  --warmup_steps 10000; main.py:74 min((steps + 1) / warmup, 1)
    "steps": 1 * 5000,  # main.py:494-495  --max_pretrain_iters 1 x --num_updates_per_pretrain_iter 5000
    "optimizer": "lamb",  # main.py:67  Lamb(model.parameters(), ...)
    "betas": (0.9, 0.999),  # lamb.py:88  Lamb's default betas (main.py passes none)
    "temperature_learning_rate": 1e-4,  # main.py:79  Adam([log_temperature], lr=1e-4, ...)
    "grad_clip": 0.25,  # trainer.py:96  clip_grad_norm_(model.parameters(), 0.25)
    "reward_scale": 1000.0,  # main.py:89  reward_scale = 0.001 (returns are multiplied by it)
    "lr_decay": "none",  # main.py:74  constant after the warm-up
}
ODT_LAMB_EPS = 1e-8  # main.py:71  eps=1e-8
ODT_TEMPERATURE_BETAS = (0.9, 0.999)  # main.py:80  betas=[0.9, 0.999]
ODT_ONLINE = {  # the fine-tuning command in the config's header, against ODT's online defaults
    "--target-return": 7200.0,  # main.py:499  --online_rtg 7200
    "--eval-target": 3600.0,  # main.py:483  --eval_rtg 3600
    "--batch-size": 256,  # main.py:488  one batch size for both phases
}
ODT_REPLAY_SIZE = 1000  # main.py:501  --replay_size 1000
ODT_UPDATES_PER_ROLLOUT = 300  # main.py:502  --num_updates_per_online_iter 300
ODT_ROLLOUTS_PER_ITERATION = 1  # main.py:500  --num_online_rollouts 1


def _get(config: TrainConfig, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def test_odt_hopper_config_is_odts_main_py():
    config = load_config(ODT_CONFIG)
    for key, expected in ODT_HOPPER.items():
        assert _get(config, key) == expected, key
    # fine-tuning: dtrl's defaults and the header's command are ODT's online settings
    defaults = FinetuneConfig()
    assert (defaults.buffer_size, defaults.updates_per_iteration) == (ODT_REPLAY_SIZE, ODT_UPDATES_PER_ROLLOUT)
    assert defaults.rollouts_per_iteration == ODT_ROLLOUTS_PER_ITERATION
    assert (defaults.grad_clip, defaults.learning_rate, defaults.weight_decay) == (0.25, 1e-4, 5e-4)
    header = " ".join(
        line.lstrip("#").strip().rstrip("\\") for line in ODT_CONFIG.read_text().splitlines() if line.startswith("#")
    )
    command = shlex.split(re.search(r"dtrl finetune .*?--out-dir \S+", header).group(0))
    flags = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}
    for flag, expected in ODT_ONLINE.items():
        assert float(flags[flag]) == expected, flag
    assert "--continue-optimizer" in command  # main.py:304-309: online_tuning reuses the optimizers and scheduler


def odt_model(**kw) -> DecisionTransformer:
    torch.manual_seed(0)
    base = dict(observation_dim=3, action_dim=2, context_length=4, n_layer=1, n_embd=16, dropout=0.0)
    return DecisionTransformer(ModelConfig(**{**base, "stochastic_policy": True, "timestep_embedding": "none", **kw}))


def odt_train_config(**kw) -> TrainConfig:
    values = {k: v for k, v in ODT_HOPPER.items() if "." not in k}
    return TrainConfig(**{**values, **kw})


def test_lamb_trains_the_network_and_adam_the_temperature():
    model = odt_model()
    optimizer, scheduler = build_optimizer(model, odt_train_config())
    assert isinstance(optimizer, WithTemperatureOptimizer)
    lamb, adam = optimizer.network, optimizer.temperature
    assert isinstance(lamb, torch_optimizer.Lamb) and type(adam) is torch.optim.Adam
    names = {id(p): n for n, p in model.named_parameters()}
    lamb_params = [names[id(p)] for g in lamb.param_groups for p in g["params"]]
    assert sorted(lamb_params) == sorted(n for n in names.values() if n != TEMPERATURE)  # ODT: every network weight
    assert [names[id(p)] for g in adam.param_groups for p in g["params"]] == [TEMPERATURE]
    (group,) = lamb.param_groups  # one group: weight decay on every parameter, as Lamb(model.parameters())
    assert (group["weight_decay"], group["eps"], group["betas"]) == (5e-4, ODT_LAMB_EPS, (0.9, 0.999))
    assert lamb.clamp_value == math.inf and not lamb.debias and not lamb.adam
    (t_group,) = adam.param_groups
    assert (t_group["lr"], t_group["betas"], t_group["weight_decay"]) == (1e-4, ODT_TEMPERATURE_BETAS, 0)
    # the warm-up schedules the network only: after 3 steps LAMB is at 4/10000 of its rate, the temperature at 1e-4
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert group["lr"] == pytest.approx(1e-4 * 4 / 10_000) and t_group["lr"] == 1e-4


def odt_lamb_reference(
    params: list[torch.Tensor], grads: list[list[torch.Tensor]], lr: float, wd: float
) -> list[torch.Tensor]:
    """ODT's lamb.py step (lines 143-190), written out: bias-corrected Adam step plus wd·w, scaled by |w| / |step|."""
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, ODT_LAMB_EPS
    for step, step_grads in enumerate(grads, start=1):
        for p, g, m_i, v_i in zip(params, step_grads, m, v):
            m_i.mul_(b1).add_(g, alpha=1 - b1)
            v_i.mul_(b2).addcmul_(g, g, value=1 - b2)
            update = (m_i / (1 - b1**step)) / ((v_i.sqrt() / math.sqrt(1 - b2**step)) + eps) + wd * p
            w_norm, u_norm = p.norm(), update.norm()
            trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            p.sub_(lr * trust * update)
    return params


def test_dtrls_lamb_takes_odts_steps():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    start = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(64, 6)
    optimizer, _ = build_optimizer(net, odt_train_config(warmup_steps=0, learning_rate=1e-3))
    grads = []
    for _ in range(100):
        optimizer.zero_grad()
        net(x).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
        optimizer.step()
    reference = odt_lamb_reference(start, grads, lr=1e-3, wd=5e-4)
    for p, ref, p0 in zip(net.parameters(), reference, start):
        moved = (ref - p0).abs().max()
        # equal up to where ODT's bias correction weighs the small wd·w term: under 1% of the distance moved
        assert (p.detach() - ref).abs().max() < 0.01 * moved
    # torch-optimizer's defaults would not be ODT's: its |w| clamp at 10 and its debiasing change the steps
    assert torch_optimizer.Lamb(net.parameters()).clamp_value == 10


def test_temperature_moves_at_adams_full_rate_during_the_networks_warm_up(tmp_path: Path):
    data = reach_dataset(episodes=6).save(tmp_path / "reach.npz")
    overrides = [*tiny_overrides(data, tmp_path / "run", steps=1), "model.stochastic_policy=true", "optimizer=lamb",
                 "temperature_learning_rate=1e-2", "warmup_steps=1000", "eval_episodes=1", "reward_scale=10"]  # fmt: skip
    result = train(load_config(None, overrides))
    state = load_train_state(result.checkpoint)
    (log_temperature,) = state["optimizer"]["temperature"]["state"].values()
    assert int(log_temperature["step"]) == 1

    moved = float(load_policy_files(result.checkpoint)[1][TEMPERATURE]) - math.log(0.1)
    assert abs(moved) == pytest.approx(1e-2, rel=1e-3)  # Adam's first step is lr · sign(grad), unscaled by the warm-up


def test_no_timestep_embedding_ignores_timesteps():
    model, plain = odt_model().eval(), odt_model(timestep_embedding="step").eval()
    assert model.embed_timestep is None
    assert plain.num_parameters() - model.num_parameters() == plain.config.max_episode_length * 16
    g = torch.Generator().manual_seed(1)
    rtg, states, actions = (
        torch.randn(2, 4, generator=g),
        torch.randn(2, 4, 3, generator=g),
        torch.rand(2, 4, 2, generator=g),
    )
    early, late = torch.arange(4).repeat(2, 1), torch.arange(100, 104).repeat(2, 1)
    torch.testing.assert_close(model(rtg, states, actions, early), model(rtg, states, actions, late), rtol=0, atol=0)
    assert not torch.equal(plain(rtg, states, actions, early), plain(rtg, states, actions, late))


def test_odt_initialisation_is_odts():
    model = odt_model(init="odt", n_embd=64)
    for head in (model.action_head, model.action_log_std):  # DiagGaussianActor's orthogonal weights, zero bias
        torch.testing.assert_close(head.weight @ head.weight.T, torch.eye(2), rtol=0, atol=1e-5)
        assert not head.bias.any()
    assert model.embed_state.weight.abs().max() <= 1 / math.sqrt(3)  # nn.Linear's default: U(±1/sqrt(fan_in))
    assert model.embed_state.weight.std() > 0.2  # not N(0, 0.02)
    proj = model.transformer.blocks[0].mlp.proj.weight  # its GPT-2 copy: N(0, 0.02), no residual scaling
    assert proj.std().item() == pytest.approx(0.02, rel=0.05)
    assert odt_model(n_embd=64).transformer.blocks[0].mlp.proj.weight.std().item() == pytest.approx(
        0.02 / math.sqrt(2), rel=0.05
    )


def policy_actions(model: DecisionTransformer, spec, steps: int = 6) -> np.ndarray:
    policy = DecisionTransformerPolicy(model, spec)
    policy.reset(5.0)
    out = []
    for t in range(steps):
        out.append(policy.act(np.array([t / 10], np.float32), reward=0.5))
    return np.stack(out)


def test_policy_acts_on_the_last_eval_context_length_steps():
    from test_variants import stochastic_reach_policy

    _, _, spec, _ = stochastic_reach_policy()
    shape = dict(observation_dim=1, action_dim=1, n_layer=1, n_embd=16, stochastic_policy=True)

    def policy_model(**kw) -> tuple[DecisionTransformer, object]:
        model = DecisionTransformer(ModelConfig(**shape, **kw)).eval()
        model_spec = copy.deepcopy(spec)
        model_spec.model = model.config
        return model, model_spec

    acting, acting_spec = policy_model(context_length=4, eval_context_length=2)
    weights = acting.state_dict()
    full, full_spec = policy_model(context_length=4)
    window, window_spec = policy_model(context_length=2)  # the same network, trained shapes, K = 2
    full.load_state_dict(weights)
    window.load_state_dict(weights)
    acted = policy_actions(acting, acting_spec)
    np.testing.assert_array_equal(acted, policy_actions(window, window_spec))  # the newest 2 steps only
    K_steps = policy_actions(full, full_spec)
    np.testing.assert_array_equal(acted[:2], K_steps[:2])
    assert not np.allclose(acted[2:], K_steps[2:])
    # ODT's way (decision_transformer.py:283-290): the K-step window, all but the newest 2 steps masked as padding;
    # the exported window policy does that, and agrees with the policy at step 5 (window: steps 2-5)
    steps = torch.arange(2, 6)
    out = WindowPolicy(acting, acting_spec)(
        (5.0 - 0.5 * steps)[None].float(), (steps / 10)[None, :, None].float(),
        torch.from_numpy(acted[2:6]).reshape(1, 4, 1), steps[None], torch.ones(1, 4, dtype=torch.bool),
    )  # fmt: skip
    np.testing.assert_allclose(out.detach().numpy()[0], acted[5], rtol=1e-5)


def test_eval_context_and_embedding_options_are_validated():
    with pytest.raises(DtrlError, match=r"model.eval_context_length=30 must lie in \[0, model.context_length=20\]"):
        load_config(None, ["model.eval_context_length=30"])
    with pytest.raises(DtrlError, match="model.timestep_embedding='absolute': choose 'step', 'none' or 'segment'"):
        load_config(None, ["model.timestep_embedding=absolute"])
    with pytest.raises(DtrlError, match="optimizer='sgd': choose 'adamw' or 'lamb'"):
        load_config(None, ["optimizer=sgd"])


def pretrain(tmp_path: Path, steps: int = 12, *extra: str) -> Path:
    data = reach_dataset(episodes=8).save(tmp_path / "reach.npz")
    overrides = [*tiny_overrides(data, tmp_path / "pre", steps=steps), "model.stochastic_policy=true",
                 "model.timestep_embedding=none", "model.context_length=4", "model.eval_context_length=2",
                 "optimizer=lamb", "temperature_learning_rate=1e-4", "weight_decay=5e-4", "warmup_steps=100",
                 "eval_episodes=1", "reward_scale=10", f"checkpoint_every={steps}", *extra]  # fmt: skip
    return train(load_config(None, overrides)).checkpoint


def test_finetuning_continues_the_pretraining_optimizer_as_odt(tmp_path: Path):
    checkpoint = pretrain(tmp_path)
    data = reach_dataset(episodes=8)
    common = dict(steps=20, updates_per_iteration=3, batch_size=8, eval_episodes=1, device="cpu", eval_target=9.0)
    kept = finetune(checkpoint, FinetuneConfig(**common, out_dir=str(tmp_path / "kept"), continue_optimizer=True), data)
    fresh = finetune(checkpoint, FinetuneConfig(**common, out_dir=str(tmp_path / "fresh")), data)
    assert kept.updates == fresh.updates == 6
    state = load_train_state(kept.checkpoint)
    for part in ("network", "temperature"):  # LAMB's and the temperature Adam's step counts go on from pre-training
        assert {int(s["step"]) for s in state["optimizer"][part]["state"].values()} == {12 + 6}
    assert state["scheduler"]["last_epoch"] == 18  # and the warm-up with them: ODT's scheduler is never reset
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(1e-3 * 19 / 100)
    assert state["optimizer"]["network"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 19 / 100)  # LAMB's own rate
    fresh_state = load_train_state(fresh.checkpoint)["optimizer"]  # without: a new AdamW, counted from 0
    assert {int(s["step"]) for s in fresh_state["state"].values()} == {6}
    record = yaml.safe_load((tmp_path / "kept" / "finetune.yaml").read_text())
    assert record["continue_optimizer"] is True


def test_continue_optimizer_needs_a_training_checkpoint(tmp_path: Path):

    spec, weights, _ = load_policy_files(pretrain(tmp_path, steps=2))
    exported = tmp_path / "policy"
    write_policy(exported, spec, weights)
    config = FinetuneConfig(steps=5, out_dir=str(tmp_path / "ft"), continue_optimizer=True, device="cpu")
    with pytest.raises(DtrlError, match="not a training checkpoint .* drop --continue-optimizer"):
        finetune(exported, config, reach_dataset(episodes=4))


def test_stacked_seeds_refuse_lamb(pendulum_path: Path, tmp_path: Path):
    config = load_config(None, [*tiny_overrides(pendulum_path, tmp_path / "s"), "optimizer=lamb"])
    with pytest.raises(DtrlError, match="stacked seeds share one elementwise AdamW"):
        train_stacked(config, [0, 1])


def test_a_lamb_run_resumes_bit_exactly(tmp_path: Path):
    data = reach_dataset(episodes=8).save(tmp_path / "reach.npz")
    odt = ["model.stochastic_policy=true", "optimizer=lamb", "temperature_learning_rate=1e-3", "eval_episodes=1",
           "reward_scale=10", "checkpoint_every=3", "model.timestep_embedding=none", "model.init=odt"]  # fmt: skip
    straight = train(load_config(None, [*tiny_overrides(data, tmp_path / "a", steps=6), *odt]))
    train(load_config(None, [*tiny_overrides(data, tmp_path / "b", steps=3), *odt]))
    resumed = train(
        load_config(None, [*tiny_overrides(data, tmp_path / "b", steps=6), *odt]), resume=True, overrides={"steps": 6}
    )
    a, b = load_policy_files(straight.checkpoint)[1], load_policy_files(resumed.checkpoint)[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
