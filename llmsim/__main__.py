"""``python -m llmsim --port 8299 --profile flaky``: run the simulator in the foreground."""

from __future__ import annotations

import argparse
import sys

from llmsim.faults import PROFILES
from llmsim.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmsim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8299, help="0 picks a free port")
    parser.add_argument("--profile", default="none", choices=sorted(PROFILES))
    parser.add_argument("--profile-file", default=None, help="fault profile, JSON or YAML")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-scale", type=float, default=1.0, help="0: no delays")
    parser.add_argument(
        "--fixed-latency",
        type=float,
        default=None,
        metavar="SECONDS",
        help="every successful call takes about this long",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args(argv)

    def ready(url: str) -> None:
        print(f"llmsim listening on {url}", flush=True)
        print(f"  OPENAI_BASE_URL={url}/v1", flush=True)
        print(f"  ANTHROPIC_BASE_URL={url}", flush=True)

    serve(
        host=args.host,
        port=args.port,
        profile=args.profile,
        seed=args.seed,
        latency_scale=args.latency_scale,
        profile_file=args.profile_file,
        fixed_latency_s=args.fixed_latency,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        on_ready=ready,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
