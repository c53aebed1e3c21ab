"""``prune-bench``: how much the pruning machinery costs, as ratios against plain baselines.

Every figure is a ratio measured in one process against a baseline on the same model and the same
tokens (absolute times on a shared CPU are noise). Each timed loop runs ``--warmup`` discarded rounds
and then ``--repeats`` rounds; within a round the baseline and the candidates run one after the other,
in alternating order from round to round (ABBA), and the reported time is the median over rounds.

========================================  ===================================================  =========
key                                        what                                                  goal
========================================  ===================================================  =========
``taylor_1st_time_ratio``                  ``gradient_pass(fisher=None)`` / bare forward+backward   <= 1.10
``taylor_2nd_time_ratio``                  ``gradient_pass(fisher="sample")`` / the same            <= 1.10
``taylor_2nd_extra_memory_ratio``          (peak of the Taylor-2nd pass - peak of the bare loop)    <= 1.0
                                           / fp32 bytes of the prunable parameters
``prefill_speedup``                        tokens/s of a no-grad forward, pruned / dense            (none)
``prefill_of_flop_ratio``                  ``prefill_speedup`` / its FLOP ratio (the ideal)          >= 0.95
``decode_speedup``                         decode tokens/s, pruned / dense: static KV cache, step   >= 1.2
                                           compiled to CUDA graphs on CUDA; the least over batches
``layer_removal_time_ratio``               ``removal_losses`` over every layer, prefix cache        <= 0.6
                                           on / off
``block_removal_time_ratio``               the same over every attention and MLP block              <= 0.6
========================================  ===================================================  =========

The *bare* baseline is the plainest training step: every parameter requires grad and each batch runs
``model(input_ids=b, labels=b, use_cache=False).loss.backward(); model.zero_grad(set_to_none=True)``.
``gradient_pass`` makes only the prunable projections require grad, so it skips the embedding and LM
head gradients the bare loop computes; the ratio therefore measures the whole pass as the job runs it.

Models (random weights; nothing is downloaded and the testbed is not trained):

* *bench*: a LLaMA large enough that matmuls dominate (``--layers/--hidden/--heads/--kv-heads/
  --intermediate/--vocab``); the ``llama3_8b`` preset gives it Llama-3-8B shapes, built directly on the
  GPU in bf16;
* *testbed*: the testbed's shape (6 layers, hidden 128, 8 query / 4 KV heads, MLP 384, vocab 512, rope
  theta 5e5, tied embeddings) with random weights: timing does not depend on what the weights learned,
  and it avoids the 3-minute testbed training.

Presets (every setting can be overridden on the command line):

* ``cpu`` (default, ~3-4 minutes on 2 idle cores): Taylor time on the testbed shape with the job's
  defaults (16 x 512 tokens, batch 4); memory on the bench model (4 x 64 tokens, batch 2: there the
  prunable parameters outweigh the noise of RSS); prefill 4 x 256 and decode 1 x 64 new tokens on the
  bench model (12 layers, hidden 768, 12/4 heads, MLP 2048, vocab 32000); removal on the testbed shape
  (8 x 512 tokens). 5 timed rounds after 1 warm-up.
* ``llama3_8b``: everything on random Llama-3-8B shapes in bf16 on one GPU; Taylor time, memory, s/batch,
  tokens/s and MFU at each ``--seq-lens`` (8 sequences, batch 4), the ``mean_grad`` stores at 4 x 512,
  prefill 4 x 512, decode at batch 1 and 8 x 64 new tokens (static cache, CUDA graphs), removal 4 x 512
  tokens; 1 timed round after 1 warm-up (``experiments/gpu_check.sh``).
* ``quick``: a 2-layer toy of everything, a few seconds (tests).

Sections (``--sections``), one module each: ``taylor``, ``memory`` (CPU), ``mean_grad``, ``speed`` (prefill
and static-cache decode) and ``removal``; ``models`` builds the random models, ``timing`` runs the
interleaved rounds, ``results`` writes the JSON and the summary, ``cli`` parses options and runs the sections.

MFU = 6 x matmul weights (projections and LM head, ``ModelShape.matmul_params``) x tokens / pass time /
``--peak-tflops`` (790 for an H200 in bf16, as given). The Taylor pass computes no LM-head or embedding gradients, so its true FLOPs
are a little lower; the convention is kept so that the bare loop and the pass compare directly.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, in process.
On CPU each pass runs once in a fresh ``spawn`` subprocess that builds the same seeded model and windows,
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) and reads ``VmHWM`` afterwards (exact, no
sampling; a 5 ms ``/proc/self/statm`` sampler where ``clear_refs`` is refused). The children run with
``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every freed tensor to the kernel and RSS follows the
live tensor bytes.

CPU runs re-execute themselves with ``OMP_WAIT_POLICY=PASSIVE`` (``--omp-wait-policy``): on a CPU shared
with other processes, OpenMP threads that spin at barriers made one and the same pass vary 5-100x in
time; sleeping threads keep both baseline and candidate stable. The load average at the start and end is
recorded, so a contended run can be recognised.

``--sweep DIR`` adds the time of a finished multirun from its ``DIR/*/metrics.json``: job and launch wall
time, per-phase sums, and per-phase means per seq_len (nothing is run); ``--sections none --sweep DIR``
reports only that.

This package imports torch, transformers and prune.{importance,pruning,structure,models} only (no hydra,
omegaconf, wandb or datasets), so ``PYTHONPATH=<repo> python -m prune.bench`` works on a bare GPU image.
"""
from prune.bench.cli import main, parse_args  # noqa: E402
from prune.bench.models import (  # noqa: E402
    BENCH_SHAPE, LLAMA3_8B_SHAPE, PRESETS, QUICK_SHAPE, TESTBED_SHAPE, Shape, build_model, random_windows,
)
from prune.bench.results import GOALS, RESULT_KEYS  # noqa: E402
from prune.bench.taylor import bare_pass, run_pass  # noqa: E402

__all__ = ["BENCH_SHAPE", "GOALS", "LLAMA3_8B_SHAPE", "PRESETS", "QUICK_SHAPE", "RESULT_KEYS", "TESTBED_SHAPE", "Shape",
           "bare_pass", "build_model", "main", "parse_args", "random_windows", "run_pass"]
