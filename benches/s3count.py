#!/usr/bin/env python3
"""A counting TCP proxy in front of the S3 server, so every contender is measured the same way.

    s3count.py LISTEN_PORT TARGET_PORT STATS_PORT

Forwards 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT and counts the bytes each way (HTTP
headers included, as they cross the wire) and the HTTP requests by method, parsing the
client-to-server stream of each connection (request line, headers, Content-Length body; a
chunked request body stops the parsing of that connection and is counted in `unparsed`).
A connection to 127.0.0.1:STATS_PORT gets the counters as one JSON line; they only grow, so a
benchmark takes the difference of two readings.
"""
import asyncio
import json
import sys

stats = {"up_bytes": 0, "down_bytes": 0, "connections": 0, "requests": {}, "unparsed": 0}
BUF = 1 << 18


class RequestParser:
    """Finds request boundaries in a client-to-server byte stream."""

    def __init__(self):
        self.head = b""
        self.body_left = 0
        self.broken = False

    def feed(self, data):
        view = memoryview(data)
        while len(view) and not self.broken:
            if self.body_left:
                n = min(self.body_left, len(view))
                self.body_left -= n
                view = view[n:]
                continue
            self.head += bytes(view)
            view = view[len(view):]
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.broken = True
                    stats["unparsed"] += 1
                break
            head, rest = self.head[:end], self.head[end + 4:]
            self.head = b""
            lines = head.split(b"\r\n")
            method = lines[0].split(b" ", 1)[0].decode("ascii", "replace")
            reqs = stats["requests"]
            reqs[method] = reqs.get(method, 0) + 1
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.broken = True
                    stats["unparsed"] += 1
            self.body_left = length
            view = memoryview(rest)


async def pipe(reader, writer, key, parser=None):
    try:
        while True:
            data = await reader.read(BUF)
            if not data:
                break
            stats[key] += len(data)
            if parser is not None:
                parser.feed(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_r, client_w, target_port):
    stats["connections"] += 1
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(
        pipe(client_r, server_w, "up_bytes", RequestParser()),
        pipe(server_r, client_w, "down_bytes"),
    )


async def report(_reader, writer):
    writer.write((json.dumps(stats) + "\n").encode())
    await writer.drain()
    writer.close()


async def main():
    listen, target, stats_port = (int(a) for a in sys.argv[1:4])
    proxy = await asyncio.start_server(
        lambda r, w: handle(r, w, target), "127.0.0.1", listen, limit=BUF
    )
    control = await asyncio.start_server(report, "127.0.0.1", stats_port)
    print(f"s3count: 127.0.0.1:{listen} -> 127.0.0.1:{target}, stats on {stats_port}", flush=True)
    async with proxy, control:
        await asyncio.gather(proxy.serve_forever(), control.serve_forever())


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main())
