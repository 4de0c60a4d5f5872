"""CORS rules applied as AWS S3 applies them (issue 13): a preflight (`OPTIONS`, unsigned) is
answered from the bucket's rules (400 without an Origin and a method, 403 when no rule allows
it or the bucket has none, 200 with the Access-Control-* headers of the first rule allowing
it); a signed request carrying an Origin gets the same headers when a rule allows it.

usage: cors.py ENDPOINT
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Each check is named; the
first failure raises with its name; the last line is "all checks passed".
"""
import sys
import urllib.error
import urllib.request

import boto3

from s3_semantics import check

BUCKET = "browser"


def preflight(endpoint, path, headers):
    """Status and headers of an unsigned OPTIONS request."""
    request = urllib.request.Request(f"{endpoint}/{path}", method="OPTIONS", headers=headers)
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, answer.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers


def main():
    endpoint = sys.argv[1]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="model.safetensors", Body=b"weights")
    status, _ = preflight(endpoint, f"{BUCKET}/model.safetensors", {"Origin": "https://hub.example", "Access-Control-Request-Method": "GET"})
    check("a preflight to a bucket without CORS rules is 403", status == 403, status)

    rules = [{"AllowedMethods": ["GET", "HEAD"], "AllowedOrigins": ["https://*.hub.example"], "AllowedHeaders": ["range", "x-amz-*"],
              "ExposeHeaders": ["ETag", "Content-Range"], "MaxAgeSeconds": 600},
             {"AllowedMethods": ["PUT"], "AllowedOrigins": ["https://upload.example"]}]
    s3.put_bucket_cors(Bucket=BUCKET, CORSConfiguration={"CORSRules": rules})

    status, _ = preflight(endpoint, f"{BUCKET}/model.safetensors", {"Access-Control-Request-Method": "GET"})
    check("a preflight without an Origin is 400", status == 400, status)
    status, _ = preflight(endpoint, f"{BUCKET}/model.safetensors", {"Origin": "https://www.hub.example", "Access-Control-Request-Method": "PATCH"})
    check("a preflight for a method S3 does not take is 400", status == 400, status)
    status, headers = preflight(endpoint, f"{BUCKET}/model.safetensors", {
        "Origin": "https://www.hub.example", "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "Range, x-amz-date"})
    check("an allowed preflight is 200 with the rule's headers",
          status == 200 and headers.get("Access-Control-Allow-Origin") == "https://www.hub.example"
          and headers.get("Access-Control-Allow-Methods") == "GET, HEAD" and headers.get("Access-Control-Max-Age") == "600"
          and headers.get("Access-Control-Allow-Headers") == "range, x-amz-date"
          and headers.get("Access-Control-Expose-Headers") == "ETag, Content-Range", f"{status} {dict(headers)}")
    for name, asked in [("another origin", {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}),
                        ("a method no rule of the origin allows", {"Origin": "https://www.hub.example", "Access-Control-Request-Method": "DELETE"}),
                        ("a header no rule allows", {"Origin": "https://www.hub.example", "Access-Control-Request-Method": "GET",
                                                      "Access-Control-Request-Headers": "authorization"})]:
        status, headers = preflight(endpoint, f"{BUCKET}/model.safetensors", asked)
        check(f"a preflight with {name} is 403 without CORS headers",
              status == 403 and "Access-Control-Allow-Origin" not in headers, f"{status} {dict(headers)}")
    status, headers = preflight(endpoint, BUCKET, {"Origin": "https://upload.example", "Access-Control-Request-Method": "PUT"})
    check("the second rule allows its origin's uploads", status == 200 and headers.get("Access-Control-Allow-Origin") == "https://upload.example",
          f"{status} {dict(headers)}")
    status, _ = preflight(endpoint, "no-such-bucket/k", {"Origin": "https://www.hub.example", "Access-Control-Request-Method": "GET"})
    check("a preflight to a bucket that is not there is 403", status == 403, status)

    def with_origin(origin):
        def add(request, **_):
            request.headers["Origin"] = origin
        return add
    browser = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    browser.meta.events.register("before-sign.s3.GetObject", with_origin("https://www.hub.example"))
    answer = browser.get_object(Bucket=BUCKET, Key="model.safetensors")
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    check("a signed GET from an allowed origin carries the rule's headers",
          answer["Body"].read() == b"weights" and headers.get("access-control-allow-origin") == "https://www.hub.example"
          and headers.get("access-control-expose-headers") == "ETag, Content-Range", f"{headers}")
    stranger = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    stranger.meta.events.register("before-sign.s3.GetObject", with_origin("https://evil.example"))
    headers = stranger.get_object(Bucket=BUCKET, Key="model.safetensors")["ResponseMetadata"]["HTTPHeaders"]
    check("a signed GET from another origin carries none", "access-control-allow-origin" not in headers, f"{headers}")
    headers = s3.get_object(Bucket=BUCKET, Key="model.safetensors")["ResponseMetadata"]["HTTPHeaders"]
    check("a request without an Origin carries none", "access-control-allow-origin" not in headers, f"{headers}")

    s3.delete_bucket_cors(Bucket=BUCKET)
    status, _ = preflight(endpoint, f"{BUCKET}/model.safetensors", {"Origin": "https://www.hub.example", "Access-Control-Request-Method": "GET"})
    check("once the rules are deleted, preflights are 403", status == 403, status)
    print("all checks passed")


if __name__ == "__main__":
    main()
