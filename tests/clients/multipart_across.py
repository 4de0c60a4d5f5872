"""A multipart upload spread over two gateways sharing one upstream, as a round-robin load
balancer would spread it: created on one, parts through both, listed and completed on the
other, read back through the first; and uploads aborted on the gateway that did not create them.

usage: multipart_across.py ENDPOINT_A ENDPOINT_B
Prints the id of an upload created on B and aborted on A that B was not asked about since.
"""
import hashlib
import os
import sys

import boto3
import botocore

BUCKET = "across"
PART = 5 << 20


def main():
    a, b = (boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1") for endpoint in sys.argv[1:3])
    a.create_bucket(Bucket=BUCKET)
    body = os.urandom(3 * PART + 12345)
    pieces = [body[i:i + PART] for i in range(0, len(body), PART)]
    upload = a.create_multipart_upload(Bucket=BUCKET, Key="big", ContentType="application/x-test")["UploadId"]
    listed_uploads = b.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in listed_uploads] == [("big", upload)], listed_uploads
    parts = []
    for number, piece in enumerate(pieces, start=1):
        gateway = a if number % 2 else b
        etag = gateway.upload_part(Bucket=BUCKET, Key="big", UploadId=upload, PartNumber=number, Body=piece)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    listed = b.list_parts(Bucket=BUCKET, Key="big", UploadId=upload)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2, 3, 4], listed
    done = b.complete_multipart_upload(Bucket=BUCKET, Key="big", UploadId=upload, MultipartUpload={"Parts": parts})
    digests = b"".join(hashlib.md5(piece).digest() for piece in pieces)
    expected_etag = f'"{hashlib.md5(digests).hexdigest()}-{len(pieces)}"'
    assert done["ETag"] == expected_etag, (done["ETag"], expected_etag)
    got = a.get_object(Bucket=BUCKET, Key="big")
    assert got["Body"].read() == body, "the object read through a differs"
    assert got["ETag"] == expected_etag and got["ContentType"] == "application/x-test", got

    aborted = b.create_multipart_upload(Bucket=BUCKET, Key="dropped")["UploadId"]
    b.upload_part(Bucket=BUCKET, Key="dropped", UploadId=aborted, PartNumber=1, Body=b"x" * 1000)
    a.abort_multipart_upload(Bucket=BUCKET, Key="dropped", UploadId=aborted)
    try:
        b.list_parts(Bucket=BUCKET, Key="dropped", UploadId=aborted)
        raise AssertionError("the aborted upload still lists its parts")
    except botocore.exceptions.ClientError as error:
        assert error.response["Error"]["Code"] == "NoSuchUpload", error.response
    quiet = b.create_multipart_upload(Bucket=BUCKET, Key="dropped-quietly")["UploadId"]
    a.abort_multipart_upload(Bucket=BUCKET, Key="dropped-quietly", UploadId=quiet)
    print(quiet)


if __name__ == "__main__":
    main()
