"""Repository tooling (not installed with prune), used by ``testbed_report.py`` and ``graded_report.py``:
measurements on the testbed: which tokens depend on long-range context, and which groups carry it."""
from __future__ import annotations

import torch

from prune.eval.losses import next_token_nll
from prune.pruning.plan import PruningPlan
from prune.pruning.surgery import masked
from prune.structure import model_shape
from prune.testbed.corpus import CorpusSpec, dependency_distances


@torch.no_grad()
def token_losses(model, windows: torch.Tensor, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL and greedy correctness for every predicted position, shape (n_windows, L - 1)."""
    nll, correct = [], []
    for batch in windows.split(batch_size):
        logits = model(input_ids=batch, use_cache=False).logits
        nll.append(next_token_nll(logits, batch))
        correct.append(logits[:, :-1].argmax(-1) == batch[:, 1:])
    return torch.cat(nll), torch.cat(correct)


def windows_with_classes(stream: torch.Tensor, spec: CorpusSpec, window: int, max_tokens: int | None = None, threshold: int = 128):
    """Consecutive windows of ``stream`` and boolean masks over their predicted positions (n, window - 1).

    Dependencies are found on the whole stream, so a fact whose source lies before the window start is
    known to be unpredictable inside the window:

    * ``long_range``: a fact value whose source lies more than ``threshold`` tokens back, inside the window;
    * ``short_range``: a fact value whose source lies at most ``threshold`` back (none with default gaps);
    * ``out_of_window``: a fact value whose source lies before the window start;
    * ``local``: every other token.
    """
    n = (min(len(stream), max_tokens or len(stream)) // window) * window
    dist = torch.from_numpy(dependency_distances(stream[:n].numpy(), spec)).view(-1, window)
    windows = stream[:n].view(-1, window)
    dist, pos = dist[:, 1:], torch.arange(1, window).expand(dist.shape[0], -1)
    inside = (pos - dist >= 0) & (dist > 0)
    classes = {
        "long_range": inside & (dist > threshold),
        "short_range": inside & (dist <= threshold),
        "out_of_window": (dist > 0) & ~inside,
    }
    classes["local"] = ~(classes["long_range"] | classes["short_range"] | classes["out_of_window"])
    return windows, classes


def class_losses(model, windows: torch.Tensor, classes: dict[str, torch.Tensor], batch_size: int = 8) -> dict:
    """Mean loss and accuracy per token class (see ``windows_with_classes``)."""
    nll, correct = token_losses(model, windows, batch_size)
    out = {}
    for name, mask in classes.items():
        n = int(mask.sum())
        out[name] = {
            "tokens": n,
            "loss": float(nll[mask].mean()) if n else float("nan"),
            "accuracy": float(correct[mask].float().mean()) if n else float("nan"),
        }
    out["all"] = {"tokens": nll.numel(), "loss": float(nll.mean()), "accuracy": float(correct.float().mean())}
    return out


def attention_group_removal_table(model, windows: torch.Tensor, classes: dict[str, torch.Tensor]) -> list[dict]:
    """Loss increase on long-range and on local tokens when each attention group alone is removed."""
    base = class_losses(model, windows, classes)
    shape = model_shape(model)
    rows = []
    for layer, s in enumerate(shape.layers):
        for group in range(s.num_kv_heads):
            plan = PruningPlan.keep_all(shape)
            plan.keep_attention[layer] = [g for g in range(s.num_kv_heads) if g != group]
            with masked(model, plan):
                res = class_losses(model, windows, classes)
            rows.append(
                {
                    "layer": layer,
                    "group": group,
                    "delta_long_range": res["long_range"]["loss"] - base["long_range"]["loss"],
                    "delta_local": res["local"]["loss"] - base["local"]["loss"],
                    "delta_all": res["all"]["loss"] - base["all"]["loss"],
                    "long_range_accuracy": res["long_range"]["accuracy"],
                }
            )
    return rows


def dependency_losses_by_window(model, stream: torch.Tensor, spec: CorpusSpec, windows=(128, 1024), max_tokens: int = 16384, threshold: int = 128) -> dict:
    """Loss and accuracy on the *same* tokens (facts whose source lies > ``threshold`` back) under each window.

    Only tokens that every window length scores are compared, so the numbers differ by context alone.
    """
    n = (min(len(stream), max_tokens) // max(windows)) * max(windows)
    dist = torch.from_numpy(dependency_distances(stream[:n].numpy(), spec))
    target = dist > threshold
    out = {}
    for window in windows:
        w = stream[:n].view(-1, window)
        nll, correct = token_losses(model, w)
        # position p of the stream is predicted in window p // window at offset p % window - 1
        pos = torch.arange(n).view(-1, window)[:, 1:]
        mask = target[pos] & (pos % window != 0)
        out[window] = {
            "tokens": int(mask.sum()),
            "loss": float(nll[mask].mean()),
            "accuracy": float(correct[mask].float().mean()),
        }
    return out
