"""Quantization schemes, per-layer configs, and quantization parameters.

A *scheme* says how tensors are quantized (bits, symmetric, granularity, calibration);
a *config* adds the per-layer precision and the fixes. Both are frozen dataclasses that
round-trip to the JSON of DESIGN.md::

    {"scheme": {"weights": {...}, "activations": {...}},
     "layers": {"layer1.0.conv2": "fp16"}, "fixes": ["cle"]}

``qparams`` mirrors ONNX Runtime's ``quant_utils.compute_scale_zp`` exactly (float64
arithmetic, scale stored as float32, zero point rounded half to even), so the
simulation and the engine agree on every scale.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from .errors import ConfigError

Granularity = Literal["per_tensor", "per_channel"] | int
Precision = Literal["int8", "int4", "w8", "w4", "fp16", "fp32"]
CalibrationMethod = Literal["minmax", "percentile", "entropy", "mse"]

PRECISIONS: tuple[str, ...] = ("int8", "int4", "w8", "w4", "fp16", "fp32")
WEIGHT_ONLY: dict[str, int] = {"w8": 8, "w4": 4}  # weight-only precisions → weight bits
# The block size of a per-layer "w8"/"w4" in a scheme whose weights are not group-wise (the
# default per-channel int8 scheme): ONNX Runtime's MatMulNBits needs one; 32 is a common choice.
DEFAULT_BLOCK = 32
BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)  # MatMulNBits: a power of two ≥ 16
CALIBRATIONS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")
# A config's "layers" key for every layer it does not name: {"layers": {"*": "fp16"}} is the FP16 model.
ALL_LAYERS = "*"


def weight_only_format(p: str) -> tuple[int, int | None] | None:
    """A weight-only precision → (bits, block): ``"w4"`` → (4, None: the scheme's block),
    ``"w4g128"`` → (4, 128); None for any other precision. A block outside BLOCK_SIZES is a ConfigError."""
    if not isinstance(p, str):
        return None
    if p in WEIGHT_ONLY:
        return WEIGHT_ONLY[p], None
    head, sep, g = p.partition("g")
    if not sep or head not in WEIGHT_ONLY or not g.isdigit():
        return None
    if int(g) not in BLOCK_SIZES:
        raise ConfigError(f"precision {p!r}: the group size must be one of {', '.join(map(str, BLOCK_SIZES))} "
                          "(ONNX Runtime's MatMulNBits blocks)")  # fmt: skip
    return WEIGHT_ONLY[head], int(g)


def is_precision(p: object) -> bool:
    """One of PRECISIONS, or a weight-only precision with its group size (``"w4g128"``)."""
    return isinstance(p, str) and (p in PRECISIONS or weight_only_format(p) is not None)


def _check_bits(bits: Any, what: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(f"{what} bits must be an integer in 2..16, got {bits!r}")


def _check_granularity(g: Any, what: str) -> None:
    if g in ("per_tensor", "per_channel"):
        return
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ConfigError(
            f"{what} granularity must be 'per_tensor', 'per_channel' or a positive group size, got {g!r}"
        )


@dataclass(frozen=True, kw_only=True)
class WeightSpec:
    """How weights are quantized. Default: ORT's int8 symmetric per-channel in [-127, 127]."""

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = "per_channel"

    def __post_init__(self) -> None:
        _check_bits(self.bits, "weight")
        _check_granularity(self.granularity, "weight")
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"weight 'symmetric' must be true or false, got {self.symmetric!r}")


@dataclass(frozen=True, kw_only=True)
class ActivationSpec:
    """How activations are quantized. Default: ORT's uint8 asymmetric per-tensor, min-max."""

    bits: int = 8
    symmetric: bool = False
    granularity: Granularity = "per_tensor"
    calibration: CalibrationMethod = "minmax"
    dynamic: bool = False
    percentile: float = 99.99

    def __post_init__(self) -> None:
        _check_bits(self.bits, "activation")
        _check_granularity(self.granularity, "activation")
        if self.granularity != "per_tensor":
            raise ConfigError(
                "activation granularity must be 'per_tensor' (ONNX Runtime's QDQ engine "
                "quantizes activations per tensor)"
            )
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(
                f"unknown calibration method {self.calibration!r}; choose one of {', '.join(CALIBRATIONS)}"
            )
        if not isinstance(self.symmetric, bool) or not isinstance(self.dynamic, bool):
            raise ConfigError("activation 'symmetric' and 'dynamic' must be true or false")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 50.0 < p <= 100.0:
            raise ConfigError(f"activation percentile must be a number in (50, 100], got {p!r}")
        object.__setattr__(self, "percentile", float(p))


