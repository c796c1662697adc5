"""benchmarks/atari_report.py: the report's numbers come from the result file, DT and BC paired by episode."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def _result() -> dict:
    def run(method: str, seed: int, returns: list[float]) -> dict:
        mean = float(np.mean(returns))
        return {
            "method": method,
            "seed": seed,
            "train_and_eval_wall_s": 10.0 + seed,
            "sampled": {"return_mean": mean, "returns": returns, "gamer_normalised": 100 * (mean - 1.7) / 28.8},
            "argmax": {"gamer_normalised": -5.9},
        }

    return {
        "runs": [
            run("DT", 0, [4.0, 2.0]),
            run("BC", 0, [1.0, 2.0]),
            run("DT", 1, [3.0, 3.0]),
            run("BC", 1, [3.0, 1.0]),
        ],
        "random": {"return_mean": 1.1, "gamer_normalised": -2.08},
        "dataset": {
            "agent": {
                "agent_steps": 4096,
                "wall_time_s": 12.0,
                "episodes": 9,
                "return_mean": 1.5,
                "return_last_100": 1.5,
                "return_max": 4.0,
            },
            "episodes": 5,
            "transitions": 900,
            "return_mean": 1.6,
            "return_max": 4.0,
            "gamer_normalised_mean": -0.35,
            "observations_nbytes": 6_350_400,
            "npz_bytes": 61_000,
        },
    }


def test_paired_differences_match_dt_minus_bc_episode_by_episode():
    import atari_report

    np.testing.assert_array_equal(atari_report.paired_differences(_result()), [3.0, 0.0, 0.0, 2.0])


def test_rows_show_the_data_each_seed_and_the_paper_beside():
    import atari_report

    rows = atari_report.result_rows("breakout", _result())
    assert rows[0].startswith("| Breakout | DT | 2 | 3.0 / 3.0 |") and "267.5 ± 97.5" in rows[0]
    assert rows[1].startswith("| Breakout | BC | 2 | 1.5 / 2.0 |") and "138.9 ± 61.7" in rows[1]
    assert "above on 2 of 2 seeds" in rows[3] and "+1.2 ±" in rows[3] and "4 pairs" in rows[3]
    assert atari_report.data_row("breakout", _result()) == (
        "| Breakout | 4,096 | 12 s | 9 (1.5 / 1.5 / 4) | 5, 900 | 1.6 / 4 | -0.35 | 6 MB | 0.1 MB |"
    )
