"""Details of S3's answers that clients and caches rely on (issue 13), each checked against
what AWS S3 answers, with boto3 and raw HTTP where boto3 hides the detail.

usage: s3_details.py ENDPOINT
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Each check is named; the
first failure raises with its name; the last line is "all checks passed".
"""
import datetime
import os
import sys
import urllib.error
import urllib.request
from xml.etree import ElementTree

import boto3
import botocore
import botocore.config

from s3_semantics import check, error_code

BUCKET = "details"


def refused_get(client, what):
    """The XML error body and the headers of the answer to a GET of an absent key that must fail."""
    answer = {}
    hook = lambda http_response, **_: answer.update(body=http_response.content)
    client.meta.events.register("after-call.s3.GetObject", hook)
    try:
        client.get_object(Bucket=BUCKET, Key="absent")
        raise AssertionError(f"{what} succeeded")
    except botocore.exceptions.ClientError as error:
        return ElementTree.fromstring(answer["body"]), error.response["ResponseMetadata"]["HTTPHeaders"]
    finally:
        client.meta.events.unregister("after-call.s3.GetObject", hook)


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

    listed = s3.list_objects(Bucket=BUCKET)
    check("ListObjects (v1) always answers Prefix and Marker, empty when none was given",
          listed.get("Prefix") == "" and listed.get("Marker") == "", listed)
    for key in ["v1", "v2", "v3"]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"v")
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix="v", MaxKeys=2)
    check("a truncated ListObjectVersions names the version to resume after",
          versions["IsTruncated"] and versions.get("NextKeyMarker") == "v2" and versions.get("NextVersionIdMarker") == "null",
          versions)
    rest = s3.list_object_versions(Bucket=BUCKET, Prefix="v", KeyMarker="v2", VersionIdMarker="null")
    check("ListObjectVersions resumes after its markers and echoes them",
          [version["Key"] for version in rest["Versions"]] == ["v3"] and rest.get("VersionIdMarker") == "null", rest)

    attributes = s3.get_object_attributes(Bucket=BUCKET, Key="v1", ObjectAttributes=["ETag"])
    check("GetObjectAttributes answers the ETag without quotes",
          attributes["ETag"] == s3.head_object(Bucket=BUCKET, Key="v1")["ETag"].strip('"'), attributes["ETag"])

    s3.put_object(Bucket=BUCKET, Key="gz", Body=b"v", ContentEncoding="gzip, aws-chunked")
    check("aws-chunked is dropped from the stored Content-Encoding",
          s3.head_object(Bucket=BUCKET, Key="gz")["ContentEncoding"] == "gzip")
    s3.put_object(Bucket=BUCKET, Key="chunked", Body=b"v", ContentEncoding="aws-chunked")
    check("an object sent with aws-chunked alone keeps no Content-Encoding",
          "ContentEncoding" not in s3.head_object(Bucket=BUCKET, Key="chunked"))
    for key in ["v1", "v2", "v3", "gz", "chunked"]:
        s3.delete_object(Bucket=BUCKET, Key=key)

    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    s3.put_object(Bucket=BUCKET, Key="dated", Body=b"v", Expires=expires)
    check("Expires is stored and answered", s3.head_object(Bucket=BUCKET, Key="dated").get("Expires") == expires,
          s3.head_object(Bucket=BUCKET, Key="dated").get("Expires"))
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="dated-mp", Expires=expires)["UploadId"]
    etag = s3.upload_part(Bucket=BUCKET, Key="dated-mp", UploadId=upload, PartNumber=1, Body=b"p")["ETag"]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="dated-mp", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    check("Expires given at CreateMultipartUpload is answered for the object",
          s3.get_object(Bucket=BUCKET, Key="dated-mp").get("Expires") == expires)
    for key in ["dated", "dated-mp"]:
        s3.delete_object(Bucket=BUCKET, Key=key)

    s3.create_bucket(Bucket="details-located", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    check("GetBucketLocation answers the LocationConstraint given at creation",
          s3.get_bucket_location(Bucket="details-located").get("LocationConstraint") == "eu-west-1")
    check("GetBucketLocation of a bucket created without one answers the default region (empty)",
          s3.get_bucket_location(Bucket=BUCKET).get("LocationConstraint") is None)
    region = lambda bucket: s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"].get("x-amz-bucket-region")
    check("HeadBucket answers the bucket's region", region("details-located") == "eu-west-1" and region(BUCKET) == "us-east-1")
    regions = {bucket["Name"]: bucket.get("BucketRegion") for bucket in s3.list_buckets()["Buckets"]}
    check("ListBuckets answers each bucket's region", regions.get("details-located") == "eu-west-1" and regions.get(BUCKET) == "us-east-1", regions)
    s3.delete_bucket(Bucket="details-located")
    check("the default region named as a LocationConstraint is refused",
          error_code(lambda: s3.create_bucket(Bucket="details-named-default", CreateBucketConfiguration={"LocationConstraint": "us-east-1"}))
          == "InvalidLocationConstraint")

    for name in ["details-page-a", "details-page-b"]:
        s3.create_bucket(Bucket=name)
    page = s3.list_buckets(MaxBuckets=1)
    names = [bucket["Name"] for bucket in page["Buckets"]]
    while "ContinuationToken" in page:
        page = s3.list_buckets(MaxBuckets=1, ContinuationToken=page["ContinuationToken"])
        names += [bucket["Name"] for bucket in page["Buckets"]]
    check("ListBuckets pages one bucket at a time with MaxBuckets, in name order, to the end",
          names == sorted([BUCKET, "details-page-a", "details-page-b"]), names)
    page = s3.list_buckets(Prefix="details-page-")
    check("ListBuckets with a Prefix lists the names that start with it and echoes it",
          [bucket["Name"] for bucket in page["Buckets"]] == ["details-page-a", "details-page-b"]
          and page.get("Prefix") == "details-page-", page)
    for name in ["details-page-a", "details-page-b"]:
        s3.delete_bucket(Bucket=name)

    body, headers = refused_get(s3, "a GET of an absent key")
    check("an error body carries AWS's message", body.findtext("Message") == "The specified key does not exist.", ElementTree.tostring(body))
    check("an error body carries the request and host ids of its x-amz-request-id and x-amz-id-2 headers",
          body.findtext("RequestId") == headers["x-amz-request-id"] and body.findtext("HostId") == headers["x-amz-id-2"], ElementTree.tostring(body))
    # An error s3s raises itself (a signature that does not match) is answered the same way.
    forger = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key="not-the-secret")
    body, headers = refused_get(forger, "a GET with a wrong secret")
    check("a refused signature's error body carries the request and host ids of its headers",
          body.findtext("Code") == "SignatureDoesNotMatch" and body.findtext("RequestId") == headers["x-amz-request-id"]
          and body.findtext("HostId") == headers["x-amz-id-2"], ElementTree.tostring(body))

    same = {"Bucket": BUCKET, "Key": "untyped"}
    tags = s3.get_object_tagging(**same)
    check("an object's tag set is empty", tags["TagSet"] == [], tags)
    check("every answer carries an x-amz-id-2", bool(tags["ResponseMetadata"]["HTTPHeaders"].get("x-amz-id-2")), tags)
    check("deleting an object's tags answers 204", s3.delete_object_tagging(**same)["ResponseMetadata"]["HTTPStatusCode"] == 204)
    check("the tags of an absent key are NoSuchKey", error_code(lambda: s3.get_object_tagging(Bucket=BUCKET, Key="absent")) == "NoSuchKey")
    check("setting no tags is accepted", s3.put_object_tagging(Tagging={"TagSet": []}, **same)["ResponseMetadata"]["HTTPStatusCode"] == 200)
    check("a write setting tags is refused rather than its tags dropped",
          error_code(lambda: s3.put_object(Bucket=BUCKET, Key="tagged", Body=b"t", Tagging="team=ml")) == "NotImplemented"
          and error_code(lambda: s3.put_object_tagging(Tagging={"TagSet": [{"Key": "team", "Value": "ml"}]}, **same)) == "NotImplemented")
    head = s3.head_object(ResponseContentType="text/x-override", ResponseCacheControl="no-store", **same)
    check("HEAD takes the response-* overrides of its query", head["ContentType"] == "text/x-override" and head["CacheControl"] == "no-store", head)
    week = 7 * 24 * 3600
    signer = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=botocore.config.Config(signature_version="s3v4"))
    for expires, status in [(week, 200), (week + 1, 400)]:
        url = signer.generate_presigned_url("get_object", Params=same, ExpiresIn=expires)
        assert f"X-Amz-Expires={expires}&" in url, url
        try:
            answered, said = urllib.request.urlopen(url).status, b""
        except urllib.error.HTTPError as error:
            answered, said = error.code, error.read()
        check(f"a presigned URL valid for {expires} s answers {status}", answered == status, said)
        if status == 400:
            check("a presigned URL valid for over a week is AuthorizationQueryParametersError",
                  ElementTree.fromstring(said).findtext("Code") == "AuthorizationQueryParametersError", said)
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
