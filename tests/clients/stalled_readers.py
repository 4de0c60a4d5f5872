"""Readers that stop reading must not hold up other readers: STALLED GETs of an object read a
few bytes through a small receive buffer and then stop, while another client reads the whole
object, which must arrive in full within 30 seconds. With `cut`, each stalled connection must
then have been closed by the gateway short of the whole object (its client took nothing for
longer than the gateway's response_idle_timeout_secs).

usage: stalled_readers.py ENDPOINT BUCKET KEY SIZE STALLED [cut]
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. The last line is
"all checks passed".
"""
import socket
import sys
import time
import urllib.parse

import boto3
import botocore.config


def main():
    endpoint, bucket, key, size, stalled = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    cut = sys.argv[6:] == ["cut"]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      config=botocore.config.Config(signature_version="s3v4"))
    url = urllib.parse.urlsplit(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=600))
    sockets = []
    for _ in range(stalled):
        connection = socket.socket()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connection.connect((url.hostname, url.port))
        connection.sendall(f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
        head = connection.recv(64)
        assert head.startswith(b"HTTP/1.1 200"), head
        sockets.append(connection)
    # Let the stalled responses fill their buffers and whatever the gateway fetched ahead.
    time.sleep(2)
    started = time.monotonic()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    seconds = time.monotonic() - started
    assert len(body) == size, f"read {len(body)} bytes of {size}"
    assert seconds < 30, f"the whole object took {seconds:.1f} s behind {stalled} stalled readers"
    if cut:
        # A stalled reader whose answer still waited for the byte budget when the full read
        # ended (nothing written, so nothing timed) gets it now: it must be cut off once its
        # buffers are full, before anything here reads from it.
        time.sleep(5)
    for connection in sockets:
        if cut:
            received = drain(connection)
            assert received < size, f"a stalled reader was sent the whole object ({received} bytes)"
        connection.close()
    print(f"read {size} bytes in {seconds:.2f} s behind {stalled} stalled readers")
    print("all checks passed")


def drain(connection):
    """Bytes the connection still gives until the gateway's close (head included)."""
    connection.settimeout(30)
    received = 64
    while True:
        try:
            piece = connection.recv(1 << 16)
        except ConnectionResetError:
            return received
        if not piece:
            return received
        received += len(piece)


if __name__ == "__main__":
    main()
