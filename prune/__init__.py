"""prune-lab: structured pruning experiments on LLaMA-family language models.

Importing the package registers the ``pruned_*`` model types with ``AutoConfig`` and
``AutoModelForCausalLM``, so ``AutoModelForCausalLM.from_pretrained(<pruned folder>)`` just works.
"""
__version__ = "0.1.0"


def load_pruned(path, **kwargs):
    """Load a pruned model folder (see ``prune.checkpoint``)."""
    from prune.checkpoint import load_pruned as _load

    return _load(path, **kwargs)


def _register() -> None:
    try:
        from prune.modeling_pruned import register_auto_classes
    except ImportError:  # transformers missing: nothing to register
        return
    register_auto_classes()


_register()
