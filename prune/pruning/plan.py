"""A pruning plan: which attention groups and MLP channels of which layers survive."""
from __future__ import annotations

from dataclasses import dataclass, field

from prune.structure import ATTENTION, MLP, LayerShape, ModelShape


@dataclass
class PruningPlan:
    """Kept group indices per layer (sorted). A layer left with no group at all is removed entirely."""

    keep_attention: list[list[int]]
    keep_mlp: list[list[int]]
    strategy: str = ""
    meta: dict = field(default_factory=dict)

    @classmethod
    def keep_all(cls, shape: ModelShape) -> "PruningPlan":
        return cls(
            [list(range(s.num_kv_heads)) for s in shape.layers],
            [list(range(s.intermediate_size)) for s in shape.layers],
        )

    def keep(self, block: str) -> list[list[int]]:
        return self.keep_attention if block == ATTENTION else self.keep_mlp

    @property
    def removed_layers(self) -> list[int]:
        return [i for i, (a, m) in enumerate(zip(self.keep_attention, self.keep_mlp)) if not a and not m]

    def layer_shapes(self, shape: ModelShape) -> list[LayerShape]:
        """Shapes of the layers that remain (removed layers are left out)."""
        return [
            LayerShape(len(a) * shape.heads_per_group, len(a), len(m))
            for a, m in zip(self.keep_attention, self.keep_mlp)
            if a or m
        ]

    def params_after(self, shape: ModelShape) -> int:
        return sum(
            len(a) * shape.attention_group_params + len(m) * shape.mlp_channel_params
            for a, m in zip(self.keep_attention, self.keep_mlp)
        )

    def removed_params(self, shape: ModelShape) -> int:
        """Prunable parameters removed, counting the norms of removed layers as not prunable."""
        return shape.prunable_params - self.params_after(shape)

    def kept_table(self, shape: ModelShape) -> list[dict]:
        rows = []
        for i, (a, m, s) in enumerate(zip(self.keep_attention, self.keep_mlp, shape.layers)):
            rows.append(
                {
                    "layer": i,
                    "query_heads": len(a) * shape.heads_per_group,
                    "kv_heads": len(a),
                    "mlp_channels": len(m),
                    "attention_kept_fraction": len(a) / s.num_kv_heads if s.num_kv_heads else 0.0,
                    "mlp_kept_fraction": len(m) / s.intermediate_size if s.intermediate_size else 0.0,
                    "removed": not a and not m,
                }
            )
        return rows

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "keep_attention": self.keep_attention,
            "keep_mlp": self.keep_mlp,
            "removed_layers": self.removed_layers,
            **({"meta": self.meta} if self.meta else {}),
        }

    def removed_sets(self, shape: ModelShape) -> dict[str, set]:
        """Removed groups as sets of (layer, index): what overlap (Jaccard) between runs is computed on."""
        out = {}
        for block in (ATTENTION, MLP):
            counts = shape.group_counts(block)
            out[block] = {
                (i, g) for i, kept in enumerate(self.keep(block)) for g in set(range(counts[i])) - set(kept)
            }
        return out
