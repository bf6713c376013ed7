"""Every op in the simulator's registry computes what ONNX Runtime computes.

One single-node ONNX model per case, random inputs, run by ONNX Runtime's CPU engine and by
the simulator's ``Program``; float outputs allclose, integer and boolean outputs exact. A
newly registered op fails here until it has a case in CASES.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qanalysis.errors import ExportError
from qanalysis.interpreter import Program
from qanalysis.ops import OPS, get_op, list_ops, register_op

OPSET = 18
rng = np.random.default_rng(0)


def f32(*shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def pos(*shape):
    return f32(*shape, lo=0.5, hi=3.0)


def i64(*values):
    return np.array(values, dtype=np.int64)


def scalar(v, dtype=np.int64):
    return np.array(v, dtype=dtype)


@dataclass
class Case:
    inputs: list[np.ndarray | None]  # None: an omitted optional input
    attrs: dict = field(default_factory=dict)
    n_out: int = 1
    opset: int = OPSET


def case(*inputs, n_out=1, opset=OPSET, **attrs) -> Case:
    return Case(list(inputs), attrs, n_out, opset)


def unary(x=None):
    return [case(f32(2, 3, 4) if x is None else x)]


def binary(x, y):
    return [case(x, y)]


def reduce_cases():
    return [case(f32(2, 3, 4), i64(1), keepdims=0), case(f32(2, 3, 4), i64(0, -1)), case(f32(2, 3))]


def _lens(batch, seq):
    return np.array([seq, max(1, seq - 2), 1][:batch], dtype=np.int32)


def recurrent(gates, n_states, **extra):
    """Inputs X, W, R, B, sequence_lens, initial_h(, initial_c) for 4 directions/lengths combos."""
    seq, batch, inp, hid = 5, 3, 4, 6
    out = []
    for direction, dirs in (("forward", 1), ("reverse", 1), ("bidirectional", 2)):
        w, r = f32(dirs, gates * hid, inp, lo=-0.7, hi=0.7), f32(dirs, gates * hid, hid, lo=-0.7, hi=0.7)
        b = f32(dirs, 2 * gates * hid, lo=-0.5, hi=0.5)
        states = [f32(dirs, batch, hid, lo=-1, hi=1) for _ in range(n_states)]
        x = f32(seq, batch, inp)
        out.append(case(x, w, r, b, _lens(batch, seq), *states, n_out=1 + n_states, hidden_size=hid,
                        direction=direction, **extra))  # fmt: skip
        out.append(case(x, w, r, n_out=1 + n_states, hidden_size=hid, direction=direction, **extra))  # all optional omitted
    out.append(case(f32(seq, batch, inp), w, r, b, n_out=1, hidden_size=hid, direction="bidirectional", clip=0.6, **extra))
    return out


_rounds = np.array([[0.5, 1.5, 2.5, -0.5], [-1.5, 0.49, -2.51, 3.0]], dtype=np.float32)
_nan = f32(2, 3)
_nan[0, 1] = np.nan
_inf = f32(2, 3)
_inf[0, 0], _inf[1, 2] = np.inf, -np.inf
_sparse = np.where(rng.random((3, 4)) > 0.5, f32(3, 4), 0).astype(np.float32)
_ints = rng.integers(-3, 4, (2, 3)).astype(np.float32)  # ties for comparisons

CASES: dict[str, list[Case]] = {
    "Conv": [
        case(f32(1, 4, 9, 9), f32(6, 2, 3, 3), f32(6), group=2, pads=[1, 0, 1, 2], strides=[2, 1]),
        case(f32(2, 3, 8, 8), f32(4, 3, 3, 3), auto_pad="SAME_UPPER", strides=[2, 2]),
        case(f32(1, 3, 10), f32(5, 3, 3), f32(5), dilations=[2], pads=[2, 2]),
    ],
    "ConvTranspose": [
        case(f32(1, 4, 5, 5), f32(4, 3, 3, 3), f32(3), strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    ],
    "Gemm": [case(f32(4, 3), f32(5, 4), f32(5), transA=1, transB=1, alpha=0.5, beta=2.0), case(f32(3, 4), f32(4, 5))],
    "MatMul": binary(f32(2, 3, 4), f32(4, 5)),
    "Einsum": [case(f32(2, 3, 4), f32(2, 4, 5), equation="bij,bjk->bik")],
    "MaxPool": [
        case(f32(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        case(f32(1, 2, 6, 6), kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
    ],
    "AveragePool": [
        case(f32(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        case(f32(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    ],
    "GlobalAveragePool": unary(f32(2, 3, 4, 5)),
    "GlobalMaxPool": unary(f32(2, 3, 4, 5)),
    "LayerNormalization": [case(f32(2, 3, 8), f32(8), f32(8), epsilon=1e-5), case(f32(2, 3, 8), f32(3, 8), axis=1)],
    "BatchNormalization": [case(f32(2, 3, 4, 4), f32(3), f32(3), f32(3), pos(3), epsilon=1e-3)],
    "InstanceNormalization": [case(f32(2, 3, 5, 5), f32(3), f32(3))],
    "Softmax": [case(f32(2, 3, 5), axis=1), case(f32(2, 5))],
    "LogSoftmax": [case(f32(2, 3, 5), axis=1)],
    "Add": binary(f32(2, 3, 4), f32(3, 1)),
    "Sub": binary(f32(2, 3, 4), f32(4)),
    "Mul": binary(f32(2, 3, 4), f32(3, 1)),
    "Div": [case(f32(2, 3), pos(2, 3)), case(i64(7, -7, 9, -9), i64(2, 2, -4, -4))],
    "Pow": binary(pos(2, 3), f32(2, 3)),
    "Mod": [case(i64(7, -7, 9, -9), i64(3, 3, -4, -4)), case(f32(2, 3) * 5, pos(2, 3), fmod=1)],
    "Max": [case(f32(2, 3), f32(3), f32(1, 3))],
    "Min": [case(f32(2, 3), f32(3), f32(1, 3))],
    "Sum": [case(f32(2, 3), f32(3), f32(1, 3))],
    "Equal": binary(rng.integers(0, 3, (2, 3)), rng.integers(0, 3, (2, 3))),
    "Greater": binary(_ints, _ints[::-1].copy()),
    "GreaterOrEqual": binary(_ints, _ints[::-1].copy()),
    "Less": binary(_ints, _ints[::-1].copy()),
    "LessOrEqual": binary(_ints, _ints[::-1].copy()),
    "And": binary(rng.random((2, 3)) > 0.5, rng.random((2, 3)) > 0.5),
    "Or": binary(rng.random((2, 3)) > 0.5, rng.random((2, 3)) > 0.5),
    "Xor": binary(rng.random((2, 3)) > 0.5, rng.random((2, 3)) > 0.5),
    "Not": unary(rng.random((2, 3)) > 0.5),
    "BitwiseAnd": binary(rng.integers(0, 255, (2, 3)).astype(np.int32), rng.integers(0, 255, (2, 3)).astype(np.int32)),
    "BitwiseOr": binary(rng.integers(0, 255, (2, 3)).astype(np.int32), rng.integers(0, 255, (2, 3)).astype(np.int32)),
    "Where": [case(rng.random((2, 3)) > 0.5, f32(2, 3), f32(3))],
    "IsNaN": unary(_nan),
    "IsInf": unary(_inf),
    "Sqrt": unary(pos(2, 3)),
    "Exp": unary(),
    "Log": unary(pos(2, 3)),
    "Neg": unary(),
    "Abs": unary(),
    "Reciprocal": unary(pos(2, 3)),
    "Floor": unary(),
    "Ceil": unary(),
    "Round": unary(_rounds),
    "Sign": unary(_sparse),
    "Erf": unary(),
    "Sin": unary(),
    "Cos": unary(),
    "Atan": unary(),
    "CumSum": [case(f32(3, 4), scalar(1)), case(f32(3, 4), scalar(0))],
    "Relu": unary(),
    "Tanh": unary(),
    "Sigmoid": unary(),
    "LeakyRelu": [case(f32(2, 3), alpha=0.1)],
    "Elu": [case(f32(2, 3), alpha=0.7)],
    "Selu": unary(),
    "PRelu": [case(f32(2, 3, 4, 4), f32(3, 1, 1))],
    "HardSigmoid": [case(f32(2, 3) * 3, alpha=0.3, beta=0.4)],
    "HardSwish": unary(f32(2, 3, 4) * 3),
    "Softplus": unary(),
    "Mish": unary(),
    "Gelu": [case(f32(2, 3), opset=20), case(f32(2, 3), opset=20, approximate="tanh")],
    "Clip": [case(f32(2, 3), scalar(-0.5, np.float32), scalar(0.7, np.float32)), case(f32(2, 3), scalar(0.0, np.float32))],
    "ReduceMean": reduce_cases(),
    "ReduceSum": reduce_cases(),
    "ReduceMax": reduce_cases(),
    "ReduceMin": reduce_cases(),
    "ReduceProd": reduce_cases(),
    "ReduceL2": reduce_cases(),
    "ArgMax": [case(f32(2, 3, 4), axis=1, keepdims=0), case(f32(2, 3, 4))],
    "Identity": unary(),
    "Dropout": unary(),
    "Cast": [case(f32(2, 3) * 3, to=TensorProto.INT64), case(rng.integers(-5, 5, (2, 3)), to=TensorProto.FLOAT)],
    "CastLike": [case(f32(2, 3), np.zeros(1, dtype=np.float64))],
    "Shape": [case(f32(2, 3, 4)), case(f32(2, 3, 4), start=1)],
    "Size": unary(),
    "Reshape": [case(f32(2, 3, 4), i64(0, -1)), case(f32(2, 3, 4), i64(4, 6))],
    "Flatten": [case(f32(2, 3, 4, 5), axis=2), case(f32(2, 3, 4)), case(f32(2, 3), axis=0)],
    "Transpose": [case(f32(2, 3, 4), perm=[2, 0, 1]), case(f32(2, 3, 4))],
    "Squeeze": [case(f32(2, 1, 3, 1), i64(-1)), case(f32(2, 1, 3, 1))],
    "Unsqueeze": [case(f32(2, 3), i64(0, 3))],
    "Expand": [case(f32(3, 1), i64(2, 3, 4)), case(f32(2, 3), i64(3, 1, 1))],
    "Tile": [case(f32(2, 3), i64(2, 1))],
    "ConstantOfShape": [case(i64(2, 3), value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.5])), case(i64(2, 3))],
    "Range": [case(scalar(1), scalar(10), scalar(3)), case(scalar(0.5, np.float32), scalar(2.0, np.float32), scalar(0.25, np.float32))],
    "Trilu": [case(f32(4, 5), scalar(1), upper=0), case(f32(4, 5))],
    "OneHot": [case(i64(0, 2, -1, 1).reshape(2, 2), scalar(4), np.array([-1.0, 3.0], np.float32)),
               case(i64(0, 2, 3), scalar(4), np.array([0.0, 1.0], np.float32), axis=0)],
    "NonZero": unary(_sparse),
    "Concat": [case(f32(2, 3), f32(2, 1), f32(2, 2), axis=1)],
    "Split": [case(f32(2, 3, 4), i64(1, 2), axis=1, n_out=2), case(f32(7, 2), n_out=3, num_outputs=3)],
    "Slice": [
        case(f32(5, 6), i64(1, -1), i64(4, -10), i64(0, 1), i64(1, -2)),
        case(f32(5, 6), i64(2), i64(2**62), i64(1)),
        case(f32(4, 6), i64(-3, 0), i64(-1, 5)),
    ],
    "Gather": [case(f32(5, 4), i64(0, -1, 2, 3).reshape(2, 2)), case(f32(5, 4), i64(1, 3), axis=1), case(f32(5, 4), scalar(2))],
    "GatherElements": [case(f32(3, 4), rng.integers(0, 4, (3, 2)), axis=1)],
    "GatherND": [case(f32(2, 3, 4), i64(0, 1, 1, 2).reshape(2, 1, 2)), case(f32(2, 3, 4), i64(1, 2).reshape(2, 1, 1), batch_dims=1)],
    "ScatterND": [case(f32(4, 3), i64(1, 3).reshape(2, 1), f32(2, 3)), case(f32(4, 3), i64(1, 3).reshape(2, 1), f32(2, 3), reduction="add")],
    "Resize": [
        case(f32(1, 2, 4, 4), None, np.array([1, 1, 2, 2], np.float32), mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        case(f32(1, 2, 4, 5), None, None, i64(1, 2, 7, 9), mode="linear"),
        case(f32(1, 2, 4, 5), None, None, i64(1, 2, 7, 9), mode="linear", coordinate_transformation_mode="align_corners"),
    ],
    "Pad": [
        case(f32(1, 2, 3, 4), i64(0, 0, 1, 2, 0, 0, 2, 1), scalar(0.5, np.float32)),
        case(f32(1, 2, 3, 4), i64(0, 0, 1, 2, 0, 0, 2, 1), mode="reflect"),
        case(f32(1, 2, 3, 4), i64(0, 0, 1, 2, 0, 0, 2, 1), mode="edge"),
    ],
    "LSTM": recurrent(4, 2) + [case(f32(4, 2, 3), f32(1, 8, 3), f32(1, 8, 2), f32(1, 16), None, None, None, f32(1, 6),
                                    n_out=3, hidden_size=2),  # peepholes
                                 case(f32(4, 2, 3), f32(1, 8, 3), f32(1, 8, 2), n_out=3, hidden_size=2, input_forget=1),
                                 case(f32(4, 2, 3), f32(1, 8, 3), f32(1, 8, 2), n_out=3, hidden_size=2,
                                      activations=["HardSigmoid", "LeakyRelu", "Tanh"], activation_alpha=[0.3, 0.2],
                                      activation_beta=[0.4])],
    "GRU": recurrent(3, 1) + recurrent(3, 1, linear_before_reset=1)[:2],
    "RNN": recurrent(1, 1) + [case(f32(4, 2, 3), f32(1, 5, 3), f32(1, 5, 5), n_out=2, hidden_size=5, activations=["Relu"])],
}

_NP_TO_ONNX = {np.dtype(k): v for k, v in {
    np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.int64: TensorProto.INT64,
    np.int32: TensorProto.INT32, np.bool_: TensorProto.BOOL}.items()}  # fmt: skip


def one_node_model(op: str, c: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The op as a one-node graph; int64 inputs after the first (shapes, axes, indices) become
    initializers, as in exported graphs, so that shape inference can type the outputs."""
    names, feeds, inputs, inits = [], {}, [], []
    for i, v in enumerate(c.inputs):
        if v is None:
            names.append("")
            continue
        v = np.asarray(v)
        names.append(f"in{i}")
        if i > 0 and v.dtype == np.int64:
            inits.append(numpy_helper.from_array(v, f"in{i}"))
            continue
        feeds[f"in{i}"] = v
        inputs.append(helper.make_tensor_value_info(f"in{i}", _NP_TO_ONNX[v.dtype], list(v.shape)))
    while names and names[-1] == "":
        names.pop()
    outs = [f"out{i}" for i in range(c.n_out)]
    node = helper.make_node(op, names, outs, name=f"node_{op}", **c.attrs)
    graph = helper.make_graph([node], op, inputs, [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", c.opset)])
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v for v in model.graph.value_info}
    del model.graph.output[:]
    model.graph.output.extend(types[o] for o in outs)
    onnx.checker.check_model(model)
    return model, feeds


def test_every_registered_op_has_a_case():
    missing = sorted(set(list_ops()) - set(CASES))
    assert not missing, f"ops without a case in tests/test_ops.py: {missing}"


@pytest.mark.parametrize("op", list_ops())
def test_op_matches_onnxruntime(op):
    assert CASES.get(op), f"{op} is registered but has no case in CASES"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for k, c in enumerate(CASES[op]):
        model, feeds = one_node_model(op, c)
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        refs = sess.run(None, feeds)
        prog = Program(model)
        got = prog.run({n: torch.from_numpy(np.array(v)) for n, v in feeds.items()})
        for name, ref in zip(prog.outputs, refs):
            ours = got[name].detach().numpy()
            msg = f"{op} case {k} output {name}"
            assert ours.shape == ref.shape, f"{msg}: shape {ours.shape} != {ref.shape}"
            if np.issubdtype(ref.dtype, np.floating):
                np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5, err_msg=msg)
            else:
                assert ours.dtype == ref.dtype, f"{msg}: dtype {ours.dtype} != {ref.dtype}"
                np.testing.assert_array_equal(ours, ref, err_msg=msg)


def test_unknown_op_names_the_op_and_the_node():
    node = helper.make_node("Hardmax", ["x"], ["y"], name="node_hardmax_2")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises(ExportError, match=r"^ONNX op Hardmax \(node 'node_hardmax_2'\) is not supported by the simulator yet$"):
        Program(model)
    with pytest.raises(ExportError, match="ONNX op Hardmax is not supported"):
        get_op("Hardmax")


def test_registering_an_op_is_one_function():
    @register_op("TestOnlyDouble")
    def double(args, a):
        return args[0] * 2

    try:
        assert "TestOnlyDouble" in list_ops() and get_op("TestOnlyDouble") is double
        with pytest.raises(ValueError, match="registered twice"):
            register_op("TestOnlyDouble")(double)
    finally:
        del OPS["TestOnlyDouble"]
