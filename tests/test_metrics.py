"""The metrics.json record (prune.metrics): one declaration that the writer checks, the reader checks, and the
summary table and the W&B summary flatten the same way."""
import ast
import json
import logging

import pytest

from conftest import REPO
from prune.metrics import KEYS, OBJECTIVES, PER_LENGTH, PER_TASK, SUMMARY, MetricsError, checked, flat, validate

RECORD = {"status": "ok", "output_dir": "/x", "ppl_before": {"128": 10.0, "512": 9.0}, "ppl_after": {"128": 12.5, "512": 11},
          "acc_after": {"lambada": 0.25, "mean": 0.25}, "params_before": 100, "params_after": 90,
          "importance_accuracy": {"truth_lengths": [128], "by_truth": {"128": {"mlp": 0.5}}, "mlp": 0.5, "length": 128},
          "kept": [{"layer": 0, "mlp_channels": 3}], "timings": {"total": 2.0}}


def test_a_record_that_matches_passes_unchanged():
    record = json.loads(json.dumps(RECORD))
    assert checked(record) is record and validate(record) == RECORD


@pytest.mark.parametrize("change, where", [
    ({"ppl_afer": {"128": 1.0}}, "ppl_afer"),  # a misspelled key
    ({"ppl_after": {"128": "12.5"}}, "ppl_after.128"),  # a number written as text
    ({"status": "done"}, "status"),  # not a status
    ({"params_after": True}, "params_after"),  # a bool is not a count
    ({"kept": [{"layer": 0, "mlp_channel": 3}]}, "kept.0"),  # a misspelled per-layer field
])
def test_the_writer_refuses_what_is_not_declared_naming_the_key(change, where):
    with pytest.raises(MetricsError, match=rf"\b{where}\b"):
        checked({**RECORD, **change})


def test_a_record_that_does_not_match_is_still_written_in_full_then_raised(tmp_path):
    from prune.job.record import write_metrics

    bad = {**RECORD, "error": "OSError: disk", "ppl_afer": {"128": 1.0}}
    with pytest.raises(MetricsError, match="ppl_afer"):
        write_metrics(tmp_path / "metrics.json", bad)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["ppl_after"] == RECORD["ppl_after"] and saved["ppl_afer"] == {"128": 1.0}  # nothing measured lost
    assert saved["status"] == "failed" and saved["error"].startswith("OSError: disk; ") and "ppl_afer" in saved["error"]


def test_the_reader_keeps_a_newer_key_and_fails_a_wrong_type_naming_it(tmp_path, caplog):
    from prune.report.jobs import read_metrics

    (tmp_path / "metrics.json").write_text(json.dumps({**RECORD, "from_a_later_version": 1}))
    with caplog.at_level(logging.WARNING):
        assert read_metrics(tmp_path)["from_a_later_version"] == 1
    assert "from_a_later_version" in caplog.text
    (tmp_path / "metrics.json").write_text(json.dumps({**RECORD, "ppl_after": {"128": [12.5]}}))
    record = read_metrics(tmp_path)
    assert record["status"] == "failed" and "ppl_after.128" in record["error"]


def test_every_committed_per_job_file_matches_the_record():
    from prune.report.jobs import metrics_files, read_json

    files = metrics_files(REPO / "experiments" / "results", nested=True)
    assert len(files) > 100
    for path in files:
        checked(read_json(path))  # strict: no key this version does not declare


def test_flat_by_hand():
    row = flat(RECORD)
    assert row == {"ppl_before/128": 10.0, "ppl_before/512": 9.0, "ppl_after/128": 12.5, "ppl_after/512": 11,
                   "acc_after/lambada": 0.25, "acc_after/mean": 0.25, "params_before": 100, "params_after": 90,
                   "importance_accuracy/by_truth/128/mlp": 0.5, "importance_accuracy/mlp": 0.5,
                   "importance_accuracy/length": 128, "timings/total": 2.0}
    assert type(row["params_after"]) is int and type(row["ppl_after/512"]) is int  # Python numbers, not numpy
    assert flat({"status": "ok"}) == {}


