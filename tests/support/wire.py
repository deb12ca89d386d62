"""Raw HTTP/1.1 on one connection, for tests that compare two servers' bytes."""

from __future__ import annotations

import asyncio

# What differs between two servers for the same answer: its date, the server's name.
UNCOMPARED = {"date", "server"}


def request(
    method: str, target: str, *headers: str, body: bytes = b"", version: str = "1.1"
) -> bytes:
    """A request's bytes: ``headers`` as given, a ``Content-Length`` when there is a body."""
    lines = [f"{method} {target} HTTP/{version}", "Host: proxy.test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(
    reader: asyncio.StreamReader, *, head: bool = False
) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.1 response: status line, headers (lower-cased names), body (unchunked);
    none after a ``head`` request."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *lines = raw.decode("latin-1").split("\r\n")[:-2]
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    elif "content-length" in headers and not head and status.split(" ")[1] not in ("204", "304"):
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = b""
    return status, headers, body


async def exchange(
    port: int, requests: list[bytes], answers: int
) -> list[tuple[str, dict[str, str], bytes]]:
    """Write each of ``requests`` on one connection; read ``answers`` responses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for data in requests:
            writer.write(data)
            await writer.drain()
        head = requests[0].startswith(b"HEAD ")
        return [await read_response(reader, head=head) for _ in range(answers)]
    finally:
        writer.close()


async def in_turn(port: int, requests: list[bytes]) -> list[tuple[str, dict[str, str], bytes]]:
    """Each of ``requests`` on one connection, each written once the last is answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        answers = []
        for data in requests:
            writer.write(data)
            await writer.drain()
            answers.append(await read_response(reader, head=data.startswith(b"HEAD ")))
        return answers
    finally:
        writer.close()
