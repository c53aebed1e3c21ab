"""The recovery control and the recovery plan: the dense model recovered the same way (cached per key, the
dense weights untouched), the seed tied to the job's, steps from epochs, gradient accumulation, recovery text
disjoint from evaluation text, and full recovery refused on bf16 weights."""
import math

import pytest
import torch

from conftest import compose_config, tiny_model
from prune.cache import fingerprint
from prune.errors import PruneLabError
from prune.recovery import check_recovery, recover
from prune.metrics import RECOVERY_SUMMARY, flat
from prune.recovery import record_gap
from prune.recovery_control import control_key, dense_control
from prune.recovery_data import PASSAGE, RecoveryError, plan_steps, recovery_plan, recovery_seed, shared_passages

pytest.importorskip("peft")


def _rcfg(name="lora", **overrides):
    cfg = compose_config(f"recovery={name}").recovery
    cfg.merge_with(overrides)
    return cfg


def _stream(n, seed=0, vocab=61):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def test_the_recovery_seed_is_the_jobs_unless_fixed():
    assert compose_config("recovery=lora").recovery.seed is None
    assert recovery_seed(_rcfg(), 2) == 2 and recovery_seed(_rcfg(seed=7), 2) == 7


def test_steps_from_epochs_by_hand():
    rcfg = _rcfg(steps=None, epochs=2, batch_size=4, grad_accum=16, seq_len=256, warmup_steps=0)
    # 2 x 100,000 tokens / (4 x 16 x 256 = 16,384 tokens per step) = 12.2 -> 13 steps
    assert plan_steps(rcfg, 100_000) == 13
    with pytest.raises(RecoveryError, match="set exactly one"):
        plan_steps(_rcfg(steps=10, epochs=1.0), 100_000)
    with pytest.raises(RecoveryError, match="warmup_steps=20 must be below the 13 steps"):
        plan_steps(_rcfg(steps=None, epochs=2, batch_size=4, grad_accum=16, seq_len=256, warmup_steps=20), 100_000)


def test_a_passage_of_evaluation_text_in_the_recovery_text_is_found_and_refused():
    evaluation, recovery = _stream(1000, 1), _stream(5000, 2)
    assert shared_passages(recovery, evaluation) == 0
    leaked = torch.cat([recovery[:3000], evaluation[10:210], recovery[3000:]])
    # eval[10:210] holds the stride-64 chunks [64, 128) and [128, 192) entirely: two passages
    assert shared_passages(leaked, evaluation) == 2
    assert shared_passages(torch.cat([recovery, evaluation[10:10 + PASSAGE]]), evaluation) == 0  # misaligned, too short
    with pytest.raises(RecoveryError, match="repeats 2 passage\\(s\\) of 64 tokens of the evaluation split") as err:
        recovery_plan(_rcfg(seq_len=32), 0, leaked, evaluation)
    assert isinstance(err.value, PruneLabError) and "\n" not in str(err.value)


def test_the_testbed_calibration_split_shares_no_passage_with_its_evaluation_split(tiny_testbed):
    from hydra.utils import instantiate

    from prune.data import tokenize_documents

    cfg = compose_config("testbed=tiny")
    source, tok = instantiate(cfg.data), instantiate(cfg.model).tokenizer()
    train, test = (tokenize_documents(source.texts(s), tok, bos_per_document=True) for s in ("train", "test"))
    plan = recovery_plan(_rcfg(steps=50, batch_size=4, grad_accum=2, seq_len=128), 3, train, test)
    assert plan.seed == 3 and plan.steps == 50 and plan.source == "calibration train split"
    assert plan.tokens_seen == 50 * 4 * 2 * 128 and plan.stream_tokens == len(train)
    assert plan.epochs_seen == pytest.approx(plan.tokens_seen / len(train))


def test_recovery_from_files_counts_their_tokens(tmp_path):

    class Chars:  # one token per character
        def __call__(self, text, add_special_tokens=True, **_):
            return {"input_ids": [ord(c) % 97 for c in text]}

        bos_token_id = None

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcdefghij" * 300)  # 3000 characters
    plan = recovery_plan(_rcfg(steps=None, epochs=1, batch_size=2, seq_len=100, warmup_steps=0, data_files=[str(corpus)]),
                         0, None, _stream(500, 9, vocab=5), Chars())
    assert plan.source == "files: corpus.txt" and plan.stream_tokens == 3000 and plan.steps == 15  # 3000 / 200


