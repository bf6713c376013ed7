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
    "pages/distributions.py",
    "pages/fixes.py",
    "pages/mixed_precision.py",
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
    assert len(at.get("plotly_chart")) == 1  # per-class deltas
    assert "Showing **sample:digits_cnn**" in texts(at.sidebar.caption)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(page: str) -> None:
    at = goto(start(), page)
    a = analysis_of(at)
    names = [layer.name for layer in a.qgraph.layers]
    if page == "pages/home.py":
        assert at.title[0].value.startswith("Will INT8 hurt")
    elif page == "pages/layers.py":
        assert len(at.get("plotly_chart")) == 4  # sensitivity, SQNR, depth, proxy scatter
        assert any(list(df.value.get("layer", [])) == names for df in at.dataframe)
        assert at.selectbox(key="w_layer").options == names
        assert "Recommendation:" in texts(at.info)
        assert texts(at.markdown).count("Rank correlation") == 1
    elif page == "pages/distributions.py":
        assert len(at.get("plotly_chart")) == 2  # histogram, channel ranges
        assert metric(at, "Channels").isdigit()
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
    assert "regression" in texts(at.info)  # no per-class deltas for a regression
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
    at.segmented_control(key="w_objective").set_value("latency")
    at.button(key="w_search").click().run()
    assert not at.exception, at.exception
    a = analysis_of(at)
    res = _core.cached_search(tuple(at.session_state["search"]["key"]), 1.0, "latency", a)
    assert res.chosen.float_layers() == ["conv2.conv"]  # the planted outliers, nothing else
    assert "**Chosen config:** conv2.conv in FP16" in texts(at.success)
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
    assert at.session_state["float_layers"] == ["conv2.conv"]
    assert at.multiselect(key="w_float_layers").value == ["conv2.conv"]
    assert at.button(key="w_use_search").disabled
    mine = traces(figure(at, "pareto_latency_chart"))["your selection"]
    assert mine["customdata"][0][0] == res.chosen_id
    simulated = float(metric(at, "metric, simulated"))

    goto(at, "pages/export.py")
    config = json.loads(at.code[0].value)
    assert config["layers"] == {"conv2.conv": "fp16"}
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
    assert built.report.float_layers == ["conv2.conv"] == at.session_state["float_layers"]
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
        "conv2.conv": "fp16"
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
