"""qanalysis: will INT8 hurt my model? Per-layer quantization analysis for ONNX Runtime."""

import os as _os

__version__ = "0.1.0"

# Idle OpenMP threads spinning on a busy 2-core machine made per-layer runs ~40x slower;
# passive waiting costs nothing when the machine is idle. Must be set before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
