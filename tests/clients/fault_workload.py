"""A concurrent upload/download workload for the upstream-fault test, with boto3.

usage: fault_workload.py ENDPOINT load STATE FILE...   (4 threads of puts and gets; writes STATE)
       fault_workload.py ENDPOINT verify STATE         (reads every key back)
Prints JSON counts. A GET that succeeds must return bytes some write of that key sent (the last
acknowledged one, or one whose answer was an error); anything else counts as corrupt. In
verify, a key whose acknowledged bytes cannot be read back counts as lost.
"""
import hashlib
import json
import random
import sys
import threading

import boto3
import botocore
from botocore.config import Config


def main():
    endpoint, mode, state_path, *files = sys.argv[1:]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      config=Config(retries={"max_attempts": 6, "mode": "standard"}))
    if mode == "load":
        payloads = [open(f, "rb").read() for f in files]
        try:
            s3.create_bucket(Bucket="faults")
        except botocore.exceptions.ClientError:
            pass
        counts = {"puts": 0, "acknowledged": 0, "failed_puts": 0, "gets": 0, "good_gets": 0, "failed_gets": 0, "corrupt_reads": 0}
        possible, acknowledged = {}, {}
        lock = threading.Lock()

        def worker(thread):
            rng = random.Random(thread)
            for _ in range(14):
                key = f"t{thread}-k{rng.randrange(3)}"
                if rng.random() < 0.6 or key not in possible:
                    body = payloads[rng.randrange(len(payloads))]
                    digest = hashlib.sha256(body).hexdigest()
                    with lock:
                        counts["puts"] += 1
                        possible.setdefault(key, set()).add(digest)
                    try:
                        s3.put_object(Bucket="faults", Key=key, Body=body)
                        with lock:
                            counts["acknowledged"] += 1
                            acknowledged[key] = digest
                            possible[key] = {digest}
                    except botocore.exceptions.ClientError:
                        with lock:
                            counts["failed_puts"] += 1
                else:
                    with lock:
                        counts["gets"] += 1
                    try:
                        body = s3.get_object(Bucket="faults", Key=key)["Body"].read()
                    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                        with lock:
                            counts["failed_gets"] += 1
                        continue
                    with lock:
                        if hashlib.sha256(body).hexdigest() in possible[key]:
                            counts["good_gets"] += 1
                        else:
                            counts["corrupt_reads"] += 1

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with open(state_path, "w") as handle:
            json.dump({"possible": {k: sorted(v) for k, v in possible.items()}, "acknowledged": acknowledged}, handle)
        print(json.dumps(counts))
    else:
        state = json.load(open(state_path))
        counts = {"keys": 0, "lost": 0, "corrupt_reads": 0}
        for key, digests in state["possible"].items():
            counts["keys"] += 1
            try:
                body = s3.get_object(Bucket="faults", Key=key)["Body"].read()
            except botocore.exceptions.ClientError:
                counts["lost"] += key in state["acknowledged"]
                continue
            digest = hashlib.sha256(body).hexdigest()
            if digest not in digests:
                counts["corrupt_reads"] += 1
            elif key in state["acknowledged"] and digest != state["acknowledged"][key] and len(digests) == 1:
                counts["lost"] += 1
        print(json.dumps(counts))


if __name__ == "__main__":
    main()
