#!/usr/bin/env python3
"""Prints, in hex, the bytes HAProxy sends to check an mpa_server replica's gRPC health.

deploy/helm/multipole/files/haproxy.cfg checks each replica with `tcp-check send-binary`: HAProxy
2.6's HTTP checks cannot carry a gRPC message (it starts with NUL bytes), so the check writes one
grpc.health.v1.Health/Check call over cleartext HTTP/2 itself. This writes those bytes; the
config holds them (split over several lines) and tests/deploy checks that they are these.

    client preface  "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n"
    SETTINGS        empty (defaults)
    HEADERS         stream 1, END_HEADERS; HPACK (RFC 7541) without Huffman coding or indexing:
                    :method POST, :scheme http (static table entries 3 and 6), :path
                    /grpc.health.v1.Health/Check, :authority mpa, content-type application/grpc
                    (names from the static table), te trailers (literal name)
    DATA            stream 1, END_STREAM: a gRPC message (flag 0, 4-byte big-endian length) holding
                    HealthCheckRequest{service: "multipole.v1.DecodeService"} (field 1, bytes)

Usage: grpc_health_check_bytes.py [SERVICE]
"""
import struct
import sys


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def short_string(data):
    # An HPACK string literal without Huffman coding, or a protobuf length: one byte below 127.
    assert len(data) < 127
    return bytes([len(data)]) + data


def literal(name_index, value):
    # Literal header field without indexing, indexed name (4-bit prefix).
    prefix = bytes([name_index]) if name_index < 15 else bytes([15, name_index - 15])
    return prefix + short_string(value)


def check_bytes(service):
    headers = (
        b"\x83"  # :method POST
        + b"\x86"  # :scheme http
        + literal(4, b"/grpc.health.v1.Health/Check")  # :path
        + literal(1, b"mpa")  # :authority
        + literal(31, b"application/grpc")  # content-type
        + b"\x00" + short_string(b"te") + short_string(b"trailers")
    )
    message = b"\x0a" + short_string(service.encode())
    data = b"\x00" + struct.pack(">I", len(message)) + message
    return (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + frame(0x4, 0x0, 0, b"")  # SETTINGS
        + frame(0x1, 0x4, 1, headers)  # HEADERS, END_HEADERS
        + frame(0x0, 0x1, 1, data)  # DATA, END_STREAM
    )


if __name__ == "__main__":
    print(check_bytes(sys.argv[1] if len(sys.argv) > 1 else "multipole.v1.DecodeService").hex())
