"""Writes through a gateway whose upstream fails a share of its calls, with boto3's default
retries (nothing configured): every write must complete, because the gateway answers upstream
failures with a retryable 5xx, never with a 4xx.

usage: retried_writes.py ENDPOINT BUCKET COUNT FILE...
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Puts COUNT objects (key wN,
the files in turn), then prints one JSON line: writes, completed, failed (with their error
codes), and the retries boto3 made; exits 1 if any write failed.
"""
import json
import sys

import boto3
import botocore


def main():
    endpoint, bucket, count, *files = sys.argv[1:]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    retries = {"count": 0}

    def count_retries(attempts=None, **_):
        if attempts and attempts > 1:
            retries["count"] += 1

    s3.meta.events.register("needs-retry.s3", count_retries)
    s3.create_bucket(Bucket=bucket)
    payloads = [open(path, "rb").read() for path in files]
    failed = []
    for number in range(int(count)):
        try:
            s3.put_object(Bucket=bucket, Key=f"w{number}", Body=payloads[number % len(payloads)])
        except botocore.exceptions.ClientError as error:
            failed.append(error.response.get("Error", {}).get("Code", "?"))
        except botocore.exceptions.BotoCoreError as error:
            failed.append(type(error).__name__)
    print(json.dumps({"writes": int(count), "completed": int(count) - len(failed), "failed": failed, "retries": retries["count"]}))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
