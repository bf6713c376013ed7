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

from pages import _shared  # the same module (and caches) the app imports

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
    pages/_shared.py sends a session that starts on a page through app.py), so tests do the same."""
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
    return _shared.cached_analysis(
        ss["source"], ss["data"], ss["config_json"], _shared._stamp(ss["source"])
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
    assert at.session_state["source"] == _shared.default_source() == "sample:digits_cnn"
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
        assert "not available in this version" in texts(at.info)
    elif page == "pages/mixed_precision.py":
        assert "not available in this version" in texts(at.info)
        assert at.multiselect(key="w_float_layers").options == names
        assert metric(at, "Tensors left in float") == "0"
    elif page == "pages/export.py":
        assert "not available in this version" in texts(at.info)
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
