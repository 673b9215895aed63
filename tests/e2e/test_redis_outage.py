"""Redis stops in the middle of a locust run and comes back: no request fails, and the
cache works again afterwards."""

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loadtest.common.images import unique_jpegs
from loadtest.common.report import read_locust_stats
from tests.e2e.server import start_server
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

LOCUSTFILE = Path(__file__).parents[2] / "loadtest" / "locust" / "locustfile.py"


@pytest.mark.timeout(240)
def test_a_redis_outage_under_load_fails_nothing_and_caching_resumes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    server = start_server(tmp_path, {"RESNET_SERVE_REDIS_URL": redis_server.url})
    prefix = tmp_path / "outage"
    command = [sys.executable, "-m", "locust", "--headless", "--only-summary", "-u", "6"]
    command += ["-r", "6", "-t", "10s", "-f", str(LOCUSTFILE), "--host", server.url]
    command += ["--csv", str(prefix), "--stop-timeout", "30", "Mixed"]
    try:
        with (tmp_path / "locust.log").open("wb") as log:
            locust = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            time.sleep(3)
            redis_server.kill()  # mid-run: the cache is gone
            time.sleep(3)
            redis_server.start()  # and back, empty
            assert locust.wait(timeout=120) == 0, (tmp_path / "locust.log").read_text()[-3000:]
        total, _ = read_locust_stats(prefix)
        assert total.requests > 50 and total.failures == 0
        # Caching resumes: a new image is cached again, in the restarted Redis.
        image = next(unique_jpegs(tag="after-outage"))
        deadline = time.monotonic() + 20
        while True:
            answers = [
                httpx.post(f"{server.url}/v1/classify", files={"file": ("a.jpg", image)})
                for _ in range(2)
            ]
            if answers[1].headers["x-cache"] == "hit":
                break
            assert time.monotonic() < deadline, "the cache never worked again"
            time.sleep(1)
        assert redis_server.client().keys("resnet-serve:*")
    finally:
        server.stop()
