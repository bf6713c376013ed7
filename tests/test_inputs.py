"""Issue 10: bad or surprising inputs give one clear line (exit 2) or a loud warning, never a
traceback and never a number that silently means something else."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SPECS, cached_analysis

from qanalysis.errors import WorkloadError
from qanalysis.workload import load_workload


def assert_one_line_error(run_cli, tmp_path, args, needle):
    """``analyze ARGS`` exits 2 with one ``error:`` line holding ``needle``, and writes nothing."""
    out_dir = tmp_path / "out"
    code, out, err = run_cli("analyze", *args, "--out", out_dir, "--quiet")
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err and not out
    assert not out_dir.exists() or not any(out_dir.iterdir())
    return lines[0]


def _config(tmp_path, text):
    p = tmp_path / "c.json"
    p.write_text(text if isinstance(text, str) else json.dumps(text))
    return p


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "cfg,needle",
    [
        ({"scheme": {"activations": {"percentile": "abc"}}}, "percentile must be a number in (50, 100], got 'abc'"),
        ({"scheme": {"activations": {"percentile": "99"}}}, "percentile must be a number in (50, 100], got '99'"),
        ({"scheme": {"activations": {"percentile": True}}}, "percentile must be a number"),
        ({"scheme": [1]}, "config 'scheme' must be a JSON object, got an array"),
        ({"scheme": {"weights": [8]}}, "scheme.weights must be a JSON object, got an array"),
        ({"layers": False}, "config 'layers' must be an object mapping layer names to precisions, got false"),
        ({"layers": ["net.fc1"]}, "config 'layers' must be an object"),
        ({"layers": {"net.fc1": 8}}, "precision must be one of int8, int4, w8, w4, fp16, fp32 (weight-only with a group size: w4g128, w8g32, ...), got 8 (a number)"),
        ({"fixes": 0}, "config 'fixes' must be a list of fix names, got 0 (a number)"),
        ({"fixes": "cle"}, "config 'fixes' must be a list of fix names, got 'cle'"),
        ({"fixes": [1]}, "config 'fixes' must be a list of fix names"),
        ({"scheme": {"weights": {"bits": "8"}}}, "bits must be an integer in 2..16, got '8'"),
        ({"scheme": {"weights": {"symmetric": "yes"}}}, "'symmetric' must be true or false"),
        ({"scheme": {"activations": {"granularity": 32}}}, "activation granularity must be 'per_tensor'"),
        ({"scheme": {"extra": 1}}, "unknown scheme key(s) ['extra']"),
        ({"scheme": {"activations": {"bitz": 8}}}, "unknown key(s) ['bitz'] in scheme.activations"),
        ({"layer": {}}, "unknown config key(s) ['layer']"),
        ([{"scheme": {}}], "must hold a JSON object"),
        ('{"scheme": {"activations": {"percentile": NaN}}}', "percentile must be a number in (50, 100], got nan"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_bad_config_is_one_line(run_cli, tmp_path, cfg, needle):
    assert_one_line_error(run_cli, tmp_path, ["sample:diabetes_mlp", "--config", _config(tmp_path, cfg)], needle)


# --------------------------------------------------------------------------- spec files


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("exits_on_import.py", "spec exits_on_import.py called sys.exit(0) on import"),
        ("exits_in_build_model.py", "spec exits_in_build_model.py: build_model() called sys.exit(3)"),
        ("none_targets.py", "evaluation batch 0: the targets are None"),
        ("scalar_output.py", "the model returns a single number (a 0-d tensor) for a whole batch"),
        ("squeezed_batch_of_one.py", "returns a 0-d tensor for evaluation batch 1, a batch of one sample"),
        ("one_output_head.py", "one output per sample, so top-1 accuracy (the default metric) is 100 %"),
    ],
)
def test_bad_spec_is_one_line(run_cli, tmp_path, spec, needle):
    assert_one_line_error(run_cli, tmp_path, [str(SPECS / spec)], needle)


def test_targets_out_of_the_heads_range_are_refused(tmp_path):
    from qanalysis.workload import finish

    model = torch.nn.Linear(4, 3)
    x = torch.randn(6, 4)
    with pytest.raises(WorkloadError, match=r"class ids 0\.\.5 but the model has 3 outputs"):
        finish("t", model, [x], [(x, torch.arange(6))], None)


# --------------------------------------------------------------------------- export vs PyTorch


def test_data_dependent_branch_is_flagged_loudly(run_cli, tmp_path):
    from qanalysis.analysis import UNRELIABLE

    code, out, err = run_cli("analyze", SPECS / "data_dependent_branch.py", "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["export_mismatch"] is True and s["verdict"] == UNRELIABLE
    assert s["export_check"]["torch_metric"] == 0.0 and s["export_check"]["graph_metric"] == 100.0
    assert len(s["warnings"]) == 1 and "torch.cond" in s["warnings"][0] and "PyTorch 0.00" in s["warnings"][0]
    assert UNRELIABLE in out and "ship INT8" not in out
    assert err.startswith("warning: the exported ONNX graph does not compute") and "torch.cond" in err  # even with --quiet
    assert "Warning: the exported ONNX graph" in (tmp_path / "o" / "report.html").read_text()


@pytest.mark.parametrize("source", ["sample:diabetes_mlp", "sample:digits_cnn"])
def test_faithful_export_is_not_flagged(source):
    a = cached_analysis(source)
    assert a.export_check is not None and a.export_check.agrees, a.export_check
    assert not a.export_mismatch and a.warnings == [] and a.verdict in ("ship INT8", "mixed precision or QAT", "keep FP16")
    s = a.summary()
    assert s["warnings"] == [] and s["export_mismatch"] is False and s["random_weights"] is False
    # the PyTorch model scores what the graph scores, to float noise
    assert abs(a.export_check.torch_metric - a.export_check.graph_metric) < 1e-3


# --------------------------------------------------------------------------- torchvision


def _images(root, classes, n=3):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    return _images(tmp_path_factory.mktemp("two"), ["ant", "bee"])


def test_whole_model_of_another_architecture_is_refused(run_cli, two_classes, tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=2), tmp_path / "whole_resnet18.pt")
    line = assert_one_line_error(
        run_cli, tmp_path,
        [f"torchvision:mobilenet_v2@{tmp_path / 'whole_resnet18.pt'}", "--data", two_classes],
        "holds a whole ResNet model, but torchvision:mobilenet_v2 is a MobileNetV2",
    )  # fmt: skip
    assert "whole_resnet18.pt" in line
    # same class, other depth: resnet34's layers are not resnet18's
    torch.save(torchvision.models.resnet34(num_classes=2), tmp_path / "whole_resnet34.pt")
    with pytest.raises(WorkloadError, match=r"whole ResNet model whose layers differ from torchvision's resnet18 \(\d+ unexpected key"):
        load_workload(f"torchvision:resnet18@{tmp_path / 'whole_resnet34.pt'}", two_classes)


def test_one_class_folder_is_refused(run_cli, tmp_path):
    one = _images(tmp_path / "one", ["only"])
    assert_one_line_error(run_cli, tmp_path, ["torchvision:squeezenet1_1", "--data", one], "has one class sub-folder (only)")


def test_head_that_does_not_match_the_folders_is_refused(run_cli, two_classes, tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), tmp_path / "w5.pt")
    assert_one_line_error(
        run_cli, tmp_path, [f"torchvision:resnet18@{tmp_path / 'w5.pt'}", "--data", two_classes],
        "the model has a 5-class head but",
    )  # fmt: skip


def test_conv_head_weights_set_the_number_of_classes(run_cli, two_classes, tmp_path):
    """squeezenet1_1's head is a 1×1 Conv (no 2-D weight): was an IndexError."""
    import torchvision

    m = torchvision.models.squeezenet1_1(num_classes=2)
    torch.save(m.state_dict(), tmp_path / "sq2.pt")
    wl = load_workload(f"torchvision:squeezenet1_1@{tmp_path / 'sq2.pt'}", two_classes)
    assert wl.model.classifier[1].out_channels == 2 and torch.equal(wl.model.classifier[1].weight, m.classifier[1].weight)
    torch.save(torchvision.models.squeezenet1_1(num_classes=7).state_dict(), tmp_path / "sq7.pt")
    assert_one_line_error(
        run_cli, tmp_path, [f"torchvision:squeezenet1_1@{tmp_path / 'sq7.pt'}", "--data", two_classes],
        "the model has a 7-class head but",
    )  # fmt: skip


