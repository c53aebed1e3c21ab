"""Recovery fine-tuning after pruning (``recovery=`` config group): LoRA with peft, or all remaining weights.

The pruned model is trained for ``steps`` steps on random windows of the calibration data set's **train**
split (never on evaluation text) with the project's one next-token loss (``prune.eval.losses``). LoRA adapters
(``recovery=lora``) go on the projections that survived pruning; afterwards they are saved on their own
(``recovery_adapter/``, a peft folder for the one-shot pruned model) and folded into the weights
(``merge_and_unload``), so the model that is evaluated again and saved is a plain pruned model of the same
shapes. ``recovery=full`` trains every weight (small models).

``check_recovery`` refuses a bad setting in one line before the model loads; ``recover`` does the
training; ``recovery_phase`` is the job's phase: train, evaluate again, record.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from torch import nn

from prune.errors import RecoveryError  # noqa: F401  (re-exported: defined with the other refusals)
from prune.eval.losses import next_token_nll
from prune.metrics import RECOVERY_SUMMARY, flat
from prune.recovery_data import RecoveryPlan, recovery_seed

log = logging.getLogger(__name__)
METHODS = ("none", "lora", "full")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULES = ("constant", "linear", "cosine")
PEFT_HINT = "recovery=lora needs peft: pip install -e ."


def enabled(rcfg) -> bool:
    return rcfg is not None and str(rcfg.get("name", "none")) != "none"


def _positive_int(rcfg, key: str) -> int:
    value = rcfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RecoveryError(f"recovery.{key}={value} must be a positive integer")
    return value


def check_recovery(rcfg, max_positions: int | None = None, dtype: torch.dtype | None = None) -> None:
    """Refuse, in one line, recovery settings that cannot work (no model needed; ``dtype``: the model's)."""
    if rcfg is None:
        return
    name = str(rcfg.get("name", "none"))
    if name not in METHODS:
        raise RecoveryError(f"recovery={name} is unknown: choose {', '.join(METHODS)}")
    if name == "none":
        return
    if name == "full" and dtype is not None and dtype != torch.float32:
        raise RecoveryError(full_dtype_message(dtype))
    if rcfg.get("steps") is not None or rcfg.get("epochs") is None:
        steps = _positive_int(rcfg, "steps")
    else:
        steps = None  # from epochs, once the recovery text is tokenized (prune.recovery_data.plan_steps)
    _positive_int(rcfg, "batch_size")
    if rcfg.get("grad_accum") is not None:
        _positive_int(rcfg, "grad_accum")
    seq_len = _positive_int(rcfg, "seq_len")
    if seq_len < 2:
        raise RecoveryError(f"recovery.seq_len={seq_len} must be at least 2")
    if max_positions and seq_len > max_positions:
        raise RecoveryError(f"recovery.seq_len={seq_len} exceeds the model's max_position_embeddings ({max_positions})")
    warmup = rcfg.get("warmup_steps", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < (steps or warmup + 1):
        raise RecoveryError(f"recovery.warmup_steps={warmup} must be an integer in [0, steps={steps})")
    lr = rcfg.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise RecoveryError(f"recovery.lr={lr} must be a positive number")
    if rcfg.get("schedule", "constant") not in SCHEDULES:
        raise RecoveryError(f"recovery.schedule={rcfg.get('schedule')} is unknown: choose {', '.join(SCHEDULES)}")
    if name != "lora":
        return
    _positive_int(rcfg, "rank")
    alpha, dropout = rcfg.get("alpha"), rcfg.get("dropout", 0.0)
    if not isinstance(alpha, (int, float)) or not alpha > 0:
        raise RecoveryError(f"recovery.alpha={alpha} must be a positive number")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise RecoveryError(f"recovery.dropout={dropout} must lie in [0, 1)")
    targets = list(rcfg.get("target_modules") or [])
    unknown = [t for t in targets if t not in PROJECTIONS]
    if not targets or unknown:
        raise RecoveryError(
            f"recovery.target_modules={targets}: {'empty' if not targets else 'not a projection: ' + ', '.join(map(str, unknown))}"
            f"; choose among {', '.join(PROJECTIONS)}"
        )
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise RecoveryError(PEFT_HINT) from exc


def full_dtype_message(dtype) -> str:
    return (f"recovery=full trains the weights in place and keeps no fp32 master copy, so a {str(dtype).replace('torch.', '')} "
            "model would lose most updates to rounding: set model.dtype=float32 or use recovery=lora")


def training_batches(stream: torch.Tensor, seq_len: int, batch_size: int, steps: int, seed: int):
    """``steps`` batches of ``batch_size`` windows of exactly ``seq_len`` tokens at random offsets (seeded)."""
    if len(stream) <= seq_len:
        raise RecoveryError(f"the calibration train split has {len(stream):,} tokens, too few for recovery.seq_len={seq_len}")
    generator = torch.Generator().manual_seed(int(seed))
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - seq_len + 1, (batch_size,), generator=generator)
        yield torch.stack([stream[s: s + seq_len] for s in starts.tolist()])


def attach_lora(model: nn.Module, rcfg):
    """Wrap ``model`` with peft LoRA adapters on ``rcfg.target_modules`` (only the projections still present)."""
    from peft import LoraConfig, get_peft_model

    targets = [str(t) for t in rcfg.target_modules]
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [t for t in targets if t not in present]
    if len(missing) == len(targets):
        raise RecoveryError(f"recovery.target_modules={targets}: none is left in the pruned model (pruned away)")
    config = LoraConfig(
        r=int(rcfg.rank), lora_alpha=float(rcfg.alpha), lora_dropout=float(rcfg.get("dropout", 0.0)),
        target_modules=[t for t in targets if t in present], bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def train(model: nn.Module, params: list, batches, rcfg, on_step=None, steps: int | None = None) -> list[float]:
    """AdamW on ``params`` with warm-up then ``rcfg.schedule``, ``rcfg.grad_accum`` micro-batches per step;
    returns the loss of every step."""
    from transformers import get_scheduler

    device = next(model.parameters()).device
    steps = int(rcfg.steps) if steps is None else int(steps)
    optimizer = torch.optim.AdamW(params, lr=float(rcfg.lr), weight_decay=float(rcfg.get("weight_decay", 0.0)))
    scheduler = get_scheduler(rcfg.get("schedule", "constant") + ("_with_warmup" if rcfg.get("schedule", "constant") == "constant" else ""),
                              optimizer, num_warmup_steps=int(rcfg.get("warmup_steps", 0)), num_training_steps=steps)
    clip = rcfg.get("max_grad_norm")
    accum = int(rcfg.get("grad_accum", 1) or 1)
    losses = []
    model.train()
    try:
        batches = iter(batches)
        for step in range(steps):
            micro = []
            for _ in range(accum):  # the mean loss over accum micro-batches: one step of batch_size x accum windows
                batch = next(batches).to(device)
                loss = next_token_nll(model(input_ids=batch, use_cache=False).logits, batch).mean()
                (loss / accum).backward()
                micro.append(float(loss.detach()))
            loss = torch.tensor(_mean(micro))
            if clip:
                torch.nn.utils.clip_grad_norm_(params, float(clip))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise RecoveryError(f"recovery loss became {losses[-1]} at step {step}: lower recovery.lr")
            if on_step is not None:
                on_step(step, losses[-1], scheduler.get_last_lr()[0])
    finally:
        model.eval()
    return losses


def recover(model: nn.Module, train_stream: torch.Tensor, rcfg, adapter_dir: str | Path | None = None, on_step=None,
            plan: RecoveryPlan | None = None):
    """Fine-tune ``model`` in place; returns (the plain, merged model, info dict). ``plan`` (from
    ``prune.recovery_data.recovery_plan``) gives the seed and steps; without it, ``recovery.seed`` (null: 0)
    and ``recovery.steps``."""
    if rcfg.name == "full" and any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        raise RecoveryError(full_dtype_message(next(p.dtype for p in model.parameters() if p.dtype != torch.float32)))
    seed = plan.seed if plan is not None else recovery_seed(rcfg, 0)
    steps = plan.steps if plan is not None else int(rcfg.steps)
    accum = int(rcfg.get("grad_accum", 1) or 1)
    torch.manual_seed(seed)  # LoRA initialisation and dropout
    grad_state = {name: p.requires_grad for name, p in model.named_parameters()}
    batches = training_batches(train_stream, int(rcfg.seq_len), int(rcfg.batch_size), steps * accum, seed)
    if rcfg.name == "lora":
        trained = attach_lora(model, rcfg)
    else:
        trained = model
        for p in model.parameters():
            p.requires_grad_(True)
    params = [p for p in trained.parameters() if p.requires_grad]
    started = time.time()
    losses = train(trained, params, batches, rcfg, on_step, steps)
    info = {
        "method": str(rcfg.name), "steps": steps, "seq_len": int(rcfg.seq_len), "batch_size": int(rcfg.batch_size),
        "grad_accum": accum, "seed": seed, "lr": float(rcfg.lr), "trainable_params": sum(p.numel() for p in params),
        "train_tokens": steps * accum * int(rcfg.batch_size) * int(rcfg.seq_len),
        **({k: v for k, v in plan.info().items() if k not in ("seed", "steps")} if plan is not None else {}),
        "loss_curve": losses, "loss_first": _mean(losses[:10]), "loss_last": _mean(losses[-10:]),
        "train_seconds": time.time() - started, "adapter_dir": None,
    }
    if rcfg.name == "lora":
        if adapter_dir is not None:
            trained.save_pretrained(str(adapter_dir))
            info["adapter_dir"] = str(adapter_dir)
        model = trained.merge_and_unload()
    for name, p in model.named_parameters():
        p.requires_grad_(grad_state.get(name, False))
    return model.eval(), info


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def plot_loss(losses: list[float], path: Path, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(range(1, len(losses) + 1), losses, lw=1, alpha=0.5, label="per step")
    k = max(1, len(losses) // 20)
    smooth = [_mean(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
    ax.plot(range(1, len(losses) + 1), smooth, lw=2, label=f"mean of last {k}")
    ax.set_xlabel("recovery step")
    ax.set_ylabel("next-token loss (nats, train split)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def recovery_phase(cfg, model, plan: RecoveryPlan, evaluate, downstream, recorder, tracker, out: Path, metrics: dict,
                   control: dict | None = None):
    """The job's recovery phase: train, evaluate again (PPL, tasks), record; returns the merged model.

    ``evaluate(tag)`` and ``downstream(tag)`` (or None without tasks) score the model in memory, as for
    the one-shot model; times and peak memory go to the phases ``recovery``, ``eval_recovered`` and
    ``tasks_recovered``. ``control`` (``prune.recovery_control``): the dense model recovered the same way;
    the gap left (``recovery_gap``) is the recovered pruned model's PPL against it.
    """
    rcfg = cfg.recovery

    def on_step(step: int, loss: float, lr: float) -> None:
        if step % int(rcfg.get("log_every", 1) or 1) == 0 or step == plan.steps - 1:
            tracker.log({"recovery_step": step, "recovery/loss": loss, "recovery/lr": lr})

    adapter = out / "recovery_adapter" if cfg.save_model and rcfg.name == "lora" else None
    with recorder.phase("recovery"):
        model, info = recover(model, plan.stream, rcfg, adapter, on_step, plan)
    with recorder.phase("eval_recovered"):
        recovered = evaluate("recovered")
    metrics["ppl_recovered"] = {str(k): v["ppl"] for k, v in recovered.items()}
    metrics["nll_recovered"] = {str(k): v["nll"] for k, v in recovered.items()}
    if control is not None:
        record_gap(metrics, control)
    if downstream is not None:
        with recorder.phase("tasks_recovered"):
            res = downstream("recovered")
        metrics.setdefault("downstream", {})["recovered"] = res
        metrics["acc_recovered"] = {**{name: r["value"] for name, r in res["tasks"].items()}, "mean": res["mean"]}
    info["plot"] = plot_loss(info["loss_curve"], out / "recovery_loss.png", f"recovery ({info['method']}) - {out.name}")
    metrics["recovery"] = info
    tracker.summary(flat(metrics, RECOVERY_SUMMARY))
    tracker.log_images({"plots/recovery_loss": info["plot"]})
    log.info("recovery (%s, %d steps, %s tokens seen of %s): train loss %.4f -> %.4f; PPL %s", info["method"], info["steps"],
             f"{info['train_tokens']:,}", f"{plan.stream_tokens:,}", info["loss_first"], info["loss_last"], metrics["ppl_recovered"])
    return model


def record_gap(metrics: dict, control: dict) -> None:
    """Put the control (``prune.recovery_control``: the dense model recovered the same way) and the gap into ``metrics``."""
    dense = control["ppl"]
    metrics["ppl_dense_recovered"] = dict(dense)
    metrics["recovery_gap"] = {L: metrics["ppl_recovered"][L] / dense[L] - 1 for L in metrics["ppl_recovered"] if L in dense}
    metrics["recovery_control"] = {k: v for k, v in control.items() if k not in ("ppl", "nll")}
