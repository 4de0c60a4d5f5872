"""Loads a safetensors model the way model loaders that stream from S3 do (runai-model-streamer,
as vLLM uses it): the header first, then many concurrent ranged GETs cut at tensor boundaries,
each checked byte for byte against the local copy of the file.

usage: ranged_loader.py ENDPOINT BUCKET KEY LOCAL_FILE [THREADS] [RANGE_MIB]
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Ranges group whole tensors up
to RANGE_MIB (default 8) and cut larger tensors into RANGE_MIB pieces from the tensor's start;
THREADS (default 120) requests are in flight at once, each on its own connection. Prints one
JSON line: bytes, seconds, ranges, and the time to first byte of the ranged GETs (p50, p99).
"""
import concurrent.futures
import json
import struct
import sys
import time

import boto3
import botocore.config
import urllib3


def tensor_ranges(path, range_bytes):
    with open(path, "rb") as file:
        header_len = struct.unpack("<Q", file.read(8))[0]
        header = json.loads(file.read(header_len))
    data_start = 8 + header_len
    spans = sorted(tuple(info["data_offsets"]) for name, info in header.items() if name != "__metadata__")
    ranges, start, end = [], None, None
    for begin, stop in spans:
        if start is not None and stop - start > range_bytes:
            ranges.append((start, end))
            start = None
        if start is None:
            start = begin
        end = stop
        while end - start > range_bytes:
            ranges.append((start, start + range_bytes))
            start += range_bytes
    if start is not None and end > start:
        ranges.append((start, end))
    return [(data_start + begin, data_start + stop) for begin, stop in ranges], data_start


def main():
    endpoint, bucket, key, local = sys.argv[1:5]
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 120
    range_bytes = int(float(sys.argv[6]) * (1 << 20)) if len(sys.argv) > 6 else 8 << 20
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      config=botocore.config.Config(signature_version="s3v4"))
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)
    ranges, data_start = tensor_ranges(local, range_bytes)
    with open(local, "rb") as file:
        expected = file.read()
    pool = urllib3.PoolManager(maxsize=threads, block=True, retries=False)

    def fetch(span):
        begin, end = span
        sent = time.monotonic()
        response = pool.request("GET", url, headers={"Range": f"bytes={begin}-{end - 1}"}, preload_content=False)
        first = response.read(1)
        first_byte = time.monotonic() - sent
        body = first + response.read()
        response.release_conn()
        if response.status != 206 or body != expected[begin:end]:
            detail = body[:300] if response.status != 206 else f"{len(body)} bytes, not the file's"
            raise AssertionError(f"range {begin}-{end}: status {response.status}: {detail}")
        return first_byte

    started = time.monotonic()
    header = pool.request("GET", url, headers={"Range": f"bytes=0-{data_start - 1}"})
    assert header.status == 206 and header.data == expected[:data_start], "the header range differs"
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as executor:
        waits = sorted(executor.map(fetch, ranges))
    seconds = time.monotonic() - started
    percentile = lambda share: waits[min(len(waits) - 1, int(share * len(waits)))]
    print(json.dumps({"bytes": sum(end - begin for begin, end in ranges), "seconds": round(seconds, 3), "ranges": len(ranges),
                      "ttfb_p50": round(percentile(0.5), 3), "ttfb_p99": round(percentile(0.99), 3)}))


if __name__ == "__main__":
    main()
