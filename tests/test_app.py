"""The dashboard, page by page, through Streamlit's AppTest (no browser).

Each test drives the widgets a user touches and checks what the page shows against the
core's own results. Analyses are cached in-process (st.cache_resource), so after the first
test every page renders in well under a second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PLANTED = str(
    ROOT / "tests" / "specs" / "planted_outliers.py"
)  # conv2's input has 3 outlier channels
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pages import _core, _state  # the same modules (and caches) the app imports
from qanalysis.fixes import list_fixes

PAGES = [
    "pages/home.py",
    "pages/layers.py",
    "pages/graph.py",
    "pages/distributions.py",
    "pages/fixes.py",
    "pages/mixed_precision.py",
    "pages/formats.py",
    "pages/export.py",
]


@pytest.fixture(autouse=True)
def _router_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """AppTest re-detects Streamlit's legacy ``pages/`` mode before every run, and with a
    ``pages/`` folder beside app.py its reruns execute the page file alone, without app.py's
    sidebar. A real server leaves that mode for good once app.py calls st.navigation (and
    pages/_state.init_state sends a session that starts on a page through app.py), so tests do the same."""
    from streamlit.runtime.pages_manager import PagesManager

    init = PagesManager.__init__

    def init_then_router(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init_then_router)


def start(model: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if model:
        at.query_params["model"] = model
    at.run()
    assert not at.exception, at.exception
    return at


def analysis_of(at: AppTest):
    """The Analysis the app shows (a cache hit: same key, same process)."""
    ss = at.session_state
    return _core.cached_analysis(
        ss["source"], ss["data"], ss["config_json"], _state.stamp(ss["source"])
    )


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, f"{page}: {at.exception}"
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def metric(at: AppTest, label_start: str) -> str:
    found = [m.value for m in at.metric if m.label.startswith(label_start)]
    assert found, f"no metric {label_start!r} in {[m.label for m in at.metric]}"
    return found[0]


def test_first_load_runs_the_default_sample() -> None:
    at = start()
    a = analysis_of(at)
    assert at.session_state["source"] == _state.default_source() == "sample:digits_cnn"
    assert "digits_cnn" in at.title[0].value
    banner = texts(at.success) + texts(at.warning) + texts(at.error)
    assert f"Verdict: {a.verdict}" in banner
    assert metric(at, "FP32 accuracy") == f"{a.fp32_metric:.2f}"
    assert metric(at, "INT8 accuracy") == f"{a.int8_metric:.2f}"
    assert metric(at, "Drop") == f"{a.drop:.2f}"
    assert metric(at, "Flipped predictions") == f"{len(a.flips)} / {a.workload.n_eval}"
    assert metric(at, "FP32 model, ONNX file").endswith("KB")
    top = at.dataframe[0].value
    assert set(top["layer"]) <= {layer.name for layer in a.qgraph.layers} and len(top) == min(
        5, len(a.qgraph.layers)
    )
    per_class = a.per_class
    if (per_class["delta"].abs() < 1e-9).all():  # nothing to chart: said in words
        assert "Every class keeps its FP32 accuracy" in texts(at.success)
        assert not at.get("plotly_chart")
    else:
        assert len(at.get("plotly_chart")) == 1  # per-class deltas
    assert "Showing **sample:digits_cnn**" in texts(at.sidebar.caption)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(page: str) -> None:
    at = goto(start(), page)
    a = analysis_of(at)
    names = [layer.name for layer in a.qgraph.layers]
    if page == "pages/home.py":
        assert at.title[0].value.startswith("Will INT8 hurt")
    elif page == "pages/graph.py":
        assert "graph_chart" in at.get("plotly_chart")[0].proto.id
        assert at.selectbox(key="w_graph_focus").options == names
        assert "Recommendation:" in texts(at.info)
    elif page == "pages/layers.py":
        drops = a.layers_frame()[["metric_drop", "metric_drop_all_but"]].abs().max().max()
        if drops > 1e-9:
            assert len(at.get("plotly_chart")) == 4  # sensitivity, SQNR, depth, proxy scatter
        else:  # the default sample: no empty all-zero bar chart, a sentence instead
            assert len(at.get("plotly_chart")) == 3
            assert "No layer changes the metric" in texts(at.success)
        assert any(list(df.value.get("layer", [])) == names for df in at.dataframe)
        assert at.selectbox(key="w_layer").options == names
        assert "Recommendation:" in texts(at.info)
        assert texts(at.markdown).count("Rank correlation") == 1
    elif page == "pages/distributions.py":
        # histogram, channel ranges, and one channel's histogram with its own grid
        assert len(at.get("plotly_chart")) in (2, 3)
        assert metric(at, "Channels").isdigit()
        assert at.number_input(key="w_dist_channel").value >= 0
    elif page == "pages/fixes.py":
        available = list_fixes()
        if available:
            assert at.multiselect(key="w_fixes").options == available
            assert "Pick fixes and press **Apply**" in texts(at.caption)
        else:
            assert "not available in this version" in texts(at.info)
    elif page == "pages/mixed_precision.py":
        assert at.number_input(key="w_max_drop").value == 1.0
        assert at.segmented_control(key="w_objective").value == "latency"
        assert not at.get("plotly_chart")  # no search run yet
        assert at.multiselect(key="w_float_layers").options == names
        assert metric(at, "Tensors left in float") == "0"
    elif page == "pages/formats.py":
        assert at.multiselect(key="w_formats").value == ["fp16", "int8", "w8", "w4g128", "w4g32"]
        assert not at.get("plotly_chart") and not at.dataframe  # nothing built before "Compare formats"
        assert "made for language models" in texts(at.info)
    elif page == "pages/export.py":
        config = json.loads(at.code[0].value)
        assert config["layers"] == {} and config["scheme"] == a.config.scheme.to_dict()
        labels = {b.label for b in at.get("download_button")}
        assert {
            "config.json",
            "layers.csv",
            "outliers.csv",
            "summary.json",
            "report.html",
        } <= labels
        assert at.segmented_control(key="w_export_mode").value == "int8"
        assert not at.metric  # nothing built before "Build engines"


def test_pick_another_sample_and_run() -> None:
    at = start()
    at.selectbox(key="w_sample").select("diabetes_mlp").run()
    assert "Settings changed" in texts(at.sidebar.caption)  # nothing recomputed before Run
    assert "digits_cnn" in at.title[0].value
    at.button(key="w_run").click().run()
    assert not at.exception, at.exception
    a = analysis_of(at)
    assert at.session_state["source"] == "sample:diabetes_mlp"
    assert "diabetes_mlp" in at.title[0].value
    assert metric(at, "FP32 R²") == f"{a.fp32_metric:.2f}"
    assert not [m for m in at.metric if m.label == "Flipped predictions"]  # no classes in a regression
    assert any("residual_chart" in c.proto.id for c in at.get("plotly_chart"))
    goto(at, "pages/layers.py")
    assert at.selectbox(key="w_layer").options == [layer.name for layer in a.qgraph.layers]


def test_spec_file_with_outliers_verdict_and_distributions() -> None:
    at = start()
    at.radio(key="w_kind").set_value("Spec").run()
    at.text_input(key="w_spec").input(PLANTED).run()
    at.button(key="w_run").click().run()
    assert not at.exception, at.exception
    a = analysis_of(at)
    assert a.verdict == "keep FP16"
    assert "Verdict: keep FP16" in texts(at.error)
    assert metric(at, "Flipped predictions").startswith(f"{len(a.flips)} ")
    assert len(at.image) == 1  # a strip of flipped 8x8 digits
    goto(at, "pages/distributions.py")  # opens on the layer with the most outlier channels
    assert at.selectbox(key="w_dist_layer").value == "conv2.conv"
    assert at.radio(key="w_dist_tensor").value == "activation"
    assert metric(at, "Outlier channels") == "3"
    assert "conv2.conv" in set(at.dataframe[0].value["layer"])  # the outliers table


def test_fp16_choice_changes_the_metric_and_reaches_export() -> None:
    at = goto(start(PLANTED), "pages/mixed_precision.py")
    a = analysis_of(at)
    before = metric(at, "metric, simulated")
    assert before == f"{a.int8_metric:.2f}"
    at.multiselect(key="w_float_layers").select("conv2.conv").run()
    assert not at.exception, at.exception
    assert at.session_state["float_layers"] == ["conv2.conv"]
    after = metric(at, "metric, simulated")
    assert float(after) > float(before) + 5  # conv2's outlier channels cost ~10 points
    assert int(metric(at, "Tensors left in float")) >= 1
    shown = next(df.value for df in at.dataframe if list(df.value.columns) == ["tensor"])
    assert len(shown) >= 1

    # A layer's details page adds to the same shared selection.
    goto(at, "pages/layers.py")
    at.selectbox(key="w_layer").select("conv1.conv").run()
    at.button(key="w_keep").click().run()
    assert not at.exception, at.exception
    assert at.session_state["float_layers"] == ["conv2.conv", "conv1.conv"]

    goto(at, "pages/export.py")
    config = json.loads(at.code[0].value)
    assert config["layers"] == {"conv2.conv": "fp16", "conv1.conv": "fp16"}
    assert PLANTED in texts(at.code)  # the CLI line reproduces it


def test_scheme_change_reanalyzes() -> None:
    at = start(PLANTED)
    at.selectbox(key="w_wbits").select(4).run()
    at.selectbox(key="w_wgran").select("per_tensor").run()
    at.button(key="w_run").click().run()
    assert not at.exception, at.exception
    a = analysis_of(at)
    assert a.config.scheme.weights.bits == 4 and a.config.scheme.weights.granularity == "per_tensor"
    assert "W4s-per_tensor" in texts(at.caption)
    assert metric(at, "INT8 metric") == f"{a.int8_metric:.2f}"

    # ONNX Runtime has no static int4 kernels: the engine pages say so in one line.
    goto(at, "pages/export.py")
    at.button(key="w_build").click().run()
    assert not at.exception, at.exception
    assert "simulated only" in texts(at.error)
    assert not at.metric


def test_user_errors_are_one_line_not_tracebacks() -> None:
    at = start()
    at.radio(key="w_kind").set_value("Spec").run()
    at.button(key="w_run").click().run()
    assert "enter the path to a spec file" in texts(at.sidebar.error)
    at.text_input(key="w_spec").input(str(ROOT / "no_such_spec.py")).run()
    at.button(key="w_run").click().run()
    assert not at.exception, at.exception
    assert "spec file not found" in texts(at.error)

    at.radio(key="w_kind").set_value("torchvision").run()
    assert at.text_input(key="w_arch").value == "resnet18"
    at.button(key="w_run").click().run()
    assert "need an image folder" in texts(at.sidebar.error)
    at.text_input(key="w_data").input(str(ROOT / "no_such_folder")).run()
    at.button(key="w_run").click().run()
    assert not at.exception, at.exception
    assert at.session_state["source"] == "torchvision:resnet18"
    assert "data folder not found" in texts(at.error)


def figure(at: AppTest, key: str) -> dict:
    """The plotly figure spec of the chart with this key."""
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith(key) or key in c.proto.id]
    assert charts, f"no chart {key!r}"
    return json.loads(charts[0].proto.spec)


def traces(fig: dict) -> dict[str, dict]:
    return {t.get("name"): t for t in fig["data"]}


def test_search_use_config_then_export_the_engine() -> None:
    at = goto(start(PLANTED), "pages/mixed_precision.py")
    at.number_input(key="w_max_drop").set_value(1.0)
    # size: for latency the fastest measured engine wins, which may be FP32 on this tiny model
    at.segmented_control(key="w_objective").set_value("size")
    at.button(key="w_search").click().run()
    assert not at.exception, at.exception
    a = analysis_of(at)
    res = _core.cached_search(tuple(at.session_state["search"]["key"]), 1.0, "size", a)
    assert res.chosen.float_layers() == ["conv2.conv"]  # the planted outliers, nothing else
    assert "**Chosen config:** conv2.conv in float (FP32)" in texts(at.success)
    assert int(metric(at, "Configs evaluated")) == res.n_evaluations >= 2
    assert metric(at, "Measured latency").endswith("ms")

    lat = traces(figure(at, "pareto_latency_chart"))
    size = traces(figure(at, "pareto_size_chart"))
    frame = res.frame()
    all_int8 = int(frame.loc[frame["float_layers"] == "", "config_id"].iloc[0])
    for fig in (lat, size):
        assert {"Pareto front", "chosen", "your selection"} <= set(fig)
        assert fig["your selection"]["customdata"][0][0] == all_int8  # nothing picked yet
    # every evaluated config is a point (on the front or not), each with its hover data
    assert sum(len(t["x"]) for n, t in lat.items() if n in ("evaluated", "Pareto front")) == len(
        frame
    )
    assert "float layers" in lat["Pareto front"]["hovertemplate"]
    assert lat["chosen"]["customdata"][0][0] == res.chosen_id
    labels = {b.label for b in at.get("download_button")}
    assert {"config.json", "search.json", "pareto.csv"} <= labels

    at.button(key="w_use_search").click().run()
    assert not at.exception, at.exception
    # the search's float layers are FP32, as it simulated them (not the by-hand FP16 selection)
    assert at.session_state["layer_precisions"] == {"conv2.conv": "fp32"}
    assert at.session_state["float_layers"] == []
    assert at.button(key="w_use_search").disabled
    mine = traces(figure(at, "pareto_latency_chart"))["your selection"]
    assert mine["customdata"][0][0] == res.chosen_id
    simulated = float(metric(at, "metric, simulated"))

    goto(at, "pages/export.py")
    config = json.loads(at.code[0].value)
    assert config["layers"] == {"conv2.conv": "fp32"}
    at.button(key="w_build").click().run()
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)
    engine, sim = float(metric(at, "INT8 engine")), float(metric(at, "Simulated"))
    assert abs(engine - sim) <= 0.3
    assert abs(sim - simulated) <= 1e-6 + 0.005  # the page's simulation is the export's
    ss = at.session_state
    built = _core.cached_export(
        ss["source"], ss["data"], _state.stamp(ss["source"]), at.code[0].value, "int8"
    )
    assert built.report.float_layers == ["conv2.conv"]
    assert "`conv2.conv`" in texts(at.markdown)
    labels = {b.label.split(" (")[0] for b in at.get("download_button")}
    assert {
        "model_fp32.onnx",
        "model_int8.onnx",
        "config.json",
        "export.json",
        "report.html",
    } <= labels
    assert json.loads((built.folder / "config.json").read_text())["layers"] == {
        "conv2.conv": "fp32"
    }


@pytest.mark.skipif("cle" not in list_fixes(), reason="the core has no 'cle' fix yet")
def test_fixes_compare_and_reach_mixed_precision_and_export() -> None:
    at = goto(start(PLANTED), "pages/fixes.py")
    at.multiselect(key="w_fixes").select("cle").run()
    assert "Selection changed" in texts(at.caption)
    assert at.session_state["fixes"] == []  # nothing applied before Apply
    at.button(key="w_apply_fixes").click().run()
    assert not at.exception, at.exception
    ss = at.session_state
    assert ss["fixes"] == ["cle"]
    a = analysis_of(at)
    compared = next(df.value for df in at.dataframe if "config" in df.value.columns)
    assert list(compared["config"]) == ["FP32", "PTQ", "PTQ + cle"]
    assert compared["metric"].iloc[1] == pytest.approx(a.int8_metric)
    # CLE spreads the planted channels: most of the 10 points come back
    assert compared["metric"].iloc[2] > a.int8_metric + 5
    assert "cle:" in texts(at.caption)  # the fix's own notes
    assert "fixes: cle" in texts(at.sidebar.caption)

    # The layer's recommendation names CLE: preview it alone (compare.preview_fix, when present).
    if at.get("selectbox") and any(sb.key == "w_preview_layer" for sb in at.selectbox):
        at.selectbox(key="w_preview_layer").select("conv2.conv").run()
        assert at.selectbox(key="w_preview_fix").value == "cle"
        at.button(key="w_preview").click().run()
        assert not at.exception, at.exception
        assert float(metric(at, "Gain (points)")) > 5
        assert metric(at, "With cle") == f"{compared['metric'].iloc[2]:.2f}"

    goto(at, "pages/mixed_precision.py")
    assert "**cle**" in texts(at.caption)
    assert float(metric(at, "metric, simulated")) == pytest.approx(
        compared["metric"].iloc[2], abs=0.01
    )
    goto(at, "pages/export.py")
    assert json.loads(at.code[0].value)["fixes"] == ["cle"]


def test_fixes_page_without_fixes_in_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page also works on a core without fixes (or without compare.preview_fix): no fake UI."""
    import qanalysis.fixes

    monkeypatch.setattr(qanalysis.fixes, "list_fixes", list)  # -> []
    at = goto(start(PLANTED), "pages/fixes.py")
    assert "not available in this version" in texts(at.info)
    assert not at.main.multiselect and not at.main.button
    assert "conv2.conv" in set(at.dataframe[0].value["layer"])  # where a fix would help


