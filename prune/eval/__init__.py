"""Evaluation: what a model has lost, before and after pruning (and recovery).

* ``losses``: the one next-token loss (padding never counts; the LM head chunked so the full logits never
  materialise);
* ``perplexity``: perplexity over exact, non-overlapping windows at each eval length;
* ``downstream``: lm-eval tasks (hub or local folders), per-item results kept for paired analysis;
* ``probe`` / ``probe_score``: the long-context retrieval probe (items, lm-eval tasks, graded per-item scores);
* ``ground_truth``: importance accuracy, the scores' agreement with the true loss of each removal.
"""
