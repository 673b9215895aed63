"""Every metric the README names and every metric a dashboard panel queries is on /metrics
after a short load (a panel that queries a metric the service does not export fails here)."""

import json
import re
import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from loadtest.common.scrape import parse_metrics
from tests.photos import jpeg

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy/observability/grafana/dashboards/resnet-serve.json"
# PromQL's words that are not metric names
_PROMQL = {"sum", "min", "max", "avg", "rate", "irate", "increase", "histogram_quantile", "by"}
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def queried_metrics(expression: str) -> set[str]:
    """The metric names in a PromQL expression: its identifiers, less label matchers,
    grouping labels, range selectors and functions."""
    expression = re.sub(r"\{[^}]*\}", "", expression)  # label matchers
    expression = re.sub(r"\bby\s*\([^)]*\)", "", expression)  # grouping labels
    expression = re.sub(r"\[[^\]]*\]", "", expression)  # range selectors
    return set(re.findall(r"\b[a-z_][a-z0-9_]*\b", expression)) - _PROMQL


def readme_metrics() -> set[str]:
    """The metric names in the first column of the README's Observability table."""
    section = (ROOT / "README.md").read_text().split("## Observability", 1)[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}


def test_every_metric_the_readme_and_the_dashboard_name_is_exported(client: TestClient) -> None:
    upload = {"file": ("cup.jpg", jpeg("coffee") + uuid.uuid4().bytes, "image/jpeg")}
    assert client.put("/v1/items/observed/cup", files=upload).status_code in (200, 201)
    assert client.post("/v1/search", files=upload).status_code == 200  # a cache hit too
    assert client.get("/v1/items/observed/cup/similar").status_code == 200
    exported = {name for name, _ in parse_metrics(client.get("/metrics").text)}
    families = exported | {name.removesuffix(s) for name in exported for s in _SUFFIXES}
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queried = {
        (panel["title"], metric)
        for panel in panels
        for target in panel["targets"]
        for metric in queried_metrics(target["expr"])
    }
    assert len(panels) >= 10 and queried
    missing = sorted((title, metric) for title, metric in queried if metric not in exported)
    assert not missing, missing
    named = readme_metrics()
    assert {"http_request_seconds", "index_search_seconds", "batcher_rejected_total"} <= named
    assert not named - families, named - families


def test_a_panel_that_queries_an_unknown_metric_is_caught() -> None:
    assert queried_metrics('sum by (le) (rate(no_such_metric_bucket{a="b"}[5m]))') == {
        "no_such_metric_bucket"
    }
