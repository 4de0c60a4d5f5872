"""The in-flight byte budget: while one upload holds all of it, a second upload waits, and
completes once the first does. Run against a gateway whose max_in_flight_bytes is 1 MiB.

usage: budget.py ENDPOINT
"""
import os
import socket
import sys
import threading
import time
import urllib.parse

import boto3

from hostile import signed_put_head

BUCKET = "budget"
HOLD_SECONDS = 2.0


def main():
    endpoint = sys.argv[1]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    first = os.urandom(2 << 20)
    second = os.urandom(1 << 20)
    parsed = urllib.parse.urlparse(endpoint)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as connection:
        connection.sendall(signed_put_head(endpoint, BUCKET, "first", len(first)) + first[: len(first) // 2])
        time.sleep(0.5)
        took = {}

        def upload_second():
            started = time.monotonic()
            s3.put_object(Bucket=BUCKET, Key="second", Body=second)
            took["seconds"] = time.monotonic() - started

        waiting = threading.Thread(target=upload_second)
        waiting.start()
        time.sleep(HOLD_SECONDS)
        assert "seconds" not in took, "the second upload did not wait for the budget"
        connection.sendall(first[len(first) // 2:])
        answer = connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        waiting.join(timeout=30)
    assert took["seconds"] >= HOLD_SECONDS, took
    assert s3.get_object(Bucket=BUCKET, Key="first")["Body"].read() == first
    assert s3.get_object(Bucket=BUCKET, Key="second")["Body"].read() == second
    print(f"budget: the second upload waited {took['seconds']:.1f} s")


if __name__ == "__main__":
    main()
