"""``chatd gencert``: a self-signed certificate and key for trying TLS."""

from __future__ import annotations

import argparse
import os
import sys


def generate_certificate(args: argparse.Namespace) -> int:
    """``chatd gencert``: a self-signed certificate and key for development."""
    from chatd.transports.tls import generate_certificate as generate

    hosts = args.host or ["localhost", "127.0.0.1", "::1"]
    if not args.force:
        for path in (args.cert, args.key):
            if os.path.exists(path):
                print(f"chatd gencert: {path} exists (--force overwrites it)", file=sys.stderr)
                return 1
    try:
        generate(args.cert, args.key, hosts, days=args.days)
    except (OSError, ValueError) as exc:
        print(f"chatd gencert: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.cert} and {args.key} for {', '.join(hosts)}, valid {args.days} days")
    print(f"serve:   chatd serve --tls-cert {args.cert} --tls-key {args.key}")
    print(f"connect: chatd connect --cafile {args.cert}")
    return 0
