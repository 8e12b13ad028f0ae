"""``galtea-local emulator``: run the local Galtea API emulator in the foreground.

The project CLI calls :func:`add_arguments` on its ``emulator`` sub-parser and
:func:`main` with the parsed arguments; ``python -m galtea_local_daemon.emulator``
does the same on its own parser.
"""

from __future__ import annotations

import argparse
import sys

from galtea_local_daemon.emulator.faults import FaultConfig
from galtea_local_daemon.emulator.server import run_emulator


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default 0)")
    parser.add_argument("--api-key", default=None, help="the only key accepted; default: any non-empty Bearer key")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay every API answer by MS milliseconds")
    parser.add_argument("--fail-rate", type=_rate, default=0.0, help="share of API requests answered 503 at once")
    parser.add_argument("--throttle-rate", type=_rate, default=0.0, help="share of API requests answered 429")
    parser.add_argument(
        "--ambiguous-rate", type=_rate, default=0.0, help="share of API writes performed, then left unanswered"
    )
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds sent with a 429 (default 1)")
    parser.add_argument("--rate-limit", type=float, default=0.0,
                        help="token bucket per API key: requests/s allowed, then 429 (default 0: off)")
    parser.add_argument("--rate-burst", type=float, default=0.0,
                        help="the bucket's size in requests (default: one second's worth)")
    parser.add_argument("--late-rate", type=_rate, default=0.0,
                        help="share of API writes held inside the server and applied --late-commit-s later")
    parser.add_argument("--late-commit-s", type=float, default=0.0, help="how long a late write is held (seconds)")
    parser.add_argument("--applied-error-rate", type=_rate, default=0.0,
                        help="share of API writes applied, then answered 503 as by a proxy")
    parser.add_argument("--page-cap", type=int, default=0, help="cap every list's limit at N, silently (0: no cap)")
    parser.add_argument("--clock-offset-s", type=float, default=0.0,
                        help="the server clock (Date header, createdAt) runs this many seconds from ours")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault draw (default: random)")


def config_from_args(args: argparse.Namespace) -> FaultConfig:
    """The fault settings the parsed arguments ask for; raises ``ValueError`` if they are inconsistent."""
    return FaultConfig(
        fail_rate=args.fail_rate,
        throttle_rate=args.throttle_rate,
        ambiguous_rate=args.ambiguous_rate,
        latency_ms=args.latency_ms,
        retry_after_s=args.retry_after,
        api_key=args.api_key,
        rate_limit_rps=args.rate_limit,
        rate_limit_burst=args.rate_burst,
        late_rate=args.late_rate,
        late_commit_s=args.late_commit_s,
        applied_error_rate=args.applied_error_rate,
        page_cap=args.page_cap,
        clock_offset_s=args.clock_offset_s,
    )


def main(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0 on a clean stop, 2 on bad settings."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"galtea-local emulator: {exc}", file=sys.stderr)
        return 2

    def announce(url: str) -> None:
        # Scripts and tests wait for this exact line to learn the port.
        print(f"listening on {url}", flush=True)

    try:
        return run_emulator(args.host, args.port, config, args.seed, on_ready=announce)
    except OSError as exc:
        print(f"galtea-local emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
