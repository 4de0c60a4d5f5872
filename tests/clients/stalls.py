"""Stalled clients against a live gateway with two tenants: a PUT whose body stops coming must
neither hold up another tenant nor keep its share of the in-flight byte budget, and a client
that never finishes its request headers must be dropped while others are served.

usage: stalls.py ENDPOINT
Tenant A's key comes from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, tenant B's from
OTHER_ACCESS_KEY_ID / OTHER_SECRET_ACCESS_KEY. HEADER_TIMEOUT and IDLE_TIMEOUT are the
gateway's header_read_timeout_secs and body_idle_timeout_secs in seconds (2 and 3 if unset);
the gateway's per-tenant byte budget must hold all of tenant A's stalled bodies at once.
1. Tenant A stalls a PUT announcing 2 GiB and 20 PUTs announcing 1 MiB (1 KiB sent each, then
   silence); tenant B's 10 MB PUT meanwhile takes less than a second longer than the same PUT
   with nothing stalled, and reads back whole.
2. Within IDLE_TIMEOUT + 3 s each stalled PUT is answered (400 RequestTimeout, another 4xx) or
   its connection closed; none is acknowledged and none leaves an object.
3. With the stalled sockets still open, tenant A's 20 MB PUT takes at most twice the 10 MB
   one's time with nothing stalled, plus a second, and reads back whole.
4. 50 connections trickling a header line byte by byte are each closed within HEADER_TIMEOUT
   + 2 s, while ordinary requests keep being answered.
5. A CompleteMultipartUpload whose XML body stalls is answered 400 RequestTimeout within
   IDLE_TIMEOUT + 3 s.
Prints the measured figures as one JSON line, then "all checks passed"; otherwise one line per
failed check with its figures, and exits with status 1. Every socket and call has a timeout.
"""
import hashlib
import json
import os
import re
import selectors
import socket
import statistics
import sys
import threading
import time
import urllib.parse

import boto3
import botocore
from botocore.config import Config

from hostile import signed_head, signed_put_head

HEADER_TIMEOUT = float(os.environ.get("HEADER_TIMEOUT", "2"))
IDLE_TIMEOUT = float(os.environ.get("IDLE_TIMEOUT", "3"))
BUCKET_A, BUCKET_B = "stall-a", "stall-b"
SMALL_STALLS = 20
SLOW_SOCKETS = 50
TRICKLE_SECONDS = 0.5
TIMED_CALL_LIMIT = 5  # seconds a timed boto3 call may wait on its socket before it is given up
WATCHDOG_SECONDS = 60

figures, failures = {}, []


def client(endpoint, credentials, attempts=3, read_timeout=10):
    config = Config(connect_timeout=3, read_timeout=read_timeout,
                    retries={"mode": "standard", "total_max_attempts": attempts})
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=credentials[0],
                        aws_secret_access_key=credentials[1], config=config)


def create_bucket(s3, name):
    try:
        s3.create_bucket(Bucket=name)
    except botocore.exceptions.ClientError as error:
        if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise


def stored(s3, bucket, key):
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except botocore.exceptions.ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise


# Seconds the PUTs took with nothing stalled, once measured.
baseline_seconds = {}


def fail(check, detail):
    failures.append(f"check {check}: {detail}")


def timed_put_and_read_back(endpoint, credentials, bucket, key, body):
    """PUTs `body` with a fresh client (new connection, one attempt), then reads it back.
    Returns the figures: seconds taken, the error if any, whether bytes and ETag came back."""
    md5 = hashlib.md5(body).hexdigest()
    s3 = client(endpoint, credentials, attempts=1, read_timeout=TIMED_CALL_LIMIT)
    started = time.monotonic()
    try:
        put = s3.put_object(Bucket=bucket, Key=key, Body=body)
    except Exception as error:  # a timeout or a refusal: reported with the time it took
        return {"seconds": round(time.monotonic() - started, 3), "error": f"{type(error).__name__}: {error}"[:300]}
    result = {"seconds": round(time.monotonic() - started, 3)}
    got = client(endpoint, credentials).get_object(Bucket=bucket, Key=key)
    result["bytes_identical"] = got["Body"].read() == body
    result["etag_is_md5"] = put["ETag"].strip('"') == md5 and got["ETag"].strip('"') == md5
    return result


