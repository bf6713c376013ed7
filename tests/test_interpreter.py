"""The torch interpreter runs exported graphs exactly like ONNX Runtime's FP32 engine."""

import pytest
import torch

from conftest import cached_workload
from qanalysis.engine import run_session, session
from qanalysis.graph import prepare
from qanalysis.workload import list_samples


@pytest.mark.parametrize("name", list_samples())
def test_interpreter_matches_ort_fp32(name):
    wl = cached_workload(f"sample:{name}")
    qg = prepare(wl)
    sess = session(qg.float_path)
    for x, _ in wl.evaluation[:2]:
        ours = qg.program.run(dict(zip(qg.input_names, x)))[qg.program.outputs[0]]
        ref = run_session(sess, x)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_partial_run_reuses_cached_prefix():
    wl = cached_workload("sample:digits_resnet")
    prog = prepare(wl).program
    feeds = dict(zip(prog.inputs, wl.calibration[0]))
    env = prog.run(feeds, keep=True)
    last = len(prog.nodes) - 1
    calls = []
    out = prog.run(feeds, env=env, nodes={last}, edge=lambda i, p, v: calls.append(i) or v, keep=True)
    assert set(calls) == {last}  # only the requested node ran
    torch.testing.assert_close(out[prog.outputs[0]], env[prog.outputs[0]])
