"""Recovery fine-tuning: LoRA on a pruned model lowers held-out loss, merges back into a plain pruned model
that reloads to identical logits, and bad settings are refused before the model loads."""
import json

import pytest
import torch

from conftest import compose_config, tiny_model
from prune.checkpoint import load_pruned, save_pruned
from prune.pruning import PruningPlan, apply_plan
from prune.recovery import RecoveryError, check_recovery, recover
from prune.structure import model_shape

pytest.importorskip("peft")
FAST = ["testbed=tiny", "seq_len=64", "num_samples=8", "batch_size=2", "eval.lengths=[64,256]", "progress=false"]


def _lora(**overrides):
    cfg = compose_config("recovery=lora").recovery
    cfg.merge_with(overrides)
    return cfg


def _pruned_tiny():
    model = tiny_model("llama")
    plan = PruningPlan.keep_all(model_shape(model))
    plan.keep_attention = [[1], [], [0, 1]]  # layer 1 loses its attention block entirely
    plan.keep_mlp = [[0, 5, 6], [1, 2, 3], list(range(12))]
    return apply_plan(model, plan)


@pytest.mark.parametrize("bad, match", [
    ({"steps": 0}, "recovery.steps=0 must be a positive integer"),
    ({"target_modules": []}, "recovery.target_modules=\\[\\]: empty"),  # a wrong name is refused by the schema (test_bad_input)
    ({"seq_len": 4096}, "exceeds the model's max_position_embeddings"),
    ({"lr": -1}, "recovery.lr=-1.0 must be a positive number"),
    ({"warmup_steps": 500}, "warmup_steps=500"),
])
def test_bad_settings_are_refused_in_one_line(bad, match):
    with pytest.raises(RecoveryError, match=match) as err:
        check_recovery(_lora(**bad), max_positions=1024)
    assert "\n" not in str(err.value)


def test_a_bad_setting_stops_the_job_before_the_model_loads(tmp_path):
    """A refusal (status refused, exit 2 from prune-run: see the table in test_bad_input), not a bug."""
    from prune.errors import PruneLabError
    from prune.job import run_job

    with pytest.raises(PruneLabError, match="recovery.warmup_steps=500"):
        run_job(compose_config(*FAST, "recovery=lora", "recovery.warmup_steps=500", "logger=none"), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "refused" and "load_model" not in saved["timings"]
    assert saved["error"].startswith("RecoveryError: recovery.warmup_steps=500")


def test_lora_merges_into_a_plain_pruned_model_that_reloads_to_identical_logits(tmp_path):
    from peft import PeftModel

    model = _pruned_tiny()
    stream = torch.randint(0, 61, (4000,), generator=torch.Generator().manual_seed(0))
    x = stream[:40].view(2, 20)
    one_shot = _pruned_tiny()  # the same pruned model, kept to re-apply the saved adapter to
    merged, info = recover(model, stream, _lora(steps=12, seq_len=32, batch_size=2, warmup_steps=2, dropout=0.0),
                           adapter_dir=tmp_path / "adapter")
    assert info["trainable_params"] > 0 and len(info["loss_curve"]) == 12
    assert not any("lora" in name for name, _ in merged.named_modules())  # adapters folded in, none left
    assert [p.requires_grad for p in merged.parameters()] == [p.requires_grad for p in one_shot.parameters()]  # restored
    with torch.no_grad():
        expected = merged(input_ids=x).logits
        assert (expected - one_shot(input_ids=x).logits).abs().max() > 1e-4  # training changed the weights
    save_pruned(merged, None, tmp_path / "model")
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "model")(input_ids=x).logits, expected)
        adapted = PeftModel.from_pretrained(one_shot, tmp_path / "adapter").eval()
        torch.testing.assert_close(adapted(input_ids=x).logits, expected, rtol=1e-4, atol=1e-4)


def test_targets_pruned_away_everywhere_are_refused():
    model = tiny_model("llama")
    plan = PruningPlan.keep_all(model_shape(model))
    plan.keep_attention = [[], [], []]
    apply_plan(model, plan)
    with pytest.raises(RecoveryError, match="none is left in the pruned model"):
        recover(model, torch.zeros(500, dtype=torch.long), _lora(target_modules=["q_proj", "o_proj"], steps=1, warmup_steps=0, seq_len=16))


