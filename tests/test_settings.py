"""Each setting of an importance method or pruning strategy is declared once (``prune.settings``): the class
built from Python, the config Hydra composes and the range check all read that one declaration, and no YAML
option restates a default."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate

from prune import settings as S
from prune.errors import ConfigError
from prune.schema import CONF_DIR, compose
from prune.schema_base import Choice

OPTIONS = [(group, path.stem) for group in ("importance", "pruning") for path in sorted((CONF_DIR / group).glob("*.yaml"))]
WIRING = {"_target_", "name", "layer_importance", "width_multiple"}  # what the YAML legitimately sets


def _settings_of(obj) -> dict:
    """The fields an object takes from ``prune.settings``, as plain values."""
    names = {f.name for c in type(obj).__mro__ if c.__module__ == S.__name__ for f in dataclasses.fields(c)}
    return {n: str(v) if isinstance(v, Choice) else v for n, v in ((n, getattr(obj, n)) for n in sorted(names))}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_an_option_built_from_its_config_equals_the_class_built_from_python(group, option):
    """Same defaults on both paths: the composed option has no value the class does not (apart from what the
    option itself sets), so a method made in a notebook and one made by prune-run agree."""
    node = compose(f"{group}={option}")[group]
    built = instantiate(node)
    cls = type(built)
    raw = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text())
    set_here = {k: v for k, v in raw.items() if k not in WIRING | {"defaults"}}
    plain = cls(**set_here)
    assert _settings_of(built) == _settings_of(plain)


def _yaml_values(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in data.items() if k not in WIRING | {"defaults"}}


def test_no_option_restates_a_default():
    """The YAML files set only what differs from prune.settings (order 2 vs 1, ...)."""
    restated = []
    for group in ("importance", "pruning"):
        for path in sorted((CONF_DIR / group).rglob("*.yaml")):
            node = compose(f"{group}={path.stem}")[group] if path.parent.name == group else None
            if node is None:
                continue
            cls = type(instantiate(node))
            defaults = {f.name: f.default for f in dataclasses.fields(cls)}
            for key, value in _yaml_values(path).items():
                if key in defaults and str(defaults[key]) == str(value):
                    restated.append(f"{path.relative_to(CONF_DIR)}: {key}={value}")
    assert restated == []


@pytest.mark.parametrize("settings,field,value,message", [
    (S.TaylorSettings, "order", 3, "importance.order=3 must be 1 or 2"),
    (S.TaylorSettings, "fisher", "bogus", "importance.fisher=bogus is unknown: choose one of sample, exact, batch, token"),
    (S.TaylorSettings, "micro_batch_size", 0, "importance.micro_batch_size=0 must be a positive integer or null"),
    (S.HybridSettings, "depth_share", 1.5, "pruning.depth_share=1.5 must be a number in [0, 1]"),
    (S.StrategySettings, "ratio", 1.0, "pruning.ratio=1.0 must be a number strictly between 0 and 1"),
])
def test_python_and_the_config_refuse_a_bad_value_in_the_same_words(settings, field, value, message):
    """One declaration, one check: the class refuses the value in the words preflight uses for the config."""
    from prune.importance.taylor import Taylor
    from prune.pruning import Global, Hybrid

    cls = {S.TaylorSettings: Taylor, S.HybridSettings: Hybrid, S.StrategySettings: Global}[settings]
    with pytest.raises(ConfigError) as err:
        cls(**{field: value})
    assert str(err.value) == message
    if field != "fisher":  # a word outside a choice is refused earlier, by Hydra, while composing
        from prune.preflight import check_ranges

        group = "importance=taylor_2nd" if settings is S.TaylorSettings else "pruning=hybrid"
        prefix = "importance" if settings is S.TaylorSettings else "pruning"
        cfg = compose(group, f"{prefix}.{field}={value}")
        with pytest.raises(ConfigError) as err:
            check_ranges(cfg)
        assert str(err.value).replace(".0 ", " ") == message.replace(".0 ", " ")


def test_the_class_check_is_not_blind():
    """validate() reads the declaration: a field whose range is dropped from it would pass (so the
    parametrized refusals above test the declaration, not a copy)."""
    assert S.problem(S.TaylorSettings, "order", 2) is None
    assert S.problem(S.TaylorSettings, "order", 3) == "must be 1 or 2"
    assert S.problem(S.GroupRemovalSettings, "mlp_sample", None) is None


@pytest.mark.slow
def test_composing_a_config_loads_no_torch():
    code = ("import sys; from prune.schema import compose; compose('importance=taylor_2nd', 'pruning=hybrid'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_no_testbed_option_restates_a_spec_default():
    """The testbed's settings are declared once (``TestbedSpec`` and its parts); ``default.yaml`` sets nothing,
    the other options only what differs (a restated default would hide which settings make the variant)."""
    from prune.testbed.spec import TestbedSpec

    spec = dataclasses.asdict(TestbedSpec())
    restated = []
    for path in sorted((CONF_DIR / "testbed").glob("*.yaml")):
        for part, values in (yaml.safe_load(path.read_text()) or {}).items():
            if part == "defaults" or not isinstance(values, dict):
                continue
            restated += [f"{path.name}: {part}.{k}={v}" for k, v in values.items() if spec.get(part, {}).get(k, object()) == v]
    assert restated == []
    assert set(yaml.safe_load((CONF_DIR / "testbed" / "default.yaml").read_text())) == {"defaults"}
