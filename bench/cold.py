"""How much a call costs run cold: once right after other work, once after a long while of it.

Run: `.venv/bin/python -P bench/cold.py [--samples N] [--gap SECONDS]`

The proxy hop's added latency in front of LiteLLM is its CPU run on caches emptied in the
~30 ms between two requests (bench/README.md, "Where the hop's time goes"). This probe
shows the effect without LiteLLM or the network:
one process spins on the clock (it never sleeps, so no idle state or frequency change is
involved), then times one call of the hop's own steps. After a spin of 0.2 ms the call
finds its code and data where it left them; after one of 30 ms (LiteLLM's pace) it finds
them gone to whatever else ran on the core, and pays for every line it touches.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
from collections.abc import Callable

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser, HttpResponseParser
from aiohttp.streams import StreamReader
from multidict import CIMultiDict
from yarl import URL

from jwtkeymap.resolver.hops import passable_response

# A chat completion request as an OpenAI client sends it through the resolver.
TOKEN = "Bearer " + "e" * 700
BODY = b'{"model": "fake", "messages": [{"role": "user", "content": "hello"}]}'
REQUEST = (
    "POST /chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8181\r\n"
    f"Authorization: {TOKEN}\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(BODY)}\r\n\r\n"
).encode() + BODY
HEADERS = [
    ("Host", "127.0.0.1:8181"),
    ("Authorization", TOKEN),
    ("Content-Type", "application/json"),
    ("Content-Length", str(len(BODY))),
]
# LiteLLM's answer to it: a completion, with its 22 headers (most of them x-litellm-*).
COMPLETION = b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}' * 6
RESPONSE_HEAD = [
    "HTTP/1.1 200 OK",
    "date: Mon, 30 Nov 2026 18:00:00 GMT",
    "server: uvicorn",
    "content-type: application/json",
    *(f"x-litellm-header-{i}: {'0.0' * 10}" for i in range(18)),
    f"content-length: {len(COMPLETION)}",
]
RESPONSE = ("\r\n".join(RESPONSE_HEAD) + "\r\n\r\n").encode() + COMPLETION


def _nothing() -> None:
    return None


def probes(loop: asyncio.AbstractEventLoop) -> dict[str, Callable[[], object]]:
    """The calls timed: steps of the fast lane's request and response sides, and two
    references."""
    protocol = BaseProtocol(loop)
    parser = HttpRequestParser(protocol, loop, 2**16, max_field_size=8190)
    responses = HttpResponseParser(protocol, loop, 2**16, auto_decompress=False)
    header = TOKEN.encode()
    return {
        "an empty function": _nothing,
        "`perf_counter_ns()`": time.perf_counter_ns,
        "aiohttp's request parser, one request": lambda: parser.feed_data(REQUEST),
        "aiohttp's response parser, a completion": lambda: responses.feed_data(RESPONSE),
        "`passable_response` (resolver/hops.py), same": lambda: passable_response(RESPONSE),
        "`yarl.URL.build(path=...)`": lambda: URL.build(path="/chat/completions", encoded=True),
        "`StreamReader(...)`": lambda: StreamReader(protocol, 2**16, loop=loop),
        "`CIMultiDict(4 headers)`": lambda: CIMultiDict(HEADERS),
        "`hashlib.sha256` (OpenSSL), 700-byte header": lambda: hashlib.sha256(header).digest(),
        "`hashlib.blake2b` (CPython), same": lambda: hashlib.blake2b(header).digest(),
    }


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def measure(call: Callable[[], object], gap: float, samples: int) -> float:
    """The median µs of ``call`` run right after ``gap`` seconds of spinning."""
    times = []
    for _ in range(samples):
        _spin(gap)
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.03, help="the long spin, seconds")
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    calls = probes(loop)
    for call in calls.values():  # every call once, so none pays its first use below
        call()
    print(f"| call, p50 µs | after 0.2 ms | after {args.gap * 1000:g} ms spinning | ratio |")
    print("|---|---:|---:|---:|")
    for name, call in calls.items():
        warm = measure(call, 0.0002, args.samples)
        cold = measure(call, args.gap, args.samples)
        print(f"| {name} | {warm:.1f} | {cold:.1f} | {cold / warm:.0f}x |")
    loop.close()


if __name__ == "__main__":
    main()
