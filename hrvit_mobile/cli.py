"""``hrvit-mobile`` command line: wires the Python API, holds no logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from hrvit_mobile.errors import HRViTMobileError


def _cmd_models(args: argparse.Namespace) -> int:
    from hrvit_mobile.models import get_config, list_models

    for name in list_models():
        config = get_config(name)
        print(f"{name:12s} branches {config.out_channels}  head {config.head_channels}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from hrvit_mobile.profile import profile_model
    from hrvit_mobile.sizes import parse_img_size, validate_img_size

    size = validate_img_size(parse_img_size(args.img_size))
    result = profile_model(
        args.model, size, threads=args.threads, runs=args.runs, with_export=not args.no_export
    )
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.as_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrvit-mobile",
        description="HRViT semantic segmentation for phones: deploy form, exporters, reports.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list the model variants")
    models.set_defaults(func=_cmd_models)

    profile = commands.add_parser(
        "profile", help="params, MACs, eager latency (training vs deploy form), export time"
    )
    profile.add_argument("--model", default="hrvit_b1")
    profile.add_argument("--img-size", default="512x512", help="HEIGHTxWIDTH, multiples of 32")
    profile.add_argument("--threads", type=int, default=2)
    profile.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported")
    profile.add_argument("--no-export", action="store_true", help="skip timing torch.export")
    profile.add_argument("--json", action="store_true", help="print JSON instead of text")
    profile.set_defaults(func=_cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HRViTMobileError as exc:
        print(f"hrvit-mobile: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hrvit-mobile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
