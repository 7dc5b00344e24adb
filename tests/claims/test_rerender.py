"""The committed references regenerate byte for byte: their scorecards, ladder tables and replication report,
re-rendered from their committed run tables with this code (``python -m workflows.claims.rerender``), equal the
committed files. A change of the verdict rule, a kind, the ladder's estimator or a table's formatting fails here
until the references are re-rendered (and their READMEs re-read) in the same change. The figures are not compared:
their bytes depend on the matplotlib and FreeType builds; `tests/plots/` renders them twice instead."""
from __future__ import annotations

from pathlib import Path

import pytest

from workflows.claims import rerender

REPO = Path(__file__).resolve().parents[2]
REF = Path("results/reference")  # relative, as the committed reports name their folders


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def same(tmp: Path, ref: Path, names):
    for name in names:
        assert (tmp / name).read_bytes() == (ref / name).read_bytes(), f"{ref / name} does not regenerate"


@pytest.mark.slow
def test_default_reference_scorecard_regenerates(tmp_path):
    ref = REF / "cpu-default"
    assert rerender.rerender(ref, tmp_path) == ["claims"]  # no --work: the figures are skipped
    same(tmp_path, ref, ["claims.csv", "claims.md", "claims_trajectory.csv"])


@pytest.mark.slow
def test_replicate_reference_and_its_replication_report_regenerate(tmp_path):
    ref = REF / "cpu-default" / "replicate"
    assert rerender.rerender(ref, tmp_path) == ["claims", "replication"]
    same(tmp_path, ref, ["claims.csv", "claims.md", "claims_trajectory.csv", "replication.csv"])
    # the report names the folders it compared: the re-rendered one is the temporary folder
    text = (tmp_path / "replication.md").read_text().replace(str(tmp_path), str(ref))
    assert text == (ref / "replication.md").read_text()


@pytest.mark.slow
def test_ladder_reference_tables_regenerate(tmp_path):
    ref = REF / "cpu-ladder"
    assert rerender.rerender(ref, tmp_path) == ["ladder", "claims"]
    same(tmp_path, ref, ["ladder.csv", "ladder.md", "ladder_trend.csv", "ladder_decisions.csv", "claims.csv",
                         "claims.md"])


def test_a_folder_without_a_grid_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rerender.main([str(tmp_path)])
    assert "no grid.json" in capsys.readouterr().err
