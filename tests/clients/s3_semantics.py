"""S3 behaviour checks with boto3, run by the end-to-end tests against a live gateway.

usage: s3_semantics.py ENDPOINT
Each check names the AWS behaviour it expects; the first failure raises with its name.
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""
import hashlib
import sys
import urllib.request
import urllib.error

import boto3
import botocore
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest


def check(name, condition, detail=""):
    """A named check of the scripts that print each one: raises with its name if it fails."""
    if not condition:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok: {name}")


def error_code(call):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]
    raise AssertionError("expected an error, the call succeeded")


def main():
    endpoint = sys.argv[1]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="semantics")
    assert error_code(lambda: s3.head_bucket(Bucket="missing-bucket")) in ("404", "NoSuchBucket")
    assert "semantics" in [b["Name"] for b in s3.list_buckets()["Buckets"]]

    body = b"0123456789" * 1000
    md5 = hashlib.md5(body).hexdigest()
    put = s3.put_object(Bucket="semantics", Key="obj", Body=body, ContentType="text/plain",
                        Metadata={"owner": "tests"}, ChecksumAlgorithm="SHA256")
    assert put["ETag"].strip('"') == md5, "PutObject ETag is the MD5"
    head = s3.head_object(Bucket="semantics", Key="obj", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(body)
    assert head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"owner": "tests"}, head["Metadata"]
    assert head.get("ChecksumSHA256") == put.get("ChecksumSHA256"), "checksum mode returns the stored checksum"

    # conditional reads
    etag = head["ETag"]
    assert s3.get_object(Bucket="semantics", Key="obj", IfMatch=etag)["Body"].read() == body
    assert error_code(lambda: s3.get_object(Bucket="semantics", Key="obj", IfMatch='"0000"')) == "PreconditionFailed"
    assert error_code(lambda: s3.get_object(Bucket="semantics", Key="obj", IfNoneMatch=etag)) in ("304", "NotModified")
    assert s3.get_object(Bucket="semantics", Key="obj", Range="bytes=5-14")["Body"].read() == body[5:15]
    assert s3.get_object(Bucket="semantics", Key="obj", Range="bytes=-3")["Body"].read() == body[-3:]

    # copy keeps bytes, ETag and (by default) metadata; REPLACE replaces it
    s3.copy_object(Bucket="semantics", Key="copy", CopySource={"Bucket": "semantics", "Key": "obj"})
    copied = s3.head_object(Bucket="semantics", Key="copy")
    assert copied["ETag"] == etag and copied["Metadata"] == {"owner": "tests"}
    s3.copy_object(Bucket="semantics", Key="copy2", CopySource={"Bucket": "semantics", "Key": "obj"},
                   MetadataDirective="REPLACE", Metadata={"owner": "other"}, ContentType="application/x-test")
    replaced = s3.head_object(Bucket="semantics", Key="copy2")
    assert replaced["Metadata"] == {"owner": "other"} and replaced["ContentType"] == "application/x-test"
    assert error_code(lambda: s3.copy_object(Bucket="semantics", Key="c3",
                                             CopySource={"Bucket": "semantics", "Key": "absent"})) == "NoSuchKey"

    # multipart: ETag form, partNumber reads, ListParts, ListMultipartUploads, abort
    part1, part2 = b"a" * (5 << 20), b"b" * 1234
    upload = s3.create_multipart_upload(Bucket="semantics", Key="mp", Metadata={"kind": "multipart"})
    uid = upload["UploadId"]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="semantics").get("Uploads", [])] == [uid]
    e2 = s3.upload_part(Bucket="semantics", Key="mp", UploadId=uid, PartNumber=2, Body=part2)["ETag"]
    e1 = s3.upload_part(Bucket="semantics", Key="mp", UploadId=uid, PartNumber=1, Body=part1)["ETag"]
    parts = s3.list_parts(Bucket="semantics", Key="mp", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, len(part1)), (2, len(part2))]
    assert error_code(lambda: s3.complete_multipart_upload(
        Bucket="semantics", Key="mp", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})) == "InvalidPartOrder"
    done = s3.complete_multipart_upload(Bucket="semantics", Key="mp", UploadId=uid,
                                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    digests = hashlib.md5(hashlib.md5(part1).digest() + hashlib.md5(part2).digest()).hexdigest()
    assert done["ETag"].strip('"') == f"{digests}-2", done["ETag"]
    got = s3.get_object(Bucket="semantics", Key="mp", PartNumber=2)
    assert got["Body"].read() == part2 and got["PartsCount"] == 2
    assert s3.head_object(Bucket="semantics", Key="mp")["Metadata"] == {"kind": "multipart"}
    assert error_code(lambda: s3.list_parts(Bucket="semantics", Key="mp", UploadId=uid)) == "NoSuchUpload"
    small = s3.create_multipart_upload(Bucket="semantics", Key="small")["UploadId"]
    s1 = s3.upload_part(Bucket="semantics", Key="small", UploadId=small, PartNumber=1, Body=b"x")["ETag"]
    s2 = s3.upload_part(Bucket="semantics", Key="small", UploadId=small, PartNumber=2, Body=b"y")["ETag"]
    assert error_code(lambda: s3.complete_multipart_upload(
        Bucket="semantics", Key="small", UploadId=small,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": s1}, {"PartNumber": 2, "ETag": s2}]})) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket="semantics", Key="small", UploadId=small)
    assert error_code(lambda: s3.upload_part(Bucket="semantics", Key="small", UploadId=small,
                                             PartNumber=3, Body=b"z")) == "NoSuchUpload"

    # presigned URLs work; a tampered one does not
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "semantics", "Key": "obj"}, ExpiresIn=300)
    assert urllib.request.urlopen(url).read() == body
    try:
        urllib.request.urlopen(url.replace("Key=obj", "Key=copy").replace("/obj?", "/copy?"))
        raise AssertionError("a presigned URL for another key was accepted")
    except urllib.error.HTTPError as error:
        assert error.code == 403, error.code

    # virtual-host style addressing (Host: bucket.localhost), as the Rust and JS SDKs default to;
    # signed by hand because *.localhost does not resolve here
    port = endpoint.rsplit(":", 1)[1]
    request = AWSRequest(method="GET", url=f"{endpoint}/obj", headers={"host": f"semantics.localhost:{port}"})
    S3SigV4Auth(boto3.Session().get_credentials(), "s3", "us-east-1").add_auth(request)
    prepared = urllib.request.Request(request.url, headers=dict(request.headers.items()))
    assert urllib.request.urlopen(prepared).read() == body

    # keys S3 refuses; deletes
    assert error_code(lambda: s3.put_object(Bucket="semantics", Key="k" * 1025, Body=b"")) == "KeyTooLongError"
    assert error_code(lambda: s3.get_object(Bucket="semantics", Key="absent")) == "NoSuchKey"
    assert error_code(lambda: s3.delete_bucket(Bucket="semantics")) == "BucketNotEmpty"
    s3.delete_object(Bucket="semantics", Key="absent")
    deleted = s3.delete_objects(Bucket="semantics", Delete={"Objects": [{"Key": k} for k in ["obj", "copy", "copy2", "mp"]]})
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["copy", "copy2", "mp", "obj"]
    assert s3.list_objects_v2(Bucket="semantics")["KeyCount"] == 0
    versions = s3.list_object_versions(Bucket="semantics")
    assert versions.get("Versions", []) == []
    s3.delete_bucket(Bucket="semantics")
    assert error_code(lambda: s3.get_object(Bucket="semantics", Key="obj")) == "NoSuchBucket"
    print("all S3 semantics checks passed")


if __name__ == "__main__":
    main()
