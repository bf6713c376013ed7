import pytest
import torch

from conftest import SPECS
from qanalysis.errors import WorkloadError
from qanalysis.workload import list_samples, load_spec, load_workload


def test_samples_registry():
    assert list_samples() == ["digits_cnn", "digits_resnet", "digits_vit", "diabetes_mlp", "tiny_lm"]


def test_regression_sample_has_regression_task():
    wl = load_workload("sample:diabetes_mlp")
    assert wl.task == "regression" and "R²" in wl.metric_name


def test_multi_input_spec_and_evaluate_called_once():
    wl = load_spec(SPECS / "multi_input.py")
    assert len(wl.calibration[0]) == 2
    import sys

    mod = sys.modules[wl.evaluate.__module__]  # this load's module (earlier tests may have loaded others)
    before = mod.CALLS["evaluate"]
    outs = torch.cat([wl.model(*x) for x, _ in wl.evaluation])
    wl.score(outs.detach())
    assert mod.CALLS["evaluate"] == before + 1
    assert outs.shape[0] == 48


def test_multi_input_spec_analyzes():
    from qanalysis.analysis import analyze

    a = analyze(load_spec(SPECS / "multi_input.py"), baseline=False)
    assert {"q", "d"} <= {l.name for l in a.qgraph.layers}
    assert abs(a.drop) < 20


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("no_build_model.py", "does not define build_model()"),
        ("raises.py", "raised RuntimeError on import: this spec is broken on purpose"),
        ("bad_forward.py", "forward failed on the first calibration batch"),
        ("nan_outputs.py", "NaN"),
        ("does_not_exist.py", "spec file not found"),
    ],
)
def test_bad_specs_raise_one_clear_error(spec, needle):
    with pytest.raises(WorkloadError, match=needle):
        load_spec(SPECS / spec)


def test_unknown_model_source():
    with pytest.raises(WorkloadError, match="sample:NAME"):
        load_workload("resnet18")
    with pytest.raises(WorkloadError, match="unknown sample"):
        load_workload("sample:nope")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for c in ["cat", "dog", "eel"]:
        (root / c).mkdir()
        for i in range(4):
            arr = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_torchvision_state_dict_sets_number_of_classes(image_folder, tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), tmp_path / "w7.pt")
    # the head's size comes from the weights, and a head that does not match the folders is refused
    with pytest.raises(WorkloadError, match="7-class head but .* has 3 class folders"):
        load_workload(f"torchvision:resnet18@{tmp_path / 'w7.pt'}", image_folder)
    m = torchvision.models.resnet18(num_classes=3)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    wl = load_workload(f"torchvision:resnet18@{tmp_path / 'w.pt'}", image_folder)
    assert wl.model.fc.out_features == 3 and not wl.random_weights
    assert torch.equal(wl.model.fc.weight, m.fc.weight)
    assert wl.calibration[0][0].shape[1:] == (3, 224, 224)
    assert wl.n_calib == 3 and wl.n_eval == 9  # one calibration image per class, split deterministically
    assert wl.class_names == ["cat", "dog", "eel"]


def test_torchvision_whole_model_and_errors(image_folder, tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=3), tmp_path / "whole.pt")
    wl = load_workload(f"torchvision:resnet18@{tmp_path / 'whole.pt'}", image_folder)
    assert wl.model.fc.out_features == 3
    with pytest.raises(WorkloadError, match="--data"):
        load_workload("torchvision:resnet18")
    with pytest.raises(WorkloadError, match="unknown torchvision architecture"):
        load_workload("torchvision:resnet9000", image_folder)
    with pytest.raises(WorkloadError, match="weights file not found"):
        load_workload("torchvision:resnet18@/nope.pt", image_folder)


def test_torchvision_segmentation_is_scored_by_pixel_agreement(image_folder, tmp_path):
    """A segmentation model on an image folder: no masks, so the targets are FP32's own per-pixel
    classes (uint8), the metric pixel agreement (FP32 = 100 %); a fine-tuned head's class count
    comes from its weights; flat folders work; top-5 is refused in one line."""
    import torchvision
    from PIL import Image

    from qanalysis.workload import PIXEL_AGREEMENT_NAME, pixel_agreement

    wl = load_workload("torchvision:lraspp_mobilenet_v3_large", image_folder)
    assert wl.metric_name == PIXEL_AGREEMENT_NAME and wl.random_weights
    x, t = wl.evaluation[0]
    out = wl.model(*x)
    assert out.shape[1:] == (21, 224, 224) and t.shape == (x[0].shape[0], 224, 224) and t.dtype == torch.uint8
    assert wl.score(out) == 100.0
    flipped = out.clone()
    flipped[:, :, :112] = -flipped[:, :, :112]  # another class on the top half of every image
    assert pixel_agreement(flipped, t) < 100.0
    assert any("pixel agreement" in w for w in wl.warnings)
    # fine-tuned weights with 5 classes (and an auxiliary head, which the deployed model does not run)
    torch.save(torchvision.models.get_model("fcn_resnet50", weights=None, weights_backbone=None, num_classes=5,
                                            aux_loss=True).state_dict(), tmp_path / "fcn5.pt")  # fmt: skip
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, p in enumerate(sorted(image_folder.rglob("*.png"))[:4]):
        Image.open(p).save(flat / f"{i}.png")
    wl5 = load_workload(f"torchvision:fcn_resnet50@{tmp_path / 'fcn5.pt'}", flat)
    assert wl5.model(*wl5.evaluation[0][0]).shape[1] == 5 and wl5.score(wl5.model(*wl5.evaluation[0][0])) == 100.0
    with pytest.raises(WorkloadError, match="top5 scores classifiers"):
        load_workload("torchvision:lraspp_mobilenet_v3_large", image_folder, metric="top5")
