"""The graded positive control (testbed=graded): one ordinary KV group learns the long-range copy."""
import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from prune.testbed.build import TestbedSpec, json_digest, model_config, model_dir, BUILD_VERSION
from prune.testbed.corpus import BOS_ID, generate_documents
from prune.testbed.graded import group_masks, mechanism_loss, scramble_values


def spec_of(*overrides) -> TestbedSpec:
    return TestbedSpec.from_dict(OmegaConf.to_container(compose_config(*overrides).testbed, resolve=True))


def random_model(spec, seed=0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(model_config(spec), attn_implementation="eager").eval()


def test_graded_is_an_ordinary_tied_llama_with_all_dims_in_use():
    spec = spec_of("testbed=graded")
    assert not spec.training.wired and spec.training.dedicated_layer == 1
    assert model_config(spec).tie_word_embeddings  # the wired control unties; the graded one does not
    assert not model_config(spec_of("testbed=control")).tie_word_embeddings


def test_the_wired_control_keeps_its_cache_folder_and_strengths_get_their_own():
    control = spec_of("testbed=control")
    identity = dataclasses.asdict(control)  # named exactly as before `wired` existed
    identity["training"].pop("wired")
    assert model_dir(control, "/c").name == f"model-{json_digest([BUILD_VERSION, identity])}"
    names = {model_dir(spec_of("testbed=graded", f"testbed.corpus.num_attributes={n}"), "/c").name for n in (7, 13, 32)}
    assert len(names) == 3 and model_dir(control, "/c").name not in names


def test_group_masks_cover_the_group_and_nothing_else():
    spec = spec_of("testbed=graded")
    model = random_model(spec)
    masks = group_masks(model, 1, 0)
    attn = model.model.layers[1].self_attn
    head_dim, per_group = 16, 2  # hidden 64 / 4 heads; 4 query heads over 2 KV groups
    assert masks[attn.q_proj.weight].sum() == per_group * head_dim * 64
    assert masks[attn.q_proj.weight][: per_group * head_dim].all() and not masks[attn.q_proj.weight][per_group * head_dim:].any()
    assert masks[attn.k_proj.weight][:head_dim].all() and not masks[attn.k_proj.weight][head_dim:].any()
    assert masks[attn.o_proj.weight][:, : per_group * head_dim].all() and not masks[attn.o_proj.weight][:, per_group * head_dim:].any()


def test_scrambled_text_keeps_its_layout_and_attributes_but_not_its_values():
    c = spec_of("testbed=graded").corpus
    ids = torch.tensor([[BOS_ID] + d[:1023] for d in generate_documents(c, 2, 3)])
    out = scramble_values(ids, c, torch.Generator().manual_seed(0))
    is_value = (ids >= c.first_value_id) & (ids < c.first_word_id)
    assert torch.equal(out[~is_value], ids[~is_value])
    n = c.values_per_attribute
    assert torch.equal((out[is_value] - c.first_value_id) // n, (ids[is_value] - c.first_value_id) // n)
    assert 0.8 < (out[is_value] != ids[is_value]).float().mean() < 0.95  # 7 in 8 drawn values differ


def test_mechanism_loss_is_value_cross_entropy_plus_weighted_kl_from_the_base():
    c = spec_of("testbed=graded").corpus
    ids = torch.tensor([[BOS_ID, 5, c.first_value_id + 3, c.first_word_id, c.first_word_id + 1]])
    torch.manual_seed(0)
    logits = torch.randn(1, 5, c.vocab_size)
    # against itself the KL part is 0: the loss is the cross-entropy of the one value target over 4 targets
    ce = -torch.log_softmax(logits[0, 1], -1)[c.first_value_id + 3]
    assert mechanism_loss(logits, logits, ids, c).item() == pytest.approx(ce.item() / 4, rel=1e-5)
    base = logits + torch.randn_like(logits)
    assert mechanism_loss(logits, base, ids, c).item() > ce.item() / 4


@pytest.mark.slow
def test_the_trained_group_copies_facts_and_leaves_local_predictions_alone(tmp_path):
    """Trains a small graded testbed (~1 min on 2 CPU cores): removing the group costs facts, not words."""
    from testbed_analysis import class_losses, windows_with_classes
    from prune.testbed.build import token_stream
    from prune.testbed.control import remove_group
    from prune.testbed.train import train_model

    spec = spec_of("testbed=graded", "testbed.corpus.train_docs=60", "testbed.corpus.test_docs=8",
                   "testbed.training.doc_steps=120", "testbed.training.long_steps=20", "testbed.training.warmup_max_steps=600")
    model, history = train_model(spec, token_stream(spec.corpus, tmp_path, "train"), progress=False)
    assert [p["name"] for p in history["phases"]] == ["base", "base_long", "mechanism_warmup", "mechanism"]
    assert all(p.requires_grad for p in model.parameters())
    windows, classes = windows_with_classes(token_stream(spec.corpus, tmp_path, "test"), spec.corpus, 512)
    with_group = class_losses(model, windows, classes)
    remove_group(model, 1, 0)
    without = class_losses(model, windows, classes)
    assert with_group["long_range"]["accuracy"] > 0.5 > 0.2 > without["long_range"]["accuracy"]
    assert abs(without["local"]["loss"] - with_group["local"]["loss"]) < 0.005