def test_gradient_accumulation_takes_accum_micro_batches_per_step():
    model = tiny_model("llama")
    _, info = recover(model, _stream(3000), _rcfg(steps=3, batch_size=2, grad_accum=4, seq_len=32, warmup_steps=0))
    assert len(info["loss_curve"]) == 3 and info["train_tokens"] == 3 * 4 * 2 * 32 and info["grad_accum"] == 4


def test_full_recovery_refuses_bf16_weights_in_one_line():
    with pytest.raises(RecoveryError, match="recovery=full .* bfloat16 model .* model.dtype=float32") as err:
        check_recovery(_rcfg("full"), 1024, torch.bfloat16)
    assert isinstance(err.value, PruneLabError) and "\n" not in str(err.value)
    check_recovery(_rcfg("full"), 1024, torch.float32)
    check_recovery(_rcfg("lora"), 1024, torch.bfloat16)  # LoRA: not refused
    with pytest.raises(RecoveryError, match="bfloat16"):
        recover(tiny_model("llama", dtype=torch.bfloat16).to(torch.bfloat16), _stream(500), _rcfg("full", steps=2, warmup_steps=0, seq_len=16))


def test_the_llm_pruner_preset_needs_files_and_has_an_effective_batch_of_64():
    from prune.errors import ConfigError
    from prune.preflight import check_required

    with pytest.raises(ConfigError, match="recovery.data_files is required"):
        check_required(compose_config("recovery=lora_llm_pruner"))
    r = compose_config("recovery=lora_llm_pruner", "recovery.data_files=[a.txt]").recovery
    assert (r.lr, r.batch_size * r.grad_accum, r.epochs, r.steps, r.rank, r.alpha) == (1e-4, 64, 2, None, 8, 16)


class _Data:
    def __init__(self):
        self.test_stream, self.lengths, self.max_tokens = _stream(2000, 5), [64], None


def test_the_dense_control_trains_once_per_key_and_leaves_the_dense_model_alone(tmp_path):
    from omegaconf import OmegaConf

    from prune.eval.perplexity import evaluate_lengths

    dense = tiny_model("llama")
    before = fingerprint(dense)
    cfg = OmegaConf.create({"cache_dir": str(tmp_path), "recovery": OmegaConf.to_container(
        _rcfg(steps=6, batch_size=2, seq_len=32, warmup_steps=0, lr=3e-3, dropout=0.0))})
    data = _Data()
    plan = recovery_plan(cfg.recovery, 1, _stream(4000, 7), data.test_stream)
    calls = []

    def evaluate(model):
        calls.append(1)
        return evaluate_lengths(model, data.test_stream, [64], 2, None, False, "control")

    first = dense_control(cfg, dense, before, plan, data, evaluate)
    second = dense_control(cfg, dense, before, plan, data, evaluate)
    assert calls == [1] and not first["cached"] and second["cached"] and first["ppl"] == second["ppl"]
    assert fingerprint(dense) == before  # trained a copy
    untrained = evaluate_lengths(dense, data.test_stream, [64], 2, None, False, "dense")[64]["ppl"]
    assert first["ppl"]["64"] != pytest.approx(untrained, rel=1e-6) and first["seed"] == 1 and first["steps"] == 6
    # another seed is another control; the arm's own settings (log_every) are not part of the key
    other = recovery_plan(cfg.recovery, 2, _stream(4000, 7), data.test_stream)
    key = control_key(cfg.recovery, before, plan, data.test_stream, [64], None)
    assert key != control_key(cfg.recovery, before, other, data.test_stream, [64], None)
    cfg.recovery.log_every = 99
    assert key == control_key(cfg.recovery, before, plan, data.test_stream, [64], None)


def test_the_gap_by_hand():
    metrics = {"ppl_recovered": {"128": 3.3, "512": 3.0}}
    record_gap(metrics, {"ppl": {"128": 3.0, "512": 2.5}, "nll": {}, "seed": 0, "cached": True})
    assert metrics["recovery_gap"] == pytest.approx({"128": 0.1, "512": 0.2})
    summary = flat(metrics, RECOVERY_SUMMARY)  # what W&B gets
    assert summary["ppl_dense_recovered/512"] == 2.5 and math.isclose(summary["recovery_gap/128"], 0.1)
    assert metrics["recovery_control"] == {"seed": 0, "cached": True}
