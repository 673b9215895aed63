"""OpenAPI conformance: schemathesis against the live service's own /openapi.json.

    python -m loadtest.acceptance.conformance --max-examples 200    # starts a service (Lite0)
    python -m loadtest.acceptance.conformance --url http://127.0.0.1:8000 --max-examples 200

Every operation, every phase (the schema's examples, boundary coverage, fuzzing, and stateful
sequences through the items API's links: PUT, then GET, similar, image, DELETE), every check
but one: no 5xx, statuses, content types, headers and bodies as documented, schema-invalid
input refused. Left out: `positive_data_acceptance`, since a schema-valid `file` (any bytes)
is rarely a decodable image, and the service rightly answers 422 to the rest. Exits with
schemathesis's status (0: conformant); its JUnit report goes to --report-dir.
"""

import argparse
import subprocess
import sys
from pathlib import Path

from loadtest.common.processes import LITE0_ENV, service_at

EXCLUDED_CHECKS = ("positive_data_acceptance",)


def schemathesis_command(
    url: str, max_examples: int, seed: int, report_dir: Path, max_time_s: float | None = None
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(EXCLUDED_CHECKS),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        # One worker: hypothesis describes lambdas with `ast`, which CPython 3.11 cannot run
        # from two threads at once ("SystemError: AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--max-response-time",
        "10",
        "--generation-database",
        "none",
        "--suppress-health-check",
        "all",
        "--report",
        "junit",
        "--report-dir",
        str(report_dir),
        "--no-color",
    ]
    if max_time_s is not None:
        command += ["--max-time", str(max_time_s)]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="a running service; unset: start one (Lite0 weights)")
    parser.add_argument("--max-examples", type=int, default=200, help="cases per operation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-dir", type=Path, default=Path("schemathesis-report"))
    args = parser.parse_args()
    # The page is not part of the API (Gradio has its own tests): off.
    with service_at(args.url, LITE0_ENV | {"RESNET_SERVE_UI": "false"}) as (url, _):
        command = schemathesis_command(url, args.max_examples, args.seed, args.report_dir)
        status = subprocess.run(command, check=False).returncode
    sys.exit(status)


if __name__ == "__main__":
    main()
