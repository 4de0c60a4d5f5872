"""Writes a safetensors file of many tiny tensors, whose JSON header is large: the worst case
for the memory a PUT's header costs (docs/benchmarks.md, issue 12).

usage: many_tensors.py COUNT OUT   (100000 tensors make a 13 MB header)
Prints the header's length and the data section's.
"""
import json
import struct
import sys


def main():
    count, out = int(sys.argv[1]), sys.argv[2]
    header = {}
    for i in range(count):
        name = f"model.layers.{i // 100}.block.{i % 100}.attention.query_key_value.weight"
        header[name] = {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8 * i, 8 * i + 8]}
    encoded = json.dumps(header).encode()
    with open(out, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        handle.write(bytes(8 * count))
    print(len(encoded), 8 * count)


if __name__ == "__main__":
    main()