def test_export_mismatch_is_a_banner_not_a_verdict():
    at = start(str(ROOT / "tests" / "specs" / "data_dependent_branch.py"))
    warnings = texts(at.warning)
    assert "exported ONNX graph does not compute" in warnings and "torch.cond" in warnings
    assert "ship INT8" not in texts(at.success)
    assert "unreliable" in texts(at.error)


@pytest.mark.parametrize("spec,needle", [("exits_on_import.py", "sys.exit(0) on import"),
                                         ("exits_in_build_model.py", "called sys.exit(3)"),
                                         ("scalar_output.py", "0-d tensor"), ("none_targets.py", "targets are None")])
def test_bad_specs_are_one_error_on_the_page(spec, needle):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["model"] = str(ROOT / "tests" / "specs" / spec)
    at.run()
    assert not at.exception, at.exception
    assert needle in texts(at.error), texts(at.error)


# --------------------------------------------------------------------------- issue 16


def restart(at: AppTest) -> AppTest:
    """A new session opened on the URL the old one shows (a reload, or the link pasted elsewhere)."""
    fresh = AppTest.from_file(APP, default_timeout=120)
    for k, v in at.query_params.items():
        fresh.query_params[k] = v[0] if isinstance(v, list) else v
    fresh.run()
    assert not fresh.exception, fresh.exception
    return fresh


