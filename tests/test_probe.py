"""The long-context probe: items built right from the evaluation split, refusals, and agreement with the
testbed's own long-range task (full context high, key beyond a 128-token window at chance)."""
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from prune.errors import ConfigError
from prune.eval.probe import ProbeError, check_probe, parse_task, task_name, write_probe_dir


def _probe(**overrides):
    cfg = compose_config("testbed=tiny").eval.probe
    cfg.merge_with(overrides)
    return cfg


def _testbed(name="tiny"):
    from hydra.utils import instantiate

    from prune.data import tokenize_documents

    cfg = compose_config(f"testbed={name}", "progress=false")
    model, data = instantiate(cfg.model), instantiate(cfg.data)
    tok = model.tokenizer()
    return model, tok, tokenize_documents(data.texts("test"), tok, bos_per_document=True)


def _items(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]


def test_names_round_trip():
    assert task_name(512, 0.25) == "prune_passkey_L512_d25" and parse_task("prune_passkey_L512_d25") == (512, 0.25)
    assert parse_task("testbed_longrange") is None


@pytest.mark.parametrize("bad, match", [({"depths": [1.5]}, "depths"), ({"lengths": [8]}, "lengths"),
                                        ({"items": 0}, "items=0")])
def test_bad_probe_settings_are_refused_in_one_line(bad, match):
    with pytest.raises(ProbeError, match=match) as err:
        check_probe(_probe(**bad))
    assert "\n" not in str(err.value)


def test_an_unknown_probe_format_is_refused_by_the_schema():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_config("eval.probe.format=morse")
    said = f"{err.value} {err.value.__cause__}"  # the setting and its choices, not OmegaConf's wording
    assert "eval.probe.format" in said and "morse" in said and all(c in said for c in ("auto", "passkey", "testbed"))


def test_testbed_items_hide_one_fact_at_the_chosen_depth(tmp_path):
    model, tok, stream = _testbed()
    spec = model.spec().corpus
    pcfg = _probe(lengths=[256, 512, 4096], depths=[0.0, 0.5, 0.9], items=12)
    folder = write_probe_dir(tmp_path / "a", stream, tok, pcfg, 1024, "testbed", spec)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted({t["length"] for t in manifest["tasks"].values()}) == [256, 512, 1024]  # 4096 capped at max positions
    assert manifest["chance"] == 1 / spec.values_per_attribute
    for name, info in manifest["tasks"].items():
        for item in _items(folder, name):
            words = item["context"].split(" ")
            marker, key = words[-1], item["target"].strip()
            assert key.startswith(marker + ":") and item["key"] == key
            mentions = [i for i, w in enumerate(words) if w == marker or w.startswith(marker + ":")]
            assert [words[i] for i in mentions] == [marker, key, marker]  # the needle is the only evidence
            assert len(tok(item["context"] + item["target"])["input_ids"]) == item["context_tokens"] <= info["length"]
            assert item["context_tokens"] >= info["length"] - 1
            assert len(words) - 1 - mentions[1] == item["distance"]
            assert item["distance"] == pytest.approx((1 - info["depth"]) * info["length"], abs=6)
            assert "<s>" not in words
    again = write_probe_dir(tmp_path / "b", stream, tok, pcfg, 1024, "testbed", spec)
    other = write_probe_dir(tmp_path / "c", stream, tok, _probe(lengths=[256], depths=[0.5], items=12, seed=1), 1024, "testbed", spec)
    name = task_name(256, 0.5)
    assert (again / f"{name}.jsonl").read_bytes() == (folder / f"{name}.jsonl").read_bytes()
    assert (other / f"{name}.jsonl").read_bytes() != (folder / f"{name}.jsonl").read_bytes()


def test_a_window_cuts_far_keys_out_of_the_context(tmp_path):
    model, tok, stream = _testbed()
    pcfg = _probe(lengths=[512], depths=[0.25, 0.95], items=8, window=128)
    folder = write_probe_dir(tmp_path, stream, tok, pcfg, 1024, "testbed", model.spec().corpus)
    for depth, present in ((0.25, False), (0.95, True)):
        for item in _items(folder, task_name(512, depth)):
            assert item["context_tokens"] <= 128
            assert (item["key"] in item["context"].split(" ")) == present


