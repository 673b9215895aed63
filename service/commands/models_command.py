"""`resnet-serve models list|add|activate|remove`: model versions of a running service,
through its HTTP API (GET/POST/DELETE /v1/models)."""

import argparse
import json
import os
import sys

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    parser.add_argument(
        "--api-key", default=None, help="the service's API key (default: env RESNET_SERVE_API_KEY)"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="the live version and every version with its state")
    add = actions.add_parser("add", help="load a version; it re-embeds the index in the background")
    add.add_argument("name")
    add.add_argument("weights", help="anything RESNET_SERVE_WEIGHTS accepts")
    add.add_argument("--model", default=None, help="timm model id (default: the live one's)")
    actions.add_parser("activate", help="make a ready version live (or go back)").add_argument(
        "name"
    )
    actions.add_parser("remove", help="remove a version that is not live").add_argument("name")


def run_models_command(args: argparse.Namespace) -> int:
    key = args.api_key or os.environ.get("RESNET_SERVE_API_KEY")
    headers = {"X-API-Key": key} if key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=60) as client:
        try:
            if args.action == "list":
                answer = client.get("/v1/models")
            elif args.action == "add":
                body = {"name": args.name, "weights": args.weights, "model": args.model}
                answer = client.post("/v1/models", json=body)
            elif args.action == "activate":
                answer = client.post(f"/v1/models/{args.name}/activate")
            else:
                answer = client.delete(f"/v1/models/{args.name}")
        except httpx.TransportError as exc:
            print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
            return 2
    if answer.is_error:
        try:
            message = answer.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = answer.text
        print(f"{answer.status_code}: {message}", file=sys.stderr)
        return 1
    if answer.content:
        print(json.dumps(answer.json(), indent=2))
    return 0
