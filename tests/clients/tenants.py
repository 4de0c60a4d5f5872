"""Tenant isolation checks with boto3: tenant B tries every operation on tenant A's data.

usage: tenants.py ENDPOINT A_KEY A_SECRET B_KEY B_SECRET
A owns bucket "private" with object "secret"; both own a bucket named "shared-name". Every
attempt by B must fail with the code AWS gives for something that does not exist in B's
account, or succeed only on B's own namespace, and A's data must be untouched.
"""
import sys
import urllib.error
import urllib.request

import boto3
import botocore


def client(endpoint, key, secret):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)


def code(call):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]
    return "succeeded"


def main():
    endpoint, a_key, a_secret, b_key, b_secret = sys.argv[1:]
    a, b = client(endpoint, a_key, a_secret), client(endpoint, b_key, b_secret)
    a.create_bucket(Bucket="private")
    a.put_object(Bucket="private", Key="secret", Body=b"tenant A's bytes")
    a.create_bucket(Bucket="shared-name")
    a.put_object(Bucket="shared-name", Key="k", Body=b"A")
    b.create_bucket(Bucket="shared-name")
    b.put_object(Bucket="shared-name", Key="k", Body=b"B")
    upload = a.create_multipart_upload(Bucket="private", Key="mp")["UploadId"]
    own_upload = b.create_multipart_upload(Bucket="shared-name", Key="mine")["UploadId"]

    attempts = {
        "ListBuckets": (lambda: [x["Name"] for x in b.list_buckets()["Buckets"]], ["shared-name"]),
        "HeadBucket": (lambda: code(lambda: b.head_bucket(Bucket="private")), "404"),
        "ListObjectsV2": (lambda: code(lambda: b.list_objects_v2(Bucket="private")), "NoSuchBucket"),
        "GetObject": (lambda: code(lambda: b.get_object(Bucket="private", Key="secret")), "NoSuchBucket"),
        "HeadObject": (lambda: code(lambda: b.head_object(Bucket="private", Key="secret")), "404"),
        "PutObject": (lambda: code(lambda: b.put_object(Bucket="private", Key="secret", Body=b"x")), "NoSuchBucket"),
        "DeleteObject": (lambda: code(lambda: b.delete_object(Bucket="private", Key="secret")), "NoSuchBucket"),
        "DeleteObjects": (lambda: code(lambda: b.delete_objects(Bucket="private", Delete={"Objects": [{"Key": "secret"}]})), "NoSuchBucket"),
        "DeleteBucket": (lambda: code(lambda: b.delete_bucket(Bucket="private")), "NoSuchBucket"),
        "CopyObject from A": (lambda: code(lambda: b.copy_object(Bucket="shared-name", Key="stolen",
                                                                  CopySource={"Bucket": "private", "Key": "secret"})), "NoSuchBucket"),
        "same bucket name is B's own": (lambda: b.get_object(Bucket="shared-name", Key="k")["Body"].read(), b"B"),
        "UploadPart to A's upload": (lambda: code(lambda: b.upload_part(Bucket="private", Key="mp", UploadId=upload,
                                                                        PartNumber=1, Body=b"x")), "NoSuchBucket"),
        "UploadPart with A's upload id in B's bucket": (lambda: code(lambda: b.upload_part(Bucket="shared-name", Key="mp", UploadId=upload,
                                                                                           PartNumber=1, Body=b"x")), "NoSuchUpload"),
        "ListParts of A's upload": (lambda: code(lambda: b.list_parts(Bucket="shared-name", Key="mp", UploadId=upload)), "NoSuchUpload"),
        "AbortMultipartUpload of A's upload": (lambda: code(lambda: b.abort_multipart_upload(Bucket="shared-name", Key="mp", UploadId=upload)), "NoSuchUpload"),
        "ListMultipartUploads lists B's own upload only": (lambda: [u["UploadId"] for u in b.list_multipart_uploads(Bucket="shared-name").get("Uploads", [])], [own_upload]),
        "UploadPartCopy into A's upload": (lambda: code(lambda: b.upload_part_copy(
            Bucket="shared-name", Key="mp", UploadId=upload, PartNumber=1,
            CopySource={"Bucket": "private", "Key": "secret"})), "NoSuchUpload"),
        "UploadPartCopy from A's object into B's upload": (lambda: code(lambda: b.upload_part_copy(
            Bucket="shared-name", Key="mine", UploadId=own_upload, PartNumber=1,
            CopySource={"Bucket": "private", "Key": "secret"})), "NoSuchBucket"),
    }
    failures = []
    for name, (attempt, expected) in attempts.items():
        got = attempt()
        if got != expected:
            failures.append(f"{name}: expected {expected!r}, got {got!r}")
    url = b.generate_presigned_url("get_object", Params={"Bucket": "private", "Key": "secret"}, ExpiresIn=60)
    try:
        urllib.request.urlopen(url)
        failures.append("presigned GET by B of A's object succeeded")
    except urllib.error.HTTPError as error:
        if error.code != 404:
            failures.append(f"presigned GET by B: status {error.code}, expected 404")
    if a.get_object(Bucket="private", Key="secret")["Body"].read() != b"tenant A's bytes":
        failures.append("A's object changed")
    if a.get_object(Bucket="shared-name", Key="k")["Body"].read() != b"A":
        failures.append("A's same-named bucket changed")
    if [u["UploadId"] for u in a.list_multipart_uploads(Bucket="private").get("Uploads", [])] != [upload]:
        failures.append("A's upload was disturbed")
    if failures:
        raise SystemExit("\n".join(failures))
    print(f"{len(attempts) + 1} cross-tenant attempts refused; A's data untouched")


if __name__ == "__main__":
    main()
