"""prune-bench's speed section: prefill and decode of the dense model against its pruned copy.

* **Prefill**: tokens/s of a no-grad forward of ``--prefill-batch x --prefill-len``; ``prefill_speedup`` is
  pruned / dense, ``prefill_flop_ratio`` the ideal (dense / pruned forward FLOPs per token) and
  ``prefill_of_flop_ratio`` how much of the ideal is reached (goal >= 0.95).
* **Decode** (``decode_speedup``, goal >= 1.2 at every batch of ``--decode-batches``): greedy decoding with
  a static KV cache (``transformers.StaticCache``): an eager prefill of the prompt, then ``new_tokens - 1``
  single-token steps, timed apart. On CUDA each step is ``torch.compile(mode="reduce-overhead")``, i.e.
  replayed as a CUDA graph, so the weights (not Python and kernel launches) bound it; the first (warm-up)
  round compiles and records. On CPU the step runs eager (``--decode-step auto``): there are no CUDA
  graphs, and inductor's C++ compile would take minutes on a small shared CPU; the reason is in the JSON.
  ``decode_speedup`` is the smallest speedup over the batch sizes.
* ``decode_generate_speedup``: Hugging Face's eager ``generate`` (dynamic cache, prefill included) at the
  largest decode batch, as measured before static decoding existed (launch-bound on a GPU).

A uniform plan (the same fraction in every layer; MLP widths rounded to 128 on GPUs, where odd widths run
on slow kernels) is what the speed figures need: a global plan on random weights empties some layers
almost completely, which says nothing about a real pruned model.
"""
from __future__ import annotations

import copy
import inspect
import statistics
import time

import torch

from prune.bench.models import param_count, random_windows
from prune.bench.timing import _sync, interleaved

DECODE_STEPS = ("auto", "compile", "eager")
CPU_COMPILE_SKIPPED = ("torch.compile skipped on CPU: no CUDA graphs there, and inductor's C++ compile takes minutes "
                       "on a small shared CPU; the static cache runs eager")


def prune_copy(model, scores, ratio: float, width_multiple: int = 1):
    """The model with ``ratio`` of its prunable parameters removed by the same fraction in every layer."""
    from prune.pruning import Uniform, apply_plan
    from prune.structure import model_shape

    plan = Uniform(ratio=ratio, width_multiple=width_multiple).plan(scores, model_shape(model))
    pruned = apply_plan(copy.deepcopy(model), plan)
    pruned.eval()
    return pruned, plan


def magnitude_scores(model):
    from prune.structure import reduce_to_groups

    return reduce_to_groups(model, lambda proj, kind: getattr(proj.module, kind).detach().abs())


def hf_generate(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy ``generate`` with exactly ``new_tokens`` new tokens (no early stop)."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
        eos_token_id=None, bos_token_id=None, pad_token_id=0,
    )
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
    if out.shape[1] != prompt.shape[1] + new_tokens:
        raise RuntimeError(f"generate made {out.shape[1] - prompt.shape[1]} tokens, not {new_tokens}")
    return out


class StaticDecoder:
    """Greedy decoding into a static KV cache; the single-token step optionally compiled (CUDA graphs)."""

    def __init__(self, model, prompt_len: int, new_tokens: int, compile_step: bool):
        from transformers import StaticCache

        self.model = model
        self.new_tokens = new_tokens
        self.cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens)
        # the keyword is `cache` from transformers 5.2x, `past_key_values` before: an unknown keyword is swallowed by
        # **kwargs, and the model then decodes each token without its context (silently wrong tokens)
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.compiled = compile_step
        self.step = torch.compile(self._step, mode="reduce-overhead") if compile_step else self._step

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=tokens, position_ids=positions, use_cache=True, **{self.cache_kwarg: self.cache}).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, prompt: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """(new tokens, prefill seconds, decode seconds for the ``new_tokens - 1`` steps)."""
        device = prompt.device
        self.cache.reset()
        b, p = prompt.shape
        _sync(device)
        start = time.perf_counter()
        tok = self._step(prompt, torch.arange(p, device=device).expand(b, p))
        _sync(device)
        prefilled = time.perf_counter()
        out = [tok]
        for i in range(self.new_tokens - 1):
            if self.compiled:  # each replay is a new step: its inputs are never a previous replay's output buffer
                torch.compiler.cudagraph_mark_step_begin()
            tok = self.step(tok, torch.full((b, 1), p + i, device=device, dtype=torch.long)).clone()
            out.append(tok)  # a clone: a CUDA graph's output is overwritten by its next replay
        _sync(device)
        return torch.cat(out, dim=1), prefilled - start, time.perf_counter() - prefilled


