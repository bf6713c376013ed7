"""qanalysis dashboard: entry point and router.

    streamlit run app.py --server.address 127.0.0.1 --server.headless true   (or: make app)

The sidebar picks the workload (a bundled sample, a torchvision model on an image folder,
or a spec file) and the quantization scheme; **Run** commits them. On first load the
first bundled sample runs with the default scheme (ONNX Runtime's ``quantize_static``
defaults), so results are on screen within seconds. Pages live in ``pages/`` and only
call the core through the cached helpers in ``pages/_shared.py``.

Session-state keys and the URL parameters that restore them are documented in
``pages/_state.py``; the cached core calls are in ``pages/_core.py``, the shared widgets in
``pages/_widgets.py``.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. On a small machine shared with the browser
# (and anything else running), spinning workers turned each PyTorch op of the analysis into
# a wait for a descheduled thread: 40× slower sensitivity passes on 2 cores. Set before
# anything imports torch (a variable already in the environment wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st

from pages._state import (
    CONFIG_JSON,
    DATA,
    DEEP_LINK,
    FIXES,
    FOCUS_LAYER,
    GRANULARITIES,
    KINDS,
    LOADED_CONFIG,
    ROUTED,
    SOURCE,
    URL_NOTE,
    clear_layer_choices,
    current_config,
    default_source,
    init_state,
    pending,
    read_url,
    write_url,
)
from pages._widgets import favicon
from qanalysis.errors import QAnalysisError
from qanalysis.scheme import CALIBRATIONS
from qanalysis.workload import list_samples

st.set_page_config(page_title="qanalysis", page_icon=favicon(), layout="wide")

st.session_state[ROUTED] = True
read_url()
init_state()

PAGES = {
    "Analysis": [
        st.Page("pages/home.py", title="Summary", icon=":material/dashboard:", default=True),
        st.Page("pages/layers.py", title="Layer error", icon=":material/stacked_bar_chart:"),
        st.Page("pages/graph.py", title="Graph", icon=":material/account_tree:"),
        st.Page("pages/distributions.py", title="Distributions", icon=":material/bar_chart:"),
    ],
    "Deploy": [
        st.Page("pages/fixes.py", title="Fixes", icon=":material/build:"),
        st.Page("pages/mixed_precision.py", title="Mixed precision", icon=":material/tune:"),
        st.Page("pages/formats.py", title="Formats", icon=":material/compare_arrows:"),
        st.Page("pages/export.py", title="Export", icon=":material/download:"),
    ],
}
page = st.navigation(PAGES)
_link = st.session_state.pop(DEEP_LINK, None)
if _link and _link != page.url_path:
    _target = next((p for ps in PAGES.values() for p in ps if p.url_path == _link), None)
    if _target is not None:
        st.switch_page(_target, query_params=st.query_params.to_dict())


def _run() -> None:
    ss = st.session_state
    try:
        source, data, config_json = pending()
    except QAnalysisError as e:
        ss["w_error"] = str(e)
        return
    ss.pop("w_error", None)
    if (source, data) != (ss[SOURCE], ss[DATA]):
        clear_layer_choices()
        ss[FOCUS_LAYER] = None
        ss[FIXES] = []
        ss[LOADED_CONFIG] = None
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
        c1, c2 = st.columns([1, 2])  # the granularity names need the room ("per_channel")
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
    rejected = st.session_state.pop("w_error", None)  # shown once, right after the click
    if rejected:
        st.error(rejected)
    else:
        try:
            chosen = pending()
        except QAnalysisError:
            chosen = None
        ss = st.session_state
        if chosen is not None and chosen != (ss[SOURCE], ss[DATA], ss[CONFIG_JSON]):
            st.caption(":orange[Settings changed: press **Run analysis** to apply them.]")
    fixes = st.session_state[FIXES]
    st.caption(
        f"Showing **{st.session_state[SOURCE] or default_source()}** · {current_config().scheme.label()}"
        + (f" · fixes: {', '.join(fixes)}" if fixes else "")
    )

note = st.session_state.pop(URL_NOTE, None)
if note:
    st.warning(f"From the link: {note}.", icon=":material/link:")
write_url(page.url_path)  # what the callbacks of this rerun changed (a page may end in st.stop())
try:
    if rejected:
        # Only the new input's error: the page (and any error of the model shown before) waits
        # until the sidebar holds something that runs.
        st.info(
            "Nothing was run: correct the input in the sidebar and press **Run analysis**.",
            icon=":material/arrow_back:",
        )
    else:
        page.run()
finally:
    write_url(page.url_path)  # and what the page itself settled (e.g. the focus it opened on)
