"""Task accuracy paired by item, pooled over seeds (prune.stats.items), and its rows in a study report."""
import json
import math
import random

import pytest
import yaml

from prune.stats import compare_items, holm, mcnemar_exact
from prune.stats.items import correct_by_item


def test_item_test_matches_a_hand_computation():
    """Two seeds, five items. Item scores are the seed means; the test is the t-test of their differences."""
    ref = {0: {0: 1, 1: 0, 2: 1, 3: 0, 4: 1, 9: 1}, 1: {0: 1, 1: 0, 2: 0, 3: 0, 4: 1}}  # item 9 not in every job
    other = {0: {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}, 1: {0: 1, 1: 1, 2: 1, 3: 0, 4: 0}}
    c = compare_items(ref, other, margin=0.01)
    d = [0, 1, 0.5, 0.5, -0.5]  # per item: (other seed means) - (ref seed means)
    mean = sum(d) / 5  # 0.3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    t = mean / (sd / math.sqrt(5))
    from scipy.stats import t as student

    assert c.test == "items" and c.n_ref == c.n_other == 5
    assert c.diff == pytest.approx(0.3) and c.raw_diff == pytest.approx(0.3)
    assert c.ref_mean == pytest.approx(0.5) and c.other_mean == pytest.approx(0.8)  # accuracies over seeds and items
    assert c.p == pytest.approx(2 * student.sf(t, 4))
    half = student.ppf(0.95, 4) * sd / math.sqrt(5)
    assert (c.ci_low, c.ci_high) == pytest.approx((mean - half, mean + half))


def test_bootstrap_interval_of_a_constant_shift_is_that_shift():
    """Every item gains exactly 0.5 (one of two seeds flips it right): every resample has mean 0.5."""
    from prune.stats.items import bootstrap_ci

    ref = {0: {i: 0 for i in range(20)}, 1: {i: 0 for i in range(20)}}
    other = {0: {i: 1 for i in range(20)}, 1: {i: 0 for i in range(20)}}
    assert bootstrap_ci(ref, other) == pytest.approx((0.5, 0.5))
    assert bootstrap_ci(ref, ref) is None


def test_identical_answers_are_identical_and_no_common_item_is_no_test():
    arm = {0: {1: 1, 2: 0}, 1: {1: 0, 2: 0}}
    c = compare_items(arm, {k: dict(v) for k, v in arm.items()}, 0.01)
    assert c.identical and math.isnan(c.p)
    assert compare_items({0: {1: 1}}, {0: {2: 1}}, 0.01) is None
    assert compare_items({0: {}}, {0: {2: 1}}, 0.01) is None


def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_items():
    ref = {i: 1 for i in range(10)} | {10: 0}
    other = {i: 1 for i in range(4)} | {i: 0 for i in range(4, 10)} | {10: 1}  # 6 lost, 1 gained
    out = mcnemar_exact(ref, other)
    assert (out["items"], out["ref_only"], out["other_only"]) == (11, 6, 1)
    assert out["p"] == pytest.approx(2 * sum(math.comb(7, k) for k in range(2)) / 2 ** 7)  # 0.125


def test_correct_by_item_reads_the_compact_record():
    assert correct_by_item({"doc_ids": [3, 7, 9], "acc": "101"}, "acc") == {3: 1, 7: 0, 9: 1}
    assert correct_by_item({"doc_ids": [3, 7], "acc": "101"}, "acc") == {}  # inconsistent record: no items
    assert correct_by_item({"doc_ids": [3]}, "acc_norm") == {}


def _sweep(folder):
    """taylor_2nd answers 8 % more of 400 items right at 512 (every seed); magnitude answers identically."""
    rng = random.Random(0)
    hard = [rng.random() for _ in range(400)]
    for imp in ("taylor_2nd", "magnitude"):
        for L in (128, 512):
            for s in range(4):
                job = folder / f"importance={imp},seed={s},seq_len={L}"
                (job / ".hydra").mkdir(parents=True)
                p_right = 0.6 + (0.08 if imp == "taylor_2nd" and L == 512 else 0)
                seed_rng = random.Random(s if imp == "magnitude" else 1000 * L + s)
                bits = "".join("1" if (h + seed_rng.random()) / 2 < p_right else "0" for h in hard)
                acc = bits.count("1") / len(bits)
                tasks = {"local_piqa": {"metric": "acc", "value": acc, "items": {"doc_ids": list(range(0, 800, 2)), "acc": bits}}}
                run = {"importance": imp, "seq_len": L, "seed": s, "token_budget": 16384, "calibration_block": 2048,
                       "num_samples": 16384 // L, "batch_size": 4, "ratio": 0.3, "pruning": "global"}  # seeds pair
                (job / "metrics.json").write_text(json.dumps(
                    {"status": "ok", "run": run, "ppl_before": {"512": 3.86}, "ppl_after": {"512": 4.0 + 0.01 * s},
                     "acc_after": {"local_piqa": acc, "mean": acc}, "downstream": {"after": {"tasks": tasks}}}))
                (job / ".hydra" / "overrides.yaml").write_text(f"- importance={imp}\n- seed={s}\n- seq_len={L}\n")
                study = {"reference": None, "primary": {"metric": "ppl_after", "at": "512", "where": {"importance": "taylor_2nd"}, "arm": 512}}
                (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"study": study}))
    return folder


def test_a_study_reports_item_paired_accuracy_as_holm_adjusted_secondary_rows(tmp_path):
    from prune.report.build import build_report

    folder = _sweep(tmp_path / "s")
    build_report(folder, log_wandb=False)
    data = json.loads((folder / "verdicts.json").read_text())
    rows = [r for r in data["structured"] if r.get("metric") == "acc_items"]
    assert {r["series"] for r in rows} == {"importance=taylor_2nd", "importance=magnitude"}
    taylor = next(r for r in rows if r["series"] == "importance=taylor_2nd")
    assert taylor["role"] == "secondary" and taylor["at"] == "local_piqa" and taylor["test"] == "items"
    assert taylor["n_ref"] == 400 and "paired by item (pooled over 4 seeds)" in taylor["what"]
    assert taylor["decision"] == "differs" and str(taylor["better"]) == "512"
    assert 0.04 < taylor["diff"] < 0.12 and taylor["ci_low"] > 0
    assert "paired t-test over items" in taylor["text"] and "Holm-adjusted" in taylor["text"]
    low, high = taylor["bootstrap_ci90"]  # the distribution-free interval agrees with the t interval
    assert low == pytest.approx(taylor["ci_low"], abs=0.01) and high == pytest.approx(taylor["ci_high"], abs=0.01)
    family = [r for r in data["structured"] if r["role"] == "secondary" and "p_adj" in r]
    assert taylor in family and [r["p_adj"] for r in family] == pytest.approx(holm([r["p"] for r in family]))
    magnitude = next(r for r in rows if r["series"] == "importance=magnitude")
    assert magnitude["decision"] == "identical" and "identical on every item" in magnitude["text"]
    assert data["study"]["negative_control"]["status"] == "pass"
