"""Hostile and malformed requests against a live gateway: each must get the answer AWS gives,
or be stored exactly as it came; none may hang, crash the gateway or leave half an object.

usage: hostile.py ENDPOINT
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""
import json
import os
import socket
import struct
import sys
import urllib.parse

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

from s3_semantics import error_code

BUCKET = "hostile"


def signed_put_head(endpoint, bucket, key, announced):
    """The request line and headers of a signed PUT announcing `announced` body bytes."""
    return signed_head("PUT", endpoint, bucket, key, announced)


def signed_head(method, endpoint, bucket, key, announced, query=""):
    """The request line and headers of a signed request (UNSIGNED-PAYLOAD) to an object, with
    `query` (already encoded), announcing `announced` body bytes."""
    url = f"{endpoint}/{bucket}/{urllib.parse.quote(key)}" + (f"?{query}" if query else "")
    headers = {"Content-Length": str(announced), "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    request = AWSRequest(method=method, url=url, headers=headers)
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    credentials = boto3.Session().get_credentials()
    S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
    target = urllib.parse.urlparse(url).path + (f"?{query}" if query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {urllib.parse.urlparse(endpoint).netloc}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items() if name.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def raw_put(endpoint, key, announced, body):
    """A signed PUT sent over a bare socket, announcing `announced` bytes and sending `body`,
    then closing the sending side. Returns the status line and the whole answer."""
    parsed = urllib.parse.urlparse(endpoint)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as connection:
        connection.sendall(signed_put_head(endpoint, BUCKET, key, announced) + body)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode(), answer


def safetensors(header_bytes, data):
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def main():
    endpoint = sys.argv[1]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)

    # A client that closes its sending side right after the body still gets its answer.
    body = os.urandom(50_000)
    status, answer = raw_put(endpoint, "exact", len(body), body)
    assert " 200 " in status + " ", f"a half-closed connection got no answer: {answer[:200]}"
    assert s3.get_object(Bucket=BUCKET, Key="exact")["Body"].read() == body

    # A body shorter than its Content-Length: refused, and nothing is stored.
    status, answer = raw_put(endpoint, "short", 200_000, os.urandom(70_000))
    assert " 200 " not in status + " ", f"a short body was acknowledged: {status}"
    assert error_code(lambda: s3.head_object(Bucket=BUCKET, Key="short")) in ("404", "NoSuchKey"), "short body left an object"

    # A body longer than its Content-Length: the announced bytes are the object; the rest is
    # not a request the gateway can read, and is answered with an error or dropped.
    body = os.urandom(100_000)
    status, answer = raw_put(endpoint, "long", 50_000, body)
    assert " 200 " in status + " ", f"the announced bytes were refused: {status}"
    assert s3.get_object(Bucket=BUCKET, Key="long")["Body"].read() == body[:50_000], "long body stored wrongly"

    # Dots in keys are names like any other: stored, listed and read back, never a path.
    dotted = ["a/../b", "../escape", "./here", "..", "a/./b/.."]
    for index, key in enumerate(dotted):
        s3.put_object(Bucket=BUCKET, Key=key, Body=f"body {index}".encode())
    for index, key in enumerate(dotted):
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == f"body {index}".encode(), key
    listed = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert set(dotted) <= listed, listed

    # Keys AWS refuses: too long; NUL is refused too.
    assert error_code(lambda: s3.put_object(Bucket=BUCKET, Key="k" * 1025, Body=b"")) == "KeyTooLongError"
    assert error_code(lambda: s3.put_object(Bucket=BUCKET, Key="nul\x00key", Body=b"")) == "InvalidArgument"

    # Part numbers out of range, a huge part list and tiny parts.
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="parts")["UploadId"]
    for number in (0, 10_001):
        code = error_code(lambda: s3.upload_part(Bucket=BUCKET, Key="parts", UploadId=upload, PartNumber=number, Body=b"x"))
        assert code == "InvalidArgument", (number, code)
    tags = [s3.upload_part(Bucket=BUCKET, Key="parts", UploadId=upload, PartNumber=n, Body=b"tiny")["ETag"] for n in (1, 2, 3)]
    huge = [{"PartNumber": n, "ETag": tags[0]} for n in range(1, 10_002)]
    assert error_code(lambda: s3.complete_multipart_upload(Bucket=BUCKET, Key="parts", UploadId=upload,
                                                           MultipartUpload={"Parts": huge})) in ("InvalidPart", "InvalidArgument", "MalformedXML")
    tiny = [{"PartNumber": n, "ETag": tag} for n, tag in zip((1, 2, 3), tags)]
    assert error_code(lambda: s3.complete_multipart_upload(Bucket=BUCKET, Key="parts", UploadId=upload,
                                                           MultipartUpload={"Parts": tiny})) == "EntityTooSmall"
    backwards = list(reversed(tiny))
    assert error_code(lambda: s3.complete_multipart_upload(Bucket=BUCKET, Key="parts", UploadId=upload,
                                                           MultipartUpload={"Parts": backwards})) == "InvalidPartOrder"
    s3.abort_multipart_upload(Bucket=BUCKET, Key="parts", UploadId=upload)

    # safetensors files whose headers lie: each is stored as opaque bytes and read back exactly.
    data = os.urandom(200_000)
    tensor = lambda start, end: {"dtype": "F32", "shape": [(end - start) // 4], "data_offsets": [start, end]}
    lying = {
        "span-past-end": safetensors(json.dumps({"w": tensor(0, 400_000)}).encode(), data),
        "overlapping": safetensors(json.dumps({"a": tensor(0, 120_000), "b": tensor(80_000, 200_000)}).encode(), data),
        "huge-header-length": struct.pack("<Q", 1 << 40) + data,
        "header-past-end": struct.pack("<Q", 300_000) + b"{" + data,
        "deeply-nested": safetensors(b"{\"__metadata__\":" + b"[" * 50_000 + b"]" * 50_000 + b"}", data),
        "non-utf8": safetensors(b"{\"w\xff\xfe\":" + json.dumps(tensor(0, 200_000)).encode() + b"}", data),
        "huge-json": safetensors(json.dumps({f"t{i}": tensor(0, 4) for i in range(20_000)}).encode(), data),
        "negative-shape": safetensors(json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode(), data),
    }
    for key, body in lying.items():
        s3.put_object(Bucket=BUCKET, Key=f"lying/{key}", Body=body)
    for key, body in lying.items():
        got = s3.get_object(Bucket=BUCKET, Key=f"lying/{key}")
        assert got["Body"].read() == body, f"{key} did not read back as it came"
    print("hostile: all checks passed")


if __name__ == "__main__":
    main()
