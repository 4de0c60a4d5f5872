"""Bucket and object settings (issue 13) as AWS S3 answers them for a private bucket created
today: versioning never enabled (enabling it is refused, clearly; suspending it is kept); the
owner alone with full control, ACLs disabled (only `private` accepted, on creation too); every
public access blocked, BucketOwnerEnforced ownership and no CORS configuration until changed
(each kept, answered and deleted as S3 does, and seen through a second gateway when one is
given); no bucket policy and no object lock (404s, and S3's answers for a bucket without it);
GetObjectAttributes with the ETag, size, storage class and part count of an object; public
ACLs on writes refused.

usage: bucket_settings.py ENDPOINT [SECOND_ENDPOINT]
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Each check is named; the
first failure raises with its name; the last line is "all checks passed".
"""
import datetime
import sys

import boto3
import botocore.config

from s3_semantics import check, error_code

BUCKET = "settings"


def main():
    endpoint = sys.argv[1]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="object", Body=b"x")

    versioning = s3.get_bucket_versioning(Bucket=BUCKET)
    check("a bucket is unversioned", "Status" not in versioning, f"{versioning}")
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"})
    suspended = s3.get_bucket_versioning(Bucket=BUCKET).get("Status")
    check("suspending versioning is kept", suspended == "Suspended", suspended)
    refused = error_code(lambda: s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}))
    check("enabling versioning is refused as not implemented", refused == "NotImplemented", refused)
    refused = error_code(lambda: s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Sometimes"}))
    check("a versioning status S3 does not know is MalformedXML", refused == "MalformedXML", refused)

    acl = s3.get_bucket_acl(Bucket=BUCKET)
    owner = acl["Owner"]["ID"]
    grants = [(g["Grantee"]["Type"], g["Grantee"].get("ID"), g["Permission"]) for g in acl["Grants"]]
    check("the bucket ACL gives the owner alone full control", len(owner) == 64 and grants == [("CanonicalUser", owner, "FULL_CONTROL")],
          f"{acl}")
    object_acl = s3.get_object_acl(Bucket=BUCKET, Key="object")
    check("an object ACL gives the same owner full control", object_acl["Owner"]["ID"] == owner and len(object_acl["Grants"]) == 1)
    check("the ACL of an object that is not there is NoSuchKey",
          error_code(lambda: s3.get_object_acl(Bucket=BUCKET, Key="absent")) == "NoSuchKey")
    s3.put_bucket_acl(Bucket=BUCKET, ACL="private")
    s3.put_object_acl(Bucket=BUCKET, Key="object", ACL="private")
    check("the private ACL is accepted", True)
    for canned in ["public-read", "public-read-write", "authenticated-read"]:
        check(f"the {canned} ACL is refused", error_code(lambda: s3.put_bucket_acl(Bucket=BUCKET, ACL=canned)) == "AccessControlListNotSupported")
    check("a public object ACL is refused",
          error_code(lambda: s3.put_object_acl(Bucket=BUCKET, Key="object", ACL="public-read")) == "AccessControlListNotSupported")

    check("no CORS configuration", error_code(lambda: s3.get_bucket_cors(Bucket=BUCKET)) == "NoSuchCORSConfiguration")
    check("no bucket policy", error_code(lambda: s3.get_bucket_policy(Bucket=BUCKET)) == "NoSuchBucketPolicy")
    check("no bucket policy status", error_code(lambda: s3.get_bucket_policy_status(Bucket=BUCKET)) == "NoSuchBucketPolicy")
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    check("every public access is blocked", all(block[name] for name in
          ["BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"]), f"{block}")
    rules = s3.get_bucket_ownership_controls(Bucket=BUCKET)["OwnershipControls"]["Rules"]
    check("objects belong to the bucket owner", rules == [{"ObjectOwnership": "BucketOwnerEnforced"}], f"{rules}")

    listed = s3.list_objects_v2(Bucket=BUCKET)["Contents"][0]
    check("ListObjectsV2 names no owner unless asked", "Owner" not in listed, f"{listed}")
    listed = s3.list_objects_v2(Bucket=BUCKET, FetchOwner=True)["Contents"][0]
    check("ListObjectsV2 with FetchOwner names the owner", listed.get("Owner", {}).get("ID") == owner, f"{listed}")
    listed = s3.list_objects(Bucket=BUCKET)["Contents"][0]
    check("ListObjects names the owner", listed.get("Owner", {}).get("ID") == owner, f"{listed}")

    attributes = s3.get_object_attributes(Bucket=BUCKET, Key="object", ObjectAttributes=["ETag", "ObjectSize", "StorageClass", "ObjectParts"])
    etag = s3.head_object(Bucket=BUCKET, Key="object")["ETag"].strip('"')
    check("GetObjectAttributes gives ETag, size and storage class; no parts for an object sent whole",
          attributes["ETag"].strip('"') == etag and attributes["ObjectSize"] == 1 and attributes["StorageClass"] == "STANDARD"
          and "ObjectParts" not in attributes, f"{attributes}")
    # Parts sent without checksums (boto3 adds a CRC32 unless told not to): S3 lists no parts.
    bare = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=botocore.config.Config(request_checksum_calculation="when_required"))
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="parts")["UploadId"]
    sizes = [5 << 20, 5 << 20, 1000]
    parts = [{"PartNumber": n, "ETag": bare.upload_part(Bucket=BUCKET, Key="parts", UploadId=upload, PartNumber=n, Body=b"p" * size)["ETag"]}
             for n, size in enumerate(sizes, start=1)]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="parts", UploadId=upload, MultipartUpload={"Parts": parts})
    counted = s3.get_object_attributes(Bucket=BUCKET, Key="parts", ObjectAttributes=["ObjectParts", "ObjectSize"], MaxParts=2)
    check("GetObjectAttributes counts the parts of an object uploaded by parts (and lists none: no part checksums)",
          counted["ObjectParts"]["TotalPartsCount"] == 3 and "Parts" not in counted["ObjectParts"]
          and counted["ObjectSize"] == sum(sizes), f"{counted}")
    refused = error_code(lambda: s3.put_object(Bucket=BUCKET, Key="public", Body=b"x", ACL="public-read"))
    check("a public ACL on a write is refused", refused == "AccessControlListNotSupported", refused)
    s3.put_object(Bucket=BUCKET, Key="owned", Body=b"x", ACL="bucket-owner-full-control")
    check("the owner's ACL on a write is accepted", True)
    check("ListBuckets names the owner", s3.list_buckets()["Owner"]["ID"] == owner)

    kept_settings(s3, boto3.client("s3", endpoint_url=sys.argv[2], region_name="us-east-1") if len(sys.argv) > 2 else s3)
    refused_creations(s3)

    for name, call in [("versioning", lambda: s3.get_bucket_versioning(Bucket="no-such-bucket")),
                       ("ACL", lambda: s3.get_bucket_acl(Bucket="no-such-bucket")),
                       ("CORS", lambda: s3.get_bucket_cors(Bucket="no-such-bucket")),
                       ("public access block", lambda: s3.get_public_access_block(Bucket="no-such-bucket"))]:
        check(f"the {name} of a bucket that is not there is NoSuchBucket", error_code(call) == "NoSuchBucket")
    print("all checks passed")


