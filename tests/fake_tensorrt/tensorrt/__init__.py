"""Fake ``tensorrt`` (see ../README.md): records calls, parses ONNX inputs with the onnx package, builds nothing.

Public names mirror the real API and are checked against tensorrt-stubs; private names control the fake.
"""

from __future__ import annotations

from typing import Any

__version__ = "10.13.0.35"

_calls: list[tuple[Any, ...]] = []
_state: dict[str, Any] = {"parse_ok": True, "build_ok": True}


def _record(*call: Any) -> None:
    _calls.append(call)


def _configure(version: str, parse_ok: bool = True, build_ok: bool = True) -> None:
    """Act as TensorRT ``version``: 11.x has no weak-typing flags and no platform_has_fast_fp16."""
    global __version__
    __version__ = version
    _calls.clear()
    _state.update(parse_ok=parse_ok, build_ok=build_ok)
    eleven = int(version.split(".")[0]) >= 11
    for name, value in (("FP16", 0), ("INT8", 1)):
        if eleven and hasattr(BuilderFlag, name):
            delattr(BuilderFlag, name)
        elif not eleven:
            setattr(BuilderFlag, name, value)
    if eleven and hasattr(Builder, "platform_has_fast_fp16"):
        delattr(Builder, "platform_has_fast_fp16")
    elif not eleven:
        Builder.platform_has_fast_fp16 = property(lambda self: True)


class ILogger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)


class Logger(ILogger):
    def __init__(self, min_severity: int = ILogger.WARNING) -> None:
        self.min_severity = min_severity


class NetworkDefinitionCreationFlag:
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag:
    FP16 = 0
    INT8 = 1
    TF32 = 6


class MemoryPoolType:
    WORKSPACE = 0


class DataType:
    FLOAT, HALF, INT8, INT32, BOOL, UINT8 = 0, 1, 2, 3, 4, 5
    INT64 = 8


class IHostMemory:
    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def nbytes(self) -> int:
        return len(self._data)

    def __bytes__(self) -> bytes:
        return self._data


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self._flags = flags
        self._inputs: list[ITensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]


class ParserError:
    def __init__(self, text: str) -> None:
        self._text = text

    def desc(self) -> str:
        return self._text

    def __str__(self) -> str:
        return self._text


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self._network = network
        self._errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        import onnx

        _record("parse_from_file", model)
        if not _state["parse_ok"]:
            self._errors.append(ParserError("In node 0 (importModel): UNSUPPORTED_NODE: fake parse failure"))
            return False
        graph = onnx.load(model).graph
        for v in graph.input:
            shape = tuple(d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim)
            self._network._inputs.append(ITensor(v.name, shape))
        return True


class IOptimizationProfile:
    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        _record("set_shape", input, tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._data + b"+timings")


class IBuilderConfig:
    def __init__(self) -> None:
        self._cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: int, pool_size: int) -> None:
        _record("set_memory_pool_limit", pool, pool_size)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        _record("add_optimization_profile")
        return 0

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        _record("create_timing_cache", bytes(serialized_timing_cache))
        return ITimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        _record("set_timing_cache", ignore_mismatch)
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        assert self._cache is not None, "get_timing_cache before set_timing_cache"
        return self._cache

    def set_flag(self, flag: int) -> None:
        _record("set_flag", flag)


class Builder:
    def __init__(self, logger: ILogger) -> None:
        _record("Builder")

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        _record("create_network", flags)
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        _record("build_serialized_network", network._flags)
        return IHostMemory(b"fake-engine " + __version__.encode()) if _state["build_ok"] else None

    @property
    def platform_has_fast_fp16(self) -> bool:
        return True


class ICudaEngine:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext()

    def get_tensor_dtype(self, name: str) -> int:
        return DataType.FLOAT


class IExecutionContext:
    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return ()

    def execute_async_v3(self, stream_handle: int) -> bool:
        return True


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        _record("Runtime")

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        _record("deserialize_cuda_engine", bytes(serialized_engine))
        return ICudaEngine(bytes(serialized_engine))
