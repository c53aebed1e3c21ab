"""A long-context retrieval probe for any model (passkey / needle in a haystack), as local lm-eval tasks.

Generated offline, seeded, from the **evaluation** split's token stream and the model's own tokenizer:
every item is a haystack of evaluation text with a key (a random number, or on the testbed a fact value)
hidden at a chosen depth, and a question at the end whose answer is the key. One lm-eval task per context
length and depth, ``prune_passkey_L<length>_d<depth in %>``, all under the tag ``prune_passkey``
(``eval.tasks=[prune_passkey]``). Lengths are capped at the model's max positions (with the key and BOS).

Each task is ``output_type: loglikelihood`` on the key: lm-eval reports ``acc`` = exact retrieval (every
key token is the model's greedy choice, i.e. greedy decoding reproduces the key) and ``perplexity`` =
``exp(-mean key log-likelihood)``, so the key's log-likelihood is ``-log(perplexity)``.

Formats (``eval.probe.format``; ``auto`` = ``testbed`` on the testbed, else ``passkey``):

* ``passkey``: "The pass key is 48213. Remember it. 48213 is the pass key." hidden in the text; the
  context ends "What is the pass key? The pass key is" and the key is the target (chance ~ 10^-digits).
* ``testbed``: the testbed's own form of a key, a fact ``A07 A07:3`` (marker, value); the context ends
  with the marker ``A07`` and the value is the target. Every mention of that attribute is removed from the
  haystack, so the needle is the only evidence: chance is 1 / values_per_attribute, as in
  ``testbed_longrange``. The testbed retrieves a fact only through attention to it, so with the key
  further back than the model can see (``eval.probe.window``) accuracy falls to chance.

``eval.probe.window`` keeps only the last ``window`` tokens of every context (an ablation: a key further
back is out of reach).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np

from prune.errors import ProbeError  # noqa: F401  (re-exported: defined with the other refusals)

TAG = "prune_passkey"
VERSION = 2  # 2: items carry the needle-ablated context and the K candidate keys (prune.eval.probe_score)
NAME = re.compile(rf"^{TAG}_L(\d+)_d(\d+)$")
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = " What is the pass key? The pass key is"


def task_name(length: int, depth: float) -> str:
    return f"{TAG}_L{length}_d{round(100 * depth)}"


def parse_task(name: str) -> tuple[int, float] | None:
    """``prune_passkey_L512_d50`` -> (512, 0.5); None for any other task."""
    match = NAME.match(name)
    return (int(match.group(1)), int(match.group(2)) / 100) if match else None


def wanted(tasks) -> bool:
    return any(str(t) == TAG or parse_task(str(t)) for t in tasks or [])


def check_probe(pcfg) -> None:
    """Refuse a probe setting in one line, by the checks its schema declares (``prune.schema.Probe``): the same
    words whether the settings come from a config (``preflight``) or from a script."""
    from dataclasses import fields

    from prune.schema import Probe
    from prune.settings import problem

    for f in fields(Probe):
        if f.name in pcfg and (why := problem(Probe, f.name, _plain(pcfg.get(f.name)))):
            raise ProbeError(f"eval.probe.{f.name}={_plain(pcfg.get(f.name))} {why}")


def _plain(value):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


class _Format:
    """How a key is written: needle and question token ids, target text, tokens to drop from the haystack."""

    def __init__(self, kind: str, tokenizer, digits: int, corpus=None, choices: int = 4):
        self.kind, self.tok, self.digits, self.corpus, self.choices = kind, tokenizer, digits, corpus, choices

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def draw(self, rng: np.random.Generator) -> dict:
        if self.kind == "testbed":
            from prune.testbed.corpus import SPECIAL_TOKENS, vocabulary

            vocab, c = vocabulary(self.corpus), self.corpus
            attr, value = int(rng.integers(c.num_attributes)), int(rng.integers(c.values_per_attribute))
            marker, first = len(SPECIAL_TOKENS) + attr, c.first_value_id + attr * c.values_per_attribute
            reserved = {marker, *range(first, first + c.values_per_attribute)}
            values = [" " + vocab[first + v] for v in range(c.values_per_attribute)]  # every value of the attribute
            return {"needle": [marker, first + value], "question": [marker], "target": " " + vocab[first + value],
                    "key": vocab[first + value], "reserved": reserved, "choices": values, "answer": value}
        keys = []
        while len(keys) < self.choices:  # the key and choices - 1 other keys of as many digits, in random order
            key = "".join(str(d) for d in rng.integers(0, 10, self.digits))
            key = str(rng.integers(1, 10)) + key[1:]  # no leading zero
            if key not in keys:
                keys.append(key)
        key, answer = keys[0], int(rng.integers(self.choices))
        keys[0], keys[answer] = keys[answer], keys[0]
        return {"needle": self.ids(NEEDLE.format(key=key)), "question": self.ids(QUESTION), "target": " " + key,
                "key": key, "reserved": set(), "choices": [" " + k for k in keys], "answer": answer}

    def chance(self) -> float:
        """Chance of exact retrieval (greedy reproduces the key)."""
        return 1 / self.corpus.values_per_attribute if self.kind == "testbed" else 10.0 ** -self.digits

    def choice_chance(self) -> float:
        """Chance of the K-way choice (the key scores highest among the candidates)."""
        return 1 / self.corpus.values_per_attribute if self.kind == "testbed" else 1 / self.choices


def build_items(stream, tokenizer, fmt: _Format, length: int, depth: float, n: int, seed: int,
                window: int | None = None) -> list[dict]:
    """``n`` items of (at most) ``length`` tokens with the key at ``depth`` of the haystack (0 = start)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    stream = np.asarray(stream)
    rng = np.random.default_rng([seed, length, round(1000 * depth)])
    items = []
    for i in range(n):
        key = fmt.draw(rng)
        target_len = len(fmt.ids(key["target"]))
        hay_len = length - 1 - len(key["needle"]) - len(key["question"]) - target_len
        if hay_len < 1:
            raise ProbeError(f"eval.probe length {length} leaves no room for a haystack around the key")
        drop = np.isin(stream, list(special | key["reserved"]))
        hay_all = stream[~drop]
        if len(hay_all) < hay_len:
            raise ProbeError(f"the evaluation split has {len(hay_all):,} usable tokens, too few for a probe context of {length}")
        start = int(rng.integers(0, len(hay_all) - hay_len + 1))
        hay = hay_all[start: start + hay_len].tolist()
        while True:
            pos = round(depth * len(hay))
            ids = hay[:pos] + key["needle"] + hay[pos:] + key["question"]
            ablated = hay[:pos] + hay[pos:] + key["question"]  # the same context without the needle: the baseline
            if window is not None:
                ids, ablated = ids[-(window - 1 - target_len):], ablated[-(window - 1 - target_len):]
            context = tokenizer.decode(ids)
            total = len(tokenizer(context + key["target"])["input_ids"])
            if total <= length or len(hay) < 2:
                break
            hay = hay[: len(hay) - (total - length)]  # re-tokenized text came out longer: trim the haystack
        items.append({"context": context, "target": key["target"], "key": key["key"], "length": length, "depth": depth,
                      "distance": len(hay) - pos + len(key["question"]), "context_tokens": total, "item": i,
                      "ablated": tokenizer.decode(ablated), "choices": key["choices"], "answer": key["answer"]})
    return items


