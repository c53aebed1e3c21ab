"""Where a dense model scores on the long-context probe, at every length and depth (is the probe informative?).

    python experiments/probe_dense.py model=smollm2_135m data=text_split data.file=<wiki.test.raw> \
        eval.probe.lengths=[256,1024,4096,8192] eval.probe.items=5 --out experiments/results/smollm2_135m/probe_dense

Builds the probe exactly as a job does (``prune.eval.probe.probe_task_dir``: evaluation split, the model's
tokenizer, ``eval.probe.*``), evaluates the unpruned model with lm-eval, and writes ``<out>.json`` and
``<out>.md``: accuracy (exact retrieval) and key perplexity per (length, depth), each accuracy with its
95 % Wilson interval, and whether the probe is at floor (0) or ceiling (1) everywhere.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n (scipy's)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("overrides", nargs="*", help="prune-run overrides (model, data, eval.probe.*)")
    args = parser.parse_args(argv)
    from hydra.utils import instantiate

    from prune.eval.downstream import evaluate_tasks
    from prune.eval.probe import TAG, parse_task, probe_task_dir
    from prune.schema import compose

    cfg = compose(*args.overrides)
    model_source, data_source = instantiate(cfg.model), instantiate(cfg.data)
    config = model_source.config()
    task_dir = probe_task_dir(cfg, model_source, data_source, config)
    model = model_source.load()
    result = evaluate_tasks(model, model_source.tokenizer(), [TAG], 1, None, None, str(task_dir))
    rows = []
    for name, r in sorted(result["tasks"].items(), key=lambda kv: parse_task(kv[0])):
        length, depth = parse_task(name)
        n = r["n"] or cfg.eval.probe.items
        k = round(r["value"] * n)
        lo, hi = wilson_interval(k, n)
        rows.append({"task": name, "length": length, "depth": depth, "acc": r["value"], "n": n, "ci95": [lo, hi],
                     "key_perplexity": r["metrics"].get("perplexity")})
    accs = [row["acc"] for row in rows]
    verdict = ("at floor everywhere" if max(accs) == 0 else "at ceiling everywhere" if min(accs) == 1
               else "between floor and ceiling")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"overrides": args.overrides, "format": cfg.eval.probe.format, "digits": cfg.eval.probe.digits,
              "rows": rows, "verdict": verdict, "seconds": result["seconds"]}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Dense probe scores ({' '.join(args.overrides)})", "",
             f"Passkey retrieval of the unpruned model ({cfg.eval.probe.digits}-digit key, exact greedy retrieval; chance "
             f"1e-{cfg.eval.probe.digits}); {verdict}. 95 % Wilson intervals.", "",
             "| length | depth | accuracy | 95 % CI | n | key perplexity |", "|---:|---:|---:|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['length']} | {row['depth']:.1f} | {row['acc']:.2f} | [{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}] "
                     f"| {row['n']} | {row['key_perplexity']:.3g} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
