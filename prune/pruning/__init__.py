"""From scores to a smaller model: allocation strategies, plans and physical surgery."""
from prune.pruning.plan import PruningPlan
from prune.pruning.depth import Depth, Hybrid, LayerWeighted
from prune.pruning.strategies import PruningError, normalize_per_layer, ratio_deviation
from prune.pruning.width import Global, Uniform
from prune.pruning.surgery import apply_plan, masked

__all__ = [
    "Depth", "Global", "Hybrid", "LayerWeighted", "PruningError", "PruningPlan", "Uniform",
    "apply_plan", "masked", "normalize_per_layer", "ratio_deviation",
]
