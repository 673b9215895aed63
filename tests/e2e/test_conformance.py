"""The live API against its own OpenAPI document, by schemathesis (a bounded run; the
loadtest.acceptance.conformance script runs longer)."""

import subprocess
from pathlib import Path

from loadtest.acceptance.conformance import schemathesis_command
from tests.e2e.server import start_server

CI_EXAMPLES = 8  # cases per operation and phase


def test_every_operation_answers_as_its_schema_says(tmp_path: Path) -> None:
    server = start_server(tmp_path, {})
    try:
        command = schemathesis_command(server.url, CI_EXAMPLES, seed=1, report_dir=tmp_path)
        finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    finally:
        server.stop()
    assert finished.returncode == 0, finished.stdout[-8000:]
    assert "No issues found" in finished.stdout or "passed" in finished.stdout
