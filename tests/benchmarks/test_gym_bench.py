"""benchmarks/gym_bench.py: the d3rlpy adapter keeps the episodes, a tiny run writes CSV + report, reruns resume."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dtrl.checkpoint import load_policy_files
from dtrl.data import EpisodeDataset

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gym_protocol as proto

HAS_D3RLPY = importlib.util.find_spec("d3rlpy") is not None
needs_d3rlpy = pytest.mark.skipif(not HAS_D3RLPY, reason='d3rlpy is not installed (pip install -e ".[bench]")')


def _bench():
    import gym_bench

    return gym_bench


@pytest.fixture()
def tiny_dataset(pendulum_dataset: EpisodeDataset, tmp_path: Path) -> Path:
    """Pendulum episodes with reference scores, so the normalised score is defined."""
    data = EpisodeDataset.from_episodes(
        list(pendulum_dataset)[:6],
        observation_space=pendulum_dataset.observation_space,
        action_space=pendulum_dataset.action_space,
        name="pendulum-tiny",
        env_id="Pendulum-v1",
        ref_scores={"random": -1200.0, "expert": -150.0},
    )
    return data.save(tmp_path / "pendulum-tiny.npz")


@needs_d3rlpy
def test_adapter_keeps_episodes_and_transitions(pendulum_dataset: EpisodeDataset) -> None:
    from d3rlpy_adapter import to_mdp_dataset

    # one episode ends by termination, one by truncation: both must stay boundaries
    episodes = list(pendulum_dataset)[:3]
    episodes[0].terminations[-1], episodes[0].truncations[-1] = True, False
    data = EpisodeDataset.from_episodes(episodes, observation_space=pendulum_dataset.observation_space,
                                        action_space=pendulum_dataset.action_space)  # fmt: skip
    mdp = to_mdp_dataset(data)
    assert len(mdp.episodes) == data.num_episodes
    assert sum(e.size() for e in mdp.episodes) == len(data)
    # d3rlpy learns from a truncated episode's last step only with its next observation, which it lacks
    assert mdp.transition_count == len(data) - int((~data.terminations[data.episode_starts[1:] - 1]).sum())
    for ours, theirs in zip(data, mdp.episodes):
        np.testing.assert_array_equal(theirs.observations, ours.observations)
        np.testing.assert_array_equal(theirs.actions, ours.actions)
        np.testing.assert_array_equal(theirs.rewards.reshape(-1), ours.rewards)
        assert bool(theirs.terminated) == bool(ours.terminations[-1])


def _run(bench, tiny: Path, out: Path, methods: str, *extra: str) -> None:
    bench.main(
        ["--budget", "cpu-reduced", "--steps", "8", "--datasets", str(tiny), "--methods", methods, "--seeds", "0",
         "--out", str(out), "--work", str(out / "runs"), *extra]
    )  # fmt: skip


def test_tiny_run_writes_csv_report_and_resumes(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    bench = _bench()
    monkeypatch.setitem(proto.BUDGETS, "cpu-reduced", proto.Budget(8, 2, 2, 3, 1, proto.SMALL_DT, warmup_fraction=0.1))
    methods = "dt,cql" if HAS_D3RLPY else "dt,bc"
    out = tmp_path / "results"
    _run(bench, tiny_dataset, out, methods)
    rows = bench.read_rows(out / bench.CSV_FILE)
    assert [(r["method"], r["dataset"], r["seed"], r["steps"]) for r in rows] == [
        (m, "pendulum-tiny", "0", "8") for m in methods.split(",")
    ]
    for r in rows:
        assert [p[0] for p in proto._pairs(r["curve"])] == [4.0, 8.0]  # evaluated at both points
        assert int(r["eval_seed"]) == bench.EVAL_SEED and int(r["episodes"]) == 2
    assert len(proto._pairs(rows[0]["calibration"])) == 3  # DT's target sweep
    report = (out / "gym.md").read_text()
    assert "Reduced budget" in report and "pendulum-tiny" in report
    assert (out / proto.CURVES_PNG).stat().st_size > 0 and (out / proto.CALIBRATION_PNG).stat().st_size > 0

    _run(bench, tiny_dataset, out, methods)  # everything is done: nothing reruns, nothing is appended
    assert len(bench.read_rows(out / bench.CSV_FILE)) == 2
    assert capsys.readouterr().out.count("skip ") == 2


def test_unknown_method_is_a_one_line_error(capsys) -> None:
    with pytest.raises(SystemExit):
        _bench().parse_args(["--methods", "dt,ppo"])
    assert "unknown method(s) ppo" in capsys.readouterr().err


@pytest.fixture()
def reach_path(tmp_path: Path) -> Path:
    """Ten-step episodes with positive returns (Online DT's rollout target is twice the evaluation target)."""
    from test_variants import reach_dataset

    data = reach_dataset(episodes=12)
    data = EpisodeDataset.from_episodes(
        list(data), observation_space=data.observation_space, action_space=data.action_space, name="reach-tiny",
        env_id=data.env_id, ref_scores={"random": 0.0, "expert": 10.0},
    )  # fmt: skip
    return data.save(tmp_path / "reach-tiny.npz")


def test_variants_write_offline_and_online_rows_and_the_report_compares_them(
    reach_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    bench = _bench()
    tiny = proto.Budget(
        8, 2, 2, 3, 1, proto.SMALL_DT, warmup_fraction=0.1, online_steps=1000, online_updates=2, online_batch_size=8
    )
    monkeypatch.setitem(proto.BUDGETS, "cpu-reduced", tiny)
    out = tmp_path / "results"
    _run(bench, reach_path, out, "dt,dc,odt", "--online-steps", "30")
    rows = bench.read_rows(out / bench.CSV_FILE)
    assert [(r["method"], r["seed"], r["steps"], r["online_steps"]) for r in rows] == [
        ("dt", "0", "8", ""), ("dc", "0", "8", ""), ("odt", "0", "8", "30"), ("odt-online", "0", "8", "30")
    ]  # fmt: skip
    by_method = {r["method"]: r for r in rows}
    for r in rows:  # one protocol: same evaluation seeds, episodes and target for every method and stage
        assert int(r["eval_seed"]) == bench.EVAL_SEED and int(r["episodes"]) == 2
        assert r["target_return"] == by_method["dt"]["target_return"]
    online_curve = proto._pairs(by_method["odt-online"]["curve"])
    assert [p[0] for p in online_curve] == [0.0, 30.0]  # environment steps: before and after fine-tuning
    # fine-tuning re-measures the offline policy on the same seeds: the offline row's final score
    assert online_curve[0][1] == pytest.approx(proto._pairs(by_method["odt"]["curve"])[-1][1], abs=1e-3)
    work = out / "runs"
    assert load_policy_files(work / "dc-reach-tiny-s0-cpu-reduced-8")[0].model.token_mixer == "conv"
    assert load_policy_files(work / "odt-reach-tiny-s0-cpu-reduced-8")[0].model.stochastic_policy
    assert (work / "odt-reach-tiny-s0-cpu-reduced-8-online-30" / "finetune.json").is_file()

    report = (out / "gym.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| dataset | DT"))
    assert header.split(" | ")[1:] == ["DT", "Decision ConvFormer", "ODT offline", "ODT online |"]
    variants_line = next(line for line in report.splitlines() if line.startswith("* reach-tiny: Decision ConvFormer"))
    assert (
        variants_line.count(" DT on every seed") + variants_line.count("of 1 seeds") == 3
    )  # dc, odt, odt-online vs DT
    assert "fine-tuning vs ODT offline:" in variants_line
    assert "Online DT fine-tuned for 30 environment steps" in report

    capsys.readouterr()
    _run(bench, reach_path, out, "dt,dc,odt", "--online-steps", "30")  # all done: nothing reruns or is appended
    assert len(bench.read_rows(out / bench.CSV_FILE)) == 4
    assert capsys.readouterr().out.count("skip ") == 3


def test_report_reads_and_upgrade_keeps_a_csv_written_before_the_variants(tmp_path: Path) -> None:
    bench = _bench()
    old_columns = [c for c in proto.COLUMNS if c not in ("online_steps", "settings", "train_s")]
    row = {
        "method": "dt", "dataset": "pendulum-tiny", "env_id": "Pendulum-v1", "seed": "0", "budget": "cpu-reduced",
        "steps": "8", "eval_seed": str(bench.EVAL_SEED), "episodes": "2", "target_return": "-100.0",
        "return_mean": "-900.00", "return_std": "1.00", "score_mean": "28.571", "score_std": "0.100",
        "curve": "4:20.000 8:28.571", "calibration": "", "dataset_best_return": "-100.0", "train_eval_s": "1.0",
        "device": "cpu",
    }  # fmt: skip
    out = tmp_path / "results"
    out.mkdir()
    csv_path = out / bench.CSV_FILE
    csv_path.write_text(",".join(old_columns) + "\n" + ",".join(row[c] for c in old_columns) + "\n")
    report = bench.report(out).read_text()
    assert "| pendulum-tiny | 28.6 ± 0.0 (n=1) |" in report
    assert "Decision ConvFormer, ODT offline, ODT online." in next(
        x for x in report.splitlines() if x.startswith("* Not run")
    )
    assert "* pendulum-tiny: Decision ConvFormer not run; ODT offline not run; ODT online not run." in report
    bench.upgrade_csv(csv_path)
    assert csv_path.read_text().splitlines()[0] == ",".join(proto.COLUMNS)
    assert bench.read_rows(csv_path) == [{**row, "online_steps": "", "settings": "", "train_s": ""}]


def test_stack_seeds_trains_the_missing_seeds_together_with_the_rows_of_separate_runs(
    reach_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    bench = _bench()
    monkeypatch.setitem(proto.BUDGETS, "cpu-reduced", proto.Budget(8, 2, 2, 3, 1, proto.SMALL_DT, warmup_fraction=0.1))
    dt_overrides = bench.dt_overrides  # dropout 0: a stacked seed then equals its separate run up to float rounding
    monkeypatch.setattr(bench, "dt_overrides", lambda *a: [*dt_overrides(*a), "model.dropout=0"])
    plain, stacked = tmp_path / "plain", tmp_path / "stacked"
    _run(bench, reach_path, plain, "dt", "--seeds", "0,1")
    separate = {r["seed"]: r for r in bench.read_rows(plain / bench.CSV_FILE)}
    bench.append_rows(stacked / bench.CSV_FILE, [separate["0"]])  # seed 0 is done: only 1 and 2 are stacked
    capsys.readouterr()
    _run(bench, reach_path, stacked, "dt", "--seeds", "0,1,2", "--stack-seeds")
    assert "skip dt reach-tiny seed 0 (done)" in capsys.readouterr().out
    rows = bench.read_rows(stacked / bench.CSV_FILE)
    assert [(r["method"], r["seed"], r["steps"]) for r in rows] == [("dt", s, "8") for s in "012"]
    group = stacked / "runs" / "dt-reach-tiny-s1_2-cpu-reduced-8-stacked"
    assert sorted(p.name for p in group.iterdir()) == ["seed_1", "seed_2"]  # ordinary run dirs, one per seed
    assert json.loads((stacked / bench.RUNS_LOG).read_text().splitlines()[-1])["stacked"] == ["dt"]
    ours, theirs = rows[1], separate["1"]
    assert [p[0] for p in proto._pairs(ours["curve"])] == [4.0, 8.0]
    assert len(proto._pairs(ours["calibration"])) == 3
    for column in ("target_return", "eval_seed", "episodes", "dataset_best_return", "online_steps"):
        assert ours[column] == theirs[column]
    for column in ("return_mean", "return_std", "score_mean"):
        assert float(ours[column]) == pytest.approx(float(theirs[column]), abs=0.02)
    for column in ("curve", "calibration"):
        np.testing.assert_allclose(proto._pairs(ours[column]), proto._pairs(theirs[column]), atol=0.11)


def test_rows_of_the_earlier_online_dt_are_marked_then_replaced_not_mixed(tmp_path: Path) -> None:
    bench = _bench()
    base = {
        "dataset": "reach-tiny", "env_id": "DtrlTestReach-v0", "seed": "0", "budget": "cpu-reduced", "steps": "8",
        "eval_seed": str(bench.EVAL_SEED), "episodes": "2", "target_return": "5.0", "return_mean": "1.0",
        "return_std": "0.0", "score_std": "0.000", "calibration": "", "dataset_best_return": "5.0",
        "train_eval_s": "1.0", "online_steps": "30", "device": "cpu",
    }  # fmt: skip

    def rows(score: str, settings: str) -> list[dict[str, str]]:
        return [{**base, "method": m, "score_mean": score, "curve": f"4:0.1 8:{score}", "settings": settings}
                for m in proto.ODT_STAGES]  # fmt: skip

    out = tmp_path / "results"
    bench.append_rows(out / bench.CSV_FILE, [{**base, "method": "dt", "online_steps": "", "score_mean": "0.500",
                                             "curve": "4:0.1 8:0.5"}, *rows("11.111", "")])  # fmt: skip
    report = bench.report(out).read_text()
    assert "measured with the earlier (non-faithful) Online DT, rerun pending" in report and "11.1" in report
    old_keys = {bench.cell_key(r) for r in bench.read_rows(out / bench.CSV_FILE)}
    assert ("odt-online", "reach-tiny", 0, "cpu-reduced", 8, 30, bench._settings("odt")) not in old_keys  # redone
    bench.append_rows(out / bench.CSV_FILE, rows("22.222", bench._settings("odt")))
    report = bench.report(out).read_text()
    assert "rerun pending" not in report and "22.2" in report and "11.1" not in report
    assert "2 rows of the earlier (non-faithful) Online DT" in report


def test_baselines_are_the_papers_mlp_and_the_transformer_without_returns(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bc and pbc train the MLP (pbc on the top timesteps), tbc the transformer without returns; seeds stacked."""
    bench = _bench()
    monkeypatch.setitem(proto.BUDGETS, "cpu-reduced", proto.Budget(8, 2, 2, 3, 1, proto.SMALL_DT, warmup_fraction=0.1))
    out = tmp_path / "results"
    _run(bench, tiny_dataset, out, "bc,pbc,tbc", "--seeds", "0,1", "--stack-seeds", "--pbc-fraction", "0.5")
    rows = bench.read_rows(out / bench.CSV_FILE)
    assert sorted((r["method"], r["seed"]) for r in rows) == [(m, s) for m in ("bc", "pbc", "tbc") for s in "01"]
    specs = {m: load_policy_files(out / "runs" / f"{m}-pendulum-tiny-s0_1-cpu-reduced-8-stacked" / "seed_1")[0]
             for m in ("bc", "pbc", "tbc")}  # fmt: skip
    assert specs["bc"].model.kind == specs["pbc"].model.kind == "mlp"
    assert specs["tbc"].model.kind == "transformer" and not specs["tbc"].model.condition_on_return
    assert specs["pbc"].dataset == "pendulum-tiny-top0.5" and specs["bc"].dataset == "pendulum-tiny"
    header = next(line for line in (out / "gym.md").read_text().splitlines() if line.startswith("| dataset |"))
    assert header.split(" | ")[1:] == ["BC (MLP)", "%BC (MLP)", "BC (transformer, no returns) |"]


@needs_d3rlpy
def test_d3rlpy_dt_takes_dtrls_recipe_and_runs_the_same_protocol(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from d3rlpy_adapter import make_dt
    from dtrl.config import load_config
    from dtrl.train.step import learning_rate_factor

    bench = _bench()
    data = EpisodeDataset.load(tiny_dataset)
    config = load_config(None, ["model.n_layer=2", "model.n_embd=32", "model.context_length=5", "batch_size=16",
                                "learning_rate=1e-3", "warmup_steps=3", "lr_decay=cosine", "steps=12",
                                "model.dropout=0.2"])  # fmt: skip
    c = make_dt(data, config, "cpu").config
    assert (c.context_size, c.num_layers, c.num_heads, c.batch_size, c.learning_rate) == (5, 2, 1, 16, 1e-3)
    assert (c.attn_dropout, c.resid_dropout, c.embed_dropout, c.activation_type) == (0.2, 0.2, 0.2, "relu")
    assert c.encoder_factory.hidden_units == [32] and c.optim_factory.clip_grad_norm == 0.25
    assert c.reward_scaler.multiplier == 1e-3 and c.optim_factory.weight_decay == 1e-4
    weight = torch.nn.Parameter(torch.zeros(1))
    optim = torch.optim.SGD([weight], lr=1.0)
    schedule = c.optim_factory.lr_scheduler_factory.create(optim)
    rates = []
    for _ in range(12):
        rates.append(optim.param_groups[0]["lr"])
        optim.step()
        schedule.step()
    assert rates == pytest.approx([learning_rate_factor(step, config) for step in range(12)])  # dtrl's own schedule

    monkeypatch.setitem(proto.BUDGETS, "cpu-reduced", proto.Budget(8, 2, 2, 3, 1, proto.SMALL_DT, final_episodes=3))
    out = tmp_path / "results"
    _run(bench, tiny_dataset, out, "dt,dt-d3rlpy")
    rows = {r["method"]: r for r in bench.read_rows(out / bench.CSV_FILE)}
    assert rows["dt-d3rlpy"]["target_return"] == rows["dt"]["target_return"]  # conditioned on the same target
    for r in rows.values():
        assert int(r["episodes"]) == 3 and float(r["train_s"]) > 0  # the last point's episodes; training timed
        assert [p[0] for p in proto._pairs(r["curve"])] == [4.0, 8.0]
    text = (out / "gym.md").read_text()
    assert "## Fidelity: dtrl's DT and d3rlpy's DT, one recipe" in text and "| pendulum-tiny | " in text


def test_plateau_compares_the_last_thirds_change_with_the_seeds_spread() -> None:
    from gym_report import plateau

    rising = [[[100, 10.0], [200, 20.0], [300, 40.0]], [[100, 12.0], [200, 22.0], [300, 42.0]]]
    change, spread = plateau(rising)  # the point nearest 2/3 of 300 steps is step 200
    assert change == pytest.approx(20.0) and spread == pytest.approx(1.0)
    flat = [[[100, 10.0], [200, 30.0], [300, 31.0]], [[100, 12.0], [200, 20.0], [300, 19.0]]]
    change, spread = plateau(flat)
    assert change == pytest.approx(0.0) and spread == pytest.approx(6.0)
    assert plateau(rising[:1]) is None  # one seed has no spread
