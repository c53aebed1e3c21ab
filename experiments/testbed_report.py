"""Acceptance numbers of the embedded testbed, and which attention groups carry long-range facts.

    python experiments/testbed_report.py [--out experiments/results] [--testbed control]

Builds (or reuses) the default testbed, then reports on held-out text:
* long-range recall accuracy (chance = 1 / values_per_attribute) and loss per token class, per window;
* the loss on tokens whose source lies > 128 tokens back, with 128- vs 1024-token windows;
* the loss increase on long-range and on local tokens when each attention group alone is removed.
Writes ``testbed.json`` and ``testbed.md`` into ``--out`` (``testbed_<name>.*`` for ``--testbed <name>``).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from prune.checkpoint import load_pruned
from prune.schema import compose
from testbed_analysis import attention_group_removal_table, class_losses, dependency_losses_by_window, windows_with_classes
from prune.testbed.build import TestbedSpec, ensure_model, token_stream

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "experiments" / "results"))
    parser.add_argument("--cache-dir", default=os.environ.get("PRUNE_LAB_CACHE", "~/.cache/prune-lab"))
    parser.add_argument("--testbed", default="default", help="testbed config name under prune/conf/testbed/")
    parser.add_argument("--tokens", type=int, default=16384, help="held-out tokens to measure on")
    args = parser.parse_args()
    cache = os.path.expanduser(args.cache_dir)
    cfg = compose(f"testbed={args.testbed}").testbed  # Hydra merges the option over its defaults
    spec = TestbedSpec.from_dict(OmegaConf.to_container(cfg, resolve=True))
    folder = ensure_model(spec, cache)
    model = load_pruned(folder).eval()
    stream = token_stream(spec.corpus, cache, "test")
    chance = 1 / spec.corpus.values_per_attribute

    per_window = {}
    for window in (128, 512, 1024, 2048):
        if window > spec.model.max_positions:
            continue
        w, classes = windows_with_classes(stream, spec.corpus, window, args.tokens)
        per_window[window] = class_losses(model, w, classes)
    same_tokens = dependency_losses_by_window(model, stream, spec.corpus, (128, 1024), args.tokens)
    w, classes = windows_with_classes(stream, spec.corpus, 1024, args.tokens)
    table = attention_group_removal_table(model, w, classes)
    training = json.loads((folder / "testbed.json").read_text())["training"]
    result = {
        "chance_accuracy": chance,
        "training": training,
        "per_window": per_window,
        "long_range_tokens_128_vs_1024": same_tokens,
        "attention_group_removal": table,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["testbed"] = args.testbed
    name = "testbed" if args.testbed == "default" else f"testbed_{args.testbed}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    title = "" if r.get("testbed", "default") == "default" else f" (`testbed={r['testbed']}`)"
    lines = [f"# Testbed acceptance numbers{title}", ""]
    t = r["training"]
    lines.append(f"Trained in {t['seconds']} s ({t['steps']} steps); chance accuracy on a fact value = {r['chance_accuracy']:.3f}.")
    lines += ["", "## Loss and accuracy per token class (held-out text)", "",
              "| window | long-range loss / acc (n) | out-of-window loss / acc (n) | local loss | all loss |",
              "|---|---|---|---|---|"]
    for window, c in r["per_window"].items():
        def cell(k):
            v = c[k]
            return "-" if not v["tokens"] else f"{v['loss']:.3f} / {v['accuracy']:.3f} ({v['tokens']})"
        lines.append(f"| {window} | {cell('long_range')} | {cell('out_of_window')} | {c['local']['loss']:.3f} | {c['all']['loss']:.3f} |")
    s = r["long_range_tokens_128_vs_1024"]
    a, b = s[128] if 128 in s else s["128"], s[1024] if 1024 in s else s["1024"]
    lines += ["", f"Same {a['tokens']} tokens whose source lies more than 128 tokens back: loss {a['loss']:.3f} "
              f"(accuracy {a['accuracy']:.3f}) with 128-token windows vs {b['loss']:.3f} ({b['accuracy']:.3f}) with 1024.", ""]
    lines += ["## Loss increase when one attention group is removed (window 1024)", "",
              "| layer | group | on long-range tokens | on local tokens | on all tokens | long-range acc after |",
              "|---|---|---|---|---|---|"]
    for row in r["attention_group_removal"]:
        lines.append(f"| {row['layer']} | {row['group']} | {row['delta_long_range']:+.3f} | {row['delta_local']:+.4f} | "
                     f"{row['delta_all']:+.4f} | {row['long_range_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
