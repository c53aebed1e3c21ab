"""The positive-control testbed: long-range recall has one path, the dedicated KV group, by wiring."""
import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from prune.errors import ConfigError
from prune.testbed.build import TestbedSpec, model_config
from prune.testbed.train import train_model
from prune.testbed.control import Wiring, remove_group, value_information_leak
from prune.testbed.corpus import BOS_ID, generate_documents


def control_spec(**training) -> TestbedSpec:
    spec = TestbedSpec.from_dict(OmegaConf.to_container(compose_config("testbed=control").testbed, resolve=True))
    return dataclasses.replace(spec, training=dataclasses.replace(spec.training, **training))


def documents(spec, n=2, length=384, seed=5) -> torch.Tensor:
    return torch.tensor([[BOS_ID] + d[: length - 1] for d in generate_documents(spec.corpus, n, seed)])


def wired_random_model(spec, seed=0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(model_config(spec), attn_implementation="eager").double().eval()
    wiring = Wiring(model, spec)
    with torch.no_grad():  # weights far from init, then the wiring again: the test holds for any weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    wiring.project()
    return model


def test_only_the_dedicated_group_carries_value_identity():
    spec = control_spec()
    ids = documents(spec)
    layer, group = spec.training.dedicated_layer, spec.training.dedicated_group
    model = wired_random_model(spec)
    assert value_information_leak(model, spec, ids) > 5e-3  # the group does read the values
    other = wired_random_model(spec)
    remove_group(other, layer, 1 - group)  # removing another group leaves the path open
    assert value_information_leak(other, spec, ids) > 5e-3
    remove_group(model, layer, group)
    # nothing else: what is left is rounding (LlamaRMSNorm sums squares in float32, in another order)
    assert value_information_leak(model, spec, ids) < 1e-4


def test_an_unwired_model_leaks_value_identity_through_other_groups():
    """The leak measure can fail: without the wiring, removing the group leaves other paths open."""
    from transformers import LlamaForCausalLM

    spec = control_spec()
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(model_config(spec), attn_implementation="eager").double().eval()
    remove_group(model, spec.training.dedicated_layer, spec.training.dedicated_group)
    assert value_information_leak(model, spec, documents(spec)) > 5e-3


def test_training_keeps_the_wiring():
    spec = control_spec(warmup_max_steps=3, warmup_batch=2, warmup_window=64, dense_docs=8, doc_window=128,
                        doc_batch=2, doc_steps=2, long_window=256, long_batch=2, long_steps=1)
    stream = documents(spec, n=4, length=1024).flatten()
    model, history = train_model(spec, stream, progress=False)
    assert history["steps"] == 6
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    model = model.double()
    remove_group(model, spec.training.dedicated_layer, spec.training.dedicated_group)
    assert value_information_leak(model, spec, documents(spec)) < 1e-4


@pytest.mark.parametrize("training, message", [
    ({"dedicated_layer": 2}, "dedicated_layer=2"),
    ({"dedicated_group": 5}, "dedicated_group=5"),
])
def test_bad_control_settings_are_refused(training, message):
    spec = control_spec(**training)
    with pytest.raises(ConfigError, match=message):
        wired_random_model(spec)
