"""Dense SmolLM2-135M on the four local benchmarks (prune.downstream.benchmarks), written to dense.json.

    PYTHONPATH=. python experiments/results/smollm2_135m/tasks_dense/score_dense.py --data ../shared/data/tasks \
        --items 1000 --threads 2 --out experiments/results/smollm2_135m/tasks_dense/dense.json

``--items N`` (or ``task=N,task=N``) evaluates the seeded subset of N items per task that
``eval.tasks_items`` would (0: all); the subsets are nested, so a study's items are among these.
Per task: items, accuracy (and acc_norm), its 95 % Wilson interval, chance level, wall and CPU seconds
(CPU seconds of all threads: the cost on idle cores, whatever else shares them).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

TASKS = ["local_lambada_openai", "local_arc_easy", "local_piqa", "local_blimp"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--items", default="0", help="items per task: N for all, or task=N,task=N (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    from hydra.utils import instantiate
    from scipy.stats import binomtest

    from prune.downstream import evaluate_tasks
    from prune.downstream.benchmarks import BENCHMARKS, chance, ensure_benchmark_dir, read_items
    from prune.downstream.evaluate import item_subset
    from prune.schema import compose

    torch.set_num_threads(args.threads)
    tasks = args.tasks.split(",")
    cfg = compose("model=smollm2_135m", "model.device=cpu")
    source = instantiate(cfg.model)
    model, tokenizer = source.load().eval(), source.tokenizer()
    folder = ensure_benchmark_dir(tasks, args.data, os.path.expanduser(cfg.cache_dir))
    report = {"model": "smollm2_135m (prune-fetch: SmolLM2-135M-Instruct, Q4_1 GGUF de-quantized to fp32)",
              "threads": args.threads, "batch_size": args.batch_size, "tasks": {}}
    per_task = dict(kv.split("=") for kv in args.items.split(",")) if "=" in args.items else {}
    for task in tasks:  # one call per task: its own seconds
        docs = read_items(task, Path(args.data) / BENCHMARKS[task]["file"])
        n_items = int(per_task.get(task, 0 if per_task else args.items))
        items = {task: n_items} if n_items else None
        started, cpu = time.time(), time.process_time()
        res = evaluate_tasks(model, tokenizer, [task], args.batch_size, None, "cpu", folder, items=items)
        r = res["tasks"][task]
        ids = item_subset(task, len(docs), n_items or None) or list(range(len(docs)))
        assert r["items"]["doc_ids"] == ids
        entry = {"items": len(ids), "of": len(docs), "chance": chance([docs[i] for i in ids]),
                 "seconds": round(time.time() - started, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
                 "metrics": {}}
        for metric in ("acc", "acc_norm"):
            bits = r["items"].get(metric)
            if bits:
                k, n = bits.count("1"), len(bits)
                ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
                entry["metrics"][metric] = {"value": k / n, "correct": k, "ci95": [float(ci.low), float(ci.high)]}
        if "perplexity" in r["metrics"]:
            entry["metrics"]["perplexity"] = {"value": r["metrics"]["perplexity"]}
        entry["items_record"] = r["items"]
        report["tasks"][task] = entry
        print(task, {k: v for k, v in entry.items() if k != "items_record"}, flush=True)
    Path(args.out).write_text(dumps(report))


def dumps(report: dict) -> str:
    """Indented JSON with each per-item list on one line (thousands of ids would be thousands of lines)."""
    records = {t: e.pop("items_record") for t, e in report["tasks"].items()}
    text = json.dumps(report, indent=1)
    for task, record in records.items():
        report["tasks"][task]["items_record"] = record
        marker = f'"{task}": {{'
        head, tail = text.split(marker, 1)
        text = head + marker + f'\n   "items_record": {json.dumps(record)},' + tail
    return text + "\n"


if __name__ == "__main__":
    main()
