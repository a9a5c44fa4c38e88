#!/usr/bin/env python3
"""Malformed WebSocket frames on raw sockets against troupe_gateway_test_server: each must be answered with
the RFC 6455 close code (1002 protocol error, 1007 bad UTF-8, 1009 too big), while well-formed frames
(masked text, ping) work. Starts its own server on port 0 (TROUPE_GATEWAY_SERVER names the binary)."""
import base64
import json
import os
import socket
import struct
import subprocess
import sys

SERVER = os.environ.get("TROUPE_GATEWAY_SERVER", "build/tests/gateway/troupe_gateway_test_server")
failures = 0
checks = 0


def check(cond, what, extra=""):
    global failures, checks
    checks += 1
    if not cond:
        failures += 1
        print(f"FAIL: {what} {extra}", file=sys.stderr)


def frame(opcode, payload, fin=True, mask=True, rsv=0):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    head = bytes([b0])
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def read_frame(s):
    b0, b1 = recv_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", recv_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", recv_exact(s, 8))[0]
    if b1 & 0x80:
        recv_exact(s, 4)  # servers never mask; tolerate it anyway
    return b0 & 0x0F, recv_exact(s, n)


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += recv_exact(s, 1)
    check(head.startswith(b"HTTP/1.1 101"), "upgrade answered 101", head[:40])
    return s


def close_code_after(port, data, what, want):
    s = connect(port)
    try:
        s.sendall(data)
        while True:
            op, payload = read_frame(s)
            if op == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                check(code == want, what, f"got close code {code}, want {want}")
                return
    except (EOFError, OSError) as e:
        check(False, what, f"no close frame ({e})")
    finally:
        s.close()


def main():
    proc = subprocess.Popen([SERVER, "--port", "0", "--ws-max-message", "1024", "--step-ms", "2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.split()[-1])

        # Well-formed: a masked generate, a ping
        s = connect(port)
        s.sendall(frame(0x1, json.dumps({"type": "generate", "id": "r", "prompt": "x", "max_tokens": 3}).encode()))
        text, done = "", None
        while done is None:
            op, payload = read_frame(s)
            if op == 1:
                msg = json.loads(payload)
                if msg["type"] == "token":
                    text += msg["text"]
                elif msg["type"] == "done":
                    done = msg
        check(text == "the", "masked generate streams", text)
        check(done["finish_reason"] == "length", "done frame", done)
        s.sendall(frame(0x9, b"abc"))
        op, payload = read_frame(s)
        check(op == 0xA and payload == b"abc", "ping -> pong with the payload", (op, payload))
        # A clean close is echoed with 1000
        s.sendall(frame(0x8, struct.pack("!H", 1000)))
        op, payload = read_frame(s)
        check(op == 8 and struct.unpack("!H", payload[:2])[0] == 1000, "close 1000 echoed", payload)
        s.close()

        hello = json.dumps({"type": "cancel", "id": "x"}).encode()
        close_code_after(port, frame(0x1, hello, mask=False), "unmasked client frame -> 1002", 1002)
        close_code_after(port, frame(0x1, b'{"type":"\xff\xfe"}'), "bad UTF-8 text -> 1007", 1007)
        close_code_after(port, frame(0x1, b"x" * 2000), "message over the limit -> 1009", 1009)
        close_code_after(port, frame(0x1, b"x" * 600, fin=False) + frame(0x0, b"x" * 600),
                         "fragmented message over the limit -> 1009", 1009)
        close_code_after(port, frame(0x9, b"abc", fin=False), "fragmented ping -> 1002", 1002)
        close_code_after(port, frame(0x9, b"x" * 126), "control frame over 125 bytes -> 1002", 1002)
        close_code_after(port, frame(0x1, hello, rsv=4), "reserved bit without an extension -> 1002", 1002)
        close_code_after(port, frame(0x3, hello), "reserved opcode -> 1002", 1002)
        close_code_after(port, frame(0x0, hello), "continuation with nothing to continue -> 1002", 1002)
        close_code_after(port, frame(0x1, b"{", fin=False) + frame(0x1, b"}"),
                         "new message inside a fragmented one -> 1002", 1002)
        close_code_after(port, frame(0x1, b'{"a":"\xc3', fin=False) + frame(0x0, b'("}'),
                         "bad UTF-8 across fragments -> 1007", 1007)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    print(f"ws_raw_frames: {checks - failures}/{checks} checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
