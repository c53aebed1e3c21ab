"""A sweep report as one study: primary endpoint first, Holm on the secondary lines, the magnitude
negative control that fails the study on a length difference (on a synthetic sweep folder: no training)."""
import json
import random

import pytest
import yaml

from prune.stats import holm

STUDY = {"reference": None, "primary": {"metric": "ppl_after", "at": None, "where": {"importance": "taylor_2nd"}, "arm": 512}}


def make_sweep(folder, leak=0.0, study=STUDY):
    """taylor_2nd and magnitude at seq_len 128 / 512, 6 paired seeds (equal token budget, blocks): taylor_2nd
    is 0.7 % worse at 512; magnitude reads no calibration data, so its PPL moves with the length only by ``leak``."""
    rng = random.Random(0)
    for imp in ("taylor_2nd", "magnitude"):
        for L in (128, 512):
            for s in range(6):
                job = folder / f"importance={imp},seed={s},seq_len={L}"
                (job / ".hydra").mkdir(parents=True)
                base = {"128": 4.05, "512": 3.90}
                if imp == "magnitude":
                    after = {k: v * 1.05 * (1 + (leak * (1 + 0.1 * s) if L == 512 else 0)) for k, v in base.items()}
                else:
                    noise = rng.gauss(0, 0.002)
                    after = {k: v * (1 + noise + (0.007 if L == 512 else 0) + rng.gauss(0, 0.001)) for k, v in base.items()}
                run = {"importance": imp, "seq_len": L, "seed": s, "token_budget": 16384, "calibration_block": 2048,
                       "num_samples": 16384 // L, "batch_size": 4, "ratio": 0.3, "pruning": "global"}
                (job / "metrics.json").write_text(json.dumps(
                    {"status": "ok", "run": run, "ppl_before": {"128": 4.0, "512": 3.86}, "ppl_after": after}))
                (job / ".hydra" / "overrides.yaml").write_text(f"- importance={imp}\n- seed={s}\n- seq_len={L}\n")
                (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"study": study} if study else {}))
    return folder


def build(folder):
    from prune.report.build import build_report

    report = build_report(folder, log_wandb=False).read_text()
    return report, json.loads((folder / "verdicts.json").read_text())


def test_primary_first_secondary_holm_adjusted_and_the_control_passes(tmp_path):
    report, data = build(make_sweep(tmp_path / "s"))
    rows = data["structured"]
    primary = [r for r in rows if r["role"] == "primary"]
    assert len(primary) == 1 and primary[0]["what"] == "[importance=taylor_2nd] PPL after pruning, eval window 512"
    assert data["verdicts"][0].startswith("- **PRIMARY**") and rows[0]["role"] == "primary"
    assert report.index("## Primary endpoint") < report.index(primary[0]["text"]) < report.index("## Secondary comparisons")
    assert "Holm" not in primary[0]["text"] and primary[0]["decision"] == "differs"
    assert "of the pruning damage" in primary[0]["text"]
    # secondary: every testable line carries its Holm-adjusted p, equal to Holm over the study's family
    family = [r for r in rows if r["role"] == "secondary" and "p_adj" in r]
    assert family and [r["p_adj"] for r in family] == pytest.approx(holm([r["p"] for r in family]))
    assert data["study"]["holm_family"]["difference"] == len(family)
    for r in family:
        assert f"p={r['p']:.3g}, Holm-adjusted {r['p_adj']:.3g}" in r["text"]
    # the negative control: magnitude identical across lengths at every seed
    control = [r for r in rows if r["series"] == "importance=magnitude"]
    assert control and all(r["decision"] == "identical" for r in control)
    assert data["failed"] == 0 and data["study"]["negative_control"]["status"] == "pass"
    assert "STUDY FAILED" not in report


@pytest.mark.parametrize("leak", [0.01, 0.002])
def test_a_length_difference_under_magnitude_fails_the_study(tmp_path, leak):
    report, data = build(make_sweep(tmp_path / "s", leak=leak))
    assert data["failed"] == 1 and data["study"]["negative_control"]["status"] == "fail"
    assert report.splitlines()[2].startswith("**STUDY FAILED") and "leaks calibration data" in report.splitlines()[2]
    bad = data["study"]["negative_control"]["lines"]
    assert bad and all("[importance=magnitude]" in line for line in bad)


def test_a_cell_at_ceiling_is_no_leak_when_the_arms_agree_and_a_leak_when_they_differ():
    """The recovery study's probe cells where the dense model scores 1.0 are worded 'uninformative', not
    'identical'; magnitude's arms agreeing there passes the control, differing there fails it."""
    from types import SimpleNamespace

    from prune.report.study import negative_control

    jobs = {"importance=magnitude": [{"metrics": {"run": {"importance": "magnitude"}}}]}
    sweep = SimpleNamespace(x_key="seq_len", series=lambda: jobs, series_label=lambda key: key)
    rows = [{"series": "importance=magnitude", "decision": "identical", "identical": True, "text": "a"},
            {"series": "importance=magnitude", "decision": "at_ceiling", "identical": True, "text": "b"}]
    result = negative_control(sweep, rows)
    assert result["status"] == "pass" and "1 of them on cells the dense model has at floor or ceiling" in result["note"]
    rows.append({"series": "importance=magnitude", "decision": "at_ceiling", "identical": False, "text": "c"})
    result = negative_control(sweep, rows)
    assert result["status"] == "fail" and result["lines"] == ["c"]


def test_without_a_declared_primary_every_comparison_is_secondary(tmp_path):
    report, data = build(make_sweep(tmp_path / "s", study=None))
    assert all(r["role"] == "secondary" for r in data["structured"])
    assert "No primary endpoint declared" in report and data["study"]["primary"] is None


def test_the_smollm2_study_runs_its_primary_then_its_negative_control_first():
    """Hydra's sweep varies the last key fastest: the primary's 10 seeds x 2 lengths must come first and the
    magnitude control at the same condition next, so a study cut short for CPU time keeps both."""
    import itertools

    from omegaconf import OmegaConf

    from conftest import CONF

    exp = OmegaConf.load(CONF / "experiment" / "smollm2_128_vs_512.yaml")
    params = {k: str(v).split(",") for k, v in exp.hydra.sweeper.params.items()}
    order = [dict(zip(params, values)) for values in itertools.product(*params.values())]
    where = {k: str(v) for k, v in exp.study.primary.where.items()}
    assert all(all(job[k] == v for k, v in where.items()) for job in order[:20])
    control = {**where, "importance": "magnitude"}
    assert all(all(job[k] == v for k, v in control.items()) for job in order[20:40])
    assert {(j["seed"], j["seq_len"]) for j in order[:20]} == {(str(s), n) for s in range(10) for n in ("128", "512")}
