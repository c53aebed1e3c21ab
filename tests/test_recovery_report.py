"""The report's recovery lines judge the recovered difference against the recovery control (the dense model
recovered the same way), not against the dense model before recovery (a synthetic sweep folder: no training)."""
import json

import pytest
import yaml

STUDY = {"reference": None, "primary": {"metric": "ppl_recovered", "at": None, "where": {}, "arm": 512}}
NOISE = (0.001, -0.001, 0.002, -0.002)  # sums to zero: the mean difference is exactly the planted one


def make_sweep(folder, control=True):
    """seq_len 128 / 512 at 4 paired seeds. One-shot: 128 at 4.10, 512 at 4.05 (dense 4.00 before pruning).
    Recovered: 128 at 3.80, 512 at 3.78 (+noise); the dense model recovered the same way: 3.70."""
    for L in (128, 512):
        for s, e in enumerate(NOISE):
            job = folder / f"seed={s},seq_len={L}"
            (job / ".hydra").mkdir(parents=True)
            shift = e if L == 512 else 0.0
            metrics = {"status": "ok", "run": {"seq_len": L, "seed": s, "importance": "taylor_2nd", "ratio": 0.3},
                       "ppl_before": {"2048": 4.00}, "ppl_after": {"2048": (4.05 if L == 512 else 4.10) + shift},
                       "ppl_recovered": {"2048": (3.78 if L == 512 else 3.80) + shift},
                       "recovery": {"method": "lora", "seed": s, "train_tokens": 102400, "stream_tokens": 51200}}
            if control:
                metrics["ppl_dense_recovered"] = {"2048": 3.70}
                metrics["recovery_gap"] = {"2048": metrics["ppl_recovered"]["2048"] / 3.70 - 1}
            (job / "metrics.json").write_text(json.dumps(metrics))
            (job / ".hydra" / "overrides.yaml").write_text(f"- seed={s}\n- seq_len={L}\n")
            (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"study": STUDY}))
    return folder


def build(folder):
    from prune.report.build import build_report

    report = build_report(folder, log_wandb=False).read_text()
    return report, json.loads((folder / "verdicts.json").read_text())


def test_the_recovered_difference_is_a_share_of_the_gap_to_the_dense_recovered_control(tmp_path):
    report, data = build(make_sweep(tmp_path / "s"))
    row = next(r for r in data["structured"] if r["metric"] == "ppl_recovered")
    # -0.02 / (3.80 - 3.70) = -20 % of the gap recovery does not close; the gap is 3.80 / 3.70 - 1 = +2.70 %
    assert row["damage"]["share"] == pytest.approx(-0.2) and row["damage"]["control"]
    assert "is -20 % of the gap recovery does not close (seq_len=128: 3.8 after recovery vs 3.7 for the dense model " \
           "recovered the same way, +2.70 %)" in row["text"]
    # the section: the dense model's own change under recovery, and the difference one-shot -> recovered
    assert "the dense model goes from PPL 4 to 3.7 (-7.50 %) under the same recovery" in report
    # one-shot: 4.05 / 4.10 - 1 = -1.22 %, -0.05 / (4.10 - 4.00) = -50 % of the pruning damage
    assert "eval window 2048, seq_len=512 vs 128: -1.22 % one-shot (-50 % of the pruning damage) -> -0.53 % after " \
           "recovery (-20 % of the gap left to the dense-recovered control, +2.70 %" in report
    assert "Recovery saw 102,400 tokens per job, drawn from 51,200 distinct tokens (2.00 epochs)" in report
    assert "PPL@2048 one-shot / recovered / dense recovered" in report


def test_without_the_control_the_report_says_so(tmp_path):
    report, data = build(make_sweep(tmp_path / "s", control=False))
    row = next(r for r in data["structured"] if r["metric"] == "ppl_recovered")
    assert "gap recovery does not close" not in row["text"]
    assert "no recovery control" in report
