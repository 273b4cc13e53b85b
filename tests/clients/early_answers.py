"""Early answers read by a client that sends its whole request before reading: Python's
http.client (what urllib uses). Usage: early_answers.py HOST PORT PATH JWT BODY_BYTES
Each case runs five times; any BrokenPipeError or ConnectionResetError fails it."""
import http.client
import sys

host, port, path, jwt, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
form = {"Content-Type": "application/x-www-form-urlencoded"}


def ask(body, headers):
    c = http.client.HTTPConnection(host, port, timeout=20)
    try:
        c.request("POST", path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


big = b"content=record&format=json&data=" + b"x" * size
cases = [
    ("an over-limit body", 413, big, {**form, "Authorization": f"Bearer {jwt}"}),
    ("a head over max_header_bytes", 431, b"content=record", {**form, "Authorization": "Bearer " + "a" * 70_000}),
    ("a large body without credentials", 401, big, form),
]
for what, want, body, headers in cases:
    for i in range(5):
        status, text = ask(body, headers)
        assert status == want, f"{what}: {status} {text[:200]!r}"
    print(f"ok: {what}: {want} five times")
print("early answers: all read")