def count(values) -> int:
    """Points in a plotly trace array (a list, or plotly's base64 typed array)."""
    if isinstance(values, dict) and "bdata" in values:
        import numpy as np

        shape = values.get("shape")
        return int(str(shape).split(",")[0]) if shape else len(np.frombuffer(__import__("base64").b64decode(values["bdata"]), dtype=values["dtype"]))
    return len(values)


def params(at: AppTest) -> dict[str, str]:
    return {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}


def test_graph_focus_keep_in_fp16_and_grouping() -> None:
    at = goto(start("sample:digits_resnet"), "pages/graph.py")
    a = analysis_of(at)
    names = [layer.name for layer in a.qgraph.layers]
    fig = figure(at, "graph_chart")
    nodes = traces(fig)["nodes"]
    assert {c[0] for c in nodes["customdata"]} >= {"(input)", "(output)"}
    target = names[2]
    at.selectbox(key="w_graph_focus").select(target).run()
    assert not at.exception, at.exception
    assert at.session_state["focus_layer"] == target
    assert at.subheader[0].value == target
    at.button(key="w_graph_keep").click().run()
    assert at.session_state["float_layers"] == [target]
    ring = traces(figure(at, "graph_chart"))["nodes"]["marker"]["line"]["color"]
    assert "#2ca02c" in ring or "black" in ring  # kept in float (or focused: black wins)
    # grouping by top-level module draws fewer nodes; a module opens into its layers
    at.selectbox(key="w_graph_depth").select(1).run()
    grouped = traces(figure(at, "graph_chart"))["nodes"]
    assert count(grouped["x"]) < len(names) + 2
    module = next(c[0] for c in grouped["customdata"] if c[1] == "module")
    at.multiselect(key="w_graph_expand").select(module).run()
    assert not at.exception, at.exception
    opened = traces(figure(at, "graph_chart"))["nodes"]
    assert count(opened["x"]) > count(grouped["x"])
    # the focus follows to the other pages
    goto(at, "pages/layers.py")
    assert at.selectbox(key="w_layer").value == target