def test_the_summary_table_and_the_wandb_summary_use_the_same_names():
    from prune.job.tracked import log_summary
    from prune.report.table import summary_rows

    class Tracker:
        def summary(self, values):
            self.values = values

        def __getattr__(self, name):
            return lambda *a, **k: None

    tracker = Tracker()
    log_summary(tracker, RECORD, [], {})
    row = summary_rows([{"folder": "0", "metrics": RECORD, "overrides": ["seq_len=128"], "override_values": {"seq_len": 128}}])[0]
    assert tracker.values.items() <= row.items() and row["seq_len"] == 128


def test_objectives_and_families_come_from_the_declaration():
    assert set(OBJECTIVES) <= set(KEYS) and set(SUMMARY) <= set(KEYS)
    assert {"ppl_after", "ppl_recovered", "recovery_gap"} <= set(PER_LENGTH) and set(PER_TASK) == {"acc_before", "acc_after", "acc_recovered"}
    assert OBJECTIVES["ppl_after"] == "lengths" and OBJECTIVES["acc_after"] == "tasks" and OBJECTIVES["params_after"] is None


def _metric_keys_read(tree):
    """String keys read from a metrics record: ``metrics[...]``, ``m.get(...)``, ``job["metrics"][...]``..."""
    def record(node):
        if isinstance(node, ast.Name):
            return node.id in ("metrics", "m")
        if isinstance(node, ast.Subscript):
            return isinstance(node.slice, ast.Constant) and node.slice.value == "metrics"
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "metrics")

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and record(node.value) and isinstance(node.slice, ast.Constant):
            yield node.slice.value, node.lineno
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "setdefault")
              and record(node.func.value) and node.args and isinstance(node.args[0], ast.Constant)):
            yield node.args[0].value, node.lineno


def test_every_key_the_code_reads_from_a_record_is_declared():
    reads = {(str(p.relative_to(REPO)), line, key) for p in (REPO / "prune").rglob("*.py")
             for key, line in _metric_keys_read(ast.parse(p.read_text()))}
    assert len(reads) > 50  # the scan sees the readers
    assert [r for r in reads if r[2] not in KEYS] == []
    # and would see a misspelling
    assert list(_metric_keys_read(ast.parse('job["metrics"].get("ppl_afer")'))) == [("ppl_afer", 1)]


def test_a_mismatch_never_masks_the_jobs_own_error(tmp_path):
    from prune.job.record import write_metrics

    refused = {**RECORD, "status": "refused", "error": "ConfigError: seq_len", "ppl_afer": {"128": 1.0}}
    write_metrics(tmp_path / "metrics.json", refused, raise_mismatch=False)  # the refusal is what propagates
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "refused" and saved["error"].startswith("ConfigError: seq_len; ") and "ppl_afer" in saved["error"]


def test_the_reader_keeps_a_newer_nested_field_and_everything_of_a_mismatch(tmp_path):
    from prune.report.jobs import read_metrics

    newer = {**RECORD, "config_digest": "abc", "run": {"seq_len": 128, "eval_max_tokens": 4096}}
    (tmp_path / "metrics.json").write_text(json.dumps(newer))
    assert read_metrics(tmp_path) == newer  # a resume still sees its digest: not re-run
    (tmp_path / "metrics.json").write_text(json.dumps({**newer, "params_after": [90]}))
    record = read_metrics(tmp_path)
    assert record["status"] == "failed" and record["config_digest"] == "abc" and "params_after" in record["error"]


def test_recovery_is_flattened_to_how_it_ran_not_where_its_files_went():
    row = flat({"recovery": {"method": "lora", "loss_last": 2.5, "plot": "/abs/recovery_loss.png", "adapter_dir": "/abs/a",
                             "train_seconds": 12.0, "lr": 1e-4, "loss_curve": [3.0, 2.5]}})
    assert row == {"recovery/method": "lora", "recovery/loss_last": 2.5}