def open_stall(endpoint, key, announced):
    """Tenant A's signed PUT announcing `announced` bytes, of which 1 KiB is sent; the socket is
    then left silent and open."""
    parsed = urllib.parse.urlparse(endpoint)
    connection = socket.create_connection((parsed.hostname, parsed.port), timeout=5)
    connection.sendall(signed_put_head(endpoint, BUCKET_A, key, announced) + os.urandom(1024))
    return {"key": key, "socket": connection, "sent": time.monotonic(), "answer": b"", "after": None, "end": None}


def answer_complete(answer):
    head, separator, body = answer.partition(b"\r\n\r\n")
    if not separator:
        return False
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if length:
        return len(body) >= int(length.group(1))
    if re.search(rb"(?im)^transfer-encoding:.*chunked", head):
        return body.endswith(b"0\r\n\r\n")
    return False


def watch_answers(stalls, until):
    """Reads each stalled socket until `until`: when its answer's first byte (or its close) came,
    counted from its last byte sent, and the answer to its end."""
    selector = selectors.DefaultSelector()
    for stall in stalls:
        selector.register(stall["socket"], selectors.EVENT_READ, stall)
    while selector.get_map() and time.monotonic() < until:
        for ready, _ in selector.select(timeout=max(0.0, until - time.monotonic())):
            stall = ready.data
            try:
                chunk = stall["socket"].recv(65536)
            except OSError:
                chunk, stall["end"] = b"", "reset"
            if stall["after"] is None:
                stall["after"] = round(time.monotonic() - stall["sent"], 3)
            stall["answer"] += chunk
            if not chunk:
                stall["end"] = stall["end"] or "closed"
            if not chunk or answer_complete(stall["answer"]):
                selector.unregister(stall["socket"])
    selector.close()


def outcome(stall):
    """"400 RequestTimeout", "413" (a status without an error code), "closed", "reset" or
    "no answer"."""
    if stall["after"] is None:
        return "no answer"
    if not stall["answer"]:
        return stall["end"]
    status = (stall["answer"].split(b"\r\n", 1)[0].split() + [b"?", b"?"])[1].decode(errors="replace")
    code = re.search(rb"<Code>([^<]*)</Code>", stall["answer"])
    return f"{status} {code.group(1).decode(errors='replace')}" if code else status


def refused_or_closed(result):
    return result in ("closed", "reset") or result[:1] == "4"


def slowloris(endpoint, count, results):
    """Opens `count` connections that send a request line and Host, then trickle one more header
    line a byte every TRICKLE_SECONDS, never ending it. Records for each when the gateway closed
    it (seconds after it was opened), how, and any answer it sent first."""
    parsed = urllib.parse.urlparse(endpoint)
    opening = f"PUT /{BUCKET_A}/slow HTTP/1.1\r\nHost: {parsed.netloc}\r\n".encode()
    trickle = b"x-amz-meta-slow: " + b"z" * 256
    selector = selectors.DefaultSelector()
    for _ in range(count):
        connection = socket.create_connection((parsed.hostname, parsed.port), timeout=5)
        slow = {"socket": connection, "opened": time.monotonic(), "sent": 0, "closed": None, "how": None, "answer": b""}
        connection.sendall(opening)
        selector.register(connection, selectors.EVENT_READ, slow)
        results.append(slow)

    def closed(slow, how):
        slow["closed"], slow["how"] = round(time.monotonic() - slow["opened"], 3), how
        selector.unregister(slow["socket"])

    end = results[-1]["opened"] + HEADER_TIMEOUT + 2.5
    next_byte = time.monotonic() + TRICKLE_SECONDS
    while selector.get_map() and time.monotonic() < end:
        if time.monotonic() >= next_byte:
            next_byte += TRICKLE_SECONDS
            for ready in list(selector.get_map().values()):
                slow = ready.data
                try:
                    slow["socket"].send(trickle[slow["sent"]:slow["sent"] + 1])
                    slow["sent"] += 1
                except OSError as error:
                    closed(slow, type(error).__name__)
        for ready, _ in selector.select(timeout=max(0.0, min(next_byte, end) - time.monotonic())):
            slow = ready.data
            try:
                chunk = slow["socket"].recv(65536)
            except OSError as error:
                closed(slow, type(error).__name__)
                continue
            if chunk:
                slow["answer"] += chunk
            else:
                closed(slow, "eof")
    selector.close()


