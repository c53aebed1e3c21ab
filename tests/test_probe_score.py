"""Probe items scored on graded measures: the key's log-likelihood per token by hand, the needle-ablated
baseline (exactly the same score when the needle is out of the context), the K-way choice with its chance,
and passkey candidates of as many digits."""
import math

import pytest
import torch

from conftest import compose_config
from prune.eval.probe import task_name, write_probe_dir
from prune.eval.probe_score import load_cells, score_item, score_probe


def _probe(**overrides):
    cfg = compose_config("testbed=tiny").eval.probe
    cfg.merge_with(overrides)
    return cfg


def _testbed():
    from hydra.utils import instantiate

    from prune.data import tokenize_documents

    cfg = compose_config("testbed=tiny", "progress=false")
    source, data = instantiate(cfg.model), instantiate(cfg.data)
    tok = source.tokenizer()
    return source, tok, tokenize_documents(data.texts("test"), tok, bos_per_document=True)


def test_testbed_items_score_by_hand_with_chance_one_in_values(tiny_testbed, tmp_path):
    source, tok, stream = _testbed()
    corpus = source.spec().corpus
    folder = write_probe_dir(tmp_path, stream, tok, _probe(lengths=[256], depths=[0.5], items=6), 1024, "testbed", corpus)
    model = source.load().eval()
    scores = score_probe(model, tok, folder)
    cell = scores[task_name(256, 0.5)]
    assert cell["n"] == 6 and cell["chance"] == pytest.approx(1 / corpus.values_per_attribute)
    _, cells = load_cells(folder)
    item = cells[task_name(256, 0.5)][0]
    assert len(item["choices"]) == corpus.values_per_attribute and item["choices"][item["answer"]] == item["target"]
    # by hand: one forward of the context, log-softmax at its last position, the value token's entry
    ctx = tok(item["context"])["input_ids"]
    target = tok(item["context"] + item["target"])["input_ids"][len(ctx):]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx])).logits[0, -1], -1)
    first = cell["items"][0]
    assert len(target) == 1 and first["ll"] == pytest.approx(float(logp[target[0]]), abs=1e-5)
    assert first["exact"] == float(int(logp.argmax()) == target[0])
    assert first["evidence"] == pytest.approx(first["ll"] - first["ll_ablated"], abs=1e-12)
    assert cell["choice"] == pytest.approx(sum(i["choice"] for i in cell["items"]) / 6)


def test_the_ablated_baseline_equals_the_score_when_the_needle_is_out_of_the_window(tiny_testbed, tmp_path):
    source, tok, stream = _testbed()
    folder = write_probe_dir(tmp_path, stream, tok, _probe(lengths=[512], depths=[0.25], items=4, window=128), 1024,
                             "testbed", source.spec().corpus)
    cell = score_probe(source.load().eval(), tok, folder)[task_name(512, 0.25)]
    for it in cell["items"]:  # the needle was cut off: both contexts are the same text, so no evidence
        assert it["evidence"] == pytest.approx(0.0, abs=1e-6)


def test_passkey_items_offer_k_keys_of_as_many_digits(stories260k, tinystories_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prune.data import tokenize_documents

    tok = AutoTokenizer.from_pretrained(stories260k)
    stream = tokenize_documents([tinystories_file.read_text()], tok)
    folder = write_probe_dir(tmp_path, stream, tok, _probe(lengths=[128], depths=[0.5], items=5, choices=4), 512, "passkey")
    _, cells = load_cells(folder)
    for item in cells[task_name(128, 0.5)]:
        keys = [c.strip() for c in item["choices"]]
        assert len(set(keys)) == 4 and all(len(k) == 5 and k[0] != "0" for k in keys)
        assert item["choices"][item["answer"]] == item["target"]
        assert item["key"] in item["context"] and item["key"] not in item["ablated"]  # the needle is what was removed
    model = AutoModelForCausalLM.from_pretrained(stories260k, dtype=torch.float32).eval()
    cell = score_probe(model, tok, folder)[task_name(128, 0.5)]
    assert cell["chance"] == 0.25 and all(math.isfinite(i["ll"]) and i["ll"] <= 0 for i in cell["items"])


@pytest.mark.slow
def test_exact_retrieval_agrees_with_lm_evals_acc_on_every_cell(tiny_testbed, tmp_path):
    """The scorer's ``exact`` is what lm-eval's ``acc`` measures on the same items (loglikelihood, greedy)."""
    pytest.importorskip("lm_eval")
    from prune.eval.downstream import evaluate_tasks

    source, tok, stream = _testbed()
    folder = write_probe_dir(tmp_path, stream, tok, _probe(lengths=[256, 512], depths=[0.1, 0.9], items=8), 1024,
                             "testbed", source.spec().corpus)
    model = source.load().eval()
    scored = score_probe(model, tok, folder)
    res = evaluate_tasks(model, tok, ["prune_passkey"], 2, None, None, [str(folder)], 0)
    assert set(res["tasks"]) == set(scored)
    for task, cell in scored.items():
        assert cell["exact"] == pytest.approx(res["tasks"][task]["value"]), task
        # lm-eval's perplexity is exp(-mean key log-likelihood): one-token keys, so ll per token is the same mean
        assert math.exp(-cell["ll"]) == pytest.approx(res["tasks"][task]["metrics"]["perplexity"], rel=1e-3), task
