"""Committed studies: compact per-job archives, and the findings page generated from their verdicts.

``prune-report <sweep> --archive experiments/results/<name>`` copies what a report needs from every job
folder (``metrics.json``, ``plan.json``, the job's ``.hydra/*.yaml``; never weights or W&B files) and the
sweep's ``multirun.yaml``, then builds the report there, so anyone can rebuild it from the repository:
``prune-report experiments/results/<name> --no-wandb``.

``python -m prune.findings`` rewrites the block of ``docs/findings.md`` (the README keeps the headline)
between ``<!-- findings:start -->`` and ``<!-- findings:end -->`` from the committed reports (their PPL
tables and verdict lines, verbatim; per study a failing negative control first, then the primary
endpoint, then the secondary lines), so a
finding there can never say more than its report's verdict; ``--check`` fails if the block is stale.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- findings:start -->", "<!-- findings:end -->"
JOB_FILES = ("metrics.json", "plan.json", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml")
# the studies the findings page reports, in order, with the verdict kinds it quotes
STUDIES = ("smollm2_128_vs_512", "smollm2_grad_cv", "control_seq_len", "graded_control", "seq_len_128_vs_512", "stories260k_128_vs_512", "fisher_scale", "fisher_scale_stories260k",
           "importance_methods", "depth_seq_len", "recovery_128_vs_512")
QUOTED = ("ppl", "accuracy", "overlap")


def archive(sweep_dir: Path, dest: Path) -> int:
    """Copy the compact per-job files of a sweep into ``dest``; returns the number of jobs copied.

    ``metrics.json`` and ``plan.json`` are stored gzipped (``.gz``, compact JSON: about 20x smaller than
    the indented originals, so a 160-job real-model study stays a few MB); every reader of a job folder
    (``prune.sweep.jobs``) takes either form. The group scores (``importance.pt``) come along as
    ``scores.json.gz``."""
    import gzip

    from prune.sweep.jobs import job_file, metrics_files, read_json

    dest.mkdir(parents=True, exist_ok=True)
    if (sweep_dir / "multirun.yaml").exists():
        shutil.copy2(sweep_dir / "multirun.yaml", dest / "multirun.yaml")
    n = 0
    for metrics in metrics_files(sweep_dir):
        job = metrics.parent
        (dest / job.name).mkdir(parents=True, exist_ok=True)
        for name in JOB_FILES:
            source = job_file(job, name)
            if source is None:
                continue
            if name.endswith(".json"):
                data = json.dumps(read_json(source), separators=(",", ":"), sort_keys=False).encode()
                target = dest / job.name / f"{name}.gz"
                if not (target.exists() and gzip.decompress(target.read_bytes()) == data):  # unchanged: left alone
                    target.write_bytes(gzip.compress(data, mtime=0))  # mtime 0: the same bytes on every rebuild
                (dest / job.name / name).unlink(missing_ok=True)  # an older plain copy
            else:
                (dest / job.name / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / job.name / name)
        if (job / "importance.pt").exists():  # the group scores, so any claim about them can be rechecked
            scores = group_scores(job / "importance.pt", digits=5)
            (dest / job.name / "scores.json.gz").write_bytes(gzip.compress(json.dumps(scores, separators=(",", ":")).encode(), mtime=0))
        n += 1
    return n


def group_scores(path: Path, digits: int = 7) -> dict:
    """A job's ``importance.pt`` as plain JSON: every group's score (``scores``: attention / mlp, one list per
    layer) and the layer scores where the criterion has them, to ``digits`` significant digits (7: fp32's
    own; archives keep 5, 30 % smaller, and the decisions themselves are exact in ``plan.json``)."""
    import torch

    data = torch.load(path, map_location="cpu", weights_only=False)

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if torch.is_tensor(value):
            return plain(value.tolist())
        return float(f"{value:.{digits}g}") if isinstance(value, float) else value

    return {"scores": plain(data.get("scores")), "layer_scores": plain(data.get("layer_scores"))}


def compress(results: Path) -> int:
    """Gzip the plain ``metrics.json`` / ``plan.json`` of every committed study's job folders in place (what
    ``archive`` now writes; archives made before it were plain, ~20x bigger). Values are unchanged (JSON
    round-trips Python floats exactly), so every report rebuilds the same. Returns the files converted."""
    import gzip

    from prune.sweep.jobs import read_json

    n = 0
    for path in sorted(results.glob("*/*/metrics.json")) + sorted(results.glob("*/*/plan.json")):
        data = json.dumps(read_json(path), separators=(",", ":")).encode()
        target = path.with_name(path.name + ".gz")
        target.write_bytes(gzip.compress(data, mtime=0))
        if read_json(target) != read_json(path):  # never lose a value
            raise SystemExit(f"{target}: the gzipped copy differs from {path}")
        path.unlink()
        n += 1
    return n


def study_block(folder: Path) -> list[str]:
    """The findings-page lines of one committed study: its PPL table and its verdicts of the quoted kinds."""
    data = json.loads((folder / "verdicts.json").read_text())
    report = (folder / "report.md").read_text().splitlines()
    header = next((line for line in report if line.startswith("| ") and "PPL@" in line), None)
    table = []
    if header:
        i = report.index(header)
        while i < len(report) and (report[i].startswith("|") or report[i].startswith("Before pruning")
                                   or (report[i] == "" and i + 1 < len(report) and report[i + 1].startswith("Before"))):
            table.append(report[i])
            i += 1
    summary = next((line for line in report if line.endswith("(seeds are repeats of one condition).")), "")
    study = data.get("study") or {}
    head = [f"**STUDY FAILED: {study['negative_control']['note']}**", ""] if data.get("failed") else []
    head += [study.get("primary_note", ""), ""] if study else []
    verdicts = [v["text"] for v in data.get("structured", []) if v.get("kind") in QUOTED or v.get("role") == "primary"]
    control = (study.get("negative_control") or {})
    tail = [f"Negative control: {control['status']}: {control['note']}", ""] if control.get("status") in ("pass", "fail", "absent") else []
    from prune.sweep.detection import HEADING as DETECTION

    detection = []  # a control's detection rates (prune.sweep.detection): the table, verbatim
    if DETECTION in report:
        i = report.index(DETECTION) + 1
        while i < len(report) and not report[i].startswith("|"):
            i += 1
        while i < len(report) and report[i].startswith("|"):
            detection.append(report[i])
            i += 1
        detection = ["Detection rates of the planted effect:", "", *detection, ""]
    return [f"### `{folder.name}`", "", *head, summary, "", *table, "", *verdicts, "", *detection, *tail,
            f"Full report, figures and per-job files: `experiments/results/{folder.name}/`.", ""]


def findings_block(results: Path) -> str:
    lines = [START, "", "_Generated by `python -m prune.findings` from the committed reports; do not edit by hand._", ""]
    for name in STUDIES:
        if (results / name / "verdicts.json").exists():
            lines += study_block(results / name)
    return "\n".join(lines + [END])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The findings page (docs/findings.md) from the committed study reports.")
    parser.add_argument("--results", default=str(REPO / "experiments" / "results"))
    parser.add_argument("--page", "--readme", dest="readme", default=str(REPO / "docs" / "findings.md"),
                        help="the Markdown file whose findings block is rewritten")
    parser.add_argument("--check", action="store_true", help="exit 1 if the findings block differs from the reports")
    parser.add_argument("--compress", action="store_true", help="gzip the committed studies' plain per-job JSON in place, then stop")
    args = parser.parse_args(argv)
    if args.compress:
        print(f"{compress(Path(args.results))} per-job files gzipped under {args.results}")
        return
    readme = Path(args.readme)
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block")
    block = findings_block(Path(args.results))
    new = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    if args.check:
        if new != text:
            print(f"{readme.name} findings are stale: run python -m prune.findings", file=sys.stderr)
            raise SystemExit(1)
        return
    readme.write_text(new)
    print(f"{readme} findings rewritten from {args.results}")


if __name__ == "__main__":
    main()
