"""From scores to a smaller model: allocation strategies, plans and physical surgery."""
from prune.pruning.plan import PruningPlan
from prune.pruning.strategies import Depth, Global, Hybrid, LayerWeighted, PruningError, Uniform, normalize_per_layer, ratio_deviation
from prune.pruning.surgery import apply_plan, masked

__all__ = [
    "Depth", "Global", "Hybrid", "LayerWeighted", "PruningError", "PruningPlan", "Uniform",
    "apply_plan", "masked", "normalize_per_layer", "ratio_deviation",
]
