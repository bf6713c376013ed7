"""The dashboard's shared choices: session-state keys, their documentation, and the URL.

Not a page itself: ``app.py`` registers the pages explicitly with ``st.navigation``.

Session-state keys shared across pages (everything else is widget state, ``w_*``):

``source``        the committed MODEL string: ``sample:NAME``, ``torchvision:ARCH[@W.pt]``
                  or a spec file path (what ``qanalysis analyze MODEL`` takes).
``data``          the image folder for torchvision models, else ``None``.
``config_json``   the committed config (scheme only, no per-layer overrides) as JSON;
                  with ``source`` and ``data`` it keys the cached analysis.
``float_layers``  layer names kept in FP16, chosen on the Mixed precision page, from a
                  layer's details, by clicking a node of the graph, or from a loaded config;
                  the Export page builds the config JSON from it. Cleared when another
                  workload is run.
``layer_precisions``  other per-layer precisions ({name: "int4" | "fp32" | "int8"}) that only
                  a loaded config.json sets (the dashboard's own choice is FP16); cleared with
                  ``float_layers``.
``focus_layer``   the layer last opened (Layer error page, graph, Distributions page); the
                  other pages open on it.
``fixes``         fix names applied on the Fixes page (``[]``: plain PTQ). The Mixed
                  precision and Export pages work on the scheme plus these fixes.
                  Cleared when another workload is run.
``loaded_config`` the name of the config.json last loaded (shown on the Export page).

Page state kept across page switches: ``search`` (the last search run on the Mixed
precision page: analysis key, max drop, objective; its result is cached) and
``export_mode`` (int8 / dynamic / fp16 on the Export page).

The URL carries the same choices, so a reload or a pasted link restores the view
(``url_params`` writes them after every run; ``read_url`` reads them on a new session)::

    ?model=sample:digits_vit&data=DIR            the workload
    &wbits=4&wgran=group&wgroup=32&wsym=0        the weight scheme (only what differs from
    &abits=16&amode=dynamic&acal=percentile      the default) and the activation scheme
    &apct=99.9&asym=1
    &float=conv1,layer1.0:add                    layers kept in FP16
    &prec=fc=int4                                other per-layer precisions (a loaded config)
    &fixes=cle,bias_correction                   fixes applied
    &focus=conv2.conv                            the focused layer
    &mode=dynamic&page=export                    the Export page's engine mode; the page
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import streamlit as st

from qanalysis.errors import ConfigError, QAnalysisError
from qanalysis.scheme import ALL_LAYERS, CALIBRATIONS, ActivationSpec, Config, Scheme, WeightSpec, weight_only_format
from qanalysis.workload import list_samples

SOURCE = "source"
DATA = "data"
CONFIG_JSON = "config_json"
FLOAT_LAYERS = "float_layers"
LAYER_PRECISIONS = "layer_precisions"
FOCUS_LAYER = "focus_layer"
FIXES = "fixes"
SEARCH = "search"
EXPORT_MODE = "export_mode"
LOADED_CONFIG = "loaded_config"
ROUTED = "_routed"  # set by app.py: this session went through the router
DEEP_LINK = "_deep_link"  # the page a session asked for before it went through the router
URL_NOTE = "_url_note"  # what a link asked for that could not be restored (shown once)

Key = tuple[str, "str | None", str, float]

KINDS = ("Sample", "torchvision", "Spec")
GRANULARITIES = ("per_channel", "per_tensor", "group")
WEIGHT_BITS = (8, 4)
ACT_BITS = (8, 16)
EXPORT_MODES = ("int8", "dynamic", "fp16")


def default_source() -> str:
    samples = list_samples()
    return f"sample:{samples[0]}" if samples else ""


def init_state() -> None:
    ss = st.session_state
    if not ss.get(ROUTED):
        # Opened straight on a page on a fresh server: Streamlit's legacy ``pages/`` mode runs the
        # page file alone, without app.py's sidebar. Go through the router (the link's query
        # string too); it comes back here.
        ss[DEEP_LINK] = urlparse(st.context.url or "").path.rstrip("/").rsplit("/", 1)[-1]
        st.switch_page("app.py", query_params=st.query_params.to_dict())
    ss.setdefault(SOURCE, default_source())
    ss.setdefault(DATA, None)
    ss.setdefault(CONFIG_JSON, Config().to_json())
    ss.setdefault(FLOAT_LAYERS, [])
    ss.setdefault(LAYER_PRECISIONS, {})
    ss.setdefault(FOCUS_LAYER, None)
    ss.setdefault(FIXES, [])
    ss.setdefault(SEARCH, None)
    ss.setdefault(EXPORT_MODE, "int8")
    ss.setdefault(LOADED_CONFIG, None)


def stamp(source: str) -> float:
    """A spec file's mtime, so that editing the spec and pressing Run reloads it."""
    if source.startswith(("sample:", "torchvision:")):
        return 0.0
    p = Path(source)
    return p.stat().st_mtime if p.is_file() else 0.0


