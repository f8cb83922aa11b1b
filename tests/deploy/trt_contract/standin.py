"""A recording stand-in for TensorRT whose every method call, property read and property write is checked against
the real bindings (imported as ``real``): the method must exist on the real class, and the call must bind to one of
the signatures pybind11 wrote into its docstring (argument count, keyword names, argument types).

The stand-in "builds" an engine as TensorRT would be driven: it parses the ONNX's nodes into layers with real
``trt.LayerType`` members, drives a legacy calibrator the way TensorRT calls it, and its execution context reads
the input buffer at the address it was given and writes ``reference_output`` to the output address, so batch
splitting, padding and slicing in the runtime are checked end to end.
"""

from __future__ import annotations

import ctypes
import inspect
import json

import numpy as np
import onnx

from tests.deploy.trt_contract.signatures import CALLS, FAILURES, check_call, check_set, fail  # noqa: F401 (re-exported)

LAYER_TYPES = {"LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX", "ReduceMean": "REDUCE",
               "Conv": "CONVOLUTION", "Transpose": "SHUFFLE", "QuantizeLinear": "QUANTIZE",
               "DequantizeLinear": "DEQUANTIZE"}


# ---------------------------------------------------------------- stand-in objects


class StandIn:
    """Attribute access is checked against ``getattr(real, MIRRORS)``; fake state lives in ``_``-names."""

    MIRRORS = ""
    REAL = None  # the real tensorrt module, set by make_module

    def __getattribute__(self, name):
        if name.startswith("_") or name in ("MIRRORS", "REAL"):
            return object.__getattribute__(self, name)
        mirror = getattr(StandIn.REAL, type(self).MIRRORS)
        if not hasattr(mirror, name):
            fail(f"{type(self).MIRRORS}.{name} does not exist in TensorRT {StandIn.REAL.__version__}")
        static = inspect.getattr_static(mirror, name)
        try:
            value = object.__getattribute__(self, name)
        except AttributeError:
            fail(f"stand-in {type(self).__name__} lacks {name}: add it to tests/deploy/trt_contract/standin.py")
        if isinstance(static, property):
            CALLS.add(f"{type(self).MIRRORS}.{name}")
            return value
        func = getattr(mirror, name)

        def checked(*args, **kwargs):
            check_call(StandIn.REAL, type(self).MIRRORS, func, name, args, kwargs)
            return value(*args, **kwargs)

        return checked

    def __setattr__(self, name, value):
        if name.startswith("_"):
            return object.__setattr__(self, name, value)
        static = inspect.getattr_static(getattr(StandIn.REAL, type(self).MIRRORS), name, None)
        if not isinstance(static, property) or static.fset is None:
            fail(f"{type(self).MIRRORS}.{name} is not a settable property in TensorRT {StandIn.REAL.__version__}")
        check_set(StandIn.REAL, type(self).MIRRORS, name, static.fset, value)
        CALLS.add(f"{type(self).MIRRORS}.{name}=")
        self.__dict__.setdefault("_assigned", {})[name] = value
        object.__setattr__(self, name, value)


class HostMemory(bytes):
    """IHostMemory implements the buffer protocol, so ``bytes(host_memory)`` works."""


class Tensor(StandIn):
    MIRRORS = "ITensor"

    def __init__(self, dtype):
        object.__setattr__(self, "dtype", dtype)


class Layer(StandIn):
    MIRRORS = "ILayer"

    def __init__(self, real, node):
        self._real = real
        object.__setattr__(self, "name", node.name)
        object.__setattr__(self, "type", getattr(real.LayerType, LAYER_TYPES.get(node.op_type, "ELEMENTWISE")))
        object.__setattr__(self, "num_outputs", 1)
        object.__setattr__(self, "precision", real.float32)
        self._outputs = [Tensor(real.float32)]
        self._output_types = {}

    def get_output(self, index):
        return self._outputs[index]

    def set_output_type(self, index, dtype):
        self._output_types[index] = dtype


class Network(StandIn):
    MIRRORS = "INetworkDefinition"

    def __init__(self, flags):
        self._flags = flags
        self._layers = []
        self._io = {}
        object.__setattr__(self, "num_layers", 0)

    def get_layer(self, index):
        return self._layers[index]


class OnnxParser(StandIn):
    MIRRORS = "OnnxParser"

    def __init__(self, network, logger):
        self._network = network
        object.__setattr__(self, "num_errors", 0)

    def parse(self, model, path=None):
        proto = onnx.load_from_string(bytes(model))
        real = StandIn.REAL
        net = self._network
        unknown = [n.op_type for n in proto.graph.node if n.op_type not in LAYER_TYPES and n.op_type != "Add"]
        if unknown:
            object.__setattr__(self, "num_errors", len(unknown))
            self._errors = [f"No importer registered for op: {op}" for op in unknown]
            return False
        net._layers = [Layer(real, node) for node in proto.graph.node]
        object.__setattr__(net, "num_layers", len(net._layers))
        for tensors, mode in ((proto.graph.input, "input"), (proto.graph.output, "output")):
            for t in tensors:
                dims = [d.dim_value if d.dim_value > 0 else -1 for d in t.type.tensor_type.shape.dim]
                net._io[t.name] = {"mode": mode, "shape": dims}
        return True

    def get_error(self, index):
        return self._errors[index]


class Profile(StandIn):
    MIRRORS = "IOptimizationProfile"

    def __init__(self):
        self._shapes = {}

    def set_shape(self, input, min, opt, max):  # noqa: A002 (the bindings' parameter names)
        self._shapes[input] = [list(min), list(opt), list(max)]


class TimingCache(StandIn):
    MIRRORS = "ITimingCache"

    def __init__(self, data: bytes):
        self._data = data

    def serialize(self):
        return HostMemory(b"timing-cache:" + self._data)