def check_stalled_puts_do_not_block(endpoint, a_key, b_key, token):
    """Checks 1 and 2; returns the stalls (sockets still open) for check 3 to close."""
    stalls = []
    # The same PUT with nothing stalled: what "delayed by" is measured against.
    baseline = timed_put_and_read_back(endpoint, b_key, BUCKET_B, f"ten-mb-alone-{token}", os.urandom(10_000_000))
    figures["0_b_put_10MB_alone"] = baseline
    judge_put(1, "tenant B's 10 MB PUT with nothing stalled", baseline, 10)
    baseline_seconds["10MB"] = baseline["seconds"]
    try:
        stalls.append(open_stall(endpoint, f"huge-{token}", 2 << 30))
        time.sleep(0.2)  # the 2 GiB PUT comes first, as it would take the whole budget if charged what it announces
        stalls += [open_stall(endpoint, f"small-{token}-{i:02}", 1 << 20) for i in range(SMALL_STALLS)]
    except OSError as error:
        fail(1, f"opening the stalled PUTs failed after {len(stalls)} of {SMALL_STALLS + 1}: {error}")
        return stalls
    until = stalls[-1]["sent"] + IDLE_TIMEOUT + 3
    watcher = threading.Thread(target=watch_answers, args=(stalls, until), daemon=True)
    watcher.start()
    time.sleep(0.3)

    body = os.urandom(10_000_000)
    put = timed_put_and_read_back(endpoint, b_key, BUCKET_B, f"ten-mb-{token}", body)
    figures["1_b_put_10MB"] = put
    judge_put(1, f"tenant B's 10 MB PUT beside {len(stalls)} stalled PUTs of tenant A", put, baseline_seconds["10MB"] + 1)

    watcher.join(timeout=max(0.0, until - time.monotonic()) + 2)
    results = [outcome(stall) for stall in stalls]
    afters = [stall["after"] for stall in stalls if stall["after"] is not None]
    counts = {}
    for result in results:
        counts[result] = counts.get(result, 0) + 1
    figures["2_stalled_puts"] = {
        "huge_2GiB": {"outcome": results[0], "after_s": stalls[0]["after"]},
        "all_outcomes": counts,
        "answered": len(afters), "of": len(stalls),
        "max_after_s": max(afters) if afters else None,
        "limit_s": IDLE_TIMEOUT + 3,
    }
    late = [(stall["key"], outcome(stall), stall["after"]) for stall in stalls
            if stall["after"] is None or stall["after"] > IDLE_TIMEOUT + 3]
    if late:
        fail(2, f"{len(late)} of {len(stalls)} stalled PUTs got no answer nor close within {IDLE_TIMEOUT + 3} s "
                f"of their last byte, e.g. {late[:3]}")
    if results[0] == "no answer":
        fail(2, f"the stalled 2 GiB PUT got no answer nor close within {IDLE_TIMEOUT + 3} s")
    elif not refused_or_closed(results[0]):
        fail(2, f"the stalled 2 GiB PUT was answered {results[0]!r} after {stalls[0]['after']} s, not a 4xx or a close")
    acknowledged = [result for result in results if result[:1] == "2"]
    if acknowledged:
        fail(2, f"{len(acknowledged)} stalled PUTs were acknowledged: {acknowledged[:3]}")
    a = client(endpoint, a_key)
    left = [stall["key"] for stall in stalls if stored(a, BUCKET_A, stall["key"])]
    figures["2_stalled_puts"]["objects_left"] = len(left)
    if left:
        fail(2, f"stalled PUTs left objects: {left[:3]}{' ...' if len(left) > 3 else ''}")
    return stalls


