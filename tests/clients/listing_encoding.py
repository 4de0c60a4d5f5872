"""Listings with `encoding-type=url` (issue 13), as AWS S3 answers them: keys holding `+`,
`%`, spaces, unicode and a control character list under their own names through boto3 (which
always asks for URL encoding and decodes it), with ListObjectsV2, ListObjects and
ListObjectVersions, and every listed name reads back; a raw ListObjectsV2 with
`encoding-type=url` shows the percent-encoded key; an unknown encoding is refused; `aws s3 sync`
of a tree with such names up and back gives the same tree, and a second sync moves nothing.

usage: listing_encoding.py ENDPOINT
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Each check is named; the
first failure raises with its name; the last line is "all checks passed".
"""
import os
import subprocess
import sys
import tempfile
import boto3

from s3_semantics import check, error_code

BUCKET = "encoded"
NAMES = ["a+b", "x%41y", "sp ace", "ünï-çødé", "ctl\x01z", "plus+and space", "dir/inner+file"]


def aws(endpoint, *args):
    return subprocess.run(["aws", "--endpoint-url", endpoint, *args], capture_output=True, text=True,
                          env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"})


def main():
    endpoint = sys.argv[1]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    keys = sorted(f"enc/{name}" for name in NAMES)
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())

    listed = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="enc/")["Contents"]]
    check("ListObjectsV2 lists every key under its own name", listed == keys, f"{listed} != {keys}")
    listed = [item["Key"] for item in s3.list_objects(Bucket=BUCKET, Prefix="enc/")["Contents"]]
    check("ListObjects lists every key under its own name", listed == keys, f"{listed}")
    listed = [item["Key"] for item in s3.list_object_versions(Bucket=BUCKET, Prefix="enc/")["Versions"]]
    check("ListObjectVersions lists every key under its own name", listed == keys, f"{listed}")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="enc/", PaginationConfig={"PageSize": 2})
    paged = [item["Key"] for page in pages for item in page.get("Contents", [])]
    check("paging through encoded listings visits every key once", paged == keys, f"{paged}")
    prefixes = [p["Prefix"] for p in s3.list_objects_v2(Bucket=BUCKET, Prefix="enc/", Delimiter="/").get("CommonPrefixes", [])]
    check("common prefixes are decoded too", prefixes == ["enc/dir/"], f"{prefixes}")
    for key in keys:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        check(f"the listed name {key!r} reads back", body == key.encode())

    raw = []
    keep_body = lambda response_dict, **_: raw.append(response_dict["body"].decode())
    s3.meta.events.register("before-parse.s3.ListObjectsV2", keep_body)
    s3.list_objects_v2(Bucket=BUCKET, Prefix="enc/a", EncodingType="url")
    s3.meta.events.unregister("before-parse.s3.ListObjectsV2", keep_body)
    check("the raw answer holds the percent-encoded key", "<Key>enc/a%2Bb</Key>" in raw[0], raw[0])
    check("the raw answer echoes the encoding", "<EncodingType>url</EncodingType>" in raw[0], raw[0])
    refused = error_code(lambda: s3.list_objects_v2(Bucket=BUCKET, EncodingType="base64"))
    check("an unknown encoding is refused with InvalidArgument", refused == "InvalidArgument", refused)

    with tempfile.TemporaryDirectory() as up, tempfile.TemporaryDirectory() as down:
        for name in NAMES:
            path = os.path.join(up, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as file:
                file.write(name.encode() * 3)
        synced = aws(endpoint, "s3", "sync", up, f"s3://{BUCKET}/tree/")
        check("aws s3 sync uploads the tree", synced.returncode == 0, synced.stderr)
        synced = aws(endpoint, "s3", "sync", f"s3://{BUCKET}/tree/", down)
        check("aws s3 sync downloads the tree", synced.returncode == 0, synced.stderr)
        files = lambda root: sorted((os.path.relpath(os.path.join(d, f), root), open(os.path.join(d, f), "rb").read())
                                    for d, _, fs in os.walk(root) for f in fs)
        check("the tree comes back identical", files(up) == files(down), f"{[n for n, _ in files(down)]}")
        again = aws(endpoint, "s3", "sync", up, f"s3://{BUCKET}/tree/")
        check("a second sync up moves nothing", again.returncode == 0 and again.stdout.strip() == "", again.stdout)
        again = aws(endpoint, "s3", "sync", f"s3://{BUCKET}/tree/", down)
        check("a second sync down moves nothing", again.returncode == 0 and again.stdout.strip() == "", again.stdout)
    print("all checks passed")


if __name__ == "__main__":
    main()
