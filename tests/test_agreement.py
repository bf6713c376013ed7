"""--metric agreement / top5: a pretrained head on a folder whose sub-folders are not its classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cached_workload
from PIL import Image

from qanalysis.errors import WorkloadError
from qanalysis.workload import AGREEMENT_NAME, load_workload, run_model, top1_accuracy


@pytest.fixture(scope="module")
def resnet18_10_classes(tmp_path_factory):
    """A resnet18 state_dict with a 10-class head, and a generated 2-class image folder."""
    import torchvision

    root = tmp_path_factory.mktemp("agreement")
    torch.manual_seed(0)
    weights = root / "resnet18_10.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    rng = np.random.default_rng(0)
    for c, tint in (("cats", (200, 80, 60)), ("dogs", (60, 90, 200))):
        (root / "data" / c).mkdir(parents=True)
        for i in range(3):
            img = np.clip(rng.normal(tint, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "data" / c / f"{i}.png")
    return f"torchvision:resnet18@{weights}", root / "data"


def test_head_and_folder_mismatch_suggests_metric_agreement(run_cli, resnet18_10_classes, tmp_path):
    model, data = resnet18_10_classes
    code, _, err = run_cli("analyze", model, "--data", data, "--out", tmp_path / "out", "--quiet")
    assert code != 0 and "10-class head" in err and "2 class folders" in err and "--metric agreement" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_metric_agreement_scores_against_fp32_predictions(run_cli, resnet18_10_classes, tmp_path):
    model, data = resnet18_10_classes
    code, out, err = run_cli("analyze", model, "--data", data, "--metric", "agreement", "--out", tmp_path, "--quiet")
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fp32_metric"] == 100.0
    assert summary["metric_name"] == AGREEMENT_NAME and "agreement with FP32" in out
    assert "10-class head and the data's 2 classes differ" in err  # said, not only done


def test_agreement_targets_are_the_fp32_top1():
    wl = load_workload("sample:digits_cnn", metric="agreement")
    outputs = torch.cat([run_model(wl.model, x) for x, _ in wl.evaluation])
    assert torch.equal(wl.targets(), outputs.argmax(1))
    assert wl.score(outputs) == 100.0 and wl.metric_name == AGREEMENT_NAME and wl.task == "classification"


def test_metric_top5_where_labels_fit():
    wl = load_workload("sample:digits_cnn", metric="top5")
    outputs = torch.cat([run_model(wl.model, x) for x, _ in wl.evaluation])
    top1 = top1_accuracy(outputs, wl.targets())
    assert wl.metric_name == "top-5 accuracy (%)" and top1 < wl.score(outputs) <= 100.0
    assert cached_workload("sample:digits_cnn").score(outputs) == pytest.approx(top1)  # the default: top-1


def test_metric_needs_a_classifier(resnet18_10_classes):
    with pytest.raises(WorkloadError, match=r"--metric agreement needs a classifier's outputs of shape \[N, classes\]"):
        load_workload("sample:diabetes_mlp", metric="agreement")
    model, data = resnet18_10_classes
    with pytest.raises(WorkloadError, match="10-class head but .* has 2 class folders"):  # top5: labels must fit
        load_workload(model, data, metric="top5")


def test_targets_and_counts_of_an_image_folder_do_not_normalize_its_pixels(resnet18_10_classes, monkeypatch):
    """The metric asks for the targets once per layer and run: reading them must not normalize
    every stored image batch (efficientnet_b0's search: 442 reads of every batch, +3 GB resident)."""
    from qanalysis.workload import ImageBatches

    model, data = resnet18_10_classes
    wl = load_workload(model, data, metric="agreement")
    assert isinstance(wl.evaluation, ImageBatches) and isinstance(wl.calibration, ImageBatches)
    expected = torch.cat([t for _, t in wl.evaluation])
    n_eval, n_calib = wl.n_eval, wl.n_calib

    def no_read(self, i):
        raise AssertionError("an image batch was normalized")

    monkeypatch.setattr(ImageBatches, "_item", no_read)
    assert torch.equal(wl.targets(), expected)
    assert (wl.n_eval, wl.n_calib) == (n_eval, n_calib) == (int(expected.shape[0]), n_calib) and n_calib > 0
