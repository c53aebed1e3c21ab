"""``python -m prune.testbed.reship``: train the default testbed in a temporary cache and ship its weights
with the package (``prune.testbed.shipped``), replacing the old ones. A maintainer's tool, run after a change
to the build; apart from ``shipped`` so that the build never imports the config machinery."""
from __future__ import annotations

import logging
import shutil

from prune.testbed.shipped import WEIGHTS, ship


def main() -> None:
    import tempfile

    from omegaconf import OmegaConf

    from prune.schema import compose
    from prune.testbed.build import ensure_model
    from prune.testbed.spec import TestbedSpec

    logging.basicConfig(level=logging.INFO)
    spec = TestbedSpec.from_dict(OmegaConf.to_container(compose().testbed, resolve=True))
    with tempfile.TemporaryDirectory() as cache:
        folder = ensure_model(spec, cache, use_shipped=False)
        for old in WEIGHTS.glob("model-*"):
            if old.name != folder.name:
                shutil.rmtree(old)
        print(f"shipped: {ship(folder)}")


if __name__ == "__main__":
    main()
