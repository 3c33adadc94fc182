"""``python -m grantkeeper.testing``: run a `ProviderSimulator` until SIGINT/SIGTERM.

Prints the token URL, the client credentials and fresh refresh tokens (handing them out is this testing tool's
purpose), then serves on loopback. With ``--json`` everything is one JSON object on the first line of stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from grantkeeper.testing.simulator import ROTATION_MODES, ProviderSimulator

__all__ = ["main"]


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m grantkeeper.testing",
        description="Serve a simulated OAuth 2.0 token endpoint (refresh_token grant) on loopback for testing.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=_non_negative_int, default=0, help="port to bind, 0 picks a free one")
    parser.add_argument("--rotation", choices=ROTATION_MODES, default="always", help="refresh-token rotation policy")
    parser.add_argument(
        "--reuse-grace",
        type=_non_negative_float,
        default=0.0,
        metavar="S",
        help="seconds the immediately superseded refresh token keeps working (default: 0)",
    )
    parser.add_argument(
        "--no-reuse-detection",
        dest="reuse_detection",
        action="store_false",
        help="do not revoke the grant family when a superseded refresh token is presented",
    )
    parser.add_argument(
        "--access-ttl", type=_positive_float, default=3600.0, metavar="S", help="access token lifetime in seconds"
    )
    parser.add_argument(
        "--grants", type=_non_negative_int, default=1, metavar="N", help="refresh tokens to issue (default: 1)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM; returns the exit status."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        simulator = ProviderSimulator(
            rotation=args.rotation,
            reuse_grace=args.reuse_grace,
            reuse_detection=args.reuse_detection,
            access_ttl=args.access_ttl,
            host=args.host,
            port=args.port,
        )
        try:
            simulator.start()
        except OSError as exc:
            print(f"error: cannot listen on {args.host} port {args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        try:
            tokens = [simulator.issue_grant() for _ in range(args.grants)]
            if args.json:
                info = {
                    "token_url": simulator.url,
                    "base_url": simulator.base_url,
                    "client_id": simulator.client_id,
                    "client_secret": simulator.client_secret,
                    "refresh_tokens": tokens,
                    "rotation": args.rotation,
                }
                print(json.dumps(info))
            else:
                print(f"token_url: {simulator.url}")
                print(f"client_id: {simulator.client_id}")
                print(f"client_secret: {simulator.client_secret}")
                for token in tokens:
                    print(f"refresh_token: {token}")
                print("serving; stop with Ctrl-C (SIGINT) or SIGTERM")
            sys.stdout.flush()
            while not stop.wait(0.5):
                pass
        finally:
            simulator.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
