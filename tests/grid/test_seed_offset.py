"""seed_offset: the same grid on other seeds (every variant's and sweep's seeds and the probes' seeds
shifted), rejected when it is not an integer >= 0; and the `replication` rule that compares such a run's
scorecard with the earlier run's (`replicate_of`)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from models import ConfigError
from workflows.grid.grid import Grid, load_pipeline_config
from workflows.bench.probes import DEFAULT_SEEDS, ProbeSettings, offset_probe_seeds

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "seeds": [0, 1], "lrs": [0.01], "baseline": "baseline",
    "data": {"source": "shakespeare", "tokenizer": "bytes"},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context_length": 32},
    "train": {"steps": 10},
    "variants": {"baseline": {"family": "baseline"}, "own_seeds": {"model": {"norm": "layernorm"}, "seeds": [5]}},
    "sweeps": {"dropout": {"values": [0.1], "set": {"model.dropout": "value"}, "seeds": [7, 8]}},
}


def test_offset_shifts_every_seed_of_every_variant_and_sweep():
    plain, shifted = Grid.from_config(BASE), Grid.from_config({**BASE, "seed_offset": 1000})
    assert plain.seed_offset == 0 and shifted.seed_offset == 1000
    assert shifted.seeds == [1000, 1001]
    for v in plain.variants:
        assert shifted.variant_seeds(v) == [s + 1000 for s in plain.variant_seeds(v)], v
    assert shifted.variant_seeds("own_seeds") == [1005] and shifted.variant_seeds("dropout_0.1") == [1007, 1008]
    # the runs carry the actual seed; disjoint from the unshifted grid's
    runs = [d["seed"] for v in shifted.variants for d in shifted.job_runs(v)]
    assert sorted(runs) == [1000, 1001, 1005, 1007, 1008]
    assert not set(runs) & {d["seed"] for v in plain.variants for d in plain.job_runs(v)}
    # otherwise the same runs
    a, b = plain.run_dict("own_seeds", 5, 0.01), shifted.run_dict("own_seeds", 1005, 0.01)
    assert {**a, "seed": 0} == {**b, "seed": 0}


def test_grid_summary_records_the_offset():
    s = Grid.from_config({**BASE, "seed_offset": 1000}).summary()
    assert s["seed_offset"] == 1000 and s["seeds"] == [1000, 1001]
    assert s["variants"]["own_seeds"]["seeds"] == [1005]
    assert Grid.from_config(BASE).summary()["seed_offset"] == 0
    json.dumps(s)  # grid.json


@pytest.mark.parametrize("bad", [-1, 1.5, "1000", True, None])
def test_bad_offset_is_rejected_naming_the_key(bad, tmp_path):
    with pytest.raises(ConfigError, match="seed_offset"):
        Grid.from_config({**BASE, "seed_offset": bad})
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "seed_offset": bad}))
    with pytest.raises(Exception, match="seed_offset"):  # the schema, as the Snakefile checks it
        Grid.from_config(load_pipeline_config(path))


def test_schema_default_is_zero(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = load_pipeline_config(path)
    assert cfg["seed_offset"] == 0 and cfg["replicate_of"] is None


def test_probe_seeds_are_shifted_from_their_default_or_the_config():
    assert ProbeSettings().seeds == list(DEFAULT_SEEDS) == [0, 1, 2]
    assert offset_probe_seeds({}, 1000) == {"seeds": [1000, 1001, 1002]}
    assert offset_probe_seeds({"seeds": [3], "batch_size": 4}, 10) == {"seeds": [13], "batch_size": 4}
    assert ProbeSettings.from_dict(offset_probe_seeds({"grad_batches": 2}, 1000)).seeds == [1000, 1001, 1002]


# ---- the Snakefile ---------------------------------------------------------------------------------
def dry_run(tmp_path, cfg, *config):
    for k in ("results", "figures", "logs", "work"):
        cfg.setdefault(k, str(tmp_path / k))
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(path), "--cores", "1"] + (["--config", *config] if config else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def probe_seeds(out: str) -> list:
    cfgs = [json.loads(line.split("--config-json '", 1)[1].split("'", 1)[0])
            for line in out.splitlines() if "workflows.bench.probes" in line and "--config-json" in line]
    assert cfgs, out[-3000:]
    return [c.get("probes", {}).get("seeds") for c in cfgs]


def test_pipeline_trains_and_probes_the_offset_seeds(tmp_path):
    rc, out = dry_run(tmp_path, dict(BASE), "seed_offset=1000")
    assert rc == 0, out[-3000:]
    assert "/runs/baseline/seed1000/lr0.01" in out and "/runs/own_seeds/seed1005/lr0.01" in out
    assert "seed0/" not in out and '"seed": 0,' not in out
    assert set(map(tuple, probe_seeds(out))) == {(1000, 1001, 1002)}
    assert '"seed_offset": 1000' in out  # grid.json
    (tmp_path / "plain").mkdir()
    rc, out = dry_run(tmp_path / "plain", dict(BASE))
    assert rc == 0, out[-3000:]
    assert set(map(lambda s: s is None, probe_seeds(out))) == {True}  # untouched: the probes' own default


def test_pipeline_rejects_a_negative_offset_before_any_job(tmp_path):
    rc, out = dry_run(tmp_path, dict(BASE), "seed_offset=-5")
    assert rc != 0 and "seed_offset" in out, out[-3000:]
    assert not (tmp_path / "results").exists()


def test_replication_rule_only_with_replicate_of(tmp_path):
    orig = tmp_path / "orig"
    orig.mkdir()
    (orig / "claims.csv").write_text("id,verdict\n")
    rc, out = dry_run(tmp_path, dict(BASE), "seed_offset=1000", f"replicate_of={orig}")
    assert rc == 0, out[-3000:]
    res = tmp_path / "results"
    assert "rule replication:" in out
    assert f"python -m workflows.analysis.replicate {orig} {res} --out {res} > " in out
    assert f"{res}/replication.csv" in out and f"{res}/replication.md" in out
    all_inputs = out.split("rule all:", 1)[1].split("\n", 2)[1]
    assert f"{res}/replication.csv" in all_inputs and f"{res}/replication.md" in all_inputs
    (tmp_path / "two").mkdir()
    rc, out = dry_run(tmp_path / "two", dict(BASE), "seed_offset=1000")
    assert rc == 0 and "rule replication:" not in out and "replication.csv" not in out, out[-3000:]
    rc, out = dry_run(tmp_path / "two", dict(BASE), f"replicate_of={tmp_path / 'two' / 'results'}")
    assert rc != 0 and "replicate_of" in out, out[-3000:]


def test_replication_rule_runs_the_comparison(tmp_path):
    """Two scorecards in place (the committed reference twice): the rule alone writes both outputs."""
    ref = REPO / "results" / "reference" / "cpu-default" / "claims.csv"
    orig, res = tmp_path / "orig", tmp_path / "results"
    for d in (orig, res):
        d.mkdir()
        (d / "claims.csv").write_text(ref.read_text())
    cfg = {**BASE, "results": str(res), "figures": str(tmp_path / "figures"), "logs": str(tmp_path / "logs"),
           "work": str(tmp_path / "work")}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(path), "--cores", "1", "--allowed-rules", "replication",
                           "--config", "seed_offset=1000", f"replicate_of={orig}", "--",
                           str(res / "replication.csv")], capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:] + ((tmp_path / "logs" / "replication.log").read_text()
                                                if (tmp_path / "logs" / "replication.log").exists() else "")
    assert (res / "replication.csv").stat().st_size > 0 and (res / "replication.md").stat().st_size > 0
