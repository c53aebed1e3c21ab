"""A sweep's verdicts as one study: the primary endpoint, Holm within the study, the negative control.

* **Primary endpoint** (``study.primary``, declared before the study runs; ``prune.report.design``): the
  one comparison tested at alpha as is, and quoted first by the report and the README findings.
* **Secondary** comparisons: every other one. Their p values are Holm-adjusted within the study, the
  difference tests as one family and the equivalence (TOST) p values as another; a row whose test
  cannot reject at all (identical arms, no seed noise, a permutation test whose smallest p is at least
  alpha) is no member of the family. Raw and adjusted p are both shown.
* **Negative control**: ``importance=magnitude`` reads no calibration data, so in a study whose x axis
  is a calibration setting (length, samples, token budget) every verdict of a magnitude series must be
  "identical" or "no difference" (equivalence). Anything else means calibration data leaks into the
  pipeline: the study FAILS (a loud line at the top of the report, ``failed: 1`` in verdicts.json).
"""
from __future__ import annotations

from prune.stats import holm
from prune.report.jobs import setting
from prune.report.verdicts import render, testable

CALIBRATION_AXES = ("seq_len", "num_samples", "token_budget", "budget", "calibration_block", "lengths.taylor")
CONTROL_OK = ("identical", "no_difference")


def _matches(value, wanted) -> bool:
    return str(value) == str(wanted)


def primary_row(sweep, rows: list[dict]) -> tuple[dict | None, str]:
    """The row the declared primary endpoint names, and a note (why none, where it was declared)."""
    spec = sweep.design.primary
    if not spec or not spec.get("metric"):
        return None, "No primary endpoint declared (study.primary): every comparison is secondary."
    metric, at, where, arm = spec.get("metric"), spec.get("at"), spec.get("where") or {}, spec.get("arm")
    candidates = [r for r in rows if r.get("metric") == metric]
    if at is None and candidates:
        ats = [r["at"] for r in candidates]
        at = max(ats, key=int) if all(str(a).isdigit() for a in ats) else "mean"
    labels = {sweep.series_label(key) for key, jobs in sweep.series().items()
              if all(_matches(setting(j, k), v) for j in jobs for k, v in where.items())}
    found = [r for r in candidates if _matches(r["at"], at) and r.get("series") in labels
             and (arm is None or _matches(r["other"], arm))]
    arm_text = f"{sweep.x_key}={arm}" if arm is not None else f"the other {sweep.x_key}"
    ref_text = f"{sweep.x_key}={found[0]['ref']}" if len(found) == 1 else "the reference"
    described = (f"{metric} at {at}" + (f" (series {', '.join(f'{k}={v}' for k, v in where.items())})" if where else "")
                 + f": {arm_text} against {ref_text}")
    if len(found) != 1:
        why = "matches no comparison of this sweep" if not found else f"matches {len(found)} comparisons (ambiguous)"
        return None, f"The declared primary endpoint ({described}) {why}: every comparison is treated as secondary."
    return found[0], f"Primary endpoint: {described} (from {sweep.design.source})."


def control_ok(row: dict) -> bool:
    """A magnitude verdict that shows no leak: identical or equivalent arms, or a cell the dense model has
    at floor or ceiling (worded 'uninformative', not 'identical') on which both arms agree at every seed
    or item. A difference on such a cell is still a leak."""
    return row["decision"] in CONTROL_OK or (row["decision"].startswith("at_") and bool(row.get("identical")))


def negative_control(sweep, rows: list[dict]) -> dict:
    """Status of the magnitude negative control: not applicable, absent, pass or fail (with the lines)."""
    if not (sweep.x_key in CALIBRATION_AXES):
        return {"status": "not applicable", "lines": [],
                "note": f"the x axis ({sweep.x_key}) is not a calibration setting: no negative control applies."}
    labels = {sweep.series_label(key) for key, jobs in sweep.series().items()
              if all(setting(j, "importance") == "magnitude" for j in jobs)}
    control = [r for r in rows if r.get("series") in labels]
    if not control:
        return {"status": "absent", "lines": [],
                "note": "no importance=magnitude arm: whether calibration data leaks into the pipeline is not checked."}
    bad = [r for r in control if not control_ok(r)]
    if bad:
        return {"status": "fail", "lines": [r["text"] for r in bad],
                "note": (f"importance=magnitude reads no calibration data, yet {len(bad)} of its {len(control)} verdicts "
                         f"are not 'identical' or 'no difference' across {sweep.x_key}: the pipeline leaks calibration "
                         "data, and every verdict of this study is suspect.")}
    bounded = sum(r["decision"].startswith("at_") for r in control)
    return {"status": "pass", "lines": [r["text"] for r in control],
            "note": f"importance=magnitude (reads no calibration data): all {len(control)} verdicts identical or equivalent across {sweep.x_key}"
                    + (f" ({bounded} of them on cells the dense model has at floor or ceiling, the arms equal there too)." if bounded else ".")}


def finalize(sweep, rows: list[dict]) -> dict:
    """Mark the primary row, Holm-adjust the secondary ones, word every verdict, check the control."""
    primary, note = primary_row(sweep, rows)
    for row in rows:
        row["role"] = "primary" if row is primary else "secondary"
    secondary = [r for r in rows if r is not primary and testable(r)]
    for key in ("p", "p_tost"):
        family = [r for r in secondary if key in r]
        for row, adjusted in zip(family, holm([r[key] for r in family])):
            row[f"{key}_adj"] = adjusted
    for row in rows:
        render(row)
    control = negative_control(sweep, rows)
    return {"primary": primary["text"] if primary else None, "primary_note": note,
            "primary_declared_after_the_run": sweep.design.after_the_run and primary is not None,
            "reference": sweep.design.reference, "holm_family": {"difference": sum("p_adj" in r for r in rows),
                                                                  "equivalence": sum("p_tost_adj" in r for r in rows)},
            "negative_control": control, "failed": int(control["status"] == "fail")}