@pytest.mark.slow
def test_job_with_lora_recovery_lowers_heldout_perplexity_and_saves_the_merged_model(tiny_testbed, tmp_path):
    from prune.job import run_job

    cfg = compose_config(*FAST, "recovery=lora", "recovery.steps=60", "recovery.seq_len=128", "recovery.batch_size=4",
                         "recovery.lr=3e-3", "recovery.warmup_steps=5", "logger=wandb")
    metrics = run_job(cfg, tmp_path)
    for length in ("64", "256"):  # held-out text: the evaluation split
        assert metrics["ppl_recovered"][length] < 0.98 * metrics["ppl_after"][length], metrics
    rec = metrics["recovery"]
    assert rec["loss_last"] < rec["loss_first"] and rec["train_tokens"] == 60 * 4 * 128
    assert rec["seed"] == 0 and rec["tokens_seen"] == 60 * 4 * 128  # recovery.seed null: the job's seed
    assert rec["stream_tokens"] == metrics["data"]["train_tokens"] == metrics["data"]["recovery"]["stream_tokens"]
    # the control: the dense model recovered the same way; the gap is measured against it, per eval length
    control = metrics["recovery_control"]
    assert control["steps"] == 60 and control["seed"] == 0 and control["train_tokens"] == 60 * 4 * 128
    for length in ("64", "256"):
        dense = metrics["ppl_dense_recovered"][length]
        assert dense < metrics["ppl_before"][length]  # training helps the dense model too: why the control is needed
        assert metrics["recovery_gap"][length] == pytest.approx(metrics["ppl_recovered"][length] / dense - 1, rel=1e-12)
    assert metrics["timings"]["recovery"] > 0 and metrics["peak_memory_mb"]["recovery"] > 0
    assert "eval_recovered" in metrics["timings"]
    assert (tmp_path / "recovery_loss.png").stat().st_size > 5000
    assert (tmp_path / "recovery_adapter" / "adapter_config.json").exists()
    from wandb_records import logged_summary

    summary = logged_summary(next(tmp_path.glob("wandb/offline-run-*")))
    assert summary["ppl_recovered/256"] == pytest.approx(metrics["ppl_recovered"]["256"])
    assert summary["recovery_gap/256"] == pytest.approx(metrics["recovery_gap"]["256"])
    assert "recovery/loss" in summary and summary["peak_memory_mb/recovery"] > 0
    # the saved model is the merged one: it reproduces the recovered perplexity
    from hydra.utils import instantiate

    from prune.data import tokenize_documents
    from prune.eval.perplexity import evaluate_lengths

    stream = tokenize_documents(instantiate(cfg.data).texts("test"), instantiate(cfg.model).tokenizer(), bos_per_document=True)
    again = evaluate_lengths(load_pruned(metrics["pruned_model_dir"]).eval(), stream, [256], 2, None, False, "check")
    assert again[256]["ppl"] == pytest.approx(metrics["ppl_recovered"]["256"], rel=1e-6)


@pytest.mark.slow
def test_lora_recovery_of_pruned_stories260k_lowers_heldout_loss(stories260k, tinystories_file):
    """A real pretrained model: 30 % of its projections removed at random, then 40 LoRA steps on the first half
    of the text lower the loss on the second half (never trained on)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prune.data import evaluation_windows, tokenize_documents
    from prune.eval.perplexity import perplexity

    tok = AutoTokenizer.from_pretrained(stories260k)
    text = tinystories_file.read_text()
    train, test = (tokenize_documents([t], tok) for t in (text[: len(text) // 2], text[len(text) // 2:]))
    model = AutoModelForCausalLM.from_pretrained(stories260k, dtype=torch.float32).eval()
    shape = model_shape(model)
    g = torch.Generator().manual_seed(0)
    plan = PruningPlan.keep_all(shape)
    plan.keep_attention = [sorted(torch.randperm(4, generator=g)[:3].tolist()) for _ in range(5)]
    plan.keep_mlp = [sorted(torch.randperm(172, generator=g)[:120].tolist()) for _ in range(5)]
    apply_plan(model, plan)
    heldout = evaluation_windows(test, 256, 256 * 16)
    before = perplexity(model, heldout, 8)["nll"]
    model, info = recover(model, train, _lora(steps=40, seq_len=128, batch_size=4, lr=3e-3, warmup_steps=4))
    after = perplexity(model, heldout, 8)["nll"]
    assert after < before - 0.05, (before, after)
    assert info["train_tokens"] == 40 * 4 * 128
