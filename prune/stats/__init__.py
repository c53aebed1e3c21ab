"""The statistics behind every sweep verdict, as pure functions of numbers (no job folders, no plotting).

* ``compare``: two arms of seeds -> difference, two-sided p (paired by seed where the design pairs
  them, else Welch), the 90 % confidence interval and the equivalence test (TOST) against a margin;
  perplexity is compared on the log scale (see ``prune.stats.compare``);
* ``items``: two arms' task accuracy paired by item (the same items in every job), pooled over seeds;
* ``multiplicity``: Holm's step-down adjustment of the secondary comparisons of a study;
* ``overlap``: do two settings remove different sets of groups beyond what seeds alone do (permutation
  test), and the smallest p that test can give at a given n.
"""
from prune.stats.compare import ALPHA, Comparison, compare, mean_sd, n_for_difference, n_for_equivalence
from prune.stats.items import compare_items, mcnemar_exact
from prune.stats.multiplicity import holm
from prune.stats.overlap import jaccard, min_permutation_p, overlap_test, removal_frequencies

__all__ = ["ALPHA", "Comparison", "compare", "compare_items", "holm", "mcnemar_exact", "jaccard", "mean_sd", "min_permutation_p", "n_for_difference", "n_for_equivalence",
           "overlap_test", "removal_frequencies"]
