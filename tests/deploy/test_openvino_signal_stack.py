"""OpenVINO's CPU plugin swaps the thread's signal stack (sigaltstack) and puts back the one it found when torn
down; with a Core per call, plugins torn down first-in-first-out left the thread on unmapped memory and the next
caught signal killed the process (the whole suite in one pytest process died with SIGSEGV, si_code SI_KERNEL,
at a subprocess's SIGCHLD after tests/data installed torch's DataLoader SIGCHLD handler). Run in a child process
so that a regression fails this test instead of killing pytest."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("openvino")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import ctypes, faulthandler, gc, signal, subprocess, sys
import numpy as np
from onnx import TensorProto, helper
from segformer_tao.deploy import openvino as ovrt

class Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

def stack_is_mapped():
    cur = Stack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(cur))
    sp = cur.ss_sp or 0
    with open("/proc/self/maps") as f:
        return any(int(lo, 16) <= sp < int(hi, 16) for lo, hi in (ln.split()[0].split("-") for ln in f))

faulthandler.enable()  # a signal stack of its own, as pytest's faulthandler plugin sets
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1], np.eye(3, dtype=np.float32).ravel().tolist())
g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y], [w])
path = sys.argv[1]
open(path, "wb").write(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
a = ovrt.compile_model(ovrt.core().read_model(path), "f32", 1)
b = ovrt.compile_model(ovrt.core().read_model(path), "f32", 1)
with ovrt.keep_signal_stack():  # a third-party Core (as NNCF makes), torn down after the block
    import openvino as ov
    c = ov.Core()
    c2 = c.compile_model(c.read_model(path), "CPU")
d = ov.Core()
d2 = d.compile_model(d.read_model(path), "CPU")
del a; gc.collect()
del c2, c; gc.collect()
del b; gc.collect()
del d2, d; gc.collect()  # another Core over ours: puts ours back, which stays mapped
print("mapped", stack_is_mapped(), flush=True)
signal.signal(signal.SIGCHLD, lambda *a: None)  # torch's DataLoader installs one (workers > 0); SA_ONSTACK
for _ in range(3):
    subprocess.run(["true"])
print("survived", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack / SIGCHLD (Linux)")
def test_openvino_leaves_a_mapped_signal_stack_and_a_child_exit_does_not_kill_us(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "tiny.onnx")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "mapped True" in proc.stdout and "survived" in proc.stdout, proc.stdout