def _task_yaml(name: str, data_file: Path, description: str) -> dict:
    return {
        "task": name, "tag": [TAG], "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "output_type": "loglikelihood", "test_split": "test",
        "doc_to_text": "context", "doc_to_target": "target", "target_delimiter": "", "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}],
        "metadata": {"version": VERSION, "description": description},
    }


def write_probe_dir(out_dir, stream, tokenizer, pcfg, max_positions: int | None, kind: str, corpus=None) -> Path:
    """Write one lm-eval task (YAML + JSONL) per (length, depth) to ``out_dir`` and a ``manifest.json``."""
    import yaml

    from prune.eval.perplexity import effective_lengths

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    fmt = _Format(kind, tokenizer, int(pcfg.digits), corpus, int(pcfg.get("choices", 4)))
    manifest = {"version": VERSION, "format": kind, "chance": fmt.chance(), "choice_chance": fmt.choice_chance(),
                "window": pcfg.get("window"), "tasks": {}}
    for length in effective_lengths(list(pcfg.lengths), max_positions or 0):
        for depth in pcfg.depths:
            name = task_name(length, float(depth))
            items = build_items(stream, tokenizer, fmt, length, float(depth), int(pcfg["items"]), int(pcfg.seed), pcfg.get("window"))
            data_file = out / f"{name}.jsonl"
            data_file.write_text("".join(json.dumps(item, sort_keys=True) + "\n" for item in items))
            description = f"retrieve a {kind} key hidden at depth {depth} of a {length}-token context"
            (out / f"{name}.yaml").write_text(yaml.safe_dump(_task_yaml(name, data_file, description), sort_keys=False))
            manifest["tasks"][name] = {"length": length, "depth": float(depth), "items": len(items),
                                       "mean_distance": float(np.mean([it["distance"] for it in items]))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def ensure_probe_dir(cache_dir, stream, tokenizer, pcfg, max_positions, kind: str, corpus=None) -> Path:
    """The probe's task folder under ``cache_dir/probe/``, keyed by its settings and the token stream."""
    from filelock import FileLock
    from omegaconf import OmegaConf

    from prune.cache import tensor_digest
    from prune.testbed.build import json_digest

    import torch

    settings = OmegaConf.to_container(pcfg, resolve=True) if not isinstance(pcfg, dict) else pcfg
    vocab = sorted(tokenizer.get_vocab().items())
    key = json_digest([VERSION, settings, max_positions, kind, tensor_digest(torch.as_tensor(stream)), json_digest(vocab)])
    target = Path(os.path.expanduser(str(cache_dir))) / "probe" / f"tasks-{key}"
    if (target / "DONE").exists():
        return target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "DONE").exists():
            write_probe_dir(target, stream, tokenizer, pcfg, max_positions, kind, corpus)
            (target / "DONE").write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
    return target.resolve()


def probe_task_dir(cfg, model_source, data_source, model_config) -> Path:
    """For the job: tokenize the evaluation split with the model's tokenizer and write (or reuse) the probe."""
    from prune.data import tokenize_documents
    from prune.models import max_positions

    pcfg = cfg.eval.probe
    check_probe(pcfg)
    testbed = hasattr(model_source, "spec")
    kind = pcfg.get("format", "auto")
    kind = ("testbed" if testbed else "passkey") if kind == "auto" else kind
    if kind == "testbed" and not testbed:
        raise ProbeError("eval.probe.format=testbed needs model=testbed (its fact markers); use passkey")
    tokenizer = model_source.tokenizer()
    stream = tokenize_documents(data_source.texts("test", seed=cfg.seed), tokenizer, join=data_source.join,
                                bos_per_document=data_source.bos_per_document)
    corpus = model_source.spec().corpus if testbed else None
    return ensure_probe_dir(cfg.cache_dir, stream, tokenizer, pcfg, max_positions(model_config), kind, corpus)
