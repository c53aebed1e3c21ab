"""``prune-run`` that SIGKILLs its own process group at a chosen point (for tests/test_kill.py).

    python tests/kill_driver.py <point> -- <prune-run arguments>

``point``: ``none`` (run to the end); ``write:<n>`` (the n-th file written through ``prune.files.atomic_write``:
after its temporary file is filled, before it replaces the target, i.e. in the middle of writing a
metrics.json, plan.json, figure, summary.csv or report.md); ``wandb:<seconds>`` (that long into the first
W&B flush, ``WandbTracker.finish``); ``save`` (after the pruned model's files are written, before the
folder gets its final name). Run with the checkout on PYTHONPATH so that its ``prune`` is the one patched.
"""
from __future__ import annotations

import os
import signal
import sys
import threading


def die() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def install(point: str) -> None:
    kind, _, arg = point.partition(":")
    if kind == "write":
        import prune.files

        original, count = prune.files.atomic_write, [0]

        def killing_write(path, write):
            count[0] += 1
            if count[0] < int(arg):
                return original(path, write)

            def write_then_die(tmp):
                write(tmp)
                die()

            return original(path, write_then_die)

        prune.files.atomic_write = killing_write
    elif kind == "wandb":
        from prune.report.tracking import WandbTracker

        finish = WandbTracker.finish

        def killed_finish(self, ok):
            threading.Timer(float(arg), die).start()
            finish(self, ok)

        WandbTracker.finish = killed_finish
    elif kind == "save":
        import prune.checkpoint

        write_folder = prune.checkpoint._write_folder

        def write_then_die(*args, **kwargs):
            write_folder(*args, **kwargs)
            die()

        prune.checkpoint._write_folder = write_then_die
    elif kind != "none":
        raise SystemExit(f"unknown kill point {point}")


if __name__ == "__main__":
    split = sys.argv.index("--")
    install(sys.argv[1])
    from prune.run import main

    sys.exit(main(sys.argv[split + 1:]))