def analysis_key(config_json: str | None = None) -> Key:
    """The cache key of the committed workload under ``config_json`` (default: the committed scheme)."""
    init_state()
    ss = st.session_state
    return (ss[SOURCE], ss[DATA], config_json or ss[CONFIG_JSON], stamp(ss[SOURCE]))


def current_config() -> Config:
    return Config.from_dict(json.loads(st.session_state[CONFIG_JSON]))


def fixes_config_json(fixes: list[str] | tuple[str, ...]) -> str:
    """The committed scheme with ``fixes`` applied (the committed config itself when there are none)."""
    cj = st.session_state[CONFIG_JSON]
    if not fixes:
        return cj
    return Config.from_dict({**json.loads(cj), "fixes": list(fixes)}).to_json()


def deploy_config_json() -> str:
    """Scheme + the fixes chosen on the Fixes page: what Mixed precision and Export work on."""
    return fixes_config_json(st.session_state.get(FIXES) or [])


def layer_names(a: Any) -> list[str]:
    return [layer.name for layer in a.qgraph.layers]


def _weight_only(p: str) -> bool:
    """A weight-only precision ("w4", "w4g128") a link may carry; a bad group size is dropped."""
    try:
        return weight_only_format(p) is not None
    except ConfigError:
        return False


def float_layers(a: Any) -> list[str]:
    """The layers kept in FP16 (shared across pages), restricted to this analysis' layers."""
    names = set(layer_names(a))
    return [n for n in st.session_state.get(FLOAT_LAYERS, []) if n in names]


def layer_precisions(a: Any) -> dict[str, str]:
    """Every per-layer precision of the shared selection: loaded ones, then the FP16 choices."""
    names = set(layer_names(a))
    out = {n: p for n, p in (st.session_state.get(LAYER_PRECISIONS) or {}).items() if n in names}
    out.update({n: "fp16" for n in float_layers(a)})
    return out


def config_with_float_layers(a: Any) -> Config:
    """The analysis' config (scheme and fixes) with the shared per-layer selection."""
    return a.config.with_layers(layer_precisions(a))


def clear_layer_choices() -> None:
    ss = st.session_state
    ss[FLOAT_LAYERS] = []
    ss[LAYER_PRECISIONS] = {}


# --------------------------------------------------------------------------- the sidebar's choice


def pending() -> tuple[str, str | None, str]:
    """(source, data, config JSON) from the sidebar widgets; raises QAnalysisError if invalid."""
    ss = st.session_state
    kind = ss.get("w_kind", KINDS[0])
    data = None
    if kind == "Sample":
        source = f"sample:{ss.get('w_sample') or list_samples()[0]}"
    elif kind == "torchvision":
        arch = (ss.get("w_arch") or "").strip()
        if not arch:
            raise QAnalysisError("enter a torchvision architecture, e.g. resnet18")
        weights = (ss.get("w_weights") or "").strip()
        source = f"torchvision:{arch}" + (f"@{weights}" if weights else "")
        data = (ss.get("w_data") or "").strip() or None
        if data is None:
            raise QAnalysisError(
                "torchvision models need an image folder (one sub-folder per class)"
            )
    else:
        source = (ss.get("w_spec") or "").strip()
        if not source:
            raise QAnalysisError("enter the path to a spec file (*.py)")
    return source, data, Config(scheme=widget_scheme()).to_json()


def widget_scheme() -> Scheme:
    ss = st.session_state
    gran = ss.get("w_wgran", "per_channel")
    weights_spec = WeightSpec(
        bits=int(ss.get("w_wbits", 8)),
        symmetric=bool(ss.get("w_wsym", True)),
        granularity=int(ss.get("w_wgroup", 32)) if gran == "group" else gran,
    )
    dynamic = ss.get("w_amode", "static") == "dynamic"
    act_spec = ActivationSpec(
        bits=int(ss.get("w_abits", 8)),
        symmetric=bool(ss.get("w_asym", False)),
        calibration="minmax" if dynamic else ss.get("w_acal", "minmax"),
        dynamic=dynamic,
        percentile=float(ss.get("w_apct", 99.99)),
    )
    return Scheme(weights=weights_spec, activations=act_spec)


