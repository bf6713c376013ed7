import numpy as np
import pytest
import torch
from onnxruntime.quantization.quant_utils import compute_scale_zp as ort_compute_scale_zp

from qanalysis.errors import ConfigError
from qanalysis.scheme import ActivationSpec, Config, QRange, Scheme, WeightSpec, compute_scale_zp


@pytest.mark.parametrize("symmetric,bits", [(False, 8), (True, 8), (True, 4), (False, 4), (False, 16)])
def test_scale_zp_matches_onnxruntime(symmetric, bits):
    rng = np.random.default_rng(0)
    qr = QRange.for_bits(bits, symmetric)
    for _ in range(200):
        lo, hi = sorted(rng.normal(0, 3, 2).astype(np.float32))
        if rng.random() < 0.2:
            lo = np.float32(abs(lo))  # range not containing 0: must be extended to 0
        z_ref, s_ref = ort_compute_scale_zp(np.array(lo), np.array(hi), np.array(qr.qmin), np.array(qr.qmax), symmetric)
        s, z = compute_scale_zp(torch.tensor(lo), torch.tensor(hi), qr, symmetric)
        assert float(s) == float(s_ref)
        assert int(z) == int(z_ref)


def test_int8_symmetric_weights_are_narrow():
    assert QRange.for_bits(8, True) == QRange(-127, 127)
    assert QRange.for_bits(8, False) == QRange(0, 255)
    assert QRange.for_bits(4, True) == QRange(-7, 7)


def test_config_round_trip():
    c = Config(
        scheme=Scheme(weights=WeightSpec(bits=4, granularity=32), activations=ActivationSpec(calibration="entropy")),
        layers={"conv1": "fp16", "fc": "int4"},
    )
    assert Config.from_dict(__import__("json").loads(c.to_json())) == c


def test_missing_keys_take_defaults():
    c = Config.from_dict({"scheme": {"weights": {"bits": 4}}})
    assert c.scheme.weights.bits == 4 and c.scheme.weights.granularity == "per_channel"
    assert c.scheme.activations == ActivationSpec()


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"scheme": {"weights": {"bits": 1}}}, "bits must be an integer in 2..16"),
        ({"scheme": {"weights": {"bits": 17}}}, "bits must be an integer in 2..16"),
        ({"scheme": {"activations": {"calibration": "magic"}}}, "unknown calibration method"),
        ({"scheme": {"weights": {"granularity": "per_row"}}}, "granularity"),
        ({"layers": {"conv1": "int3"}}, "precision must be one of"),
        ({"scheme": {"weights": {"bitz": 8}}}, "unknown key"),
        ({"schema": {}}, "unknown config key"),
    ],
)
def test_bad_configs_raise_config_error(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        Config.from_dict(bad)