def test_graph_view_of_a_big_network_stays_small() -> None:
    """200 layers: the page opens grouped by module, a few dozen nodes."""
    import pandas as pd

    from qanalysis.graphview import GraphView, auto_depth, collapse, layout

    rows = [{"layer": f"stage{i // 50}.block{i // 5}.conv{i % 5}", "op_type": "Conv",
             "module": f"stage{i // 50}.block{i // 5}.conv{i % 5}", "order": i, "params": 10,
             "metric_drop": 0.0, "metric_drop_all_but": 0.0, "output_sqnr_db": 30.0,
             "e2e_sqnr_db": 30.0, "depth_sqnr_db": 30.0} for i in range(200)]  # fmt: skip
    nodes = pd.DataFrame(rows)
    chain = list(nodes["layer"])
    edges = pd.DataFrame({"src": ["(input)"] + chain, "dst": chain + ["(output)"]})
    view = GraphView(nodes, edges)
    depth = auto_depth(view)
    units, e = collapse(view, depth)
    assert depth == 2 and len(units) - 2 == 40
    pos = layout(units, e)
    xs = [pos[u][0] for u in ["(input)", "stage0.block0", "stage3.block39", "(output)"]]
    assert xs == sorted(xs)  # data flows left to right


def test_url_restores_workload_scheme_layers_fixes_focus_and_page() -> None:
    at = start(PLANTED)
    at.selectbox(key="w_wbits").select(4).run()
    at.selectbox(key="w_wgran").select("per_tensor").run()
    at.button(key="w_run").click().run()
    goto(at, "pages/mixed_precision.py")
    at.multiselect(key="w_float_layers").select("conv2.conv").run()
    goto(at, "pages/layers.py")
    at.selectbox(key="w_layer").select("conv1.conv").run()
    goto(at, "pages/export.py")
    at.segmented_control(key="w_export_mode").set_value("dynamic").run()
    assert not at.exception, at.exception
    p = params(at)
    assert p["model"] == PLANTED and p["wbits"] == "4" and p["wgran"] == "per_tensor"
    assert p["float"] == "conv2.conv" and p["focus"] == "conv1.conv"
    assert p["mode"] == "dynamic" and p["page"] == "export"

    again = restart(at)  # a reload: the same view, not digits_cnn with nothing chosen
    ss = again.session_state
    assert ss["source"] == PLANTED and ss["float_layers"] == ["conv2.conv"]
    assert ss["focus_layer"] == "conv1.conv" and ss["export_mode"] == "dynamic"
    assert json.loads(ss["config_json"])["scheme"]["weights"]["bits"] == 4
    assert again.selectbox(key="w_wbits").value == 4  # the sidebar shows what was restored
    assert again.selectbox(key="w_wgran").value == "per_tensor"
    assert "Settings changed" not in texts(again.sidebar.caption)
    assert again.title[0].value == "Export"  # the page the link names
    assert json.loads(again.code[0].value)["layers"] == {"conv2.conv": "fp16"}


