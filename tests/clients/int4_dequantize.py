"""Fake-quantizes a BF16 safetensors file to int4 in groups and back to BF16, as loaders that
dequantize GPTQ- or AWQ-style checkpoints hold them in memory, with numpy alone (no torch).

usage: int4_dequantize.py BF16_SAFETENSORS OUT GROUP

Every 2-D weight is cut into groups of GROUP consecutive values; each group's scale is its
largest magnitude / 7 (float32), its values rint(w / scale) clipped to -8..7, times the scale in
float32, rounded to BF16 (nearest, ties to even). Every other tensor is kept as it is.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np


def to_bf16(values):
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def main(source, out, group):
    data = bytearray(Path(source).read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    body = 8 + header_len
    for info in header.values():
        if info["dtype"] != "BF16" or len(info["shape"]) != 2:
            continue
        start, end = (body + offset for offset in info["data_offsets"])
        weights = (np.frombuffer(bytes(data[start:end]), dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        groups = weights.reshape(-1, group)
        scales = (np.abs(groups).max(axis=1, keepdims=True) / np.float32(7)).astype(np.float32)
        scales[scales == 0] = np.float32(1)
        codes = np.clip(np.rint(groups / scales), -8, 7).astype(np.float32)
        data[start:end] = to_bf16(codes * scales).tobytes()
    Path(out).write_bytes(bytes(data))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
