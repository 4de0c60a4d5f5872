"""A small boto3 command line for the end-to-end tests.

usage: boto3_client.py ENDPOINT put FILE BUCKET KEY [--multipart]
       boto3_client.py ENDPOINT get BUCKET KEY OUT [RANGE]
       boto3_client.py ENDPOINT head BUCKET KEY          (prints the ETag)
       boto3_client.py ENDPOINT delete BUCKET KEY
       boto3_client.py ENDPOINT list BUCKET PREFIX DELIMITER PAGE_SIZE   (prints JSON)
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Errors print the S3 error
code on stderr and exit with 3.
"""
import json
import sys

import boto3
import botocore
from boto3.s3.transfer import TransferConfig


def main():
    endpoint, command, *args = sys.argv[1:]
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        if command == "put":
            path, bucket, key = args[:3]
            if "--multipart" in args:
                config = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
                client.upload_file(path, bucket, key, Config=config)
            else:
                with open(path, "rb") as body:
                    client.put_object(Bucket=bucket, Key=key, Body=body.read())
        elif command == "get":
            bucket, key, out = args[:3]
            extra = {"Range": args[3]} if len(args) > 3 else {}
            body = client.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
            with open(out, "wb") as sink:
                sink.write(body)
        elif command == "head":
            bucket, key = args
            print(client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"'))
        elif command == "delete":
            bucket, key = args
            client.delete_object(Bucket=bucket, Key=key)
        elif command == "list":
            bucket, prefix, delimiter, page_size = args
            paginator = client.get_paginator("list_objects_v2")
            keys, prefixes, pages = [], [], 0
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter=delimiter,
                                           PaginationConfig={"PageSize": int(page_size)}):
                pages += 1
                keys += [item["Key"] for item in page.get("Contents", [])]
                prefixes += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
            print(json.dumps({"keys": keys, "prefixes": prefixes, "pages": pages}))
        else:
            raise SystemExit(f"unknown command {command}")
    except botocore.exceptions.ClientError as error:
        print(error.response["Error"]["Code"], file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
