"""Export: the chosen config (with the FP16 layers picked on the Mixed precision page) and the analysis files."""

from __future__ import annotations

import shlex

import streamlit as st

from pages._shared import (
    DATA,
    SOURCE,
    analysis_key,
    artifacts,
    config_with_float_layers,
    current_analysis,
    page_header,
)

MIME = {".csv": "text/csv", ".json": "application/json", ".html": "text/html"}

a = current_analysis()
key = analysis_key()
page_header("Export", a)
st.info(
    "The verified engine export (`qanalysis export`: model_fp32.onnx, model_int8.onnx with the simulation's "
    "scales, engine vs simulated vs FP32 metric, size and latency) is not available in this version. "
    "Download the config and the analysis below.",
    icon=":material/construction:",
)

config = config_with_float_layers(a)
kept = config.float_layers()
left, right = st.columns([3, 2])
with left:
    st.subheader("Config")
    st.caption(
        f"{len(kept)} layer(s) kept in FP16 (chosen on the Mixed precision page): {', '.join(kept)}"
        if kept
        else "All layers in INT8 — pick layers to keep in FP16 on the Mixed precision page."
    )
    st.code(config.to_json(), language="json")
    st.download_button(
        "config.json",
        config.to_json().encode(),
        file_name="config.json",
        mime="application/json",
        key="download_config",
        on_click="ignore",
        icon=":material/download:",
        type="primary",
    )
with right:
    st.subheader("Analysis files")
    st.caption("What `qanalysis analyze` writes for this workload and scheme (all layers in INT8).")
    with st.container(horizontal=True):
        for name, data in artifacts(key, a).items():
            ext = name[name.rfind(".") :]
            st.download_button(
                name,
                data,
                file_name=name,
                mime=MIME.get(ext, "application/octet-stream"),
                key=f"download_artifact_{name}",
                on_click="ignore",
                icon=":material/download:",
            )
    st.subheader("Same from the command line")
    cmd = f"qanalysis analyze {shlex.quote(st.session_state[SOURCE])}"
    if st.session_state[DATA]:
        cmd += f" --data {shlex.quote(st.session_state[DATA])}"
    st.code(f"{cmd} --config config.json --out out/", language="bash", wrap_lines=True)