def scheme_widgets(scheme: Scheme) -> dict[str, Any]:
    """The sidebar widget values that show ``scheme``; ConfigError if the sidebar cannot show it."""
    w, a = scheme.weights, scheme.activations
    if w.bits not in WEIGHT_BITS or a.bits not in ACT_BITS:
        raise ConfigError(
            f"the dashboard offers weight bits {'/'.join(map(str, WEIGHT_BITS))} and activation bits "
            f"{'/'.join(map(str, ACT_BITS))}, this scheme has W{w.bits} A{a.bits}: analyze it with "
            "`qanalysis analyze MODEL --config config.json`"
        )
    group = isinstance(w.granularity, int)
    out: dict[str, Any] = {
        "w_wbits": w.bits,
        "w_wgran": "group" if group else w.granularity,
        "w_wsym": w.symmetric,
        "w_abits": a.bits,
        "w_amode": "dynamic" if a.dynamic else "static",
        "w_acal": a.calibration,
        "w_apct": a.percentile,
        "w_asym": a.symmetric,
    }
    if group:
        out["w_wgroup"] = w.granularity
    return out


def source_widgets(source: str, data: str | None) -> dict[str, Any]:
    """The sidebar widget values that show the workload ``source`` (and ``data``)."""
    if source.startswith("sample:"):
        name = source.removeprefix("sample:")
        # an unknown name: the sidebar keeps its choice and the page shows the loader's error
        return {"w_kind": "Sample", "w_sample": name} if name in list_samples() else {}
    if source.startswith("torchvision:"):
        arch, _, weights = source.removeprefix("torchvision:").partition("@")
        return {"w_kind": "torchvision", "w_arch": arch, "w_weights": weights, "w_data": data or ""}
    return {"w_kind": "Spec", "w_spec": source}


# --------------------------------------------------------------------------- the URL

_SCHEME_PARAMS = ("wbits", "wgran", "wgroup", "wsym", "abits", "amode", "acal", "apct", "asym")


def scheme_params(scheme: Scheme) -> dict[str, str]:
    """The URL parameters of ``scheme``: only what differs from the default scheme."""
    w, a, d = scheme.weights, scheme.activations, Scheme()
    p: dict[str, str] = {}
    if w.bits != d.weights.bits:
        p["wbits"] = str(w.bits)
    if isinstance(w.granularity, int):
        p["wgran"], p["wgroup"] = "group", str(w.granularity)
    elif w.granularity != d.weights.granularity:
        p["wgran"] = w.granularity
    if w.symmetric != d.weights.symmetric:
        p["wsym"] = str(int(w.symmetric))
    if a.bits != d.activations.bits:
        p["abits"] = str(a.bits)
    if a.dynamic:
        p["amode"] = "dynamic"
    elif a.calibration != d.activations.calibration:
        p["acal"] = a.calibration
    if a.percentile != d.activations.percentile:
        p["apct"] = f"{a.percentile:g}"
    if a.symmetric != d.activations.symmetric:
        p["asym"] = str(int(a.symmetric))
    return p


def scheme_from_params(q: Mapping[str, str]) -> Scheme:
    """The scheme a link names (missing parameters take the defaults); ConfigError if malformed."""

    def num(key: str, cast: type, default: Any) -> Any:
        if key not in q:
            return default
        try:
            return cast(q[key])
        except ValueError:
            raise ConfigError(f"{key}={q[key]!r} is not a number") from None

    gran: Any = q.get("wgran", "per_channel")
    if gran == "group":
        gran = num("wgroup", int, 32)
    elif gran not in ("per_channel", "per_tensor"):
        raise ConfigError(f"wgran={gran!r}: expected per_channel, per_tensor or group")
    dynamic = q.get("amode", "static") == "dynamic"
    cal = q.get("acal", "minmax")
    if cal not in CALIBRATIONS:
        raise ConfigError(f"acal={cal!r}: expected one of {', '.join(CALIBRATIONS)}")
    return Scheme(
        weights=WeightSpec(bits=num("wbits", int, 8), symmetric=q.get("wsym", "1") != "0", granularity=gran),
        activations=ActivationSpec(
            bits=num("abits", int, 8),
            symmetric=q.get("asym", "0") == "1",
            calibration="minmax" if dynamic else cal,
            dynamic=dynamic,
            percentile=num("apct", float, 99.99),
        ),
    )


def _split(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


def url_params(page_path: str = "") -> dict[str, str]:
    """The committed choices as URL parameters (what a reload or a shared link restores)."""
    ss = st.session_state
    p: dict[str, str] = {"model": ss[SOURCE]}
    if ss[DATA]:
        p["data"] = ss[DATA]
    p.update(scheme_params(current_config().scheme))
    if ss.get(FLOAT_LAYERS):
        p["float"] = ",".join(ss[FLOAT_LAYERS])
    if ss.get(LAYER_PRECISIONS):
        p["prec"] = ",".join(f"{n}={v}" for n, v in ss[LAYER_PRECISIONS].items())
    if ss.get(FIXES):
        p["fixes"] = ",".join(ss[FIXES])
    if ss.get(FOCUS_LAYER):
        p["focus"] = ss[FOCUS_LAYER]
    if ss.get(EXPORT_MODE, "int8") != "int8":
        p["mode"] = ss[EXPORT_MODE]
    if page_path:
        p["page"] = page_path
    return p


def write_url(page_path: str = "") -> None:
    """Keep the address bar in step with the committed choices (written only when they change)."""
    want = url_params(page_path)
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)


