"""Messages between the front door (serve/pool.py) and its workers (serve/worker.py) over
a Unix socket pair: a frame is a fixed header (two lengths), a JSON header, then the
payload parts (request or response bodies) back to back, their lengths in the JSON
header's "parts". Bodies travel as bytes, never encoded; large ones go by file path
(the front door spools them) so that neither side holds them twice.

Written here rather than with multiprocessing.Connection: the front door reads with
asyncio streams, which multiprocessing's pickled frames do not fit, and nothing here is
pickled (a worker must not be able to make the front door run code).
"""
from __future__ import annotations

import json
import socket
import struct

FRAME = struct.Struct("!II")   # JSON header length, total payload length
MAX_HEADER = 16 * 1024 * 1024


def encode(header: dict, parts: list) -> list:
    """The buffers of one frame."""
    header = {**header, "parts": [len(p) for p in parts]}
    head = json.dumps(header, separators=(",", ":")).encode()
    return [FRAME.pack(len(head), sum(len(p) for p in parts)), head, *parts]


def _split(header: dict, payload) -> list[bytes]:
    parts, offset = [], 0
    for n in header.get("parts", []):
        parts.append(bytes(payload[offset:offset + n]))
        offset += n
    return parts


# ---------------------------------------------------------------- the worker's side (blocking)
def send(sock: socket.socket, header: dict, parts: list = ()) -> None:
    for buf in encode(header, list(parts)):
        sock.sendall(buf)


def recv(sock: socket.socket) -> tuple[dict, list[bytes]] | None:
    """The next message; None when the other side has closed the socket."""
    fixed = _recv_exactly(sock, FRAME.size)
    if fixed is None:
        return None
    head_len, payload_len = FRAME.unpack(fixed)
    if head_len > MAX_HEADER:
        raise ValueError(f"message header of {head_len} bytes")
    head = _recv_exactly(sock, head_len)
    payload = _recv_exactly(sock, payload_len) if payload_len else b""
    if head is None or payload is None:
        return None
    header = json.loads(head)
    return header, _split(header, memoryview(payload))


def _recv_exactly(sock: socket.socket, n: int):
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


# ---------------------------------------------------------------- the front door's side (asyncio)
async def read(reader) -> tuple[dict, list[bytes]]:
    """The next message (asyncio.IncompleteReadError when the worker has gone)."""
    head_len, payload_len = FRAME.unpack(await reader.readexactly(FRAME.size))
    if head_len > MAX_HEADER:
        raise ValueError(f"message header of {head_len} bytes")
    header = json.loads(await reader.readexactly(head_len))
    payload = await reader.readexactly(payload_len) if payload_len else b""
    return header, _split(header, memoryview(payload))


async def write(writer, header: dict, parts: list = ()) -> None:
    writer.writelines(encode(header, list(parts)))
    await writer.drain()
