"""Scoring the long-context probe item by item, on the model in memory, so that the probe can move.

Exact retrieval alone (``acc`` of the lm-eval task) sits at 1 or 0 in most cells: a difference between two
pruned models then cannot show. Every item of ``prune.eval.probe`` is therefore also scored on three graded
measures, each with a known chance or baseline:

* ``ll``: the log-likelihood of the key given the context, per key token (nats; 0 is certainty);
* ``ll_ablated``: the same for the same context **without the needle** (the key is then only guessable), so
  ``evidence = ll - ll_ablated`` is what the needle contributes: about 0 for a model that does not retrieve;
* ``choice``: whether the key scores highest (summed log-likelihood) among K candidates: the testbed's every
  value of the attribute, or K keys of as many digits for ``passkey`` (``eval.probe.choices``); chance 1/K;
* ``exact``: greedy decoding reproduces the key (what lm-eval's ``acc`` measures).

``score_probe`` returns, per task (cell), the per-item records (the items are the same in every job, so a
report pairs them by item) and their means. The job puts it under ``metrics.json`` ``downstream.<stage>.probe``.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

VERSION = 1
MEASURES = ("exact", "choice", "ll", "ll_ablated", "evidence")


def load_cells(task_dir, limit: int | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """(manifest, task -> items) of a probe folder (``prune.eval.probe.write_probe_dir``); at most ``limit`` items each."""
    folder = Path(task_dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    cells = {}
    for name in manifest["tasks"]:
        lines = (folder / f"{name}.jsonl").read_text().splitlines()
        cells[name] = [json.loads(line) for line in lines[: limit or None]]
    return manifest, cells


def _split(tokenizer, context: str, target: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as the whole text tokenizes (the boundary token belongs to the target)."""
    ctx = tokenizer(context)["input_ids"]
    whole = tokenizer(context + target)["input_ids"]
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx):]
    return ctx, tokenizer(target, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _scores(model, ctx: list[int], conts: list[list[int]]) -> list[tuple[float, int, bool]]:
    """(summed log-likelihood, tokens, greedy reproduces it) of each continuation after ``ctx``."""
    device = next(model.parameters()).device
    if all(len(c) == 1 for c in conts):  # one forward: every candidate is one token at the same position
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx], device=device)).logits[0, -1].float(), -1)
        best = int(logp.argmax())
        return [(float(logp[c[0]]), 1, best == c[0]) for c in conts]
    out = []
    for cont in conts:
        ids = torch.tensor([ctx + cont], device=device)
        logp = torch.log_softmax(model(input_ids=ids).logits[0, len(ctx) - 1: len(ctx) - 1 + len(cont)].float(), -1)
        target = torch.tensor(cont, device=device)
        out.append((float(logp.gather(1, target[:, None]).sum()), len(cont), bool((logp.argmax(-1) == target).all())))
    return out


def score_item(model, tokenizer, item: dict) -> dict:
    ctx, _ = _split(tokenizer, item["context"], item["target"])
    conts = [_split(tokenizer, item["context"], c)[1] for c in item["choices"]]
    scored = _scores(model, ctx, conts)
    answer = int(item["answer"])
    ll, n, exact = scored[answer]
    actx, _ = _split(tokenizer, item["ablated"], item["target"])
    all_ll, a_n, _ = _scores(model, actx, [_split(tokenizer, item["ablated"], item["target"])[1]])[0]
    best = max(range(len(scored)), key=lambda i: scored[i][0])
    return {"item": item["item"], "exact": float(exact), "choice": float(best == answer), "ll": ll / n,
            "ll_ablated": all_ll / a_n, "evidence": ll / n - all_ll / a_n, "k": len(scored)}


def summarize(items: list[dict]) -> dict:
    return {"n": len(items), **{m: statistics.fmean(it[m] for it in items) for m in MEASURES}}


def score_probe(model, tokenizer, task_dir, limit: int | None = None) -> dict:
    """Every cell of the probe folder: ``{task: {"items": [...], "chance": 1/K, **means}}``; restores train mode."""
    manifest, cells = load_cells(task_dir, limit)
    was_training = model.training
    model.eval()
    try:
        out = {}
        for name, items in cells.items():
            scored = [score_item(model, tokenizer, it) for it in items]
            out[name] = {**summarize(scored), "chance": 1 / scored[0]["k"] if scored else None,
                         "format": manifest.get("format"), "items": scored}
        return out
    finally:
        model.train(was_training)
