"""ONNX files as models: ``qanalysis analyze model.onnx --data DIR`` (issue 14).

An FP32 or FP16 ONNX file (external data beside it is read) becomes a ``torch.nn.Module``
that runs the graph with the torch interpreter, so every later step — the FP32 baseline,
calibration, simulation, fixes through the interpreter, engines — works on it unchanged; the
"export" step then simply takes the graph as it is (``graph._build``). FP16 graphs are
converted to FP32 first (initializers, graph inputs/outputs and Casts to float16), because
ONNX Runtime's quantizer reads FP32 graphs. Layer names are the graph's node names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from .errors import WorkloadError
from .interpreter import Program


def to_float32(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """The graph with every float16 initializer, input, output and Cast-to-float16 made float32."""
    changed = False
    g = model.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT16:
            arr = numpy_helper.to_array(t).astype(np.float32)
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))
            changed = True
    for v in list(g.input) + list(g.output) + list(g.value_info):
        tt = v.type.tensor_type
        if tt.elem_type == TensorProto.FLOAT16:
            tt.elem_type = TensorProto.FLOAT
            changed = True
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.FLOAT
                changed = True
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
                changed = True
    return model, changed


class OnnxModel(torch.nn.Module):
    """A float ONNX graph run by the torch interpreter; ``proto`` is what ``prepare`` exports."""

    def __init__(self, path: str | Path):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise WorkloadError(f"ONNX model not found: {path}")
        try:
            proto = onnx.load(str(path))  # external data is read from beside the file
        except Exception as e:  # noqa: BLE001
            raise WorkloadError(f"cannot read ONNX model {path}: {str(e).splitlines()[0][:200]}") from None
        self.proto, self.was_fp16 = to_float32(proto)
        self.path = path
        h = hashlib.sha256()
        for t in self.proto.graph.initializer:
            h.update(t.name.encode())
            h.update(t.SerializeToString())
        h.update(self.proto.graph.SerializeToString())
        self.sha256 = h.hexdigest()
        try:
            self.program = Program(self.proto)
        except WorkloadError:
            raise
        except Exception as e:  # noqa: BLE001 - ExportError names an unsupported op
            raise WorkloadError(f"{path.name}: {e}") from None
        inits = {t.name for t in self.proto.graph.initializer}
        self.input_specs = [i for i in self.proto.graph.input if i.name not in inits]

    def input_shape(self, i: int = 0) -> list[int | None]:
        dims = self.input_specs[i].type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else None for d in dims]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        p = self.program
        if len(inputs) != len(p.inputs):
            raise WorkloadError(f"the ONNX model takes {len(p.inputs)} input(s) ({', '.join(p.inputs)}), got {len(inputs)}")
        env = p.run(dict(zip(p.inputs, inputs)))
        return env[p.outputs[0]]