def check_budget_comes_back(endpoint, a_key, token):
    body = os.urandom(20_000_000)
    put = timed_put_and_read_back(endpoint, a_key, BUCKET_A, f"twenty-mb-{token}", body)
    figures["3_a_put_20MB_after_idle_timeout"] = put
    judge_put(3, "tenant A's 20 MB PUT after the idle timeout", put, 2 * baseline_seconds.get("10MB", 1) + 1)


def check_stalled_xml_body(endpoint, a_key, token):
    """A CompleteMultipartUpload whose XML body stops after a few bytes (s3s reads such bodies
    itself): the gateway ends it within a second or so of the idle timeout, never acknowledging."""
    s3 = client(endpoint, a_key)
    key = f"xml-{token}"
    upload = s3.create_multipart_upload(Bucket=BUCKET_A, Key=key)["UploadId"]
    parsed = urllib.parse.urlparse(endpoint)
    connection = socket.create_connection((parsed.hostname, parsed.port), timeout=5)
    head = signed_head("POST", endpoint, BUCKET_A, key, 1000, f"uploadId={urllib.parse.quote(upload)}")
    connection.sendall(head + b"<CompleteMultipartUpload>")
    stall = {"key": key, "socket": connection, "sent": time.monotonic(), "answer": b"", "after": None, "end": None}
    watch_answers([stall], stall["sent"] + IDLE_TIMEOUT + 4)
    connection.close()
    result = outcome(stall)
    figures["5_stalled_xml_body"] = {"outcome": result, "after_s": stall["after"]}
    if stall["after"] is None or stall["after"] > IDLE_TIMEOUT + 3:
        fail(5, f"a CompleteMultipartUpload with a stalled body was not ended within {IDLE_TIMEOUT + 3} s: {result}")
    elif result != "400 RequestTimeout":
        fail(5, f"a CompleteMultipartUpload with a stalled body was answered {result}, not 400 RequestTimeout")
    s3.abort_multipart_upload(Bucket=BUCKET_A, Key=key, UploadId=upload)


def judge_put(check, what, put, limit):
    """Fails `check` unless the timed PUT succeeded within `limit` seconds and read back whole."""
    if "error" in put:
        fail(check, f"{what} failed after {put['seconds']} s: {put['error']}")
        return
    if put["seconds"] >= limit:
        fail(check, f"{what} took {put['seconds']} s (limit {limit} s)")
    if not (put["bytes_identical"] and put["etag_is_md5"]):
        fail(check, f"{what} did not read back whole: {put}")


