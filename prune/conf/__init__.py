"""prune-lab's Hydra configs, a package so that Hydra finds them in an installed prune (``pkg://prune.conf``).

Importing it registers the schemas their defaults lists name (``prune.schema``).
"""
import prune.schema  # noqa: F401
