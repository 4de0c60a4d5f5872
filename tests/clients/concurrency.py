"""Concurrency checks with boto3 threads against a live gateway.

usage: concurrency.py ENDPOINT BIG_MODEL FILE...
1. eight PUTs of different files to one key at once: the key then holds exactly one of them,
   with that file's ETag;
2. PUTs racing DELETEs and GETs on one key: every GET returns one whole file;
3. GETs of a multipart upload while the packer re-encodes it and GC collects its parts: every
   GET that succeeds returns the whole file.
Prints JSON counts; exits non-zero on any wrong answer.
"""
import hashlib
import json
import sys
import threading

import boto3
import botocore
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def main():
    endpoint, big, *files = sys.argv[1:]
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)
    s3.create_bucket(Bucket="races")
    payloads = [open(f, "rb").read() for f in files]
    digests = {hashlib.sha256(p).hexdigest(): p for p in payloads}
    wrong, counts = [], {"gets": 0, "failed_gets": 0, "deletes": 0, "puts": 0}

    threads = [threading.Thread(target=s3.put_object, kwargs={"Bucket": "races", "Key": "same", "Body": payloads[i % len(payloads)]})
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    body = s3.get_object(Bucket="races", Key="same")["Body"].read()
    etag = s3.head_object(Bucket="races", Key="same")["ETag"].strip('"')
    if hashlib.sha256(body).hexdigest() not in digests or etag != hashlib.md5(body).hexdigest():
        wrong.append("concurrent PUTs left a mixed object or a wrong ETag")

    stop = threading.Event()

    def putter():
        i = 0
        while not stop.is_set():
            s3.put_object(Bucket="races", Key="race", Body=payloads[i % len(payloads)])
            counts["puts"] += 1
            i += 1

    def deleter():
        while not stop.is_set():
            s3.delete_object(Bucket="races", Key="race")
            counts["deletes"] += 1

    def getter(key, expected, rounds):
        for _ in range(rounds):
            try:
                data = s3.get_object(Bucket="races", Key=key)["Body"].read()
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                counts["failed_gets"] += 1
                continue
            counts["gets"] += 1
            if hashlib.sha256(data).hexdigest() not in expected:
                wrong.append(f"GET of {key} returned {len(data)} bytes matching no whole upload")

    workers = [threading.Thread(target=putter), threading.Thread(target=deleter)]
    for w in workers:
        w.start()
    getter("race", digests, 30)
    stop.set()
    for w in workers:
        w.join()

    big_bytes = open(big, "rb").read()
    s3.upload_file(big, "races", "packed", Config=TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20))
    readers = [threading.Thread(target=getter, args=("packed", {hashlib.sha256(big_bytes).hexdigest()}, 6)) for _ in range(3)]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    print(json.dumps(counts))
    if wrong:
        raise SystemExit("\n".join(wrong))


if __name__ == "__main__":
    main()