@pytest.mark.skipif("cle" not in list_fixes(), reason="the core has no 'cle' fix yet")
def test_url_keeps_fixes() -> None:
    at = goto(start(PLANTED), "pages/fixes.py")
    at.multiselect(key="w_fixes").select("cle").run()
    at.button(key="w_apply_fixes").click().run()
    assert params(at)["fixes"] == "cle"
    again = restart(at)
    assert again.session_state["fixes"] == ["cle"]
    assert "fixes: cle" in texts(again.sidebar.caption)


def test_bad_link_scheme_is_said_once() -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["model"] = "sample:digits_cnn"
    at.query_params["wbits"] = "three"
    at.run()
    assert not at.exception, at.exception
    assert "scheme was not restored" in texts(at.warning)


def test_load_config_on_export_describes_it() -> None:
    at = goto(start(PLANTED), "pages/export.py")
    config = {"scheme": {"weights": {"bits": 8, "granularity": "per_channel"}},
              "layers": {"conv2.conv": "fp16", "fc": "fp32", "nope": "fp16"}}  # fmt: skip
    at.file_uploader(key="w_config_file").set_value(
        ("colleague.json", json.dumps(config).encode(), "application/json")
    ).run()
    assert not at.exception, at.exception
    ss = at.session_state
    assert ss["float_layers"] == ["conv2.conv"] and ss["layer_precisions"] == {"fc": "fp32"}
    assert "Loaded **colleague.json**" in texts(at.warning) and "nope" in texts(at.warning)
    shown = json.loads(at.code[0].value)
    assert shown["layers"] == {"fc": "fp32", "conv2.conv": "fp16"}
    # the analysis files are those of this config, not of all-INT8
    assert "2 per-layer precision(s)" in texts(at.caption)
    a = _core.cached_analysis(ss["source"], ss["data"], at.code[0].value, _state.stamp(ss["source"]))
    assert a.config.layers == {"fc": "fp32", "conv2.conv": "fp16"}
    plain = analysis_of(at)
    assert a.int8_metric > plain.int8_metric + 5  # conv2's planted outliers stay in float
    assert params(at)["float"] == "conv2.conv" and params(at)["prec"] == "fc=fp32"

    goto(at, "pages/mixed_precision.py")
    assert float(metric(at, "metric, simulated")) == pytest.approx(a.int8_metric, abs=0.01)
    assert "`fc` fp32" in texts(at.caption)


