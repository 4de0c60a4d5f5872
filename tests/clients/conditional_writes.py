"""Conditional writes (issue 13), as AWS S3 answers them: PutObject, CompleteMultipartUpload
and CopyObject with `If-None-Match: *` write only where no object is, and with `If-Match` only
over the object with that ETag (412 PreconditionFailed otherwise, 404 NoSuchKey for `If-Match`
where there is none); of several PUTs racing with `If-None-Match: *`, exactly one wins. A copy
answers and serves the same ETag, also of a multipart source.

usage: conditional_writes.py ENDPOINT
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Each check is named; the
first failure raises with its name; the last line is "all checks passed".
"""
import concurrent.futures
import hashlib
import sys

import boto3
import botocore

from s3_semantics import check, error_code

BUCKET = "conditional"
PART = 5 << 20


def outcome(call):
    """None when `call` succeeds, else its S3 error code."""
    try:
        call()
        return None
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]


def with_header(client, operation, name, value):
    """Adds a header to the next calls of `operation` (for headers boto3 has no parameter for)."""
    def add(request, **_):
        request.headers[name] = value
    client.meta.events.register(f"before-sign.s3.{operation}", add)
    return add


def multipart(s3, key, body, **conditions):
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(body), PART), start=1):
        etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body[start:start + PART])["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    return lambda: s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                                MultipartUpload={"Parts": parts}, **conditions)


def main():
    endpoint = sys.argv[1]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)

    first = s3.put_object(Bucket=BUCKET, Key="created", Body=b"one", IfNoneMatch="*")
    check("If-None-Match: * writes where no object is", first["ResponseMetadata"]["HTTPStatusCode"] == 200)
    check("If-None-Match: * over an object is 412",
          error_code(lambda: s3.put_object(Bucket=BUCKET, Key="created", Body=b"two", IfNoneMatch="*")) == "PreconditionFailed")
    check("the refused write left the object as it was", s3.get_object(Bucket=BUCKET, Key="created")["Body"].read() == b"one")
    check("If-Match with another ETag is 412",
          error_code(lambda: s3.put_object(Bucket=BUCKET, Key="created", Body=b"two", IfMatch='"0123"')) == "PreconditionFailed")
    replaced = s3.put_object(Bucket=BUCKET, Key="created", Body=b"two", IfMatch=first["ETag"])
    check("If-Match with the object's ETag writes", replaced["ETag"] == '"%s"' % hashlib.md5(b"two").hexdigest())
    check("If-Match where no object is is 404 NoSuchKey",
          error_code(lambda: s3.put_object(Bucket=BUCKET, Key="absent", Body=b"x", IfMatch=first["ETag"])) == "NoSuchKey")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        racing = [pool.submit(outcome, lambda n=n: s3.put_object(Bucket=BUCKET, Key="raced", Body=b"racer %d" % n, IfNoneMatch="*"))
                  for n in range(8)]
        outcomes = sorted(str(future.result()) for future in racing)
    check("of 8 PUTs racing with If-None-Match: *, one wins and the others get 412 or 409",
          outcomes.count("None") == 1 and all(o in ("PreconditionFailed", "ConditionalRequestConflict") for o in outcomes if o != "None"),
          f"{outcomes}")

    body = bytes(range(256)) * (PART * 2 // 256 + 1)
    complete = multipart(s3, "created", body, IfNoneMatch="*")
    check("CompleteMultipartUpload with If-None-Match: * over an object is 412", error_code(complete) == "PreconditionFailed")
    complete = multipart(s3, "fresh-multipart", body, IfNoneMatch="*")
    done = complete()
    check("CompleteMultipartUpload with If-None-Match: * where none is completes", done["ETag"].endswith('-3"'), done["ETag"])

    hook = with_header(s3, "CopyObject", "If-None-Match", "*")
    refused = error_code(lambda: s3.copy_object(Bucket=BUCKET, Key="created", CopySource={"Bucket": BUCKET, "Key": "raced"}))
    check("CopyObject with If-None-Match: * over an object is 412", refused == "PreconditionFailed", refused)
    s3.meta.events.unregister("before-sign.s3.CopyObject", hook)

    copied = s3.copy_object(Bucket=BUCKET, Key="copy-of-multipart", CopySource={"Bucket": BUCKET, "Key": "fresh-multipart"})
    head = s3.head_object(Bucket=BUCKET, Key="copy-of-multipart")
    check("a copy answers the ETag it serves", copied["CopyObjectResult"]["ETag"] == head["ETag"],
          f'{copied["CopyObjectResult"]["ETag"]} vs {head["ETag"]}')
    check("a copy of a multipart object is a single-part object", head["ETag"] == '"%s"' % hashlib.md5(body).hexdigest(), head["ETag"])
    print("all checks passed")


if __name__ == "__main__":
    main()
