"""S3 behaviour checks with boto3, run by the end-to-end tests against a live gateway.

usage: s3_semantics.py ENDPOINT [CASE ...]
Each case is a function named for the AWS behaviour it expects, in a bucket of its own; every
case runs (or only those named), each failure is printed with its case name, and the exit
status is 1 if any failed. Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""
import hashlib
import sys
import traceback
import urllib.error
import urllib.request

import boto3
import botocore
import botocore.config
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

BODY = b"0123456789" * 1000
CASES = []


def case(function):
    """Registers a case: a function of (s3 client, endpoint, its own bucket)."""
    CASES.append(function)
    return function


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


def put_body(s3, bucket, key="obj"):
    return s3.put_object(Bucket=bucket, Key=key, Body=BODY, ContentType="text/plain",
                         Metadata={"owner": "tests"}, ChecksumAlgorithm="SHA256")


@case
def buckets_are_found_and_listed(s3, endpoint, bucket):
    assert error_code(lambda: s3.head_bucket(Bucket="missing-bucket")) in ("404", "NoSuchBucket")
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]


@case
def put_answers_the_md5_etag_and_head_the_stored_attributes(s3, endpoint, bucket):
    put = put_body(s3, bucket)
    assert put["ETag"].strip('"') == hashlib.md5(BODY).hexdigest(), "PutObject ETag is the MD5"
    head = s3.head_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(BODY)
    assert head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"owner": "tests"}, head["Metadata"]
    assert head.get("ChecksumSHA256") == put.get("ChecksumSHA256"), "checksum mode returns the stored checksum"
    assert head.get("ChecksumType") == "FULL_OBJECT" and put.get("ChecksumType") == "FULL_OBJECT", (head, put)


@case
def reads_honour_conditions_and_ranges(s3, endpoint, bucket):
    etag = put_body(s3, bucket)["ETag"]
    assert s3.get_object(Bucket=bucket, Key="obj", IfMatch=etag)["Body"].read() == BODY
    assert error_code(lambda: s3.get_object(Bucket=bucket, Key="obj", IfMatch='"0000"')) == "PreconditionFailed"
    assert error_code(lambda: s3.get_object(Bucket=bucket, Key="obj", IfNoneMatch=etag)) in ("304", "NotModified")
    assert s3.get_object(Bucket=bucket, Key="obj", Range="bytes=5-14")["Body"].read() == BODY[5:15]
    assert s3.get_object(Bucket=bucket, Key="obj", Range="bytes=-3")["Body"].read() == BODY[-3:]


@case
def copies_keep_bytes_etag_and_metadata_unless_replaced(s3, endpoint, bucket):
    put = put_body(s3, bucket)
    etag = put["ETag"]
    done = s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "obj"})["CopyObjectResult"]
    assert done.get("ChecksumSHA256") == put["ChecksumSHA256"], "the copy keeps the source's checksum algorithm"
    copied = s3.head_object(Bucket=bucket, Key="copy", ChecksumMode="ENABLED")
    assert copied["ETag"] == etag and copied["Metadata"] == {"owner": "tests"}
    assert copied.get("ChecksumSHA256") == put["ChecksumSHA256"] and copied.get("ChecksumType") == "FULL_OBJECT", copied
    import base64
    import struct
    import zlib
    asked = s3.copy_object(Bucket=bucket, Key="crc", CopySource={"Bucket": bucket, "Key": "obj"}, ChecksumAlgorithm="CRC32")
    crc32 = base64.b64encode(struct.pack(">I", zlib.crc32(BODY))).decode()
    assert asked["CopyObjectResult"].get("ChecksumCRC32") == crc32, asked
    s3.copy_object(Bucket=bucket, Key="copy2", CopySource={"Bucket": bucket, "Key": "obj"},
                   MetadataDirective="REPLACE", Metadata={"owner": "other"}, ContentType="application/x-test")
    replaced = s3.head_object(Bucket=bucket, Key="copy2")
    assert replaced["Metadata"] == {"owner": "other"} and replaced["ContentType"] == "application/x-test"
    assert error_code(lambda: s3.copy_object(Bucket=bucket, Key="c3",
                                             CopySource={"Bucket": bucket, "Key": "absent"})) == "NoSuchKey"


@case
def multipart_uploads_list_complete_in_order_and_read_by_part(s3, endpoint, bucket):
    part1, part2 = b"a" * (5 << 20), b"b" * 1234
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp", Metadata={"kind": "multipart"})["UploadId"]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [uid]
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=2, Body=part2)["ETag"]
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=part1)["ETag"]
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, len(part1)), (2, len(part2))]
    assert error_code(lambda: s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})) == "InvalidPartOrder"
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    digests = hashlib.md5(hashlib.md5(part1).digest() + hashlib.md5(part2).digest()).hexdigest()
    assert done["ETag"].strip('"') == f"{digests}-2", done["ETag"]
    got = s3.get_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert got["Body"].read() == part2 and got["PartsCount"] == 2
    second = f"bytes {len(part1)}-{len(part1) + len(part2) - 1}/{len(part1) + len(part2)}"
    assert got["ContentRange"] == second, got["ContentRange"]
    head = s3.head_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert status(head) == 206 and head["ContentRange"] == second and head["PartsCount"] == 2, head
    assert s3.head_object(Bucket=bucket, Key="mp")["Metadata"] == {"kind": "multipart"}
    assert error_code(lambda: s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)) == "NoSuchUpload"


def status(answer):
    return answer["ResponseMetadata"]["HTTPStatusCode"]


@case
def parts_and_ranges_of_a_single_part_object_answer_as_s3(s3, endpoint, bucket):
    put_body(s3, bucket)
    whole = f"bytes 0-{len(BODY) - 1}/{len(BODY)}"
    part = s3.get_object(Bucket=bucket, Key="obj", PartNumber=1)
    assert status(part) == 206 and part["ContentRange"] == whole and "PartsCount" not in part, part
    assert part["Body"].read() == BODY
    head = s3.head_object(Bucket=bucket, Key="obj", PartNumber=1)
    assert status(head) == 206 and head["ContentRange"] == whole and head["ContentLength"] == len(BODY), head
    head = s3.head_object(Bucket=bucket, Key="obj", Range="bytes=1-4")
    assert status(head) == 206 and head["ContentRange"] == f"bytes 1-4/{len(BODY)}" and head["ContentLength"] == 4, head
    plain = s3.head_object(Bucket=bucket, Key="obj")
    assert status(plain) == 200 and "ContentRange" not in plain, plain
    both = lambda call: error_code(lambda: call(Bucket=bucket, Key="obj", PartNumber=1, Range="bytes=0-9"))
    assert both(s3.get_object) == "InvalidRequest" and both(s3.head_object) == "400"
    # Out of S3's part numbers: refused before the key is looked up.
    for number in (0, -3, 10001):
        assert error_code(lambda: s3.get_object(Bucket=bucket, Key="missing", PartNumber=number)) == "InvalidArgument", number
    assert error_code(lambda: s3.get_object(Bucket=bucket, Key="obj", PartNumber=2)) == "InvalidPartNumber"
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    empty = s3.get_object(Bucket=bucket, Key="empty", Range="bytes=-1")
    assert status(empty) == 200 and "ContentRange" not in empty and empty["Body"].read() == b"", empty
    assert error_code(lambda: s3.get_object(Bucket=bucket, Key="empty", Range="bytes=0-")) == "InvalidRange"
    empty_part = s3.get_object(Bucket=bucket, Key="empty", PartNumber=1)
    assert status(empty_part) == 200 and "ContentRange" not in empty_part, empty_part


@case
def upload_listings_page_and_roll_up_at_the_delimiter(s3, endpoint, bucket):
    keys = ["abc/x", "foo/bar/baz", "foo/q", "top", "top", "xyz/h"]
    uploads = sorted((key, s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]) for key in keys)
    rolled = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/", MaxUploads=2)
    assert "Uploads" not in rolled and [p["Prefix"] for p in rolled["CommonPrefixes"]] == ["abc/", "foo/"], rolled
    assert rolled["IsTruncated"] and rolled["NextKeyMarker"] == "foo/" and rolled["MaxUploads"] == 2, rolled
    assert rolled["KeyMarker"] == "" and rolled["UploadIdMarker"] == "", rolled
    rest = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/", KeyMarker="foo/")
    assert [u["Key"] for u in rest["Uploads"]] == ["top", "top"] and not rest["IsTruncated"], rest
    assert [p["Prefix"] for p in rest["CommonPrefixes"]] == ["xyz/"] and rest["KeyMarker"] == "foo/", rest
    # One at a time with both markers: every upload once, in key order, then by id.
    seen, markers = [], {}
    while True:
        page = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=1, **markers)
        seen += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
        if not page["IsTruncated"]:
            break
        markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
    assert seen == uploads, (seen, uploads)
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, KeyMarker="foo/q")["Uploads"]] == ["top", "top", "xyz/h"]
    # An empty upload id marker (older minio-go sends one always) is none.
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, KeyMarker="top", UploadIdMarker="")["Uploads"]] == ["xyz/h"]
    paginated = [u["UploadId"] for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, PaginationConfig={"PageSize": 4})
                 for u in page.get("Uploads", [])]
    assert paginated == [upload_id for _, upload_id in uploads], paginated
    for limit in (lambda: s3.list_multipart_uploads(Bucket=bucket, MaxUploads=-1), lambda: s3.list_objects_v2(Bucket=bucket, MaxKeys=-1),
                  lambda: s3.list_parts(Bucket=bucket, Key="top", UploadId=uploads[3][1], MaxParts=-1)):
        assert error_code(limit) == "InvalidArgument"


def error_of(call):
    """The error code and message of a call that must fail."""
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"], error.response["Error"].get("Message")
    raise AssertionError("expected an error, the call succeeded")


@case
def writes_are_refused_as_s3_refuses_them(s3, endpoint, bucket):
    put = lambda **extra: s3.put_object(Bucket=bucket, Key="w", Body=b"body", **extra)
    assert error_code(lambda: put(ContentMD5="YWJyYWNhZGFicmE=")) == "InvalidDigest", "an MD5 of 11 bytes"
    assert error_code(lambda: put(ContentMD5="eV8yArF8trw9S3cdjGyerw==")) == "BadDigest", "the MD5 of another body"
    assert error_of(lambda: put(ChecksumCRC32="AAAAAA==")) == ("BadDigest", "The CRC32 you specified did not match the calculated checksum.")
    # User metadata: keys and values up to 2 KB in all.
    put(Metadata={"a": "x" * 2047})
    too_large = {"a": "x" * 2048}
    assert error_code(lambda: put(Metadata=too_large)) == "MetadataTooLarge"
    assert error_code(lambda: s3.create_multipart_upload(Bucket=bucket, Key="w", Metadata=too_large)) == "MetadataTooLarge"
    source = {"Bucket": bucket, "Key": "w"}
    assert error_code(lambda: s3.copy_object(Bucket=bucket, Key="c", CopySource=source, MetadataDirective="REPLACE", Metadata=too_large)) == "MetadataTooLarge"
    assert error_of(lambda: s3.copy_object(Bucket=bucket, Key="c", CopySource=source, MetadataDirective="FOO")) == ("InvalidArgument", "Unknown metadata directive.")
    assert error_of(lambda: s3.copy_object(Bucket=bucket, Key="c", CopySource=source, TaggingDirective="FOO")) == ("InvalidArgument", "Unknown tagging directive.")
    assert error_of(lambda: s3.copy_object(Bucket=bucket, Key="c", CopySource=source, ChecksumAlgorithm="MD5"))[0] == "InvalidRequest"
    # Storage classes: S3's are taken (and stored alike), others refused; a copy onto itself
    # that names one is a change S3 makes.
    assert error_code(lambda: put(StorageClass="FOO")) == "InvalidStorageClass"
    put(StorageClass="STANDARD_IA")
    copied = s3.copy_object(Bucket=bucket, Key="w", CopySource=source, StorageClass="STANDARD")
    assert copied["CopyObjectResult"]["ETag"] == s3.head_object(Bucket=bucket, Key="w")["ETag"], copied
    uid = s3.create_multipart_upload(Bucket=bucket, Key="parted")["UploadId"]
    assert error_of(lambda: s3.upload_part(Bucket=bucket, Key="parted", UploadId=uid, PartNumber=10001, Body=b"x")) == \
        ("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive")
    etag = s3.upload_part(Bucket=bucket, Key="parted", UploadId=uid, PartNumber=1, Body=b"x")["ETag"]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="parted", UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert done["Location"] == f"{endpoint}/{bucket}/parted", done


@case
def checksum_headers_that_disagree_are_refused_before_the_body(s3, endpoint, bucket):
    import base64
    import zlib
    body = b"body"
    crc32 = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    sha1 = base64.b64encode(hashlib.sha1(body).digest()).decode()
    # A client that adds no checksum of its own, and one header of choice on its next calls.
    bare = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=botocore.config.Config(request_checksum_calculation="when_required"))
    named = {}

    def name_algorithm(request, **_):
        for header, value in named.items():
            request.headers[header] = value
    bare.meta.events.register("before-sign.s3", name_algorithm)
    put = lambda key, **extra: bare.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    invalid = ("InvalidRequest", "Value for x-amz-sdk-checksum-algorithm header is invalid.")
    assert error_of(lambda: put("two", ChecksumCRC32=crc32, ChecksumSHA1=sha1)) == \
        ("InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.")
    named["x-amz-sdk-checksum-algorithm"] = "SHA1"
    assert error_of(lambda: put("other", ChecksumCRC32=crc32)) == invalid
    assert error_of(lambda: put("none")) == \
        ("InvalidRequest", "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* or x-amz-trailer headers were found.")
    named["x-amz-sdk-checksum-algorithm"] = "MD5"
    assert error_of(lambda: put("unknown", ChecksumCRC32=crc32)) == invalid
    for refused in ("two", "other", "none", "unknown"):
        assert error_code(lambda: s3.head_object(Bucket=bucket, Key=refused)) == "404", refused
    named["x-amz-sdk-checksum-algorithm"] = "CRC32"
    assert put("agreed", ChecksumCRC32=crc32)["ChecksumCRC32"] == crc32
    assert s3.get_object(Bucket=bucket, Key="agreed")["Body"].read() == body
    named.clear()
    uid = s3.create_multipart_upload(Bucket=bucket, Key="parted")["UploadId"]
    assert error_of(lambda: bare.upload_part(Bucket=bucket, Key="parted", UploadId=uid, PartNumber=1, Body=body,
                                             ChecksumCRC32=crc32, ChecksumSHA1=sha1))[0] == "InvalidRequest"
    assert s3.list_parts(Bucket=bucket, Key="parted", UploadId=uid).get("Parts", []) == []


@case
def versions_other_than_null_are_refused_and_delete_nothing(s3, endpoint, bucket):
    s3.put_object(Bucket=bucket, Key="v", Body=b"kept")
    other = "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"  # the form of a version id S3 issues
    invalid = ("InvalidArgument", "Invalid version id specified")
    assert error_of(lambda: s3.delete_object(Bucket=bucket, Key="v", VersionId=other)) == invalid
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "v", "VersionId": other}]})
    assert [(e["Key"], e.get("VersionId"), e["Code"], e["Message"]) for e in answer["Errors"]] == [("v", other, *invalid)], answer
    assert not answer.get("Deleted"), answer
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="v", VersionId=other)) == invalid
    assert error_code(lambda: s3.head_object(Bucket=bucket, Key="v", VersionId=other)) == "400"
    assert error_of(lambda: s3.get_object_tagging(Bucket=bucket, Key="v", VersionId=other)) == invalid
    assert error_of(lambda: s3.get_object_acl(Bucket=bucket, Key="v", VersionId=other)) == invalid
    assert error_of(lambda: s3.put_object_acl(Bucket=bucket, Key="v", VersionId=other, ACL="private")) == invalid
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="v", VersionId="")) == ("InvalidArgument", "Version id cannot be the empty string")
    source = {"Bucket": bucket, "Key": "v", "VersionId": other}
    assert error_of(lambda: s3.copy_object(Bucket=bucket, Key="c", CopySource=source)) == invalid
    uid = s3.create_multipart_upload(Bucket=bucket, Key="p")["UploadId"]
    assert error_of(lambda: s3.upload_part_copy(Bucket=bucket, Key="p", UploadId=uid, PartNumber=1, CopySource=source)) == invalid
    assert s3.get_object(Bucket=bucket, Key="v")["Body"].read() == b"kept"
    # The null version, as ListObjectVersions names it, is the object.
    assert s3.get_object(Bucket=bucket, Key="v", VersionId="null")["Body"].read() == b"kept"
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "v", "VersionId": "null"}]})
    assert answer["Deleted"] == [{"Key": "v", "VersionId": "null"}], answer
    assert error_code(lambda: s3.head_object(Bucket=bucket, Key="v")) == "404"


@case
def multipart_uploads_keep_composite_sha256_checksums(s3, endpoint, bucket):
    import base64
    created = s3.create_multipart_upload(Bucket=bucket, Key="summed", ChecksumAlgorithm="SHA256")
    assert created.get("ChecksumAlgorithm") == "SHA256", created
    uid, bodies, parts, digests = created["UploadId"], [b"c" * (5 << 20), b"d" * 999], [], b""
    for number, body in enumerate(bodies, start=1):
        part = s3.upload_part(Bucket=bucket, Key="summed", UploadId=uid, PartNumber=number, Body=body, ChecksumAlgorithm="SHA256")
        assert part["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
        parts.append({"PartNumber": number, "ETag": part["ETag"], "ChecksumSHA256": part["ChecksumSHA256"]})
        digests += hashlib.sha256(body).digest()
    # The upload's owner, initiator, storage class and checksum, in both listings.
    listed = s3.list_parts(Bucket=bucket, Key="summed", UploadId=uid)
    upload = s3.list_multipart_uploads(Bucket=bucket)["Uploads"][0]
    for answer in (listed, upload):
        assert answer["ChecksumAlgorithm"] == "SHA256" and answer["ChecksumType"] == "COMPOSITE", answer
        assert answer["StorageClass"] == "STANDARD" and answer["Owner"]["ID"] == answer["Initiator"]["ID"] and len(answer["Owner"]["ID"]) == 64, answer
    composite = base64.b64encode(hashlib.sha256(digests).digest()).decode() + "-2"
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode() + "-2"
    assert error_code(lambda: s3.complete_multipart_upload(Bucket=bucket, Key="summed", UploadId=uid, ChecksumSHA256=wrong,
                                                           MultipartUpload={"Parts": parts})) == "BadDigest"
    done = s3.complete_multipart_upload(Bucket=bucket, Key="summed", UploadId=uid, ChecksumSHA256=composite,
                                        MultipartUpload={"Parts": parts})
    assert done.get("ChecksumSHA256") == composite and done.get("ChecksumType") == "COMPOSITE", done
    head = s3.head_object(Bucket=bucket, Key="summed", ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256") == composite and head.get("ChecksumType") == "COMPOSITE", head
    first = s3.head_object(Bucket=bucket, Key="summed", ChecksumMode="ENABLED", PartNumber=1)
    assert first.get("ChecksumSHA256") == parts[0]["ChecksumSHA256"] and first.get("ChecksumType") == "COMPOSITE", first
    assert error_code(lambda: s3.create_multipart_upload(Bucket=bucket, Key="full", ChecksumAlgorithm="SHA256",
                                                         ChecksumType="FULL_OBJECT")) == "InvalidRequest"
    # Checksum requests S3 does not take, each with its message.
    create = lambda **checksum: s3.create_multipart_upload(Bucket=bucket, Key="other", **checksum)
    assert error_of(lambda: create(ChecksumType="COMPOSITE")) == \
        ("InvalidRequest", "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.")
    assert error_of(lambda: create(ChecksumAlgorithm="MD5")) == ("InvalidRequest",
        "Checksum algorithm provided is unsupported. Please try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]")
    assert error_of(lambda: create(ChecksumAlgorithm="CRC32", ChecksumType="PARTIAL")) == \
        ("InvalidRequest", "Value for x-amz-checksum-type header is invalid.")
    assert [upload["Key"] for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [], "nothing was started"
    got = s3.get_object(Bucket=bucket, Key="summed", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"".join(bodies)


@case
def multipart_uploads_keep_full_object_crcs_and_each_parts_checksum(s3, endpoint, bucket):
    import base64
    import struct
    import zlib
    crc32 = lambda data: base64.b64encode(struct.pack(">I", zlib.crc32(data))).decode()
    bodies = [b"e" * (5 << 20), b"f" * 999]
    # Parts sent without any checksum: the gateway computes the one the upload keeps.
    bare = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=botocore.config.Config(request_checksum_calculation="when_required"))

    def upload(key, **created_with):
        created = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32", **created_with)
        parts = []
        for number, body in enumerate(bodies, start=1):
            part = bare.upload_part(Bucket=bucket, Key=key, UploadId=created["UploadId"], PartNumber=number, Body=body)
            assert part.get("ChecksumCRC32") == crc32(body), part
            parts.append({"PartNumber": number, "ETag": part["ETag"], "ChecksumCRC32": part["ChecksumCRC32"]})
        listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=created["UploadId"])["Parts"]
        assert [part.get("ChecksumCRC32") for part in listed] == [crc32(body) for body in bodies], listed
        return created, parts

    created, parts = upload("full", ChecksumType="FULL_OBJECT")
    assert created.get("ChecksumType") == "FULL_OBJECT", created
    whole = crc32(b"".join(bodies))
    wrong_part = [dict(parts[0], ChecksumCRC32=crc32(b"other")), parts[1]]
    assert error_code(lambda: s3.complete_multipart_upload(Bucket=bucket, Key="full", UploadId=created["UploadId"],
                                                           MultipartUpload={"Parts": wrong_part})) == "InvalidPart"
    assert error_code(lambda: s3.complete_multipart_upload(Bucket=bucket, Key="full", UploadId=created["UploadId"], ChecksumCRC32=crc32(b"x"),
                                                           MultipartUpload={"Parts": parts})) == "BadDigest"
    done = s3.complete_multipart_upload(Bucket=bucket, Key="full", UploadId=created["UploadId"], ChecksumCRC32=whole,
                                        MultipartUpload={"Parts": parts})
    assert done.get("ChecksumCRC32") == whole and done.get("ChecksumType") == "FULL_OBJECT", done
    head = s3.head_object(Bucket=bucket, Key="full", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32") == whole and head.get("ChecksumType") == "FULL_OBJECT", head
    second = s3.get_object(Bucket=bucket, Key="full", ChecksumMode="ENABLED", PartNumber=2)
    assert second["Body"].read() == bodies[1] and second.get("ChecksumCRC32") == crc32(bodies[1]), second
    attributes = s3.get_object_attributes(Bucket=bucket, Key="full", ObjectAttributes=["Checksum", "ObjectParts"], MaxParts=1)
    assert attributes["Checksum"] == {"ChecksumCRC32": whole, "ChecksumType": "FULL_OBJECT"}, attributes
    listed = attributes["ObjectParts"]
    assert listed["TotalPartsCount"] == 2 and listed["IsTruncated"] and listed["NextPartNumberMarker"] == 1, listed
    assert listed["Parts"] == [{"PartNumber": 1, "Size": 5 << 20, "ChecksumCRC32": crc32(bodies[0])}], listed
    rest = s3.get_object_attributes(Bucket=bucket, Key="full", ObjectAttributes=["ObjectParts"], PartNumberMarker=1)["ObjectParts"]
    assert not rest["IsTruncated"] and rest["Parts"] == [{"PartNumber": 2, "Size": 999, "ChecksumCRC32": crc32(bodies[1])}], rest

    # CRC32 without a type is COMPOSITE, as S3's default: the CRC32 of the parts' CRC32s.
    created, parts = upload("composite")
    assert created.get("ChecksumType") == "COMPOSITE", created
    composite = base64.b64encode(struct.pack(">I", zlib.crc32(b"".join(base64.b64decode(crc32(body)) for body in bodies)))).decode() + "-2"
    done = s3.complete_multipart_upload(Bucket=bucket, Key="composite", UploadId=created["UploadId"], MultipartUpload={"Parts": parts})
    assert done.get("ChecksumCRC32") == composite and done.get("ChecksumType") == "COMPOSITE", done
    first = s3.head_object(Bucket=bucket, Key="composite", ChecksumMode="ENABLED", PartNumber=1)
    assert first.get("ChecksumCRC32") == crc32(bodies[0]) and first.get("ChecksumType") == "COMPOSITE", first


@case
def small_parts_are_refused_and_aborted_uploads_take_no_more(s3, endpoint, bucket):
    small = s3.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
    s1 = s3.upload_part(Bucket=bucket, Key="small", UploadId=small, PartNumber=1, Body=b"x")["ETag"]
    s2 = s3.upload_part(Bucket=bucket, Key="small", UploadId=small, PartNumber=2, Body=b"y")["ETag"]
    assert error_code(lambda: s3.complete_multipart_upload(
        Bucket=bucket, Key="small", UploadId=small,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": s1}, {"PartNumber": 2, "ETag": s2}]})) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=small)
    assert error_code(lambda: s3.upload_part(Bucket=bucket, Key="small", UploadId=small,
                                             PartNumber=3, Body=b"z")) == "NoSuchUpload"


@case
def presigned_urls_work_for_their_key_only(s3, endpoint, bucket):
    put_body(s3, bucket)
    put_body(s3, bucket, "copy")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "obj"}, ExpiresIn=300)
    assert urllib.request.urlopen(url).read() == BODY
    try:
        urllib.request.urlopen(url.replace("Key=obj", "Key=copy").replace("/obj?", "/copy?"))
        raise AssertionError("a presigned URL for another key was accepted")
    except urllib.error.HTTPError as error:
        assert error.code == 403, error.code


@case
def virtual_host_addressing_reaches_the_bucket(s3, endpoint, bucket):
    # Host: bucket.localhost, as the Rust and JS SDKs default to; signed by hand because
    # *.localhost does not resolve here.
    put_body(s3, bucket)
    port = endpoint.rsplit(":", 1)[1]
    request = AWSRequest(method="GET", url=f"{endpoint}/obj", headers={"host": f"{bucket}.localhost:{port}"})
    S3SigV4Auth(boto3.Session().get_credentials(), "s3", "us-east-1").add_auth(request)
    prepared = urllib.request.Request(request.url, headers=dict(request.headers.items()))
    assert urllib.request.urlopen(prepared).read() == BODY


@case
def refused_keys_and_deletes_answer_as_s3(s3, endpoint, bucket):
    for key in ["obj", "copy", "copy2", "mp"]:
        put_body(s3, bucket, key)
    assert error_code(lambda: s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"")) == "KeyTooLongError"
    assert error_code(lambda: s3.get_object(Bucket=bucket, Key="absent")) == "NoSuchKey"
    assert error_code(lambda: s3.delete_bucket(Bucket=bucket)) == "BucketNotEmpty"
    s3.delete_object(Bucket=bucket, Key="absent")
    too_many = {"Objects": [{"Key": f"k{i}"} for i in range(1001)]}
    assert error_code(lambda: s3.delete_objects(Bucket=bucket, Delete=too_many)) == "MalformedXML"
    deleted = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in ["obj", "copy", "copy2", "mp"]]})
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["copy", "copy2", "mp", "obj"]
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert s3.list_object_versions(Bucket=bucket).get("Versions", []) == []
    s3.delete_bucket(Bucket=bucket)
    assert error_code(lambda: s3.get_object(Bucket=bucket, Key="obj")) == "NoSuchBucket"


def empty_and_delete(s3, bucket):
    """Removes what a case left, so that the next run starts clean (a missing bucket is fine)."""
    try:
        for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError:
        pass


def main():
    endpoint, wanted = sys.argv[1], set(sys.argv[2:])
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    failed = []
    for function in CASES:
        if wanted and function.__name__ not in wanted:
            continue
        bucket = "semantics-" + function.__name__.replace("_", "-")[:40].rstrip("-")
        s3.create_bucket(Bucket=bucket)
        try:
            function(s3, endpoint, bucket)
            print(f"ok: {function.__name__}")
        except Exception:
            failed.append(function.__name__)
            print(f"FAILED: {function.__name__}\n{traceback.format_exc()}")
        finally:
            empty_and_delete(s3, bucket)
    if failed:
        print(f"{len(failed)} of the cases failed: {', '.join(failed)}")
        sys.exit(1)
    print("all S3 semantics checks passed")


if __name__ == "__main__":
    main()