def read_url() -> None:
    """A new session restores what its link names: workload, scheme, layers, fixes, focus, mode.

    What cannot be restored (a malformed scheme, an unknown export mode) is said once in
    ``URL_NOTE`` and left at its default; an unknown model is the page's loader error."""
    ss, q = st.session_state, st.query_params.to_dict()
    if SOURCE in ss or not q:
        return
    notes = []
    if q.get("model"):
        ss[SOURCE], ss[DATA] = q["model"], q.get("data") or None
        ss.update(source_widgets(ss[SOURCE], ss[DATA]))
    if any(k in q for k in _SCHEME_PARAMS):
        try:
            scheme = scheme_from_params(q)
            ss.update(scheme_widgets(scheme))
            ss[CONFIG_JSON] = Config(scheme=scheme).to_json()
        except ConfigError as e:
            notes.append(f"the link's scheme was not restored ({e}); showing the default scheme")
    ss[FLOAT_LAYERS] = _split(q.get("float"))
    prec = {}
    for item in _split(q.get("prec")):
        name, _, p = item.rpartition("=")
        if name and (p in ("int8", "int4", "fp32", "fp16") or _weight_only(p)):
            prec[name] = p
    ss[LAYER_PRECISIONS] = prec
    ss[FIXES] = _split(q.get("fixes"))
    ss[FOCUS_LAYER] = q.get("focus") or None
    mode = q.get("mode", "int8")
    if mode in EXPORT_MODES:
        ss[EXPORT_MODE] = mode
    else:
        notes.append(f"unknown export mode {mode!r} in the link; showing int8")
    if q.get("page"):
        ss[DEEP_LINK] = q["page"]
    if notes:
        ss[URL_NOTE] = "; ".join(notes)


# --------------------------------------------------------------------------- loading a config


def parse_config(data: bytes, name: str) -> Config:
    """An uploaded config.json as a Config; ConfigError (one sentence) when it is not one."""
    try:
        d = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{name} is not valid JSON: {e}") from None
    except RecursionError:
        raise ConfigError(f"{name} is nested too deeply to be a config") from None
    return Config.from_dict(d)


def apply_config(config: Config, name: str, a: Any) -> list[str]:
    """Make ``config`` the dashboard's choice for the analysis ``a``'s model: its scheme (sidebar
    and committed), its fixes and its per-layer precisions (a leaf-module name covers that
    module's layers, as in the CLI). Returns the layer names this model does not have (ignored).
    ConfigError, with nothing changed, when the sidebar cannot show the scheme or a fix is unknown."""
    from qanalysis.fixes import FIXES as KNOWN_FIXES, list_fixes

    widgets = scheme_widgets(config.scheme)
    bad = [f for f in config.fixes if f not in KNOWN_FIXES]
    if bad:
        raise ConfigError(
            f"unknown fix(es) {', '.join(bad)}; available: {', '.join(list_fixes()) or 'none'}"
        )
    by_module: dict[str, list[str]] = {}
    for layer in a.qgraph.layers:
        if layer.module:
            by_module.setdefault(layer.module, []).append(layer.name)
    names = set(layer_names(a))
    precision: dict[str, str] = {}
    if ALL_LAYERS in config.layers:  # "*": every layer the config does not name
        precision.update({n: config.layers[ALL_LAYERS] for n in names})
    for key, p in config.layers.items():  # a module's precision first, a layer's own name wins
        if key not in names:
            for n in by_module.get(key, []):
                precision[n] = p
    precision.update({k: p for k, p in config.layers.items() if k in names})
    unknown = [k for k in config.layers if k not in names and k not in by_module and k != ALL_LAYERS]
    order = layer_names(a)
    ss = st.session_state
    ss.update(widgets)
    ss[CONFIG_JSON] = Config(scheme=config.scheme).to_json()
    ss[FIXES] = list(config.fixes)
    ss.pop("w_fixes", None)
    ss[FLOAT_LAYERS] = [n for n in order if precision.get(n) == "fp16"]
    ss[LAYER_PRECISIONS] = {n: precision[n] for n in order if precision.get(n, "fp16") != "fp16"}
    ss[LOADED_CONFIG] = name
    return unknown
