"""Spec: digits_cnn with planted outlier channels in the activation between conv1 and conv2.

Channels PLANTED of conv1's output are scaled up 100x (BatchNorm weight and bias) and
conv2's matching input channels scaled down 100x. ReLU is positively homogeneous, so the
FP32 model is unchanged; per-tensor activation quantization of conv2's input is not.
"""

from __future__ import annotations

import importlib.util

import torch

from qanalysis.workload import SAMPLES_DIR

# The bundled sample, found through the installed package: this file works copied anywhere.
_SAMPLE = SAMPLES_DIR / "digits_cnn.py"
_spec = importlib.util.spec_from_file_location("_planted_base_digits_cnn", _SAMPLE)
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)

PLANTED = (1, 5, 9)
SCALE = 100.0
DESCRIPTION = "digits_cnn with 3 planted 100x outlier channels in conv2's input"


def build_model() -> torch.nn.Module:
    m = base.build_model()
    with torch.no_grad():
        for c in PLANTED:
            m.conv1.bn.weight[c] *= SCALE
            m.conv1.bn.bias[c] *= SCALE
            m.conv2.conv.weight[:, c] /= SCALE
    return m.eval()


calibration_batches = base.calibration_batches
evaluation_batches = base.evaluation_batches
evaluate = base.evaluate
training_batches = base.training_batches
loss = base.loss
