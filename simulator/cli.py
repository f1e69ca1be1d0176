"""``fin-relay simulator``: run the Fin Agent API simulator (uvicorn, uvloop + httptools)."""

from __future__ import annotations

import argparse
import json
import sys

from fin_relay.simulator.config import SimulatorConfig


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options."""
    d = SimulatorConfig()
    add = parser.add_argument
    add("--host", default=d.host, help="bind address (default %(default)s; keep it local)")
    add("--port", type=int, default=8090, help="port (default %(default)s; 0 = any free port)")
    add("--token", default=d.token, help="bearer token clients must send")
    add("--secret", default=d.secret, help="webhook signing secret")
    add("--callback-url", default=None, help="where signed webhooks are POSTed")
    add(
        "--rate-limit-per-minute",
        type=int,
        default=d.rate_limit_per_minute,
        help="per-minute quota; the 10 s window limit is N // 6 (default %(default)s)",
    )
    add(
        "--rate-limit-window-s",
        type=int,
        default=d.rate_limit_window_s,
        help="window length (default 10, like Intercom)",
    )
    add("--retry-after", action="store_true", help="add Retry-After to 429s (Intercom sends none)")
    add(
        "--api-version-default",
        default=d.api_version_default,
        help="version used when Intercom-Version is absent (default %(default)s)",
    )
    add(
        "--reply-delay-ms",
        type=float,
        default=d.reply_delay_ms,
        help="delay before a turn's webhooks (default %(default)s)",
    )
    add("--reply-parts", type=int, default=d.reply_parts, help="fin_replied events per turn")
    add("--sse", action="store_true", help="include sse_subscription_url in responses")
    add("--latency-ms", type=float, default=None, help="latency added to every endpoint")
    add("--latency-dist", default="fixed", choices=["fixed", "uniform", "normal", "exponential"])
    add("--latency-jitter-ms", type=float, default=0.0, help="± range (uniform) or stddev (normal)")
    add("--error-rate", type=float, default=None, help="fraction of calls answered with 503")
    add("--error-status", type=int, default=503, help="status used by --error-rate")
    add("--timeout-rate", type=float, default=None, help="fraction of calls that hang")
    add("--drop-rate", type=float, default=None, help="fraction of connections dropped")
    add(
        "--faults-json",
        default=None,
        help='per-endpoint faults, e.g. \'{"start": {"queue": [503]}}\' (see docs/simulator.md)',
    )
    add("--webhook-attempts", type=int, default=d.webhook_attempts)
    add("--webhook-backoff-s", type=float, default=d.webhook_backoff_s)
    add("--webhook-timeout-s", type=float, default=d.webhook_timeout_s)
    add("--webhook-duplicate", action="store_true", help="deliver every event twice")
    add("--webhook-out-of-order", action="store_true", help="deliver each turn in reverse order")
    add("--webhook-head-probe", action="store_true", help="HEAD the callback URL first")
    add("--csat-window-s", type=float, default=d.csat_window_s)
    add("--log-limit", type=int, default=d.log_limit, help="entries kept per log")  # fmt: skip
    add(
        "--no-log-bodies",
        dest="log_bodies",
        action="store_false",
        help="do not keep request bodies in the request log (benchmarks)",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build (and validate) a configuration from parsed arguments."""
    faults: dict[str, dict[str, object]] = json.loads(args.faults_json) if args.faults_json else {}
    everywhere: dict[str, object] = {}
    if args.latency_ms is not None:
        everywhere.update(
            latency_ms=args.latency_ms,
            latency_dist=args.latency_dist,
            latency_jitter_ms=args.latency_jitter_ms,
        )
    if args.error_rate is not None:
        everywhere.update(error_rate=args.error_rate, error_status=args.error_status)
    if args.timeout_rate is not None:
        everywhere["timeout_rate"] = args.timeout_rate
    if args.drop_rate is not None:
        everywhere["drop_rate"] = args.drop_rate
    if everywhere:
        faults["*"] = {**everywhere, **faults.get("*", {})}
    config = SimulatorConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        secret=args.secret,
        callback_url=args.callback_url,
        rate_limit_per_minute=args.rate_limit_per_minute,
        rate_limit_window_s=args.rate_limit_window_s,
        retry_after=args.retry_after,
        api_version_default=args.api_version_default,
        reply_delay_ms=args.reply_delay_ms,
        reply_parts=args.reply_parts,
        sse=args.sse,
        faults=faults,
        webhook_attempts=args.webhook_attempts,
        webhook_backoff_s=args.webhook_backoff_s,
        webhook_timeout_s=args.webhook_timeout_s,
        webhook_duplicate=args.webhook_duplicate,
        webhook_out_of_order=args.webhook_out_of_order,
        webhook_head_probe=args.webhook_head_probe,
        csat_window_s=args.csat_window_s,
        log_limit=args.log_limit,
        log_bodies=args.log_bodies,
    )
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    import uvicorn

    from fin_relay.simulator.app import SimulatorApp
    from fin_relay.simulator.server import bind_socket, uvicorn_config

    try:
        config = config_from_args(args)
        app = SimulatorApp(config)
    except ValueError as exc:
        print(f"fin-relay simulator: {exc}", file=sys.stderr)
        return 2
    sock = bind_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    print(f"fin-relay simulator listening on http://{host}:{port}", flush=True)
    server = uvicorn.Server(uvicorn_config(app))
    server.run(sockets=[sock])
    return 0


def main() -> int:
    """``python -m fin_relay.simulator.cli`` (used by ``start_subprocess``)."""
    parser = argparse.ArgumentParser(prog="fin-relay simulator")
    configure(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