def check_slowloris(endpoint, a_key, token):
    slow = []
    attacker = threading.Thread(target=slowloris, args=(endpoint, SLOW_SOCKETS, slow), daemon=True)
    s3 = client(endpoint, a_key, attempts=1, read_timeout=TIMED_CALL_LIMIT)
    attacker.start()
    time.sleep(0.2)
    latencies, errors, round_trip = [], [], 0
    body = b"still served"
    while attacker.is_alive():
        started = time.monotonic()
        try:
            if round_trip % 3 == 0:
                s3.list_buckets()
            elif round_trip % 3 == 1:
                s3.put_object(Bucket=BUCKET_A, Key=f"served-{token}", Body=body)
            else:
                assert s3.get_object(Bucket=BUCKET_A, Key=f"served-{token}")["Body"].read() == body, "wrong bytes"
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}"[:200])
        latencies.append(time.monotonic() - started)
        round_trip += 1
        time.sleep(0.1)
    attacker.join(timeout=HEADER_TIMEOUT + 5)
    for connection in slow:
        connection["socket"].close()

    closes = [connection["closed"] for connection in slow if connection["closed"] is not None]
    hows, statuses = {}, {}
    for connection in slow:
        hows[connection["how"] or "open"] = hows.get(connection["how"] or "open", 0) + 1
        status = (connection["answer"].split(b"\r\n", 1)[0].split() + [b"none", b"none"])[1].decode(errors="replace")
        statuses[status] = statuses.get(status, 0) + 1
    figures["4_slowloris"] = {
        "opened": len(slow), "closed": len(closes),
        "max_close_s": max(closes) if closes else None,
        "median_close_s": round(statistics.median(closes), 3) if closes else None,
        "limit_s": HEADER_TIMEOUT + 2,
        "closed_by": hows, "answers_before_close": statuses,
        "normal_requests": len(latencies), "normal_failed": len(errors),
        "normal_max_s": round(max(latencies), 3) if latencies else None,
    }
    if len(slow) < SLOW_SOCKETS:
        fail(4, f"only {len(slow)} of {SLOW_SOCKETS} slow connections could be opened")
    late = [connection["closed"] for connection in slow if connection["closed"] is None or connection["closed"] > HEADER_TIMEOUT + 2]
    if late:
        fail(4, f"{len(late)} of {len(slow)} connections trickling their headers were not closed within "
                f"{HEADER_TIMEOUT + 2} s (closed: {len(closes)}, latest close {max(closes) if closes else None} s)")
    if not latencies:
        fail(4, "no ordinary request was made while the slow connections were open")
    if errors:
        fail(4, f"{len(errors)} of {len(latencies)} ordinary requests failed beside the slow connections: {errors[:2]}")
    if latencies and max(latencies) >= 2:
        fail(4, f"an ordinary request took {max(latencies):.2f} s beside the slow connections (limit 2 s)")


def report():
    print(json.dumps(figures, sort_keys=True), flush=True)
    for failure in failures:
        print(f"FAILED {failure}", flush=True)


def give_up():
    failures.append(f"the script gave up after {WATCHDOG_SECONDS} s")
    report()
    os._exit(2)


def main():
    endpoint = sys.argv[1]
    a_key = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    b_key = (os.environ["OTHER_ACCESS_KEY_ID"], os.environ["OTHER_SECRET_ACCESS_KEY"])
    watchdog = threading.Timer(WATCHDOG_SECONDS, give_up)
    watchdog.daemon = True
    watchdog.start()
    started = time.monotonic()
    token = os.urandom(4).hex()  # keys of this run only: a rerun on the same gateway starts clean
    try:
        create_bucket(client(endpoint, a_key), BUCKET_A)
        create_bucket(client(endpoint, b_key), BUCKET_B)
    except Exception as error:
        fail("setup", f"creating the buckets failed: {type(error).__name__}: {error}")
        report()
        sys.exit(1)

    stalls = []
    for number, run in ((1, lambda: stalls.extend(check_stalled_puts_do_not_block(endpoint, a_key, b_key, token))),
                        (3, lambda: check_budget_comes_back(endpoint, a_key, token)),
                        (4, lambda: check_slowloris(endpoint, a_key, token)),
                        (5, lambda: check_stalled_xml_body(endpoint, a_key, token))):
        try:
            run()
        except Exception as error:
            fail(number, f"stopped by {type(error).__name__}: {error}")
        if number == 3:
            for stall in stalls:  # held open through check 3: only the idle timeout may free the budget
                stall["socket"].close()
    figures["total_s"] = round(time.monotonic() - started, 1)
    report()
    if failures:
        sys.exit(1)
    print("stalls: all checks passed")


if __name__ == "__main__":
    main()