@dataclass(frozen=True, kw_only=True)
class Scheme:
    """``activations=None`` is a weight-only scheme: MatMul/Gemm weights quantized group-wise
    (ONNX Runtime's ``MatMulNBits``), activations float, every other layer float."""

    weights: WeightSpec = field(default_factory=WeightSpec)
    activations: ActivationSpec | None = field(default_factory=ActivationSpec)

    def __post_init__(self) -> None:
        if self.activations is None:
            w = self.weights
            if not 2 <= w.bits <= 8:
                raise ConfigError(f"a weight-only scheme (activations null) needs 2..8-bit weights, got {w.bits}")
            if w.granularity not in BLOCK_SIZES:
                raise ConfigError(
                    "a weight-only scheme (activations null) needs a group size among "
                    f"{', '.join(map(str, BLOCK_SIZES))} (ONNX Runtime's MatMulNBits blocks), got {w.granularity!r}"
                )

    @property
    def weight_only(self) -> bool:
        return self.activations is None

    @property
    def act(self) -> ActivationSpec:
        """The activation grid of statically quantized layers; a weight-only scheme's per-layer
        "int8"/"int4" layers use the default grid (uint8, min-max)."""
        return self.activations if self.activations is not None else ActivationSpec()

    def block_size(self) -> int:
        """The MatMulNBits block of weight-only layers: the scheme's group size, else DEFAULT_BLOCK."""
        g = self.weights.granularity
        return g if isinstance(g, int) and g in BLOCK_SIZES else DEFAULT_BLOCK

    def to_dict(self) -> dict[str, Any]:
        acts = None if self.activations is None else asdict(self.activations)
        return {"weights": asdict(self.weights), "activations": acts}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Scheme":
        d = _object(d, "config 'scheme'")
        unknown = set(d) - {"weights", "activations"}
        if unknown:
            raise ConfigError(f"unknown scheme key(s) {sorted(unknown)}; expected 'weights', 'activations'")
        # a missing "activations" is the default; an explicit null is weight-only
        acts = None if "activations" in d and d["activations"] is None else _build(ActivationSpec, d.get("activations"), "scheme.activations")
        return cls(weights=_build(WeightSpec, d.get("weights"), "scheme.weights"), activations=acts)

    def label(self) -> str:
        w, a = self.weights, self.activations
        g = lambda x: x if isinstance(x, str) else f"group{x}"  # noqa: E731
        if a is None:
            return f"W{w.bits}{'s' if w.symmetric else 'a'}-{g(w.granularity)} weight-only"
        act = "dynamic" if a.dynamic else a.calibration
        return (
            f"W{w.bits}{'s' if w.symmetric else 'a'}-{g(w.granularity)} "
            f"A{a.bits}{'s' if a.symmetric else 'a'}-{act}"
        )


def _object(d: Any, where: str) -> dict[str, Any]:
    """A JSON object as a dict; ``null`` (or missing) is an empty object, anything else an error."""
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be a JSON object, got {_json_type(d)}")
    return dict(d)


