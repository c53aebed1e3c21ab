"""prune-lab: structured pruning experiments on LLaMA-family language models.

Importing the package registers the ``pruned_*`` model types with ``AutoConfig`` and
``AutoModelForCausalLM``, so ``AutoModelForCausalLM.from_pretrained(<pruned folder>)`` just works. The
registration runs when ``transformers`` is imported (at once if it already is; ``wrapt``'s post-import
hook), so reading results (``prune-report``, ``prune-dashboard``) never loads torch or transformers.
"""
__version__ = "0.1.0"


def load_pruned(path, **kwargs):
    """Load a pruned model folder (see ``prune.checkpoint``)."""
    from prune.checkpoint import load_pruned as _load

    return _load(path, **kwargs)


def _register_now(_module=None) -> None:
    try:
        from prune.modeling_pruned import register_auto_classes
    except ImportError:  # transformers missing: nothing to register
        return
    register_auto_classes()


def _register() -> None:
    try:
        import wrapt
    except ImportError:  # an environment without it: register now (loads torch and transformers)
        _register_now()
        return
    wrapt.register_post_import_hook(_register_now, "transformers")


_register()
