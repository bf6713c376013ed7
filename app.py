"""qanalysis dashboard: entry point and router.

    streamlit run app.py --server.address 127.0.0.1 --server.headless true   (or: make app)

The sidebar picks the workload (a bundled sample, a torchvision model on an image folder,
or a spec file) and the quantization scheme; **Run** commits them. On first load the
first bundled sample runs with the default scheme (ONNX Runtime's ``quantize_static``
defaults), so results are on screen within seconds. Pages live in ``pages/`` and only
call the core through the cached helpers in ``pages/_shared.py``.

Session-state keys shared across pages (everything else is widget state, ``w_*``):

``source``        the committed MODEL string: ``sample:NAME``, ``torchvision:ARCH[@W.pt]``
                  or a spec file path (what ``qanalysis analyze MODEL`` takes).
``data``          the image folder for torchvision models, else ``None``.
``config_json``   the committed config (scheme only, no per-layer overrides) as JSON;
                  with ``source`` and ``data`` it keys the cached analysis.
``float_layers``  layer names kept in FP16, chosen on the Mixed precision page (or from a
                  layer's details); the Export page builds the config JSON from it.
                  Cleared when another workload is run.
``focus_layer``   the layer last opened on the Layer error page; the Distributions page
                  opens on it.
``fixes``         fix names applied on the Fixes page (``[]``: plain PTQ). The Mixed
                  precision and Export pages work on the scheme plus these fixes.
                  Cleared when another workload is run.

Page state kept across page switches: ``search`` (the last search run on the Mixed
precision page: analysis key, max drop, objective; its result is cached) and
``export_mode`` (int8 / dynamic / fp16 on the Export page).
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. On a small machine shared with the browser
# (and anything else running), spinning workers turned each PyTorch op of the analysis into
# a wait for a descheduled thread: 40× slower sensitivity passes on 2 cores. Set before
# anything imports torch (a variable already in the environment wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st

from pages._shared import (
    CONFIG_JSON,
    DATA,
    DEEP_LINK,
    FIXES,
    FLOAT_LAYERS,
    FOCUS_LAYER,
    ROUTED,
    SOURCE,
    current_config,
    default_source,
    init_state,
)
from qanalysis.errors import QAnalysisError
from qanalysis.scheme import CALIBRATIONS, ActivationSpec, Config, Scheme, WeightSpec
from qanalysis.workload import list_samples

st.set_page_config(page_title="qanalysis", page_icon=":material/query_stats:", layout="wide")


def _init_from_query() -> None:
    """A new session may open on another workload: ``?model=sample:digits_vit`` (``&data=DIR``)."""
    ss, q = st.session_state, st.query_params
    if SOURCE in ss or not q.get("model"):
        return
    source, data = q["model"], q.get("data") or None
    ss[SOURCE], ss[DATA] = source, data
    if source.startswith("sample:"):
        name = source.removeprefix("sample:")
        if name in list_samples():  # an unknown name: the page shows the loader's error
            ss.update(w_kind="Sample", w_sample=name)
    elif source.startswith("torchvision:"):
        arch, _, weights = source.removeprefix("torchvision:").partition("@")
        ss.update(w_kind="torchvision", w_arch=arch, w_weights=weights, w_data=data or "")
    else:
        ss.update(w_kind="Spec", w_spec=source)


st.session_state[ROUTED] = True
_init_from_query()
init_state()

PAGES = {
    "Analysis": [
        st.Page("pages/home.py", title="Summary", icon=":material/dashboard:", default=True),
        st.Page("pages/layers.py", title="Layer error", icon=":material/stacked_bar_chart:"),
        st.Page("pages/distributions.py", title="Distributions", icon=":material/bar_chart:"),
    ],
    "Deploy": [
        st.Page("pages/fixes.py", title="Fixes", icon=":material/build:"),
        st.Page("pages/mixed_precision.py", title="Mixed precision", icon=":material/tune:"),
        st.Page("pages/export.py", title="Export", icon=":material/download:"),
    ],
}
page = st.navigation(PAGES)
_link = st.session_state.pop(DEEP_LINK, None)
if _link and _link != page.url_path:
    _target = next((p for ps in PAGES.values() for p in ps if p.url_path == _link), None)
    if _target is not None:
        st.switch_page(_target)

KINDS = ("Sample", "torchvision", "Spec")
GRANULARITIES = ("per_channel", "per_tensor", "group")


def _pending() -> tuple[str, str | None, str]:
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
    return source, data, Config(scheme=Scheme(weights=weights_spec, activations=act_spec)).to_json()


def _run() -> None:
    ss = st.session_state
    try:
        source, data, config_json = _pending()
    except QAnalysisError as e:
        ss["w_error"] = str(e)
        return
    ss.pop("w_error", None)
    if (source, data) != (ss[SOURCE], ss[DATA]):
        ss[FLOAT_LAYERS] = []
        ss[FOCUS_LAYER] = None
        ss[FIXES] = []
    ss[SOURCE], ss[DATA], ss[CONFIG_JSON] = source, data, config_json


with st.sidebar:
    st.subheader("Workload")
    kind = st.radio(
        "Model source", KINDS, key="w_kind", horizontal=True, label_visibility="collapsed"
    )
    if kind == "Sample":
        samples = list_samples()
        st.selectbox(
            "Sample", samples, key="w_sample", help="Bundled models trained on scikit-learn data"
        )
    elif kind == "torchvision":
        st.session_state.setdefault("w_arch", "resnet18")
        st.text_input("Architecture", key="w_arch", help="any torchvision.models name")
        st.text_input(
            "Weights (.pt)",
            key="w_weights",
            placeholder="optional: state_dict or saved model",
            help="never downloaded; without a file the model is randomly initialized",
        )
        st.text_input(
            "Image folder", key="w_data", placeholder="/path/to/images (one sub-folder per class)"
        )
    else:
        st.text_input(
            "Spec file",
            key="w_spec",
            placeholder="path/to/spec.py",
            help="defines build_model, calibration_batches, evaluation_batches and optionally evaluate",
        )

    with st.expander("Quantization scheme", icon=":material/tune:"):
        st.caption("Weights")
        c1, c2 = st.columns(2)
        c1.selectbox("bits", (8, 4), key="w_wbits")
        c2.selectbox("granularity", GRANULARITIES, key="w_wgran")
        if st.session_state.get("w_wgran") == "group":
            st.number_input("group size", min_value=1, value=32, step=1, key="w_wgroup")
        st.checkbox("symmetric", value=True, key="w_wsym")
        st.caption("Activations")
        c1, c2 = st.columns(2)
        c1.selectbox("bits", (8, 16), key="w_abits")
        c2.selectbox(
            "mode",
            ("static", "dynamic"),
            key="w_amode",
            help="dynamic: ranges computed at run time per batch",
        )
        if st.session_state.get("w_amode", "static") == "static":
            st.selectbox("calibration", CALIBRATIONS, key="w_acal")
            if st.session_state.get("w_acal") == "percentile":
                st.number_input(
                    "percentile",
                    min_value=50.01,
                    max_value=100.0,
                    value=99.99,
                    step=0.01,
                    format="%.3f",
                    key="w_apct",
                )
        st.checkbox("symmetric", value=False, key="w_asym")

    st.button(
        "Run analysis",
        type="primary",
        icon=":material/play_arrow:",
        on_click=_run,
        width="stretch",
        key="w_run",
    )
    error = st.session_state.pop("w_error", None)  # shown once, right after the click
    if error:
        st.error(error)
    else:
        try:
            pending = _pending()
        except QAnalysisError:
            pending = None
        ss = st.session_state
        if pending is not None and pending != (ss[SOURCE], ss[DATA], ss[CONFIG_JSON]):
            st.caption(":orange[Settings changed: press **Run analysis** to apply them.]")
    fixes = st.session_state[FIXES]
    st.caption(
        f"Showing **{st.session_state[SOURCE] or default_source()}** · {current_config().scheme.label()}"
        + (f" · fixes: {', '.join(fixes)}" if fixes else "")
    )

page.run()
