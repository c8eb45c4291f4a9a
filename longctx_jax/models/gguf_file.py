"""A fast reader for GGUF files (llama.cpp's checkpoint format), dequantizing with `gguf`.

`gguf.GGUFReader` builds a NumPy memmap view for every metadata element, which takes tens of
seconds for a 49k-token vocabulary; this reader parses the same layout in one pass over the
header bytes and leaves tensor data memory-mapped. The types, block sizes and
dequantization all come from the `gguf` package (`gguf.constants`, `gguf.quants`);
`tests/models_llama_test.py` checks the result against `GGUFReader` field by field.

Layout (little-endian, version 2 or 3):
    "GGUF" u32 version, u64 tensor_count, u64 kv_count,
    kv_count x (string key, u32 value_type, value), where string = u64 length + UTF-8 bytes
    and an array = u32 element type, u64 count, elements;
    tensor_count x (string name, u32 n_dims, n_dims x u64 dims (fastest first), u32 type,
    u64 offset); then tensor data from the next multiple of `general.alignment` (32).
"""

import dataclasses
import os
import struct
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

# Quantization types the loaders accept (each checked against gguf.quants in the tests).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")

_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """One tensor: `shape` in NumPy order (slowest axis first), raw bytes `[rows, row_bytes]`."""

    name: str
    type_name: str
    shape: tuple[int, ...]
    data: np.ndarray

    def dequantize(self) -> np.ndarray:
        """Float32 values `shape` via `gguf.quants.dequantize`.

        Raises:
          ValueError: for a type outside `SUPPORTED_TYPES`.
        """
        import gguf.quants

        if self.type_name not in SUPPORTED_TYPES:
            raise ValueError(
                f"tensor {self.name!r} has unsupported GGUF quantization type {self.type_name}; "
                f"valid: {SUPPORTED_TYPES}"
            )
        values = gguf.quants.dequantize(self.data, GGMLQuantizationType[self.type_name])
        return np.asarray(values, np.float32).reshape(self.shape)


class _Cursor:
    def __init__(self, buf: memoryview, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise ValueError(f"GGUF file {self.path!r} is truncated (header ends early at byte {self.pos})")

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self.need(n)
        value = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return value

    def value(self, vtype: int) -> Any:
        vtype = GGUFValueType(vtype)
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype, count = GGUFValueType(self.scalar("<I")), self.scalar("<Q")
            if etype in (GGUFValueType.STRING, GGUFValueType.ARRAY):
                return [self.value(etype) for _ in range(count)]
            fmt = _SCALARS[etype]
            size = struct.calcsize(fmt) * count
            self.need(size)
            values = np.frombuffer(self.buf, np.dtype(fmt), count, self.pos).tolist()
            self.pos += size
            return values
        return self.scalar(_SCALARS[vtype])


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, GGUFTensor]]:
    """Metadata (Python values) and tensors (memory-mapped) of a GGUF file.

    Raises:
      ValueError: the file is missing, not GGUF, or truncated (naming the first cut tensor).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"GGUF file not found: {path!r}")
    raw = np.memmap(path, np.uint8, mode="r") if os.path.getsize(path) else np.zeros(0, np.uint8)
    cur = _Cursor(memoryview(raw), path)
    cur.need(4)
    if bytes(cur.buf[:4]) != b"GGUF":
        raise ValueError(f"{path!r} is not a GGUF file (magic {bytes(cur.buf[:4])!r})")
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version} in {path!r}; valid: 2, 3 (little-endian)")
    tensor_count, kv_count = cur.scalar("<Q"), cur.scalar("<Q")
    metadata = {}
    for _ in range(kv_count):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    infos = []
    for _ in range(tensor_count):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        infos.append((name, dims, GGMLQuantizationType(cur.scalar("<I")), cur.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", 32))
    start = -(-cur.pos // alignment) * alignment
    tensors = {}
    for name, dims, qtype, offset in infos:
        block, type_size = GGML_QUANT_SIZES[qtype]
        shape = tuple(int(d) for d in reversed(dims))
        row = shape[-1] if shape else 1
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        row_bytes = row // block * type_size
        begin = start + offset
        if begin + rows * row_bytes > len(raw):
            raise ValueError(f"GGUF file {path!r} is truncated: tensor {name!r} runs past the end")
        data = raw[begin:begin + rows * row_bytes].reshape(rows, row_bytes)
        tensors[name] = GGUFTensor(name, qtype.name, shape, data)
    return metadata, tensors
