#!/usr/bin/env python3
"""A recording TCP proxy between Kafka clients and a broker.

Forwards bytes both ways unchanged and writes every client->broker request
frame (without its 4-byte length) into OUT_DIR as `<api key>-<version>-<sha1>.bin`,
keeping at most PER_KEY_MAX distinct frames per (api key, version) and none
larger than FRAME_BYTES_MAX, so the captured corpus stays small.

    capture_proxy.py LISTEN_PORT UPSTREAM_PORT OUT_DIR
"""
import asyncio
import hashlib
import os
import struct
import sys

PER_KEY_MAX = 40
FRAME_BYTES_MAX = 256 * 1024
READ_CHUNK = 64 * 1024

saved = {}


def record(out_dir, frame):
    if len(frame) < 4 or len(frame) > FRAME_BYTES_MAX:
        return
    key, version = struct.unpack(">hh", frame[:4])
    count = saved.get((key, version), 0)
    if count >= PER_KEY_MAX:
        return
    digest = hashlib.sha1(frame).hexdigest()[:16]
    path = os.path.join(out_dir, f"{key:02d}-{version:02d}-{digest}.bin")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(frame)
        saved[(key, version)] = count + 1


async def pump(reader, writer, out_dir=None):
    buf = b""
    try:
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            if out_dir is None:
                continue
            buf += data
            while len(buf) >= 4:
                (length,) = struct.unpack(">i", buf[:4])
                if length < 0 or len(buf) < 4 + length:
                    break
                record(out_dir, buf[4 : 4 + length])
                buf = buf[4 + length :]
            if len(buf) > FRAME_BYTES_MAX + 4 and len(buf) > 4:
                # A frame too large to keep: drop what is buffered of it.
                (length,) = struct.unpack(">i", buf[:4])
                skip = 4 + length
                buf = buf[skip:] if len(buf) >= skip else b""
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    listen_port, upstream_port, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.makedirs(out_dir, exist_ok=True)

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pump(client_reader, up_writer, out_dir),
            pump(up_reader, client_writer),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