def kept_settings(s3, other):
    """Settings changed through `s3` are answered through `other` (the same gateway, or a second
    one over the same upstream); a bucket created again under the name starts afresh."""
    rules = [{"AllowedMethods": ["GET", "PUT"], "AllowedOrigins": ["*.example"], "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 300},
             {"ID": "second", "AllowedMethods": ["HEAD"], "AllowedOrigins": ["https://hub.example"], "AllowedHeaders": ["*"]}]
    s3.put_bucket_cors(Bucket=BUCKET, CORSConfiguration={"CORSRules": rules})
    answered = other.get_bucket_cors(Bucket=BUCKET)["CORSRules"]
    check("CORS rules are kept as given", answered == rules, f"{answered}")
    bad = {"CORSRules": [{"AllowedMethods": ["PATCH"], "AllowedOrigins": ["*"]}]}
    refused = error_code(lambda: s3.put_bucket_cors(Bucket=BUCKET, CORSConfiguration=bad))
    check("a CORS rule with a method S3 does not take is refused", refused == "InvalidRequest", refused)
    bad = {"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"], "ExposeHeaders": ["x-amz-*"]}]}
    refused = error_code(lambda: s3.put_bucket_cors(Bucket=BUCKET, CORSConfiguration=bad))
    check("a wildcard in an exposed header is refused", refused == "InvalidRequest", refused)
    check("the refused rules changed nothing", other.get_bucket_cors(Bucket=BUCKET)["CORSRules"] == rules)
    s3.delete_bucket_cors(Bucket=BUCKET)
    check("deleted CORS rules are gone", error_code(lambda: other.get_bucket_cors(Bucket=BUCKET)) == "NoSuchCORSConfiguration")

    block = {"BlockPublicAcls": True, "IgnorePublicAcls": False, "BlockPublicPolicy": True, "RestrictPublicBuckets": False}
    s3.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration=block)
    answered = other.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    check("a public access block is kept", answered == block, f"{answered}")
    status = s3.delete_public_access_block(Bucket=BUCKET)["ResponseMetadata"]["HTTPStatusCode"]
    gone = error_code(lambda: other.get_public_access_block(Bucket=BUCKET))
    check("a deleted public access block is 204, then NoSuchPublicAccessBlockConfiguration",
          status == 204 and gone == "NoSuchPublicAccessBlockConfiguration", f"{status} {gone}")

    s3.delete_bucket_ownership_controls(Bucket=BUCKET)
    gone = error_code(lambda: other.get_bucket_ownership_controls(Bucket=BUCKET))
    check("deleted ownership controls are OwnershipControlsNotFoundError", gone == "OwnershipControlsNotFoundError", gone)
    check("ACLs stay disabled without ownership controls",
          error_code(lambda: s3.put_bucket_acl(Bucket=BUCKET, ACL="public-read")) == "AccessControlListNotSupported")
    refused = error_code(lambda: s3.put_bucket_ownership_controls(Bucket=BUCKET, OwnershipControls={"Rules": [{"ObjectOwnership": "ObjectWriter"}]}))
    check("ownership that would enable ACLs is refused as not implemented", refused == "NotImplemented", refused)
    s3.put_bucket_ownership_controls(Bucket=BUCKET, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
    rules = other.get_bucket_ownership_controls(Bucket=BUCKET)["OwnershipControls"]["Rules"]
    check("BucketOwnerEnforced ownership is kept", rules == [{"ObjectOwnership": "BucketOwnerEnforced"}], f"{rules}")

    check("a bucket has no object lock configuration",
          error_code(lambda: s3.get_object_lock_configuration(Bucket=BUCKET)) == "ObjectLockConfigurationNotFoundError")
    lock = {"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}}
    check("object lock cannot be enabled on an existing bucket",
          error_code(lambda: s3.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration=lock)) == "InvalidBucketState")
    until = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    for name, call in [("a retention", lambda: s3.put_object(Bucket=BUCKET, Key="locked", Body=b"x", ObjectLockMode="GOVERNANCE",
                                                            ObjectLockRetainUntilDate=until)),
                       ("a legal hold", lambda: s3.create_multipart_upload(Bucket=BUCKET, Key="locked", ObjectLockLegalHoldStatus="ON"))]:
        refused = error_code(call)
        check(f"a write asking for {name} in a bucket without object lock is InvalidRequest", refused == "InvalidRequest", refused)
    check("the refused writes stored nothing", error_code(lambda: s3.head_object(Bucket=BUCKET, Key="locked")) in ("404", "NoSuchKey"))
    for name, call in [("retention", lambda: s3.get_object_retention(Bucket=BUCKET, Key="object")),
                       ("legal hold", lambda: s3.put_object_legal_hold(Bucket=BUCKET, Key="object", LegalHold={"Status": "ON"}))]:
        check(f"an object's {name} in a bucket without object lock is InvalidRequest", error_code(call) == "InvalidRequest")

    s3.create_bucket(Bucket="fresh")
    s3.put_bucket_cors(Bucket="fresh", CORSConfiguration={"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]})
    s3.delete_bucket(Bucket="fresh")
    other.create_bucket(Bucket="fresh")
    check("a bucket created again under the name has no CORS rules",
          error_code(lambda: s3.get_bucket_cors(Bucket="fresh")) == "NoSuchCORSConfiguration")
    s3.delete_bucket(Bucket="fresh")


def refused_creations(s3):
    """Buckets the gateway cannot make as asked are refused, none is made."""
    for name, call, code in [
        ("with object lock", lambda: s3.create_bucket(Bucket="locked", ObjectLockEnabledForBucket=True), "NotImplemented"),
        ("with ACLs enabled", lambda: s3.create_bucket(Bucket="locked", ObjectOwnership="ObjectWriter"), "NotImplemented"),
        ("with a public ACL", lambda: s3.create_bucket(Bucket="locked", ACL="public-read"), "InvalidBucketAclWithObjectOwnership"),
    ]:
        refused = error_code(call)
        check(f"creating a bucket {name} is refused", refused == code, refused)
    check("no refused bucket was made", error_code(lambda: s3.head_bucket(Bucket="locked")) in ("404", "NoSuchBucket"))


if __name__ == "__main__":
    main()