def test_load_config_with_another_scheme_and_a_broken_one() -> None:
    at = goto(start(PLANTED), "pages/mixed_precision.py")
    cfg = {"scheme": {"weights": {"bits": 4, "granularity": 16}, "activations": {"calibration": "percentile"}}}
    at.file_uploader(key="w_config_file").set_value(("c.json", json.dumps(cfg).encode(), "application/json")).run()
    assert not at.exception, at.exception
    a = analysis_of(at)
    assert a.config.scheme.weights.granularity == 16 and a.config.scheme.activations.calibration == "percentile"
    assert at.selectbox(key="w_wgran").value == "group" and at.number_input(key="w_wgroup").value == 16
    assert "Settings changed" not in texts(at.sidebar.caption)
    at.file_uploader(key="w_config_file").set_value(("bad.json", b"{not json", "application/json")).run()
    assert "bad.json was not loaded" in texts(at.error)
    bits6 = {"scheme": {"weights": {"bits": 6}}}
    at.file_uploader(key="w_config_file").set_value(("b6.json", json.dumps(bits6).encode(), "application/json")).run()
    assert "offers weight bits" in texts(at.error)
    assert analysis_of(at).config.scheme.weights.bits == 4  # nothing changed


def test_regression_shows_residuals_not_classes() -> None:
    at = start("sample:diabetes_mlp")
    assert not [m for m in at.metric if m.label == "Flipped predictions"]
    assert metric(at, "Mean |INT8 − FP32| prediction")
    ids = [c.proto.id for c in at.get("plotly_chart")]
    assert any("prediction_chart" in i for i in ids) and any("residual_chart" in i for i in ids)
    res = traces(figure(at, "residual_chart"))
    assert {"FP32", "INT8"} <= set(res)


