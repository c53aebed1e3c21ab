"""The embedded testbed: a synthetic corpus with known long-range structure and a tiny LLaMA trained on it.

Import from the modules (``prune.testbed.spec`` for the settings, ``build`` to build and cache it): the
package itself imports nothing, so composing a config (whose testbed schema comes from ``spec``) does not
load torch.
"""