class Config(StandIn):
    MIRRORS = "IBuilderConfig"

    def __init__(self):
        self._flags, self._profiles, self._pools = set(), [], {}
        self._cal_profile, self._cache = None, None
        object.__setattr__(self, "int8_calibrator", None)

    def set_memory_pool_limit(self, pool, pool_size):
        self._pools[str(pool)] = pool_size

    def add_optimization_profile(self, profile):
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def set_flag(self, flag):
        self._flags.add(str(flag).split(".")[-1])

    def set_calibration_profile(self, profile):
        self._cal_profile = profile
        return True

    def create_timing_cache(self, serialized_timing_cache):
        return TimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache._data.startswith(b"corrupt"):
            return False  # what TensorRT returns for a cache it cannot use
        self._cache = cache
        return True

    def get_timing_cache(self):
        return self._cache


class Builder(StandIn):
    MIRRORS = "Builder"
    LAST: Builder | None = None

    def __init__(self, logger):
        self._calibration_feeds = []
        Builder.LAST = self

    def create_network(self, flags=0):
        return Network(flags)

    def create_builder_config(self):
        return Config()

    def create_optimization_profile(self):
        return Profile()

    def build_serialized_network(self, network, config):
        self._network, self._config = network, config
        profile = config._profiles[0]._shapes["input"]
        cal = object.__getattribute__(config, "int8_calibrator")
        if cal is not None:
            self._drive_calibrator(cal, config._cal_profile._shapes["input"][1])
        out = network._io["output"]["shape"]
        engine = {"profile": profile, "output": out, "flags": sorted(config._flags)}
        return HostMemory(json.dumps(engine).encode())

    def _drive_calibrator(self, cal, opt_shape):
        """As TensorRT does at the calibration profile's opt shape: batch size, then batches until None/[]."""
        if cal.get_batch_size() != opt_shape[0]:
            fail(f"calibrator batch size {cal.get_batch_size()} != calibration profile opt batch {opt_shape[0]}")
        cal.read_calibration_cache()
        while True:
            ptrs = cal.get_batch(["input"])
            if not ptrs:
                break
            current = cal._current  # the buffer TensorRT would read opt_shape floats from
            if list(current.shape) != list(opt_shape) or current.data_ptr() != ptrs[0]:
                fail(f"calibration buffer {list(current.shape)} at the given address != opt shape {opt_shape}")
            self._calibration_feeds.append(list(current.shape))
        cal.write_calibration_cache(memoryview(b"calibration-table"))


class Context(StandIn):
    MIRRORS = "IExecutionContext"

    def __init__(self, engine):
        self._engine, self._shape, self._addr = engine, None, {}
        self._batches_run = []

    def set_input_shape(self, name, shape):
        lo, _, hi = self._engine._spec["profile"]
        ok = all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        self._shape = list(shape) if ok else None
        return ok

    def get_tensor_shape(self, name):
        n, c, h, w = self._shape
        return (n, self._engine._spec["output"][1], h // 4, w // 4)

    def set_tensor_address(self, name, memory):
        self._addr[name] = memory
        return True

    def execute_async_v3(self, stream_handle):
        x = _array(self._addr["input"], self._shape)
        out = _array(self._addr["output"], list(self.get_tensor_shape("output")))
        out[...] = reference_output(x, out.shape[1])
        self._batches_run.append(self._shape[0])
        return True


def reference_output(x: np.ndarray, classes: int) -> np.ndarray:
    """The stand-in engine's function: (N, 3, H, W) -> (N, classes, H/4, W/4), out[:, c] = x[:, c % 3, ::4, ::4] + c."""
    return np.stack([x[:, c % 3, ::4, ::4] + c for c in range(classes)], axis=1)


def _array(address: int, shape) -> np.ndarray:
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).reshape(shape)


class Engine(StandIn):
    MIRRORS = "ICudaEngine"
    LAST_CONTEXT: Context | None = None

    def __init__(self, spec):
        self._spec = spec
        object.__setattr__(self, "num_io_tensors", 2)

    def get_tensor_name(self, index):
        return ["input", "output"][index]

    def get_tensor_mode(self, name):
        modes = StandIn.REAL.TensorIOMode
        return modes.INPUT if name == "input" else modes.OUTPUT

    def get_tensor_shape(self, name):
        lo, _, hi = self._spec["profile"]
        if name == "input":
            return tuple(a if a == b else -1 for a, b in zip(lo, hi))
        return tuple(self._spec["output"])

    def get_tensor_dtype(self, name):
        return StandIn.REAL.float32

    def get_tensor_profile_shape(self, name, profile_index):
        return [tuple(s) for s in self._spec["profile"]]

    def create_execution_context(self):
        Engine.LAST_CONTEXT = Context(self)
        return Engine.LAST_CONTEXT


class Runtime(StandIn):
    MIRRORS = "Runtime"

    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, serialized_engine):
        return Engine(json.loads(bytes(serialized_engine)))


def checked_class(real, cls):
    """A constructor whose arguments are checked against the real class's ``__init__`` signatures."""

    def construct(*args, **kwargs):
        check_call(real, cls.MIRRORS, getattr(real, cls.MIRRORS).__init__, "__init__", args, kwargs)
        return cls(*args, **kwargs)

    return construct


def make_module(real):
    """A ``tensorrt`` module: the real bindings, with Builder/Runtime/OnnxParser replaced by checked stand-ins."""
    import types

    StandIn.REAL = real
    module = types.ModuleType("tensorrt")
    module.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
    module.__version__ = real.__version__
    for cls in (Builder, Runtime, OnnxParser):
        setattr(module, cls.MIRRORS, checked_class(real, cls))
    return module