def test_retrieval_shows_its_own_metric_and_per_sample_results() -> None:
    spec = str(ROOT / "tests" / "specs" / "multi_input.py")
    at = start(spec)
    a = analysis_of(at)
    assert a.workload.task == "other" and a.per_class is None
    assert not [m for m in at.metric if m.label == "Flipped predictions"]
    assert metric(at, "Median output error").endswith("%")
    assert "recall@1" in texts(at.caption)
    fig = figure(at, "sample_errors_chart")
    assert count(fig["data"][0]["x"]) == a.workload.n_eval
    samples = next(df.value for df in at.dataframe if "metric_restored" in df.value.columns)
    assert len(samples) == a.workload.n_eval and samples["metric_restored"].notna().any()


def test_channel_drill_down_from_the_outlier_table() -> None:
    at = goto(start(PLANTED), "pages/distributions.py")
    assert at.radio(key="w_dist_tensor").value == "activation"
    assert metric(at, "Share of the range used").endswith("%")  # activation channel: absmax vs range
    at.radio(key="w_dist_tensor").set_value("weight").run()
    assert not at.exception, at.exception
    at.number_input(key="w_dist_channel").set_value(1).run()
    assert not at.exception, at.exception
    assert metric(at, "Channel SQNR").endswith("dB")
    hist = figure(at, "channel_chart")
    assert "weight channel 1" in hist["layout"]["title"]["text"]
    # per-channel grid: the clipping bounds are this channel's own
    a = analysis_of(at)
    from qanalysis.channels import channel_view

    cv = channel_view(a.sim, a.stats, "conv2.conv", "weight", 1)
    assert metric(at, "Clipping bounds") == f"[{cv.rmin:.3g}, {cv.rmax:.3g}]"
    assert cv.rmax == pytest.approx(cv.absmax, rel=1e-6)  # symmetric per-channel: scale = absmax / 127


