"""ONNX Runtime engines: sessions, timing, and the INT8 engine of a config.

(The verified export of a whole config lives here too as it grows; see DESIGN.md step 9.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort
import torch

from .workload import Inputs


def session(path: str | Path, *, threads: int | None = None, profile: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if profile:
        so.enable_profiling = True
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run_session(sess: ort.InferenceSession, inputs: Inputs) -> torch.Tensor:
    names = [i.name for i in sess.get_inputs()]
    feeds: Mapping[str, np.ndarray] = {n: t.numpy() for n, t in zip(names, inputs)}
    return torch.from_numpy(np.asarray(sess.run(None, feeds)[0])).float()
