"""Detection rates of a positive control (prune.report.detection) on hand-made per-job records."""
import math

import pytest

from prune.report.detection import detection_rows, subset_rate


def rec(criterion, strength, seq_len, seed, removed, ppl):
    return {"criterion": criterion, "strength": strength, "seq_len": seq_len, "seed": seed, "removed": removed,
            "ppl": ppl, "at": 512}


def test_rows_count_decisions_and_ppl_per_criterion_and_strength():
    recs = []
    # removal, strong: every 128 job removes the group, no 512 job does; 512 better by 5 % +- a little
    for seed, gain in enumerate([1.05, 1.06, 1.04, 1.05]):
        recs += [rec("removal", "a=20", 128, seed, True, 10.0 * gain), rec("removal", "a=20", 512, seed, False, 10.0)]
    # taylor_2nd: 128 removes it at seeds 0, 1; 512 keeps it at seeds 1, 2; PPL as good as equal
    for seed, (r128, r512, p128) in enumerate([(True, True, 10.0), (True, False, 10.1), (False, False, 9.9), (False, True, 10.0)]):
        recs += [rec("taylor_2nd", "a=20", 128, seed, r128, p128), rec("taylor_2nd", "a=20", 512, seed, r512, 10.0)]
    recs.append(rec("taylor_2nd", "a=20", 256, 0, True, 11.0))  # another length: not part of any pair
    recs.append(rec("taylor_2nd", "a=20", 128, 9, True, 11.0))  # a seed without its 512 job: no pair
    rows = {r["criterion"]: r for r in detection_rows(recs, subset_seeds=3)}

    strong = rows["removal"]
    assert (strong["n"], strong["strength"], strong["removed_short"], strong["removed_long"]) == (4, "a=20", 1.0, 0.0)
    assert strong["decision_rate"] == 1.0 and strong["seeds_better"] == 1.0
    assert strong["ppl_gain"] == pytest.approx(math.exp(sum(math.log(g) for g in [1.05, 1.06, 1.04, 1.05]) / 4) - 1)
    assert strong["p"] == pytest.approx(0.0010927, rel=1e-3) and strong["significant"]  # scipy ttest_1samp
    assert strong["k"] == 3 and strong["ppl_rate"] == 1.0  # every 3-seed subset finds it

    weak = rows["taylor_2nd"]
    assert (weak["n"], weak["removed_short"], weak["removed_long"]) == (4, 0.5, 0.5)
    assert weak["decision_rate"] == 0.25  # only seed 1: removed at 128, kept at 512
    assert weak["seeds_better"] == 0.25  # only seed 1 has PPL(128 arm) > PPL(512 arm)
    assert weak["ppl_gain"] == pytest.approx(math.exp((math.log(1.01) + math.log(0.99)) / 4) - 1)
    assert not weak["significant"] and weak["ppl_rate"] == 0.0


def test_fewer_seeds_than_a_study_use_n_minus_one():
    recs = []
    for seed in range(3):
        recs += [rec("wanda", "-", 128, seed, True, 10.5 + seed / 10), rec("wanda", "-", 512, seed, False, 10.0)]
    (row,) = detection_rows(recs, subset_seeds=6)
    assert row["k"] == 2 and row["n"] == 3


def test_subset_rate_counts_subsets_whose_test_says_512_is_better():
    d = [0.05, 0.06, 0.04, -0.05]
    # 3-seed subsets: {.05,.06,.04} p = 0.0132 -> counted; every subset with -0.05 is not significant
    assert subset_rate(d, 3) == pytest.approx(1 / 4)
    assert subset_rate(d, 5) is None and subset_rate(d, 1) is None
    assert subset_rate([-0.05, -0.06, -0.04], 3) == 0.0  # significant, but 128 is the better arm


def test_the_wired_control_study_reads_as_the_huge_effect_point():
    """On the committed control_seq_len jobs: the mechanism is read from the jobs' config, the rows from plans."""
    from pathlib import Path

    from prune.report.conditions import Sweep
    from prune.report.detection import records, section

    sweep = Sweep(Path(__file__).resolve().parent.parent / "experiments" / "results" / "control_seq_len")
    recs, group = records(sweep)
    assert group == (1, 0) and len(recs) == 72
    text = section(sweep)
    assert "| removal | ratio=0.1 | 6 | 100 % | 0 % | 100 % | +7.39 % | 100 % | 1.8e-08 | 100 % (k=5) |" in text
    assert "| taylor_2nd | ratio=0.1 | 6 | 83 % | 50 % | 50 % |" in text


def test_no_section_without_a_mechanism(tmp_path):
    from prune.report.detection import mechanism

    (tmp_path / "job" / ".hydra").mkdir(parents=True)
    (tmp_path / "job" / ".hydra" / "config.yaml").write_text("testbed:\n  training:\n    dedicated_layer: null\n")
    assert mechanism(tmp_path, [{"folder": "job"}]) is None
    assert mechanism(tmp_path, [{"folder": "other"}]) is None
