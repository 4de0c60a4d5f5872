"""Writes GGUF files made from the corpus weights with the `gguf` package (what llama.cpp's tools
use), reading safetensors with numpy alone (no torch).

usage: gguf_files.py OUT_DIR F32_SAFETENSORS F16_SAFETENSORS BF16_SAFETENSORS

Writes OUT_DIR/{f32,f16,bf16,q8_0,q4_0}.gguf from the same-precision files (so that their
tensor bytes are those of the safetensors file) and f16-template.gguf, the F16 file with another
chat template.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf

NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32}
TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
EDITED = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"


def read_safetensors(path):
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    base = 8 + header_len
    tensors = {}
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        array = np.frombuffer(data[base + start : base + end], dtype=NUMPY[info["dtype"]])
        tensors[name] = (info["dtype"], array.reshape(info["shape"]))
    return tensors


def write(path, tensors, template, convert):
    writer = gguf.GGUFWriter(str(path), arch="bert")
    writer.add_name("minilm-l6")
    writer.add_chat_template(template)
    writer.add_token_list(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world"])
    for name, (dtype, array) in tensors.items():
        array, raw_dtype = convert(dtype, array)
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def as_is(dtype, array):
    return array, gguf.GGMLQuantizationType.BF16 if dtype == "BF16" else None


def quantized(qtype):
    def convert(dtype, array):
        if dtype not in ("F32", "F16"):
            return as_is(dtype, array)
        floats = array.astype(np.float32)
        if floats.ndim < 2 or floats.shape[-1] % 32:
            return floats, None
        return gguf.quants.quantize(floats, qtype), qtype
    return convert


def main():
    out, f32, f16, bf16 = Path(sys.argv[1]), *sys.argv[2:5]
    out.mkdir(parents=True, exist_ok=True)
    full = read_safetensors(f32)
    write(out / "f32.gguf", full, TEMPLATE, as_is)
    write(out / "f16.gguf", read_safetensors(f16), TEMPLATE, as_is)
    write(out / "f16-template.gguf", read_safetensors(f16), EDITED, as_is)
    write(out / "bf16.gguf", read_safetensors(bf16), TEMPLATE, as_is)
    write(out / "q8_0.gguf", full, TEMPLATE, quantized(gguf.GGMLQuantizationType.Q8_0))
    write(out / "q4_0.gguf", full, TEMPLATE, quantized(gguf.GGMLQuantizationType.Q4_0))


if __name__ == "__main__":
    main()
