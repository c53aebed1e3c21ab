"""prune-lab's Hydra configs, a package so that Hydra finds them in an installed prune (``pkg://prune.conf``)."""
