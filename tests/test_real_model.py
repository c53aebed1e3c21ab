"""Every criterion and strategy on the real pretrained stories260K: runs, and the saved model reloads exactly."""
import pytest
from conftest import compose_config
from prune.job import run_job

CASES = {
    "taylor_2nd-global": ["importance=taylor_2nd", "pruning=global"],
    "wanda-uniform": ["importance=wanda", "pruning=uniform"],
    "layer-depth": ["importance=layer", "pruning=depth"],
    "block-depth": ["importance=block", "pruning=depth", "pruning.unit=block"],
    "angular-depth": ["importance=angular", "pruning=depth"],
    "block_influence-depth": ["importance=block_influence", "pruning=depth", "pruning.unit=block"],
    "taylor_1st-layer_weighted": ["importance=taylor_1st", "pruning=layer_weighted"],
    "magnitude-hybrid": ["importance=magnitude", "pruning=hybrid", "pruning.depth_share=0.5"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_strategy_on_stories260k(case, stories260k, tinystories_file, tmp_path):
    from prune.checkpoint import load_pruned

    cfg = compose_config(
        "model=hf", f"model.path={stories260k}", "data=text_split", f"data.file={tinystories_file}",
        "seq_len=128", "num_samples=8", "batch_size=4", "eval.lengths=[256]", "eval.max_tokens=4096",
        "logger=none", "progress=false", *CASES[case],
    )
    metrics = run_job(cfg, tmp_path)
    assert metrics["status"] == "ok"
    assert 0.25 <= metrics["prunable_ratio_removed"] < 0.6
    assert metrics["ppl_after"]["256"] > 0
    model = load_pruned(metrics["pruned_model_dir"]).eval()
    assert sum(p.numel() for p in model.parameters()) == metrics["params_after"]
    if "depth" in case or "hybrid" in case:
        assert metrics["layer_scores"]["criterion"] in ("layer", "block", "angular", "block_influence")
    # the reloaded model reproduces the perplexity the job measured on the in-memory pruned model
    from transformers import AutoTokenizer

    from prune.data import TextSplitSource, evaluation_windows, tokenize_documents
    from prune.eval.perplexity import perplexity

    tok = AutoTokenizer.from_pretrained(stories260k)
    stream = tokenize_documents(TextSplitSource(file=str(tinystories_file)).texts("test"), tok)
    again = perplexity(model, evaluation_windows(stream, 256, 4096), batch_size=4)
    assert again["ppl"] == pytest.approx(metrics["ppl_after"]["256"], rel=1e-6)


def test_device_map_auto_smoke_on_cpu(stories260k, tinystories_file, tmp_path):
    """model.device_map=auto goes through accelerate's placement (all on CPU here) and the job runs."""
    cfg = compose_config(
        "model=hf", f"model.path={stories260k}", "model.device_map=auto", "data=text_split", f"data.file={tinystories_file}",
        "seq_len=128", "num_samples=8", "eval.lengths=[128]", "eval.max_tokens=2048", "logger=none", "progress=false",
    )
    metrics = run_job(cfg, tmp_path)
    assert metrics["status"] == "ok" and metrics["prunable_ratio_removed"] >= 0.3
