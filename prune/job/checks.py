"""Cheap checks of a job's settings against the model, before any data or weights are loaded."""
from __future__ import annotations

from omegaconf import DictConfig

from prune.errors import ConfigError
from prune.models import max_positions

ROLES = ("taylor", "layer", "block")


def samples_for(cfg: DictConfig, length: int) -> int:
    """Calibration sequences at ``length``: ``num_samples``, or ``token_budget // length`` when a budget is set."""
    budget = cfg.get("token_budget")
    return int(budget) // length if budget else int(cfg.num_samples)


def layer_method_for(strategy, importance):
    """The method that gives a strategy its layer scores (None if not needed or the importance gives them)."""
    if not getattr(strategy, "needs_layers", False) or importance.provides == "layers":
        return None
    method = getattr(strategy, "layer_importance", None)
    if method is None:
        raise ConfigError(
            f"pruning={strategy.name} needs layer or block scores: use importance=layer|block|angular|block_influence"
        )
    from prune.importance import build

    return build(method)


def check_compatibility(strategy, importance, layer_method, shape) -> None:
    if strategy.needs_groups and importance.provides != "groups":
        raise ConfigError(
            f"importance={importance.name} scores layers/blocks, but pruning={strategy.name} prunes groups: "
            "use pruning=depth, or a group criterion (taylor_1st, taylor_2nd, magnitude, random, wanda, removal)"
        )
    if layer_method is not None and layer_method.provides != "layers":
        raise ConfigError(f"pruning/layer_importance={layer_method.name} does not score layers")
    strategy.check(shape)


def validate(cfg: DictConfig, model_config, importance) -> dict[str, tuple[int, int]]:
    """Cheap checks of the settings against the model; returns (length, num_samples) per calibration role."""
    limit = max_positions(model_config)
    budget = cfg.get("token_budget")
    lengths = {}
    for role in ROLES:
        length = cfg.lengths[role]
        if limit and length > limit:
            raise ConfigError(
                f"lengths.{role}={length} (seq_len={cfg.seq_len}) exceeds the model's max_position_embeddings "
                f"({limit}); choose seq_len <= {limit}"
            )
        n = samples_for(cfg, length)
        what = f"token_budget={budget} // lengths.{role}={length} = {n}" if budget else f"num_samples={n}"
        if n < cfg.batch_size or n % cfg.batch_size:
            raise ConfigError(f"{what} must be a positive multiple of batch_size={cfg.batch_size}")
        lengths[role] = (length, n)
    fisher = getattr(importance, "fisher", None)
    if getattr(importance, "order", 1) == 2 and fisher in ("sample", "token") and cfg.batch_size > 1:
        n = lengths["taylor"][1]
        if n // cfg.batch_size < 2:
            raise ConfigError(
                f"fisher={fisher} needs at least two batches (num_samples={n}, "
                f"batch_size={cfg.batch_size}); raise num_samples or use importance.fisher=exact"
            )
    return lengths
