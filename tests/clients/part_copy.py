"""UploadPartCopy (issue 13), as AWS S3 answers it: boto3's managed copy and `aws s3 cp` between
keys copy objects over 8 MiB by parts, and the copy reads back byte-identical with a multipart
ETag; parts copied from ranges of a source complete into an exact object; a malformed or
out-of-bounds range is 400 InvalidArgument, a missing source 404 NoSuchKey.

usage: part_copy.py ENDPOINT MODEL
MODEL is a safetensors file over 10 MiB. Credentials come from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY. Each check is named; the first failure raises with its name; the last
line is "all checks passed".
"""
import hashlib
import os
import subprocess
import sys

import boto3
from boto3.s3.transfer import TransferConfig

from s3_semantics import check, error_code

BUCKET = "copies"
PART = 5 << 20


def main():
    endpoint, model_path = sys.argv[1:3]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    model = open(model_path, "rb").read()
    s3.put_object(Bucket=BUCKET, Key="source", Body=model)
    read = lambda key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    s3.copy({"Bucket": BUCKET, "Key": "source"}, BUCKET, "managed-copy",
            Config=TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20))
    head = s3.head_object(Bucket=BUCKET, Key="managed-copy")
    check("boto3's managed copy copies by parts", head["ETag"].endswith('-2"'), head["ETag"])
    check("the managed copy reads back byte-identical", read("managed-copy") == model)

    copied = subprocess.run(["aws", "--endpoint-url", endpoint, "s3", "cp", f"s3://{BUCKET}/source", f"s3://{BUCKET}/cli-copy"],
                            capture_output=True, text=True, env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"})
    check("aws s3 cp between keys succeeds", copied.returncode == 0, copied.stderr)
    check("the aws cli copy reads back byte-identical", read("cli-copy") == model)

    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="ranged")["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(model), PART), start=1):
        last = min(start + PART, len(model)) - 1
        result = s3.upload_part_copy(Bucket=BUCKET, Key="ranged", UploadId=upload, PartNumber=number,
                                     CopySource={"Bucket": BUCKET, "Key": "source"}, CopySourceRange=f"bytes={start}-{last}")
        expected = '"%s"' % hashlib.md5(model[start:last + 1]).hexdigest()
        check(f"part {number} copied from bytes {start}-{last} has their MD5 as ETag", result["CopyPartResult"]["ETag"] == expected)
        parts.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
    for bad in [f"bytes=0-{len(model)}", "bytes=10-5", "bytes=abc", "0-10"]:
        refused = error_code(lambda: s3.upload_part_copy(Bucket=BUCKET, Key="ranged", UploadId=upload, PartNumber=9,
                                                         CopySource={"Bucket": BUCKET, "Key": "source"}, CopySourceRange=bad))
        check(f"the copy range {bad} is refused", refused == "InvalidArgument", refused)
    missing = error_code(lambda: s3.upload_part_copy(Bucket=BUCKET, Key="ranged", UploadId=upload, PartNumber=9,
                                                     CopySource={"Bucket": BUCKET, "Key": "absent"}))
    check("a missing source is NoSuchKey", missing == "NoSuchKey", missing)
    s3.complete_multipart_upload(Bucket=BUCKET, Key="ranged", UploadId=upload, MultipartUpload={"Parts": parts})
    check("parts copied from ranges complete into the source's bytes", read("ranged") == model)
    print("all checks passed")


if __name__ == "__main__":
    main()
