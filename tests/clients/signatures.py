"""Signature checks with botocore's own signer: expired presigned URLs, clock skew, and a
signed request replayed against another path are refused with AWS's codes.

usage: signatures.py ENDPOINT BUCKET KEY OTHER_KEY   (the bucket and both keys must exist)
"""
import datetime
import sys
import time
import urllib.error
import urllib.request
from unittest import mock

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest


def status_and_code(request):
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        body = error.read().decode()
        code = body.split("<Code>")[1].split("</Code>")[0] if "<Code>" in body else ""
        return error.code, code


def signed(url, at=None):
    request = AWSRequest(method="GET", url=url)
    credentials = boto3.Session().get_credentials()
    if at is None:
        S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=at):
            S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
    return request


def main():
    endpoint, bucket, key, other = sys.argv[1:]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    failures = []

    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=1)
    time.sleep(2.5)
    got = status_and_code(url)
    if got != (403, "AccessDenied"):
        failures.append(f"expired presigned URL: {got}, expected (403, 'AccessDenied')")

    fresh = signed(f"{endpoint}/{bucket}/{key}")
    got = status_and_code(urllib.request.Request(fresh.url, headers=dict(fresh.headers.items())))
    if got[0] != 200:
        failures.append(f"a fresh signed GET failed: {got}")

    past = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=20)
    skewed = signed(f"{endpoint}/{bucket}/{key}", at=past)
    got = status_and_code(urllib.request.Request(skewed.url, headers=dict(skewed.headers.items())))
    if got != (403, "RequestTimeTooSkewed"):
        failures.append(f"request signed 20 minutes ago: {got}, expected (403, 'RequestTimeTooSkewed')")

    replay = urllib.request.Request(f"{endpoint}/{bucket}/{other}", headers=dict(fresh.headers.items()))
    got = status_and_code(replay)
    if got != (403, "SignatureDoesNotMatch"):
        failures.append(f"signed request replayed on another key: {got}, expected (403, 'SignatureDoesNotMatch')")

    if failures:
        raise SystemExit("\n".join(failures))
    print("expired, skewed and replayed signatures refused")


if __name__ == "__main__":
    main()
