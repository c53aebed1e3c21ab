"""What every schema module shares: named choices, the range checks, ``setting()`` and the instantiated node.

``prune.schema`` (the top level, importance methods, pruning strategies) and ``prune.schema_groups`` (the
option groups chosen whole: model, testbed, data, recovery, logger) build on it; neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING


class Choice(str, Enum):
    """A setting with named values; each value is also the plain string the code compares against."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def choice(name: str, values) -> type[Choice]:
    return Choice(name, {v: v for v in values})


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# check name -> (test on a value of the right type, what the value must be); None always passes
CHECKS = {
    "int>0": (lambda v: v > 0, "a positive integer"),
    "int>=0": (lambda v: v >= 0, "an integer >= 0"),
    "int>=2": (lambda v: v >= 2, "an integer >= 2"),
    "int>0|auto": (lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
                   "a positive integer or 'auto'"),
    "1|2": (lambda v: v in (1, 2), "1 or 2"),
    "lengths": (lambda v: len(v) > 0 and all(x >= 2 for x in v), "a non-empty list of integers >= 2, e.g. [128,512]"),
    "fraction(0,1)": (lambda v: 0 < v < 1, "a number strictly between 0 and 1"),
    "fraction(0,1]": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "fraction[0,1]": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "fraction[0,1)": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "int>=8": (lambda v: _int(v) and v >= 8, "an integer >= 8"),
    "lengths>=16": (lambda v: len(v) > 0 and all(_int(x) and x >= 16 for x in v),
                    "a non-empty list of integers >= 16, e.g. [1024,4096]"),
    "fractions[0,1]": (lambda v: len(v) > 0 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1
                                                   for x in v), "a non-empty list of fractions in [0, 1]"),
    ">=0": (lambda v: v >= 0, "a number >= 0"),
    ">0": (lambda v: v > 0, "a positive number"),
}


def setting(check: str | None = None, default: Any = MISSING):
    """A field whose value comes from the YAML files (``???`` until then), checked against ``CHECKS[check]``."""
    assert check is None or check in CHECKS, check
    return field(default=default, metadata={"check": check} if check else {})


@dataclass
class Instantiated:
    """A node Hydra instantiates: the class, and the name of the option that chose it."""

    _target_: str = MISSING
    name: str = MISSING
