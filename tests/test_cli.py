"""The console entry point as a user runs it: single runs, multiruns and the real tiny model."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

# every test runs prune-run in a subprocess that does real work (a multirun, a job on stories260k)
pytestmark = pytest.mark.slow

FAST = ["testbed=tiny", "num_samples=8", "batch_size=2", "eval.lengths=[64,256]", "progress=false", "logger=none"]


def prune_run(*args, tmp):
    cmd = [sys.executable, "-m", "prune.run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=900)


def test_multirun_over_seq_len_writes_one_job_per_length(tiny_testbed, tmp_path):
    out = prune_run("-m", "seq_len=64,128", *FAST, f"hydra.sweep.dir={tmp_path / 'sweep'}", tmp=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = sorted((json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/metrics.json")),
                     key=lambda m: m["run"]["seq_len"])
    assert [m["run"]["seq_len"] for m in metrics] == [64, 128]
    assert all(m["status"] == "ok" for m in metrics)
    assert metrics[0]["data"]["calibration_windows"]["taylor"] == [8, 64]


def test_stories260k_on_two_halves_of_tinystories(stories260k, tinystories_file, tmp_path):
    """The issue's done-when command, and its ppl_before against an independent computation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = tinystories_file.read_text()
    cut = text.index("\n\n", len(text) // 2)
    (tmp_path / "a.txt").write_text(text[:cut])
    (tmp_path / "b.txt").write_text(text[cut + 2 :])
    out = prune_run(
        "model=hf", f"model.path={stories260k}", "data=text", f"data.train_files={tmp_path / 'a.txt'}",
        f"data.eval_files={tmp_path / 'b.txt'}", "seq_len=128", "eval.lengths=[512]", "logger=none",
        "progress=false", f"hydra.run.dir={tmp_path / 'run'}", tmp=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # independent: tokenizer on the raw file (one BOS), 512-token chunks, Hugging Face's own loss
    tok = AutoTokenizer.from_pretrained(stories260k)
    model = AutoModelForCausalLM.from_pretrained(stories260k).eval()
    ids = torch.tensor(tok((tmp_path / "b.txt").read_text())["input_ids"])
    chunks = ids[: len(ids) // 512 * 512].view(-1, 512)
    with torch.no_grad():
        losses = [model(input_ids=c[None], labels=c[None]).loss.item() for c in chunks]
    assert metrics["ppl_before"]["512"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-4)
    assert metrics["ppl_after"]["512"] > metrics["ppl_before"]["512"]
    assert Path(metrics["pruned_model_dir"], "config.json").exists()
