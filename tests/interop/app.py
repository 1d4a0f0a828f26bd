"""A small WSGI application for the interop tests: it reports what arrived.

Run under uWSGI (http-socket) and gunicorn behind Gatehouse. Every answer carries
Content-Length; the body says the method, path, how many body bytes the application
read, their SHA-256, and the framing headers it saw.
"""
import hashlib
import os


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.startswith("/api/files/"):
        return download(environ, start_response)
    if "early" in environ.get("QUERY_STRING", ""):
        # Answers at once, without reading the upload (a quota check, say).
        out = b"too big\n"
        start_response("413 Payload Too Large", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
        return [out]
    body = environ["wsgi.input"].read()
    out = "{} {} len={} sha={} cl={} te={} server={}\n".format(
        environ["REQUEST_METHOD"],
        path,
        len(body),
        hashlib.sha256(body).hexdigest(),
        environ.get("CONTENT_LENGTH", ""),
        environ.get("HTTP_TRANSFER_ENCODING", ""),
        os.environ.get("APP_SERVER", "?"),
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]


# A download of 1,000,000 known bytes (byte i is i % 251), with single byte ranges.
FILE = bytes(i % 251 for i in range(1_000_000))


def download(environ, start_response):
    rng = environ.get("HTTP_RANGE", "")
    if rng.startswith("bytes=") and "," not in rng:
        first, _, last = rng[6:].partition("-")
        first = int(first)
        last = min(int(last) if last else len(FILE) - 1, len(FILE) - 1)
        part = FILE[first:last + 1]
        start_response("206 Partial Content", [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(part))),
            ("Content-Range", "bytes {}-{}/{}".format(first, last, len(FILE))),
        ])
        return [part]
    start_response("200 OK", [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(len(FILE))),
        ("Accept-Ranges", "bytes"),
    ])
    return [FILE]
