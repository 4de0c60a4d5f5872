"""Details of S3's answers that clients and caches rely on (issue 13), each checked against
what AWS S3 answers, with boto3 and raw HTTP where boto3 hides the detail.

usage: s3_details.py ENDPOINT
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Each check is named; the
first failure raises with its name; the last line is "all checks passed".
"""
import sys
import urllib.error
import urllib.request
from xml.etree import ElementTree

import boto3
import botocore

from s3_semantics import check, error_code

BUCKET = "details"


def main():
    endpoint = sys.argv[1]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    again = s3.create_bucket(Bucket=BUCKET)
    check("creating a bucket one owns already succeeds (us-east-1)", again["ResponseMetadata"]["HTTPStatusCode"] == 200)
    for name in ["abc-s3alias", "sthree-abc", "a.-b", "a-.b", "a..b", "xn--abc"]:
        check(f"bucket name {name} is refused", error_code(lambda: s3.create_bucket(Bucket=name)) == "InvalidBucketName")

    s3.put_object(Bucket=BUCKET, Key="untyped", Body=b"no type given")
    head = s3.head_object(Bucket=BUCKET, Key="untyped")
    check("an object stored without Content-Type is served as binary/octet-stream",
          head["ContentType"] == "binary/octet-stream", head["ContentType"])

    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "untyped"}, ExpiresIn=300)
    request = urllib.request.Request(url, headers={"If-None-Match": head["ETag"]})
    try:
        urllib.request.urlopen(request)
        raise AssertionError("If-None-Match with the current ETag did not answer 304")
    except urllib.error.HTTPError as error:
        check("a 304 answers 304", error.code == 304, error.code)
        check("a 304 carries the ETag", error.headers.get("ETag") == head["ETag"], error.headers.get("ETag"))
        check("a 304 carries Last-Modified", bool(error.headers.get("Last-Modified")), dict(error.headers))

    listed = s3.list_objects_v2(Bucket=BUCKET, MaxKeys=0)
    check("MaxKeys=0 lists nothing and is not truncated", not listed["IsTruncated"] and listed["KeyCount"] == 0, listed)
    listed = s3.list_objects(Bucket=BUCKET, Delimiter="")
    check("an empty Delimiter is not echoed", "Delimiter" not in listed, listed.get("Delimiter"))

    listed = s3.list_objects(Bucket=BUCKET, Prefix="\n")
    check("ListObjects (v1) echoes the prefix as given, even with encoding-type=url",
          listed.get("Prefix") == "\n" and "Contents" not in listed, listed.get("Prefix"))

    answer = {}
    s3.meta.events.register("after-call.s3.GetObject", lambda http_response, **_: answer.update(body=http_response.content))
    try:
        s3.get_object(Bucket=BUCKET, Key="absent")
        raise AssertionError("a GET of an absent key succeeded")
    except botocore.exceptions.ClientError as error:
        body = ElementTree.fromstring(answer["body"])
        check("an error body carries AWS's message", body.findtext("Message") == "The specified key does not exist.",
              answer["body"])
        check("an error body carries the request id of its x-amz-request-id header",
              body.findtext("RequestId") == error.response["ResponseMetadata"]["RequestId"], answer["body"])

    same = {"Bucket": BUCKET, "Key": "untyped"}
    check("copying an object onto itself unchanged is refused",
          error_code(lambda: s3.copy_object(CopySource=same, **same)) == "InvalidRequest")
    s3.copy_object(CopySource=same, MetadataDirective="REPLACE", Metadata={"v": "2"}, **same)
    check("copying an object onto itself with new metadata is accepted",
          s3.head_object(**same)["Metadata"] == {"v": "2"})

    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="mp")["UploadId"]
    etag = s3.upload_part(Bucket=BUCKET, Key="mp", UploadId=upload, PartNumber=1, Body=b"p" * 1000)["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    first = s3.complete_multipart_upload(Bucket=BUCKET, Key="mp", UploadId=upload, MultipartUpload=parts)
    repeated = s3.complete_multipart_upload(Bucket=BUCKET, Key="mp", UploadId=upload, MultipartUpload=parts)
    check("a repeated CompleteMultipartUpload answers the object it made", repeated["ETag"] == first["ETag"], repeated)
    other = {"Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]}
    check("a completion of an ended upload with other parts is NoSuchUpload",
          error_code(lambda: s3.complete_multipart_upload(Bucket=BUCKET, Key="mp", UploadId=upload, MultipartUpload=other)) == "NoSuchUpload")

    s3.delete_object(**same)
    s3.delete_object(Bucket=BUCKET, Key="mp")
    pending = s3.create_multipart_upload(Bucket=BUCKET, Key="never-completed")["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key="never-completed", UploadId=pending, PartNumber=1, Body=b"part")
    s3.delete_bucket(Bucket=BUCKET)
    check("a bucket with only an upload in progress is deleted, the upload with it",
          error_code(lambda: s3.list_parts(Bucket=BUCKET, Key="never-completed", UploadId=pending)) == "NoSuchBucket")
    print("all checks passed")


if __name__ == "__main__":
    main()
