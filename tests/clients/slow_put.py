"""A signed PUT (UNSIGNED-PAYLOAD) over a bare socket that stops halfway through its body for a
while, so that a test can act while the gateway holds a write in progress.

usage: slow_put.py ENDPOINT BUCKET KEY FILE PAUSE_AT PAUSE_SECONDS
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Sends the request head and the
first PAUSE_AT bytes of FILE, prints "paused", waits PAUSE_SECONDS, sends the rest, then prints
the answer's status line; exits 0 on a 200. A gateway that refuses the request before reading
its body (no request slot: 503 SlowDown) may close the connection while those first bytes are
still being sent: then it prints "paused" and "refused:" with the status line it got, if any,
and exits 1.
"""
import socket
import sys
import time
import urllib.parse

from hostile import signed_put_head


def main():
    endpoint, bucket, key, path, pause_at, pause_seconds = sys.argv[1:]
    body = open(path, "rb").read()
    pause_at = int(pause_at)
    parsed = urllib.parse.urlparse(endpoint)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=120) as connection:
        try:
            connection.sendall(signed_put_head(endpoint, bucket, key, len(body)) + body[:pause_at])
        except (BrokenPipeError, ConnectionResetError):
            try:
                answer = connection.recv(65536)
            except OSError:
                answer = b""
            status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
            print(f"paused\nrefused: {status}", flush=True)
            sys.exit(1)
        print("paused", flush=True)
        time.sleep(float(pause_seconds))
        connection.sendall(body[pause_at:])
        answer = b""
        while b"\r\n" not in answer:
            piece = connection.recv(65536)
            if not piece:
                break
            answer += piece
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    print(status, flush=True)
    sys.exit(0 if " 200 " in status + " " else 1)


if __name__ == "__main__":
    main()
