"""The documentation site builds without a warning, and the examples run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_docs_build_strict(tmp_path: Path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in ("index.html", "cli/index.html", "api/index.html", "walkthrough/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert "dtrl calibrate" in (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "DecisionTransformerPolicy" in (tmp_path / "site" / "api" / "index.html").read_text()


def test_nav_lists_every_page():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # mkdocs' !!python tags
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    in_nav = {page for entry in config["nav"] for page in entry.values()}
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert on_disk <= in_nav, f"pages missing from mkdocs.yml's nav: {sorted(on_disk - in_nav)}"


@pytest.mark.parametrize("example", ["train_and_act.py"])
def test_example_runs(example: str, tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), str(tmp_path / "run"), "--steps", "30"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "episode return" in proc.stdout