def test_non_tensor_entries_are_named(run_cli, two_classes, tmp_path):
    import torchvision

    sd = torchvision.models.resnet18(num_classes=2).state_dict()
    sd["fc.weight"] = "oops"
    sd["fc.bias"] = [0.0, 1.0]
    torch.save(sd, tmp_path / "w.pt")
    assert_one_line_error(
        run_cli, tmp_path, [f"torchvision:resnet18@{tmp_path / 'w.pt'}", "--data", two_classes],
        "is not a state_dict of tensors: 2 entries are not tensors: fc.weight (str), fc.bias (list)",
    )  # fmt: skip


def test_state_dict_that_does_not_fit_says_which_keys_and_shapes(run_cli, two_classes, tmp_path):
    import torchvision

    sd = torchvision.models.resnet18(num_classes=2).state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    del sd["layer1.0.bn1.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w.pt")
    line = assert_one_line_error(
        run_cli, tmp_path, [f"torchvision:resnet18@{tmp_path / 'w.pt'}", "--data", two_classes],
        "does not fit torchvision's resnet18: 1 missing key(s): layer1.0.bn1.bias; 1 unexpected key(s): extra.weight; "
        "1 shape(s) differ: conv1.weight: file [64, 3, 3, 3], model [64, 3, 7, 7]",
    )  # fmt: skip
    assert "Error(s) in loading" not in line
    # resnet18 weights for resnet34: many missing keys, the first few named and the rest counted
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(WorkloadError, match=r"\d+ missing key\(s\): layer1\.2\.conv1\.weight, .*\(\d+ more\)"):
        load_workload(f"torchvision:resnet34@{tmp_path / 'r18.pt'}", two_classes)


def test_random_torchvision_weights_are_seeded_and_flagged(two_classes):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_workload("torchvision:squeezenet1_1", two_classes)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG state is left alone
    b = load_workload("torchvision:squeezenet1_1", two_classes)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.random_weights and len(a.warnings) == 1 and "weights are random" in a.warnings[0]
    from qanalysis.analysis import analyze

    s = analyze(a, baseline=False, previews=0).summary()
    assert s["random_weights"] is True and s["warnings"] == a.warnings
