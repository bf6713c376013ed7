"""Export: build the engines of the chosen config (scheme, fixes, the FP16 layers picked on the
Mixed precision or Layer error page) and verify them against FP32 and the simulation."""

from __future__ import annotations

import shlex
from pathlib import Path

import pandas as pd
import streamlit as st

from pages._core import (
    artifacts,
    build_export,
    current_analysis,
    deploy_analysis,
    exported,
)
from pages._state import (
    DATA,
    EXPORT_MODE,
    LOADED_CONFIG,
    SOURCE,
    analysis_key,
    config_with_float_layers,
    deploy_config_json,
)
from pages._widgets import (
    config_loader,
    fmt_ms,
    human_bytes,
    page_header,
    table,
)
from qanalysis.errors import QAnalysisError

MIME = {".csv": "text/csv", ".json": "application/json", ".html": "text/html"}
MODES = {
    "int8": "INT8 static (QDQ, the simulation's scales)",
    "dynamic": "INT8 dynamic (weights only)",
    "fp16": "FP16",
}
MODE_HELP = (
    "int8: ONNX Runtime's static QDQ engine with the scales the analysis simulated; the FP16 layers "
    "stay float. dynamic: quantize_dynamic, weights in INT8 and activations quantized at run time. "
    "fp16: every layer in FP16."
)
GAP_OK = 0.3  # points: engine and simulation agree (the same integers up to rounding ties)

ss = st.session_state
a = deploy_analysis()
key = analysis_key(deploy_config_json())
page_header("Export", a)

config = config_with_float_layers(a)
config_json = config.to_json()
kept = config.float_layers()  # fp16 and fp32: what the engine keeps in float

left, right = st.columns([3, 2])
with left:
    st.subheader("Config")
    others = {n: p for n, p in config.layers.items() if p != "fp16"}
    fp16 = [n for n, p in config.layers.items() if p == "fp16"]
    st.markdown(
        f"**{len(fp16)} layer(s) kept in FP16:** {', '.join(f'`{n}`' for n in fp16)}"
        if fp16
        else "**No layer kept in FP16.** Pick layers on the Mixed precision page (by hand or from the "
        "search), with *Keep in FP16* on the Layer error or Graph page, or load a config.json below."
    )
    if others:
        st.markdown(
            "**Other per-layer precisions** (from the loaded config): "
            + ", ".join(f"`{n}` {p}" for n, p in others.items())
        )
    st.caption(
        (f"Fixes: **{', '.join(config.fixes)}** (Fixes page)." if config.fixes else "No fixes (choose them on the Fixes page).")
        + (f" Loaded from **{ss[LOADED_CONFIG]}**." if ss.get(LOADED_CONFIG) else "")
    )
    st.code(config_json, language="json")
    st.download_button(
        "config.json",
        config_json.encode(),
        file_name="config.json",
        mime="application/json",
        key="download_config",
        on_click="ignore",
        icon=":material/download:",
    )
    config_loader(a)
with right:
    st.subheader("Analysis files")
    if config.layers:
        # the chosen config itself, per-layer precisions included: its own analysis (cached)
        chosen = current_analysis(config_json)
        chosen_key = analysis_key(config_json)
        st.caption(
            "What `qanalysis analyze --config config.json` writes for this config: "
            f"{len(config.layers)} per-layer precision(s), the rest at {config.scheme.label()}"
            + (f", fixes {', '.join(config.fixes)}" if config.fixes else "")
            + f" (simulated {a.workload.metric_name} {chosen.int8_metric:.2f}, drop {chosen.drop:.2f})."
        )
    else:
        chosen, chosen_key = a, key
        st.caption(
            "What `qanalysis analyze --config config.json` writes for this config: every layer at "
            f"{config.scheme.label()}" + (f", fixes {', '.join(config.fixes)}" if config.fixes else "") + "."
        )
    with st.container(horizontal=True):
        for name, data in artifacts(chosen_key, chosen).items():
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
    model = shlex.quote(ss[SOURCE]) + (f" --data {shlex.quote(ss[DATA])}" if ss[DATA] else "")
    st.code(
        f"qanalysis analyze {model} --config config.json --out out/\n"
        f"qanalysis export {model} --config config.json --mode {ss[EXPORT_MODE]} --out engines/",
        language="bash",
        wrap_lines=True,
    )

