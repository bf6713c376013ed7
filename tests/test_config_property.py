"""Property: any parsed JSON is either a valid config (which round-trips through JSON) or a
ConfigError, never another exception; the CLI turns the invalid ones into one line, exit 2,
nothing written, and runs the valid ones (issue 10).

Every key gets values drawn from both its valid domain and arbitrary JSON (wrong types, out of
range, nested junk), plus unknown keys at every level; an independent oracle below says which
configs are valid, and ``Config.from_dict`` must agree with it exactly.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qanalysis.errors import ConfigError
from qanalysis.scheme import CALIBRATIONS, PRECISIONS, Config

# --------------------------------------------------------------------------- JSON values

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- the oracle

WEIGHT_KEYS = {
    "bits": lambda v: _int(v) and 2 <= v <= 16,
    "symmetric": lambda v: isinstance(v, bool),
    "granularity": lambda v: v in ("per_tensor", "per_channel") if isinstance(v, str) else (_int(v) and v >= 1),
}
ACTIVATION_KEYS = {
    "bits": WEIGHT_KEYS["bits"],
    "symmetric": lambda v: isinstance(v, bool),
    "granularity": lambda v: v == "per_tensor" and isinstance(v, str),
    "calibration": lambda v: isinstance(v, str) and v in CALIBRATIONS,
    "dynamic": lambda v: isinstance(v, bool),
    "percentile": lambda v: _number(v) and not math.isnan(v) and 50 < v <= 100,
}


def _spec_ok(d, keys) -> bool:
    if d is None:
        return True
    return isinstance(d, dict) and set(d) <= set(keys) and all(keys[k](v) for k, v in d.items())


def is_valid(d, *, from_file: bool = False) -> bool:
    """What a valid config is, written from DESIGN.md independently of scheme.py. ``from_dict(None)``
    is the default config; a config file must hold an object."""
    if d is None and not from_file:
        return True
    if not isinstance(d, dict) or not set(d) <= {"scheme", "layers", "fixes"}:
        return False
    s = d.get("scheme")
    if s is not None and not (
        isinstance(s, dict) and set(s) <= {"weights", "activations"}
        and _spec_ok(s.get("weights"), WEIGHT_KEYS) and _spec_ok(s.get("activations"), ACTIVATION_KEYS)
    ):  # fmt: skip
        return False
    if isinstance(s, dict) and "activations" in s and s["activations"] is None:
        # weight-only (DESIGN.md: ONNX Runtime's MatMulNBits): 2–8-bit weights in blocks of 16..256
        w = s.get("weights") or {}
        if not (w.get("granularity") in (16, 32, 64, 128, 256) and not isinstance(w.get("granularity"), bool)
                and 2 <= w.get("bits", 8) <= 8):  # fmt: skip
            return False
    layers = d.get("layers")
    if layers is not None and not (
        isinstance(layers, dict) and all(isinstance(p, str) and p in PRECISIONS for p in layers.values())
    ):
        return False
    fixes = d.get("fixes")
    return fixes is None or (isinstance(fixes, list) and all(isinstance(f, str) and f for f in fixes))


# --------------------------------------------------------------------------- generators

VALID_VALUES = {
    "weights": {
        "bits": st.integers(2, 16),
        "symmetric": st.booleans(),
        "granularity": st.sampled_from(["per_tensor", "per_channel"]) | st.integers(1, 256),
    },
    "activations": {
        "bits": st.integers(2, 16),
        "symmetric": st.booleans(),
        "granularity": st.just("per_tensor"),
        "calibration": st.sampled_from(CALIBRATIONS),
        "dynamic": st.booleans(),
        "percentile": st.floats(50, 100, exclude_min=True) | st.integers(51, 100),
    },
}


def _maybe_junk(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the key's valid domain, sometimes any JSON value (a wrong type or out of range)."""
    return st.one_of(valid, valid, valid, json_values)


def _unknown_keys(known) -> st.SearchStrategy:
    return st.dictionaries(st.text(min_size=1, max_size=6).filter(lambda k: k not in known), json_values, max_size=1)


@st.composite
def _obj(draw, values: dict, junk: bool) -> dict:
    d = draw(st.fixed_dictionaries({}, optional={k: _maybe_junk(v) if junk else v for k, v in values.items()}))
    if junk and draw(st.integers(0, 9)) == 0:
        d.update(draw(_unknown_keys(values)))
    return d


@st.composite
def configs(draw, junk: bool = True, layer_names=None, fix_names=None) -> object:
    """A parsed JSON config: valid-looking with ``junk=False``, otherwise anything near a config."""

    def part(valid):
        return _maybe_junk(valid) if junk else valid

    def spec(which):
        return part(st.none() | _obj(VALID_VALUES[which], junk))

    scheme = st.fixed_dictionaries({}, optional={"weights": spec("weights"), "activations": spec("activations")})
    names = st.text(min_size=1, max_size=12) if layer_names is None else layer_names
    layers = st.dictionaries(names, st.sampled_from(PRECISIONS), max_size=3)
    fixes = st.lists(st.text(min_size=1, max_size=12) if fix_names is None else fix_names, max_size=2, unique=True)
    d = draw(st.fixed_dictionaries({}, optional={"scheme": part(scheme), "layers": part(layers), "fixes": part(fixes)}))
    if junk and draw(st.integers(0, 9)) == 0:
        d.update(draw(_unknown_keys({"scheme", "layers", "fixes"})))
    if junk and draw(st.integers(0, 19)) == 0:
        return draw(json_values)  # not even an object
    if not junk and isinstance(d.get("scheme"), dict) and not is_valid(d):
        d["scheme"].pop("activations", None)  # activations null is weight-only: valid only with blocks of 16..256
    return d


# --------------------------------------------------------------------------- properties


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_from_dict_is_ok_or_config_error(d):
    if is_valid(d):
        c = Config.from_dict(d)
        assert Config.from_dict(json.loads(c.to_json())) == c  # round-trips to JSON
        assert json.loads(c.to_json()) == c.to_dict()
    else:
        with pytest.raises(ConfigError) as e:
            Config.from_dict(d)
        assert str(e.value) and "\n" not in str(e.value)  # one sentence


@settings(max_examples=100, deadline=None)
@given(configs(junk=False))
def test_valid_generator_gives_valid_configs(d):
    """The generator's valid side really is valid (else the property above tests little)."""
    assert is_valid(d)
    Config.from_dict(d)


# --------------------------------------------------------------------------- through the CLI

DIABETES_LAYERS = ["net.fc1", "net.fc2", "net.out"]
CHEAP_FIXES = ["cle", "bias_correction"]


def _run(run_cli, tmp_path_factory, d):
    folder = tmp_path_factory.mktemp("cfg")
    cfg = folder / "c.json"
    cfg.write_text(json.dumps(d))
    out = folder / "out"
    code, _, err = run_cli("analyze", "sample:diabetes_mlp", "--config", cfg, "--out", out, "--quiet")
    return code, err, out


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(configs(junk=False, layer_names=st.sampled_from(DIABETES_LAYERS), fix_names=st.sampled_from(CHEAP_FIXES)))
def test_cli_runs_valid_configs(run_cli, tmp_path_factory, d):
    code, err, out = _run(run_cli, tmp_path_factory, d)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["config"] == Config.from_dict(d).to_dict()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(configs().filter(lambda d: not is_valid(d, from_file=True)))
def test_cli_refuses_invalid_configs_in_one_line(run_cli, tmp_path_factory, d):
    code, err, out = _run(run_cli, tmp_path_factory, d)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