def test_passkey_items_fit_a_real_tokenizer(stories260k, tinystories_file, tmp_path):
    from transformers import AutoTokenizer

    from prune.data import tokenize_documents

    tok = AutoTokenizer.from_pretrained(stories260k)
    text = tinystories_file.read_text()
    stream = tokenize_documents([text[len(text) // 2:]], tok)
    folder = write_probe_dir(tmp_path, stream, tok, _probe(lengths=[128, 512, 1024], depths=[0.1, 0.9], items=6), 512, "passkey")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {t["length"] for t in manifest["tasks"].values()} == {128, 512}
    for name, info in manifest["tasks"].items():
        for item in _items(folder, name):
            assert item["context"].count(f"The pass key is {item['key']}.") == 1 and len(item["key"]) == 5
            assert item["context"].endswith("The pass key is") and item["target"] == " " + item["key"]
            assert info["length"] - 8 <= len(tok(item["context"] + item["target"])["input_ids"]) <= info["length"]


def test_a_bad_probe_setting_stops_the_job_before_the_model_loads(tmp_path):
    from prune.job import run_job

    cfg = compose_config("testbed=tiny", "seq_len=64", "num_samples=8", "batch_size=2", "eval.lengths=[64]", "logger=none",
                         "progress=false", "eval.tasks=[prune_passkey]", "eval.probe.depths=[2]")
    with pytest.raises(ConfigError, match=r"eval.probe.depths=\[2.0\] must be a non-empty list of fractions"):
        run_job(cfg, tmp_path)  # by the range its schema declares, the same check check_probe applies
    assert "load_model" not in json.loads((tmp_path / "metrics.json").read_text())["timings"]


def _truncated_longrange(source: Path, out: Path, window: int) -> Path:
    """testbed_longrange with only the last ``window`` tokens of every context (its evidence is > 128 back)."""
    import yaml

    out.mkdir()
    items = [json.loads(line) for line in (source / "testbed_longrange.jsonl").read_text().splitlines()]
    for item in items:
        item["context"] = " ".join(item["context"].split(" ")[-(window - 2):])
    (out / "cut.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    spec = yaml.safe_load((source / "testbed_longrange.yaml").read_text())
    spec.update(task="testbed_longrange_cut", tag=["cut"], dataset_kwargs={"data_files": {"test": str(out / "cut.jsonl")}})
    (out / "cut.yaml").write_text(yaml.safe_dump(spec))
    return out


@pytest.mark.slow
def test_probe_agrees_with_testbed_longrange_on_the_default_testbed(cache_dir, tmp_path):
    """Full context: both high; key / evidence beyond a 128-token window: both at chance (1/8)."""
    pytest.importorskip("lm_eval")
    from prune.eval.downstream import evaluate_tasks
    from prune.testbed.tasks import ensure_task_dir

    model_source, tok, stream = _testbed("default")
    model = model_source.load()
    spec = model_source.spec().corpus
    tasks = ensure_task_dir(spec, cache_dir)
    cut = _truncated_longrange(tasks, tmp_path / "cut", 128)
    pcfg = _probe(lengths=[512, 1024], depths=[0.1, 0.5], items=24)
    full = write_probe_dir(tmp_path / "full", stream, tok, pcfg, 1024, "testbed", spec)
    short = write_probe_dir(tmp_path / "short", stream, tok, OmegaConf.merge(pcfg, {"window": 128}), 1024, "testbed", spec)
    res = evaluate_tasks(model, tok, ["prune_passkey", "testbed_longrange", "testbed_longrange_cut"], 8, 48, None,
                         [str(full), str(tasks), str(cut)])
    res_short = evaluate_tasks(model, tok, ["prune_passkey"], 8, None, None, [str(short)])
    probe_full = [r["value"] for n, r in res["tasks"].items() if n.startswith("prune_passkey")]
    probe_short = [r["value"] for r in res_short["tasks"].values()]
    full_acc, short_acc = sum(probe_full) / len(probe_full), sum(probe_short) / len(probe_short)
    longrange, longrange_cut = res["tasks"]["testbed_longrange"]["value"], res["tasks"]["testbed_longrange_cut"]["value"]
    assert longrange > 0.6 and longrange_cut < 0.3, (longrange, longrange_cut)
    assert full_acc > 0.6 and short_acc < 0.3, (probe_full, probe_short)
    assert abs(full_acc - longrange) < 0.3 and abs(short_acc - longrange_cut) < 0.2
    for r in res["tasks"].values():
        if "perplexity" in r["metrics"]:  # key log-likelihood = -log(perplexity): near 0 when retrieved
            assert r["metrics"]["perplexity"] < 3