# --------------------------------------------------------------------------- engines

st.subheader("Engines, verified")
st.caption(
    "Builds the FP32 ONNX model and the engine for this config, then measures both on the evaluation "
    "data against the simulation: metric, size, latency (batch 1 and a full batch), peak memory, and "
    "each quantized layer's output in the engine against the simulated one."
)


def _sync_mode() -> None:
    ss[EXPORT_MODE] = ss["w_export_mode"]


ss["w_export_mode"] = ss[EXPORT_MODE]
with st.container(horizontal=True, vertical_alignment="bottom"):
    mode = st.segmented_control(
        "Engine",
        list(MODES),
        format_func=MODES.get,
        key="w_export_mode",
        on_change=_sync_mode,
        required=True,
        help=MODE_HELP,
    )
    clicked = st.button("Build engines", type="primary", icon=":material/memory:", key="w_build")
mode = mode or "int8"

built = None
if clicked or exported(config_json, mode):
    try:
        built = build_export(config_json, mode)
    except QAnalysisError as e:
        st.error(str(e))

if built is None:
    if not clicked:
        st.caption("Press **Build engines** (a few seconds on the samples).")
    st.stop()

rep = built.report
label = f"{rep.mode.upper()} engine"
gap = rep.sim_engine_gap
c = st.columns(4)
c[0].metric(
    f"FP32 {a.workload.metric_name}, ONNX Runtime",
    f"{rep.fp32_onnx_metric:.2f}",
    border=True,
    help=f"PyTorch: {rep.fp32_metric:.2f}",
)
c[1].metric(
    "Simulated",
    f"{rep.simulated_metric:.2f}",
    border=True,
    help="the dashboard's simulation of this config",
)
c[2].metric(
    label,
    f"{rep.engine_metric:.2f}",
    border=True,
    delta=None
    if round(rep.engine_metric - rep.fp32_onnx_metric, 2) == 0
    else f"{rep.engine_metric - rep.fp32_onnx_metric:+.2f} vs FP32",
)
c[3].metric(
    "|simulated − engine|",
    f"{gap:.2f}",
    border=True,
    help="metric points between what the analysis predicted and what ONNX Runtime computes",
)
if gap <= GAP_OK:
    st.success(
        f"The engine matches the simulation: {gap:.2f} points apart (≤ {GAP_OK}).",
        icon=":material/verified:",
    )
else:
    st.warning(
        f"The engine and the simulation differ by {gap:.2f} points: the analysis' numbers do not "
        f"describe this {rep.mode} engine exactly.",
        icon=":material/warning:",
    )
q = rep.output_sqnr_db
if q:
    st.caption(
        f"Output SQNR: simulated vs engine {q['sim_vs_engine']:.1f} dB, engine vs FP32 {q['engine_vs_fp32']:.1f} dB: "
        f"the simulation's own error lies {q['margin_db']:.1f} dB below the quantization error it predicts."
    )
o = rep.ort_options
if o:
    chosen = o["chosen"]
    with st.expander(
        "ONNX Runtime options, picked by measurement: "
        + ", ".join(f"{k}={v}" for k, v in {**chosen["session"], **chosen["build"]}.items())
    ):
        st.dataframe(
            [{"options": ", ".join(f"{k}={v}" for k, v in {**t["session"], **t["build"]}.items()),
              "median ms": t.get("median_ms"), "same numerics": t.get("same_numerics"), "error": t.get("error", "")}
             for t in o["tried"]],  # fmt: skip
            hide_index=True,
        )
        st.code(o["how_to_load"], language="python")

lat = rep.latency
rows = [
    (
        "metric",
        f"{rep.fp32_onnx_metric:.3f}",
        f"{rep.engine_metric:.3f}",
        f"{rep.simulated_metric:.3f}",
    ),
    ("size", human_bytes(rep.fp32_size_bytes), human_bytes(rep.int8_size_bytes), ""),
    (
        "latency, batch 1 (median)",
        fmt_ms(lat.get("fp32_b1")) if lat.get("fp32_b1") else f"{rep.fp32_latency_ms:.3f} ms",
        fmt_ms(lat.get("engine_b1")) if lat.get("engine_b1") else f"{rep.int8_latency_ms:.3f} ms",
        "",
    ),
]
if "fp32_batch" in lat:
    fb, eb = lat["fp32_batch"], lat["engine_batch"]
    rows += [
        (f"latency, batch {fb['batch']} (per sample)", fmt_ms(fb), fmt_ms(eb), ""),
        (
            f"throughput, batch {fb['batch']}",
            f"{fb['throughput_per_s']:,.0f} /s",
            f"{eb['throughput_per_s']:,.0f} /s",
            "",
        ),
    ]
