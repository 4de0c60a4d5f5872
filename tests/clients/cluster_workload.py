"""A workload over several gateways sharing one upstream, and its check.

usage: cluster_workload.py run ENDPOINTS SECONDS SEED LOG PAYLOAD...
       cluster_workload.py check ENDPOINTS LOG PAYLOAD...

ENDPOINTS is a comma-separated list. `run` sends, from four threads, PUTs (single and, for
payloads over 8 MiB, multipart), overwrites and deletes of a few keys of bucket `cluster` to
random gateways for SECONDS seconds, and appends one JSON line per request to LOG: key,
payload index (or null for a delete), start and end times, and whether it was acknowledged.
Gateways may be killed meanwhile: a request that fails is logged unacknowledged.

`check` reads every key through every gateway and prints one line per key. A key may hold
what any request of the log left, unless an acknowledged request on that key started after
that request had ended (the later one then replaced it); an unacknowledged request may or
may not have happened. It exits 1 if a gateway shows a state no order of the requests allows, or if two gateways
show different states.
"""
import hashlib
import json
import random
import sys
import threading
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

BUCKET = "cluster"
KEYS = [f"k{n}" for n in range(6)]


def client(endpoint):
    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=60)
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)


def run(endpoints, seconds, seed, log_path, payloads):
    clients = [client(endpoint) for endpoint in endpoints]
    deadline = time.time() + seconds
    lock = threading.Lock()
    multipart = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)

    def worker(number):
        rng = random.Random(seed * 100 + number)
        while time.time() < deadline:
            key = rng.choice(KEYS)
            gateway = rng.randrange(len(clients))
            payload = None if rng.random() < 0.2 else rng.randrange(len(payloads))
            start = time.time()
            try:
                if payload is None:
                    clients[gateway].delete_object(Bucket=BUCKET, Key=key)
                else:
                    clients[gateway].upload_file(payloads[payload], BUCKET, key, Config=multipart)
                acknowledged = True
            except Exception:  # a killed gateway: the request's outcome is unknown
                acknowledged = False
                time.sleep(0.2)
            entry = {"key": key, "payload": payload, "start": start, "end": time.time(), "acknowledged": acknowledged,
                     "gateway": gateway}
            with lock, open(log_path, "a") as log:
                log.write(json.dumps(entry) + "\n")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def allowed_states(requests):
    """The payload indexes (None: no object) the key may hold after `requests`."""
    acknowledged_starts = [r["start"] for r in requests if r["acknowledged"]]
    initial = {"payload": None, "end": float("-inf"), "acknowledged": True}
    allowed = set()
    for request in [initial] + requests:
        if not any(start > request["end"] for start in acknowledged_starts):
            allowed.add(request["payload"])
    return allowed


def check(endpoints, log_path, payloads):
    digests = [hashlib.md5(open(path, "rb").read()).hexdigest() for path in payloads]
    requests = {}
    with open(log_path) as log:
        for line in log:
            entry = json.loads(line)
            requests.setdefault(entry["key"], []).append(entry)
    failures = 0
    for key in KEYS:
        allowed = allowed_states(requests.get(key, []))
        seen = []
        for endpoint in endpoints:
            s3 = client(endpoint)
            try:
                body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                digest = hashlib.md5(body).hexdigest()
                state = digests.index(digest) if digest in digests else f"unknown bytes {digest}"
            except s3.exceptions.NoSuchKey:
                state = None
            except Exception as error:  # unreadable: a lost chunk or pack
                state = f"error {error}"
            seen.append(state)
        good = all(state in allowed for state in seen) and len({str(state) for state in seen}) == 1
        failures += not good
        print(f"{key}: {'ok' if good else 'VIOLATION'}: seen {seen}, allowed {sorted(allowed, key=str)}, "
              f"{sum(r['acknowledged'] for r in requests.get(key, []))} acknowledged requests")
    print(f"{sum(len(r) for r in requests.values())} requests, {failures} violations")
    sys.exit(1 if failures else 0)


def main():
    command, endpoints, *rest = sys.argv[1:]
    endpoints = endpoints.split(",")
    if command == "run":
        seconds, seed, log_path, *payloads = rest
        run(endpoints, float(seconds), int(seed), log_path, payloads)
    elif command == "check":
        log_path, *payloads = rest
        check(endpoints, log_path, payloads)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
