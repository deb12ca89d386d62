"""Attacks on a listener by a client without a token: large heads, slow heads, many
connections (issue 14, F1). Raw sockets: an HTTP client would not send these.

Used by tests/integration/hostile/test_exhaustion.py (bounds) and bench/attack.py (figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


async def _closed(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the connection open."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except TimeoutError:
        return None
    except OSError:
        return b""


@dataclasses.dataclass
class Outcome:
    """What happened to the attack's connections."""

    connections: int
    closed: int
    statuses: list[bytes]
    seconds: float


async def big_heads(
    port: int, *, connections: int, fields: int, field_bytes: int, finish: bool = False
) -> Outcome:
    """Open ``connections``, each sending ``fields`` header fields of ``field_bytes``.

    With ``finish`` the head is completed (a blank line), otherwise it never ends.
    Returns once every connection is closed by the server or has sent everything.
    """
    start = time.monotonic()
    pad = b"a" * field_bytes

    async def one() -> bytes | None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
            for i in range(fields):
                writer.write(b"X-Pad-%d: %s\r\n" % (i, pad))
                await writer.drain()
            if finish:
                writer.write(b"\r\n")
                await writer.drain()
            return await _closed(reader, 2)
        except OSError:
            return b""  # cut while sending: the server refused the head
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    results = await asyncio.gather(*(one() for _ in range(connections)))
    return Outcome(
        connections=connections,
        closed=sum(r is not None for r in results),
        statuses=[r.split(b"\r\n", 1)[0] for r in results if r],
        seconds=time.monotonic() - start,
    )


async def slow_heads(port: int, *, connections: int, interval: float, within: float) -> Outcome:
    """Open ``connections`` sending one header line every ``interval`` seconds, forever.

    Returns after ``within`` seconds (or once all are closed): how many the server closed.
    """
    start = time.monotonic()
    closed = 0
    statuses: list[bytes] = []

    async def one() -> None:
        nonlocal closed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            i = 0
            while time.monotonic() - start < within:
                got = await _closed(reader, interval)
                if got is not None:
                    closed += 1
                    if got:
                        statuses.append(got.split(b"\r\n", 1)[0])
                    return
                writer.write(b"X-Slow-%d: 1\r\n" % i)
                i += 1
        except OSError:
            closed += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return Outcome(connections, closed, statuses, time.monotonic() - start)


async def idle_connections(
    port: int, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open ``count`` connections that send nothing."""
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
