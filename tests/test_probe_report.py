"""The probe in the report: paired by item (the same items in every job), pooled over cells, with its
resolution; a cell where the dense model is at ceiling or floor is flagged and never called 'identical'
(a synthetic sweep folder: no model)."""
import json

import pytest
import yaml

CEIL, MID = "prune_passkey_L256_d10", "prune_passkey_L512_d50"
N = 20


def _cell(evidence, choice):
    items = [{"item": i, "exact": choice[i], "choice": choice[i], "ll": -1.0 + evidence[i], "ll_ablated": -1.0,
              "evidence": evidence[i], "k": 4} for i in range(N)]
    return {"n": N, "chance": 0.25, "exact": sum(choice) / N, "choice": sum(choice) / N, "items": items}


def make_sweep(folder):
    """seq_len 128 vs 512, 3 seeds. Per item, 512's needle evidence is 128's + 0.1 (+-0.002 alternating: the mean
    difference is exactly 0.1); 512 gets items i % 4 == 1 right that 128 misses (+0.25 choice accuracy)."""
    base = [-0.5 + 0.01 * i for i in range(N)]
    for L in (128, 512):
        for s in range(3):
            job = folder / f"seed={s},seq_len={L}"
            (job / ".hydra").mkdir(parents=True)
            evidence = base if L == 128 else [e + 0.1 + (0.002 if i % 2 else -0.002) for i, e in enumerate(base)]
            choice = [float(i % 2 == 0) if L == 128 else float(i % 4 != 3) for i in range(N)]
            dense = {CEIL: {**_cell(base, [1.0] * N)}, MID: _cell(base, [float(i % 2 == 0) for i in range(N)])}
            metrics = {"status": "ok", "run": {"seq_len": L, "seed": s, "importance": "taylor_2nd"},
                       "ppl_before": {"512": 4.0}, "ppl_after": {"512": 4.1 + 0.01 * s + (0.001 if L == 512 else 0)},
                       "acc_before": {CEIL: 1.0, MID: 0.5, "mean": 0.75},
                       "acc_after": {CEIL: 1.0, MID: 0.4 + 0.05 * s + (0.05 * s if L == 512 else 0), "mean": 0.7},
                       "downstream": {"before": {"probe": dense},
                                      "after": {"probe": {CEIL: _cell(evidence, choice), MID: _cell(evidence, choice)}}}}
            (job / "metrics.json").write_text(json.dumps(metrics))
            (job / ".hydra" / "overrides.yaml").write_text(f"- seed={s}\n- seq_len={L}\n")
            (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({}))
    return folder


def test_probe_rows_are_paired_by_item_and_ceiling_cells_are_flagged(tmp_path):
    from prune.report.build import build_report

    folder = make_sweep(tmp_path / "s")
    report = build_report(folder, log_wandb=False).read_text()
    rows = json.loads((folder / "verdicts.json").read_text())["structured"]
    evidence = next(r for r in rows if r.get("at") == "evidence@after")
    assert evidence["n_ref"] == 2 * N and evidence["test"] == "paired" and evidence["diff"] == pytest.approx(0.1)
    assert "paired by item over 40 items" in evidence["text"] and "paired by item:" in evidence["text"]
    assert evidence["decision"] == "differs" and evidence["better"] == 512
    choice = next(r for r in rows if r.get("at") == "choice@after")
    assert choice["diff"] == pytest.approx(0.25)  # a quarter of the items flip from wrong to right
    # 40 items: one weighs 1/40 = 0.025, not below the ±0.01 margin of an accuracy
    assert choice["resolution"] == pytest.approx(0.025) and "one item weighs 0.025, not below the margin ±0.01" in choice["text"]
    # the dense model retrieves every item of CEIL: its accuracy row is "at ceiling", never "identical"
    ceiling = next(r for r in rows if r.get("metric") == "acc_after" and r.get("at") == CEIL)
    assert ceiling["decision"] == "at_ceiling" and "identical" not in ceiling["text"]
    assert "the dense model is at ceiling on this cell (1)" in ceiling["text"]
    assert f"- {CEIL}: exact at ceiling (1 over 20 items); choice at ceiling (1 over 20 items)" in report
    assert f"- {MID}:" not in report  # the dense model is at 0.5 there (chance 0.25): neither


def test_a_cell_at_chance_is_a_floor():
    from prune.report.probe_items import bound

    assert bound({"n": 20, "choice": 0.25, "chance": 0.25}, "choice") == "floor"
    assert bound({"n": 20, "choice": 0.3, "chance": 0.25}, "choice") is None
    assert bound({"n": 20, "exact": 0.0}, "exact") == "floor" and bound({"n": 20, "exact": 1.0}, "exact") == "ceiling"


def test_the_dashboard_titles_a_ceiling_cell(tmp_path):
    from prune.report.dashboard import sections, sweep_facts

    facts = sweep_facts(make_sweep(tmp_path / "s"))
    assert facts["bounds"] == {CEIL: "ceiling"}
    titles = [spec["title"] for _, group in sections(facts) for _, spec in group if "title" in spec]
    assert f"{CEIL} accuracy (dense model at ceiling: cannot show a loss)" in titles and f"{MID} accuracy" in titles


def test_a_single_cell_states_that_one_item_outweighs_the_margin(tmp_path):
    from prune.report.build import build_report

    folder = make_sweep(tmp_path / "s")
    build_report(folder, log_wandb=False)
    rows = json.loads((folder / "verdicts.json").read_text())["structured"]
    mid = next(r for r in rows if r.get("metric") == "acc_after" and r.get("at") == MID)
    assert mid["resolution"] == pytest.approx(1 / N) and "one item weighs 0.05, not below the margin ±0.01" in mid["text"]
