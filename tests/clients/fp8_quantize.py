"""Quantizes a BF16 safetensors file to F8 E4M3, as fp8 checkpoints are made, with numpy alone
(no torch): one scale per tensor (compressed-tensors' per-tensor scheme), or with BLOCK, one per
BLOCK x BLOCK block (DeepSeek-V3's scheme, `weight_scale_inv`).

usage: fp8_quantize.py BF16_SAFETENSORS OUT [BLOCK]

Every 2-D weight `<name>` becomes F8_E4M3 (each value divided by its scale = amax / 448 in
float32, rounded to the nearest E4M3 value, ties to even), with its scales beside it as the F32
tensor `<name>_scale` (a scalar, or one per block); every other tensor is kept as it is.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

# The non-negative finite E4M3 values, by code 0x00..0x7E (0x7F is NaN).
E4M3 = np.array(
    [(m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7) for e in range(16) for m in range(8)][:127]
)


def to_e4m3(values):
    """Codes of the float32 `values`, rounded to nearest (ties to the even code), saturating."""
    magnitude = np.minimum(np.abs(values.astype(np.float64)), 448.0)
    above = np.clip(np.searchsorted(E4M3, magnitude), 1, 126)
    below = above - 1
    to_below = magnitude - E4M3[below]
    to_above = E4M3[above] - magnitude
    pick_above = (to_above < to_below) | ((to_above == to_below) & (above % 2 == 0))
    codes = np.where(pick_above, above, below).astype(np.uint8)
    return codes | np.where(np.signbit(values), 0x80, 0).astype(np.uint8)


def block_scales(values, block):
    """The scale of every BLOCK x BLOCK block of the 2-D `values`, and one per element."""
    rows, cols = values.shape
    blocks = np.zeros(((rows + block - 1) // block, (cols + block - 1) // block), dtype=np.float32)
    for r in range(blocks.shape[0]):
        for c in range(blocks.shape[1]):
            part = values[r * block : (r + 1) * block, c * block : (c + 1) * block]
            blocks[r, c] = np.float32(np.abs(part).max() / np.float32(448.0))
    blocks[blocks == 0] = np.float32(1.0)
    return blocks, np.repeat(np.repeat(blocks, block, axis=0), block, axis=1)[:rows, :cols]


def main(source, out, block=None):
    data = Path(source).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    body = 8 + header_len
    tensors = []
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        raw = data[body + start : body + end]
        if info["dtype"] != "BF16" or len(info["shape"]) != 2:
            tensors.append((name, info["dtype"], info["shape"], raw))
            continue
        values = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        if block is None:
            scale = np.float32(np.abs(values).max() / np.float32(448.0))
            codes = to_e4m3(values / scale)
            scales, scale_shape = np.array([scale], dtype=np.float32), []
        else:
            scales, per_element = block_scales(values.reshape(info["shape"]), block)
            codes = to_e4m3((values.reshape(info["shape"]) / per_element).reshape(-1))
            scale_shape = list(scales.shape)
        tensors.append((name, "F8_E4M3", info["shape"], codes.tobytes()))
        tensors.append((name + "_scale", "F32", scale_shape, scales.astype(np.float32).tobytes()))
    offset = 0
    layout = {}
    for name, dtype, shape, raw in tensors:
        layout[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(layout, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    Path(out).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(raw for *_, raw in tensors))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