mem = rep.peak_memory_bytes or {}
rows.append(
    ("peak memory, batch run", human_bytes(mem.get("fp32")), human_bytes(mem.get("engine")), "")
)
verification = pd.DataFrame(rows, columns=["measure", "FP32", label, "simulated"])
speedup = rep.fp32_latency_ms / rep.int8_latency_ms if rep.int8_latency_ms > 0 else None

left, right = st.columns([3, 2])
with left:
    st.markdown("**Verification**")
    table(verification, "verification")
with right:
    st.markdown("**Layers exported in float**")
    if rep.float_layers:
        st.markdown(", ".join(f"`{n}`" for n in rep.float_layers))
    else:
        st.caption("None: every quantizable layer runs in INT8.")
    if rep.mode == "int8" and sorted(rep.float_layers) != sorted(kept):
        st.error(
            f"The engine keeps {rep.float_layers} in float but the config names {kept}.",
            icon=":material/error:",
        )
    if rep.float_tensors:
        st.caption(f"Tensors left in float: {', '.join(rep.float_tensors)}")
    if speedup is not None:
        st.metric(
            "Speed-up, batch 1",
            f"{speedup:.2f}×",
            border=True,
            help="FP32 latency / engine latency, ONNX Runtime, batch 1",
        )
if rep.speed.get("note"):
    st.info(rep.speed["note"], icon=":material/speed:")
if rep.fix_notes:
    st.caption("Fixes: " + "; ".join(rep.fix_notes))

st.markdown("**Engine vs simulation, layer by layer**")
if rep.layer_checks:
    checks = pd.DataFrame(rep.layer_checks)
    table(
        checks,
        "layer_checks",
        height=260,
        column_config={
            "sqnr_db": st.column_config.NumberColumn("SQNR engine vs sim (dB)", format="%.1f"),
            "max_err_steps": st.column_config.NumberColumn("max error (steps)", format="%.2f"),
            "frac_off_by_more_than_1": st.column_config.NumberColumn(
                "off by > 1 step", format="%.4f"
            ),
            "agrees": st.column_config.CheckboxColumn("agrees"),
        },
    )
else:
    st.caption(
        "Layer-by-layer checks apply to the static INT8 engine."
        if rep.mode != "int8"
        else "No quantized layer output to compare."
    )
if rep.disagreements:
    st.warning(
        "The engine disagrees with the simulation on: " + ", ".join(rep.disagreements),
        icon=":material/warning:",
    )
elif rep.layer_checks:
    st.success(
        f"All {len(rep.layer_checks)} checked layers agree with the simulation (≤ 1% of values off by more than one step).",
        icon=":material/check_circle:",
    )
by_op = rep.speed.get("kernel_us_by_op_type") or {}
if by_op:
    with st.expander("Where the engine spends its time (ONNX Runtime profiler)"):
        table(
            pd.DataFrame({"op_type": list(by_op), "kernel_us": list(by_op.values())}),
            "engine_kernels",
            column_config={"kernel_us": st.column_config.NumberColumn("µs per run", format="%.1f")},
        )

st.markdown("**Files**")
MIME_FILES = {".onnx": "application/octet-stream", ".json": "application/json"}
with st.container(horizontal=True):
    for name, path in built.files().items():
        st.download_button(
            f"{name} ({human_bytes(path.stat().st_size)})",
            (lambda p=path: Path(p).read_bytes()),
            file_name=name,
            mime=MIME_FILES.get(path.suffix, "application/octet-stream"),
            key=f"download_engine_{name}",
            on_click="ignore",
            icon=":material/download:",
            type="primary"
            if name.startswith("model_") and name != "model_fp32.onnx"
            else "secondary",
        )
