#!/usr/bin/env python3
"""Fetch paths from a memreplica peer's HTTP/3 face with aioquic (mutual TLS).

    scripts/h3get.py --ca ca.pem --cert me.pem --key me-key.pem \
        --server-name primary 127.0.0.1:4433 /stats /regions/r/chunks/0

Prints one JSON object per request on stdout: status, content type, body
length and SHA-256, the other response headers, and the body itself when
it is text or JSON. With -o
DIR each body is also written to DIR/<n> (n counts requests from 0).
Exit status 2 when the peer refuses the connection (the reason on stdout
as {"refused": ...}). --parallel sends every request before reading any
answer (replies are printed in request order all the same).
"""
import argparse
import asyncio
import hashlib
import json
import os
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.pending = {}

    async def request(self, method, authority, path, extra=()):
        stream_id = self._quic.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":scheme", b"https"),
                   (b":authority", authority.encode()), (b":path", path.encode())]
        headers += [(name.lower().encode(), value.encode()) for name, value in extra]
        body = b"x" if method == "POST" else None
        self.h3.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.h3.send_data(stream_id, body, end_stream=True)
        waiter = self._loop.create_future()
        self.pending[stream_id] = {"headers": {}, "body": bytearray(), "done": waiter}
        self.transmit()
        return await asyncio.wait_for(waiter, timeout=10)

    def quic_event_received(self, event: QuicEvent):
        if isinstance(event, ConnectionTerminated):
            for p in self.pending.values():
                if not p["done"].done():
                    p["done"].set_exception(ConnectionError(event.reason_phrase or hex(event.error_code)))
        for h3_event in self.h3.handle_event(event):
            p = self.pending.get(h3_event.stream_id)
            if p is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                p["headers"].update({k.decode(): v.decode() for k, v in h3_event.headers})
            elif isinstance(h3_event, DataReceived):
                p["body"] += h3_event.data
            if getattr(h3_event, "stream_ended", False) and not p["done"].done():
                p["done"].set_result(p)


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", help="HOST:PORT of the peer")
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--ca", required=True, help="the CA that signed the peer's certificate")
    parser.add_argument("--cert", help="our certificate (PEM); the peer refuses a client without one")
    parser.add_argument("--key", help="our private key (PEM)")
    parser.add_argument("--server-name", help="name to check in the peer's certificate (default: HOST)")
    parser.add_argument("--method", default="GET")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="NAME:VALUE",
                        help="an extra request header (repeatable)")
    parser.add_argument("--parallel", action="store_true", help="send all requests at once")
    parser.add_argument("-o", "--output-dir")
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    host = host.strip("[]")

    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=args.server_name or host)
    config.load_verify_locations(cafile=args.ca)
    config.verify_mode = ssl.CERT_REQUIRED
    if args.cert:
        config.load_cert_chain(args.cert, args.key)
    try:
        async with connect(host, int(port), configuration=config, create_protocol=Client,
                           wait_connected=True) as client:
            extra = [tuple(h.split(":", 1)) for h in args.header]
            if args.parallel:
                replies = await asyncio.gather(*(client.request(args.method, args.address, p, extra) for p in args.paths))
            else:
                replies = [await client.request(args.method, args.address, p, extra) for p in args.paths]
            for n, (path, reply) in enumerate(zip(args.paths, replies)):
                body = bytes(reply["body"])
                kind = reply["headers"].get("content-type", "")
                out = {"path": path, "status": int(reply["headers"].get(":status", "0")), "contentType": kind,
                       "length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                       "headers": {k: v for k, v in reply["headers"].items() if not k.startswith(":")}}
                if kind.startswith("application/json") or kind.startswith("text/"):
                    out["text"] = body.decode()
                if args.output_dir:
                    with open(os.path.join(args.output_dir, str(n)), "wb") as f:
                        f.write(body)
                print(json.dumps(out), flush=True)
    except (ConnectionError, asyncio.TimeoutError) as error:
        print(json.dumps({"refused": str(error) or type(error).__name__}), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