def bench_static_decode(models: dict, prompts: dict[int, torch.Tensor], new_tokens: int, compile_step: bool,
                        repeats: int, warmup: int) -> dict:
    """Per batch size: decode tokens/s of every model (median over rounds, ABBA order), and pruned / dense."""
    out = {}
    for batch, prompt in prompts.items():
        decoders = {name: StaticDecoder(m, prompt.shape[1], new_tokens, compile_step) for name, m in models.items()}
        times = {name: [] for name in models}
        prefill = {name: [] for name in models}
        tokens = {}
        for r in range(warmup + repeats):
            for name in list(models) if r % 2 == 0 else list(models)[::-1]:
                toks, t_prefill, t_decode = decoders[name](prompt)
                tokens[name] = toks
                if r >= warmup:
                    times[name].append(t_decode)
                    prefill[name].append(t_prefill)
        tps = {name: batch * (new_tokens - 1) / statistics.median(t) for name, t in times.items()}
        out[str(batch)] = {
            "decode_tokens_per_s": tps,
            "decode_times_s": times,
            "prompt_prefill_times_s": prefill,
            "decode_speedup": tps["pruned"] / tps["dense"],
            "tokens": {name: t.tolist() for name, t in tokens.items()} if batch * new_tokens <= 64 else None,
        }
        del decoders
    return out


def bench_speed(model, scores, score_source, args, device) -> dict:
    from prune.structure import model_shape

    pruned, _ = prune_copy(model, scores, args.prune_ratio, 128 if device.type == "cuda" else 8)
    shape_before, shape_after = model_shape(model), model_shape(pruned)
    vocab = model.config.vocab_size
    x = random_windows(args.prefill_batch, args.prefill_len, vocab, args.seed + 2).to(device)
    prompts = {b: random_windows(b, args.prompt_len, vocab, args.seed + 3).to(device) for b in args.decode_batches}
    models = {"dense": model, "pruned": pruned}

    def prefill(m):
        with torch.no_grad():
            return m(input_ids=x, use_cache=False).logits.shape

    prefill_times = interleaved({k: (lambda m=m: prefill(m)) for k, m in models.items()}, args.repeats, args.warmup, device)
    compile_step = args.decode_step == "compile" or (args.decode_step == "auto" and device.type == "cuda")
    static = bench_static_decode(models, prompts, args.new_tokens, compile_step, args.repeats, args.warmup)
    big = max(args.decode_batches)
    generate_times = interleaved({k: (lambda m=m: hf_generate(m, prompts[big], args.new_tokens).shape) for k, m in models.items()},
                                 args.repeats, args.warmup, device)
    prefill_tps = {k: args.prefill_batch * args.prefill_len / v["median_s"] for k, v in prefill_times.items()}
    prefill_speedup = prefill_tps["pruned"] / prefill_tps["dense"]
    flop_ratio = shape_before.forward_flops(args.prefill_len) / shape_after.forward_flops(args.prefill_len)
    report = {
        "score_source": score_source,
        "prune_ratio": args.prune_ratio,
        "params_dense": param_count(model),
        "params_pruned": param_count(pruned),
        "prunable_params_dense": shape_before.prunable_params,
        "prunable_params_pruned": shape_after.prunable_params,
        "prunable_ratio_removed": 1 - shape_after.prunable_params / shape_before.prunable_params,
        "layer_shapes_pruned": [s.as_list() for s in shape_after.layers],
        "prefill_batch": args.prefill_batch,
        "prefill_len": args.prefill_len,
        "prefill_times": prefill_times,
        "tokens_per_s": {"prefill": prefill_tps},
        "prefill_speedup": prefill_speedup,
        "prefill_per_round_speedup": [d / p for d, p in zip(prefill_times["dense"]["times_s"], prefill_times["pruned"]["times_s"])],
        "prefill_flop_ratio": flop_ratio,
        "prefill_flop_ratio_note": "dense / pruned forward FLOPs per token (ModelShape.forward_flops: 2 x matmul weights + attention): the ideal speedup",
        "prefill_of_flop_ratio": prefill_speedup / flop_ratio,
        "decode": {
            "kind": "static KV cache; eager prefill of the prompt, then single-token steps (timed apart)",
            "compiled": compile_step,
            "compile_note": ("torch.compile(mode='reduce-overhead'): CUDA graphs" if compile_step and device.type == "cuda"
                             else "torch.compile(mode='reduce-overhead')" if compile_step else CPU_COMPILE_SKIPPED),
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "tokens_per_s_note": "batch x (new_tokens - 1) / wall time of the decode steps (prompt prefill excluded)",
            "by_batch": static,
        },
        "decode_speedup_by_batch": {b: v["decode_speedup"] for b, v in static.items()},
        "decode_speedup": min(v["decode_speedup"] for v in static.values()),
        "generate": {
            "batch": big,
            "note": "Hugging Face generate, eager, dynamic cache; tokens/s = batch x new tokens / wall time (prefill included)",
            "times": generate_times,
            "tokens_per_s": {k: big * args.new_tokens / v["median_s"] for k, v in generate_times.items()},
        },
    }
    report["decode_generate_speedup"] = generate_times["dense"]["median_s"] / generate_times["pruned"]["median_s"]
    del pruned
    return report