def test_sidebar_rejection_replaces_the_previous_error() -> None:
    at = start(str(ROOT / "no_such_spec.py"))
    assert "spec file not found" in texts(at.error)
    at.radio(key="w_kind").set_value("Spec").run()
    at.text_input(key="w_spec").input("").run()
    at.button(key="w_run").click().run()
    assert "enter the path to a spec file" in texts(at.sidebar.error)
    assert "spec file not found" not in texts(at.main.error)  # not both errors at once
    assert "Nothing was run" in texts(at.info)


def test_readable_names_and_favicon() -> None:
    at = goto(start("sample:digits_vit"), "pages/layers.py")
    fig = figure(at, "proxy_chart")
    assert "output_sqnr_db" not in fig["layout"]["title"]["text"]
    assert fig["layout"]["xaxis"]["title"]["text"] == "layer-output SQNR"
    sq = figure(at, "sqnr_chart")
    assert sq["layout"]["xaxis"]["title"]["text"] == "layer (execution order)"
    layers_df = next(df for df in at.dataframe if "recommendation" in df.value.columns and len(df.value) > 5)
    col = json.loads(layers_df.proto.columns)["layer"]
    longest = max(len(n) for n in layers_df.value["layer"])
    assert col["width"] >= 8 * longest  # "blocks.0:add" and "blocks.0:add_1" both in full
    from pages._widgets import favicon

    assert favicon().size == (64, 64)  # drawn locally, never fetched


def test_drops_carry_their_interval_on_mixed_precision():
    at = goto(start("sample:digits_resnet"), "pages/mixed_precision.py")
    captions = "\n".join(str(c.value) for c in at.caption)
    assert "95% CI" in captions


def test_formats_table_of_a_language_model() -> None:
    """The Formats page on tiny_lm: FP32 and the chosen formats as real engines, perplexity's
    relative increase, tokens/s, and the size-vs-perplexity figure (the README's table)."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["model"], at.query_params["page"] = "sample:tiny_lm", "formats"  # no analysis of tiny_lm needed
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Formats"
    assert not at.info  # a language model: no "made for language models" caveat
    at.multiselect(key="w_formats").set_value(["fp16", "w4g32"])
    at.button(key="w_formats_run").click().run()
    assert not at.exception, at.exception
    df = next(d.value for d in at.dataframe if "config" in d.value.columns)
    assert list(df["config"]) == ["FP32", "fp16", "w4g32"]
    assert list(df["engine"]) == ["fp32", "fp16", "weight-only"]
    w4 = df.set_index("config").loc["w4g32"]
    assert w4["engine_metric"] == pytest.approx(w4["simulated_metric"], rel=1e-6) and w4["drop_pct"] > 0
    assert (df["tokens_per_s"] > 0).all()
    assert df["engine_size_bytes"].is_monotonic_decreasing
    assert "formats_chart" in at.get("plotly_chart")[0].proto.id


def test_load_config_with_every_layer_in_fp16() -> None:
    """examples/lm/fp16.json's "*" (every layer not named) becomes every layer's choice."""
    at = goto(start(PLANTED), "pages/export.py")
    config = {"layers": {"*": "fp16", "fc": "fp32"}}
    at.file_uploader(key="w_config_file").set_value(("fp16.json", json.dumps(config).encode(), "application/json")).run()
    assert not at.exception, at.exception
    names = [layer.name for layer in analysis_of(at).qgraph.layers]
    ss = at.session_state
    assert ss["float_layers"] == [n for n in names if n != "fc"] and ss["layer_precisions"] == {"fc": "fp32"}
    assert "Loaded **fp16.json**" in texts(at.success) and not at.warning
