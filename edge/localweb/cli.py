"""`wardgate localweb hash-password`: the hash for `[localweb] password_hash`."""

from __future__ import annotations

import argparse
import getpass
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("localweb", help="the technician's page on the gateway")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    h = actions.add_parser(
        "hash-password",
        help="read a password (prompt, or one line on stdin) and print its hash for the config",
    )
    h.set_defaults(func=cmd_hash_password)


def cmd_hash_password(args: argparse.Namespace) -> int:
    from edge.localweb.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("technician password: ")
        if getpass.getpass("again: ") != password:
            print("wardgate localweb: the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 10:
        print("wardgate localweb: use at least 10 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0
