"""Reload a finished job's pruned model the way a user would and recompute its perplexity.

    python experiments/reload_check.py <run folder> --out experiments/results/smollm2_135m/reload_check.json

Loads ``<run>/pruned_model`` with ``AutoModelForCausalLM.from_pretrained`` (after ``import prune``, which
registers the ``pruned_<base>`` classes; a uniform-width model needs nothing), rebuilds the held-out windows
from the run's own config (``.hydra/config.yaml``: data source, tokenizer, ``eval.max_tokens``) and computes,
for every evaluated length, the perplexity twice: with plain transformers (``labels=`` loss, one window at a
time, weighted by its predicted tokens) and with the framework's evaluator. Both must equal the job's
``ppl_after`` (metrics.json): the saved model is the model the job measured.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def plain_perplexity(model, windows) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            batch = window.unsqueeze(0)
            loss = model(input_ids=batch, labels=batch).loss  # mean over the window's predicted tokens
            total += float(loss) * (batch.shape[1] - 1)
            count += batch.shape[1] - 1
    return math.exp(total / count)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    import prune  # noqa: F401  (registers pruned_<base> with the Auto classes)
    import prune.schema  # noqa: F401  (the config's resolvers, e.g. by_device)
    from prune.data import evaluation_windows, tokenize_documents
    from prune.eval.perplexity import perplexity

    metrics = json.loads((args.run / "metrics.json").read_text())
    cfg = OmegaConf.load(args.run / ".hydra" / "config.yaml")
    model = AutoModelForCausalLM.from_pretrained(metrics["pruned_model_dir"]).eval()
    tokenizer = instantiate(cfg.model).tokenizer()
    stream = tokenize_documents(instantiate(cfg.data).texts("test"), tokenizer)
    rows = {}
    for length, reported in metrics["ppl_after"].items():
        windows = evaluation_windows(stream, int(length), cfg.eval.max_tokens)
        plain = plain_perplexity(model, windows)
        ours = perplexity(model, windows, batch_size=cfg.eval.batch_size)["ppl"]
        rows[length] = {"reported": reported, "plain_transformers": plain, "framework": ours,
                        "plain_rel_diff": abs(plain / reported - 1), "framework_rel_diff": abs(ours / reported - 1),
                        "windows": len(windows)}
        print(f"L={length}: reported {reported:.4f}, plain transformers {plain:.4f}, framework {ours:.4f}", flush=True)
    record = {"run": str(args.run), "model_type": model.config.model_type,
              "params": sum(p.numel() for p in model.parameters()), "params_after": metrics["params_after"],
              "tied_head": model.lm_head.weight is model.model.embed_tokens.weight, "by_length": rows}
    record["ok"] = (record["params"] == record["params_after"]
                    and all(r["plain_rel_diff"] < 1e-4 and r["framework_rel_diff"] < 1e-6 for r in rows.values()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("reload check:", "ok" if record["ok"] else "MISMATCH", flush=True)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
