"""DeleteBucket racing PUTs into the same bucket, against a live gateway (issue 12, item 2).

usage: bucket_race.py ENDPOINT [ROUNDS]
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. ROUNDS defaults to 20.

Each round creates bucket race-<n>, starts four threads that each PUT three objects of random
bytes (100 KB to 1 MB, distinct keys) as fast as they can, and after a random 0-50 ms sends one
DeleteBucket. AWS deletes only an empty bucket, so:
1. if DeleteBucket succeeded, no PUT into the bucket was acknowledged (an acknowledged PUT would
   have made it non-empty); the bucket, created again, lists empty: nothing comes back;
2. if DeleteBucket answered BucketNotEmpty, every acknowledged PUT reads back byte-identical;
3. no call is answered with a 5xx; a PUT may fail with NoSuchBucket, the delete only with
   BucketNotEmpty.
The racing calls are made without retries, so each outcome is the gateway's first answer.
Prints a JSON summary; exits non-zero listing the violations.
"""
import json
import os
import random
import sys
import threading
import time

import boto3
import botocore
from botocore.config import Config

from s3_semantics import empty_and_delete

THREADS = 4
PUTS_PER_THREAD = 3
MIN_SIZE, MAX_SIZE = 100_000, 1_000_000
MAX_DELAY = 0.050


def outcome(call):
    """("ok", None, response) or ("error", code, status) for one call; a transport failure
    is ("error", its class name, None)."""
    try:
        return "ok", None, call()
    except botocore.exceptions.ClientError as error:
        return "error", error.response["Error"]["Code"], error.response["ResponseMetadata"].get("HTTPStatusCode")
    except botocore.exceptions.BotoCoreError as error:
        return "error", type(error).__name__, None


def race(racing, bucket):
    """One round's racing calls: the PUTs of every thread and one DeleteBucket.
    Returns (acknowledged {key: bytes}, put failures [(key, code, status)], delete outcome)."""
    acknowledged, failures, lock = {}, [], threading.Lock()
    start = threading.Barrier(THREADS + 1)
    bodies = {f"t{t}/o{i}": os.urandom(random.randint(MIN_SIZE, MAX_SIZE))
              for t in range(THREADS) for i in range(PUTS_PER_THREAD)}

    def putter(t):
        start.wait()
        for i in range(PUTS_PER_THREAD):
            key = f"t{t}/o{i}"
            kind, code, status = outcome(lambda: racing.put_object(Bucket=bucket, Key=key, Body=bodies[key]))
            with lock:
                if kind == "ok":
                    acknowledged[key] = bodies[key]
                else:
                    failures.append((key, code, status))

    deleted = {}

    def deleter(delay):
        start.wait()
        time.sleep(delay)
        deleted["outcome"] = outcome(lambda: racing.delete_bucket(Bucket=bucket))

    threads = [threading.Thread(target=putter, args=(t,)) for t in range(THREADS)]
    threads.append(threading.Thread(target=deleter, args=(random.uniform(0, MAX_DELAY),)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return acknowledged, failures, deleted["outcome"]


def check_round(s3, bucket, acknowledged, failures, delete, violations, summary):
    kind, code, status = delete
    for key, put_code, put_status in failures:
        if put_status is None or put_status >= 500:
            violations.append(f"{bucket}: PUT {key} answered {put_code} (status {put_status})")
        elif put_code != "NoSuchBucket":
            violations.append(f"{bucket}: PUT {key} failed with {put_code}, expected success or NoSuchBucket")
    if kind == "error" and (status is None or status >= 500):
        violations.append(f"{bucket}: DeleteBucket answered {code} (status {status})")

    if kind == "ok":
        summary["deletes_succeeded"] += 1
        if acknowledged:
            violations.append(f"{bucket}: DeleteBucket succeeded, yet {len(acknowledged)} PUT(s) into it were "
                              f"acknowledged and are lost: {sorted(acknowledged)}")
        s3.create_bucket(Bucket=bucket)
        listed = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        if listed:
            violations.append(f"{bucket}: created again after DeleteBucket succeeded, it lists {len(listed)} "
                              f"resurrected object(s): {sorted(listed)}")
    elif code == "BucketNotEmpty":
        summary["deletes_refused"] += 1
        for key, body in sorted(acknowledged.items()):
            got = outcome(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            if got[0] != "ok":
                violations.append(f"{bucket}: acknowledged PUT {key} cannot be read: {got[1]} (status {got[2]})")
            elif got[2] != body:
                violations.append(f"{bucket}: acknowledged PUT {key} reads back {len(got[2])} bytes, not its "
                                  f"{len(body)} bytes")
    else:
        violations.append(f"{bucket}: DeleteBucket answered {code} (status {status}), expected success or BucketNotEmpty")


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    endpoint = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) == 3 else 20
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      config=Config(retries={"max_attempts": 3, "mode": "standard"}))
    racing = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          config=Config(retries={"total_max_attempts": 1}, max_pool_connections=THREADS + 4))
    violations = []
    summary = {"rounds": rounds, "deletes_succeeded": 0, "deletes_refused": 0, "acknowledged_puts": 0,
               "failed_puts": 0}
    for n in range(rounds):
        bucket = f"race-{n}"
        empty_and_delete(s3, bucket)
        s3.create_bucket(Bucket=bucket)
        acknowledged, failures, delete = race(racing, bucket)
        summary["acknowledged_puts"] += len(acknowledged)
        summary["failed_puts"] += len(failures)
        check_round(s3, bucket, acknowledged, failures, delete, violations, summary)
        empty_and_delete(s3, bucket)
    summary["violations"] = len(violations)
    print(json.dumps(summary))
    if violations:
        raise SystemExit(f"bucket_race: {len(violations)} violation(s):\n" + "\n".join(violations))
    print("bucket_race: all checks passed")


if __name__ == "__main__":
    main()