def _json_type(v: Any) -> str:
    """The JSON name of a parsed value's type, as the user wrote it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, (int, float)):
        return f"{v!r} (a number)"
    if isinstance(v, str):
        return f"{v!r} (a string)"
    if isinstance(v, (list, tuple)):
        return "an array"
    if isinstance(v, Mapping):
        return "an object"
    return type(v).__name__


def _build(cls: type, d: Any, where: str) -> Any:
    if d is None:
        return cls()
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be a JSON object, got {_json_type(d)}")
    allowed = set(cls.__dataclass_fields__)
    unknown = set(d) - allowed
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(allowed)}")
    try:
        return cls(**d)
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise ConfigError(f"{where}: {e}") from None


@dataclass(frozen=True, kw_only=True)
class Config:
    """A scheme plus per-layer precision overrides and fixes (layers not named use the scheme)."""

    scheme: Scheme = field(default_factory=Scheme)
    layers: Mapping[str, Precision] = field(default_factory=dict)
    fixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, Scheme):
            raise ConfigError(f"config 'scheme' must be a Scheme, got {type(self.scheme).__name__}")
        if not isinstance(self.layers, Mapping):
            raise ConfigError(f"config 'layers' must map layer names to precisions, got {_json_type(self.layers)}")
        for name, p in self.layers.items():
            if not isinstance(name, str):
                raise ConfigError(f"config 'layers': layer names must be strings, got {name!r}")
            if not is_precision(p):
                raise ConfigError(f"layer {name!r}: precision must be one of {', '.join(PRECISIONS)} (weight-only "
                                  f"with a group size: w4g128, w8g32, ...), got {_json_type(p)}")  # fmt: skip
        if isinstance(self.fixes, str) or not all(isinstance(f, str) and f for f in self.fixes):
            raise ConfigError(f"config 'fixes' must be a list of fix names, got {self.fixes!r}")
        object.__setattr__(self, "layers", dict(self.layers))
        object.__setattr__(self, "fixes", tuple(self.fixes))

    def precision(self, layer: str) -> Precision:
        return self.layers.get(layer, self.layers.get(ALL_LAYERS, "int8"))

    def float_layers(self) -> list[str]:
        return [n for n, p in self.layers.items() if p in ("fp16", "fp32")]

    def with_layers(self, layers: Mapping[str, Precision]) -> "Config":
        return Config(scheme=self.scheme, layers=dict(layers), fixes=self.fixes)

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme.to_dict(), "layers": dict(self.layers), "fixes": list(self.fixes)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Config":
        """The config of a parsed JSON object; every wrong key, type or value is a ConfigError."""
        d = _object(d, "a config")
        unknown = set(d) - {"scheme", "layers", "fixes"}
        if unknown:
            raise ConfigError(f"unknown config key(s) {sorted(map(str, unknown))}; expected 'scheme', 'layers', 'fixes'")
        layers = d.get("layers")
        if layers is None:
            layers = {}
        if not isinstance(layers, Mapping):
            raise ConfigError(
                f"config 'layers' must be an object mapping layer names to precisions, got {_json_type(layers)}"
            )
        fixes = d.get("fixes")
        if fixes is None:
            fixes = []
        if not isinstance(fixes, list) or not all(isinstance(f, str) and f for f in fixes):
            raise ConfigError(f"config 'fixes' must be a list of fix names, got {_json_type(fixes)}")
        return cls(scheme=Scheme.from_dict(d.get("scheme")), layers=layers, fixes=tuple(fixes))

    @classmethod
    def load(cls, path: str | Path | None) -> "Config":
        if path is None:
            return cls()
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config {p} is not valid JSON: {e}") from None
        except RecursionError:
            raise ConfigError(f"config {p} is nested too deeply to read (a config is at most 3 levels deep)") from None
        except OSError as e:
            raise ConfigError(f"cannot read config {p}: {e.strerror or e}") from None
        if not isinstance(d, Mapping):
            raise ConfigError(f"config {p} must hold a JSON object")
        return cls.from_dict(d)


# --------------------------------------------------------------------------- qparams


@dataclass(frozen=True)
class QRange:
    """Integer grid [qmin, qmax]; symmetric grids are narrow (int8: [-127, 127]) as in ORT."""

    qmin: int
    qmax: int

    @classmethod
    def for_bits(cls, bits: int, symmetric: bool) -> "QRange":
        if symmetric:
            q = 2 ** (bits - 1) - 1
            return cls(-q, q)
        return cls(0, 2**bits - 1)


@dataclass(frozen=True)
class QParams:
    """r = s · (q − z). ``scale``/``zero_point`` are scalars or 1-D per-channel tensors along ``axis``."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qrange: QRange
    axis: int | None = None
    group: int | None = None


def compute_scale_zp(
    rmin: torch.Tensor, rmax: torch.Tensor, qr: QRange, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORT's compute_scale_zp: range forced to contain 0; s = (rmax − rmin)/(qmax − qmin);
    z = round(qmin − rmin/s) (half to even), or (qmin + qmax)/2 when symmetric; a scale
    below float32's tiny becomes s = 1, z = 0. Returns (scale float32, zero_point int64)."""
    rmin = torch.clamp(torch.as_tensor(rmin, dtype=torch.float64), max=0.0)
    rmax = torch.clamp(torch.as_tensor(rmax, dtype=torch.float64), min=0.0)
    if symmetric:
        absmax = torch.maximum(rmin.abs(), rmax.abs())
        rmin, rmax = -absmax, absmax
    scale = (rmax - rmin) / float(qr.qmax - qr.qmin)
    tiny = torch.finfo(torch.float32).tiny
    degenerate = scale < tiny
    safe = torch.where(degenerate, torch.ones_like(scale), scale)
    if symmetric:
        zp = torch.full_like(scale, round((qr.qmin + qr.qmax) / 2.0))
    else:
        zp = torch.round(qr.qmin - rmin / safe)
    zp = torch.where(degenerate, torch.zeros_like(zp), zp)
    return safe.to(torch.float32), zp.to(torch.int64)
