"""CORS with tenants (issue 13): bucket names are per tenant, so a preflight whose URL names a
tenant's key (a presigned URL's) takes that tenant's rules, an anonymous one those of every
tenant holding a bucket of the name, and a signed request with an Origin its signer's.

usage: cors_tenants.py ENDPOINT KEY_A SECRET_A KEY_B SECRET_B
The last line is "all checks passed".
"""
import sys
import urllib.error
import urllib.parse
import urllib.request

import boto3

from s3_semantics import check

BUCKET = "same-name"


def preflight(url, origin):
    """Status and Access-Control-Allow-Origin of an OPTIONS request to `url` from `origin`."""
    request = urllib.request.Request(url, method="OPTIONS", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, answer.headers.get("Access-Control-Allow-Origin")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Access-Control-Allow-Origin")


def main():
    endpoint, key_a, secret_a, key_b, secret_b = sys.argv[1:6]
    client = lambda key, secret: boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                              aws_access_key_id=key, aws_secret_access_key=secret)
    a, b = client(key_a, secret_a), client(key_b, secret_b)
    for s3, origin in [(a, "https://a.example"), (b, "https://b.example")]:
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"x")
        s3.put_bucket_cors(Bucket=BUCKET, CORSConfiguration={"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": [origin]}]})

    anonymous = f"{endpoint}/{BUCKET}/k"
    for origin in ["https://a.example", "https://b.example"]:
        status, allowed = preflight(anonymous, origin)
        check(f"an anonymous preflight from {origin} is allowed by its tenant's rule", status == 200 and allowed == origin, f"{status} {allowed}")
    status, _ = preflight(anonymous, "https://c.example")
    check("an anonymous preflight no tenant's rule allows is 403", status == 403, status)

    presigned_a = a.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"})
    status, allowed = preflight(presigned_a, "https://a.example")
    check("a presigned URL's preflight takes its tenant's rules", status == 200 and allowed == "https://a.example", f"{status} {allowed}")
    status, _ = preflight(presigned_a, "https://b.example")
    check("a presigned URL's preflight does not take another tenant's rules", status == 403, status)

    def from_origin(origin):
        def add(request, **_):
            request.headers["Origin"] = origin
        return add
    for origin, expected in [("https://a.example", "https://a.example"), ("https://b.example", None)]:
        browser = client(key_a, secret_a)
        browser.meta.events.register("before-sign.s3.GetObject", from_origin(origin))
        headers = browser.get_object(Bucket=BUCKET, Key="k")["ResponseMetadata"]["HTTPHeaders"]
        check(f"tenant a's signed GET from {origin} answers its own rules", headers.get("access-control-allow-origin") == expected, f"{headers}")
    print("all checks passed")


if __name__ == "__main__":
    main()
