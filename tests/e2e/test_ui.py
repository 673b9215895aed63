"""The web page at /ui and the API docs, driven in Debian's chromium by Playwright.

A real server (offline EfficientNet-Lite0 weights), a real browser, nothing reached outside
127.0.0.1. With UPDATE_SCREENSHOTS=1 the tabs' screenshots are written to docs/images/ui for
the README; otherwise to the test's temporary directory.
"""

import csv
import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from loadtest.common.synthetic_head import write_head
from service.app import create_app
from tests.conftest import lite0_settings
from tests.e2e.server import UI_ON, Server, start_server
from tests.photos import encode, jpeg, photo

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As a locked-down box runs it: no background calls home, no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "images" / "ui"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("ui"), UI_ON)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium is not installed (scripts/test installs it)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    yield opened
    context.close()


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    files = {
        name: tmp_path / f"{name}.jpg" for name in ("coffee", "chelsea", "rocket", "astronaut")
    }
    for name, path in files.items():
        path.write_bytes(jpeg(name))
    files["corrupt"] = tmp_path / "corrupt.jpg"
    files["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG after all")
    return files


def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        picture = Image.open(io.BytesIO(page.screenshot()))
        picture.thumbnail((960, 960))
        picture.convert("RGB").save(SCREENSHOTS / f"{name}.jpg", quality=80)
    else:
        page.screenshot(path=tmp_path / f"{name}.png")


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_every_tab_works_offline(
    server: Server, page: Page, photos: dict[str, Path], tmp_path: Path
) -> None:
    outside: list[str] = []
    page.on(
        "request",
        lambda r: (
            outside.append(r.url)
            if not r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else None
        ),
    )
    page.goto(f"{server.url}/ui/")

    # Model: what is loaded, for real.
    card = page.locator("#model-card")
    expect(card).to_contain_text("tf_efficientnet_lite0")
    expect(card).to_contain_text("torch-cpu-fp32")
    expect(card).to_contain_text("320 x 7 x 7")
    expect(page.locator("#versions")).to_contain_text("default (live)")
    screenshot(page, "model", tmp_path)

    # Classify: drop the coffee photo, see espresso and its Grad-CAM, and an attached head.
    fingerprint = httpx.get(f"{server.url}/readyz").json()["fingerprint"]
    head = write_head(tmp_path / "head", classes=3, dim=1280, base_fingerprint=fingerprint)
    assert httpx.put(f"{server.url}/v1/heads/shape", json={"source": str(head)}).status_code == 201
    open_tab(page, "Classify")
    page.locator("#classify-image input[type=file]").set_input_files(photos["coffee"])
    expect(page.locator("#classify-labels")).to_contain_text("espresso")
    expect(page.locator("#classify-heads")).to_contain_text("shape: class-")
    expect(page.locator("#cam-image img")).to_be_visible()
    expect(page.locator("#classify-timings")).to_contain_text("inference")
    screenshot(page, "classify", tmp_path)

    # Feature maps: a grid for the chosen stage, and the first-layer kernels.
    open_tab(page, "Feature maps")
    page.locator("#features-image input[type=file]").set_input_files(photos["chelsea"])
    page.get_by_role("button", name="Show feature maps").click()
    expect(page.locator("#features-out img")).to_be_visible()
    expect(page.locator("#features-shape")).to_contain_text("40 x 28 x 28")
    page.get_by_role("button", name="Show first-layer kernels").click()
    expect(page.locator("#kernels-out img")).to_be_visible()
    screenshot(page, "features", tmp_path)

    # Similarity: two photos, a number and words.
    open_tab(page, "Similarity")
    page.locator("#similarity-a input[type=file]").set_input_files(photos["coffee"])
    page.locator("#similarity-b input[type=file]").set_input_files(photos["coffee"])
    page.get_by_role("button", name="Compare").click()
    expect(page.locator("#similarity-out")).to_contain_text("near-identical")
    screenshot(page, "similarity", tmp_path)

    # Search: add the photo under an id, then find it.
    open_tab(page, "Search")
    page.locator("#search-image input[type=file]").set_input_files(photos["rocket"])
    page.locator("#item-id textarea, #item-id input").first.fill("ui/rocket")
    page.locator("#item-metadata textarea, #item-metadata input").first.fill('{"by": "browser"}')
    page.get_by_role("button", name="Add this image to the index").click()
    expect(page.locator("#item-status")).to_contain_text("Added ui/rocket")
    page.get_by_role("button", name="Search the index").click()
    expect(page.locator("#search-results")).to_contain_text("ui/rocket")
    expect(page.locator("#search-gallery img").first).to_be_visible()
    screenshot(page, "search", tmp_path)
    # A filter no item matches empties the results; one that matches brings the item back.
    search_filter = page.locator("#search-filter textarea, #search-filter input").first
    search_filter.fill('{"by": "nobody"}')
    page.get_by_role("button", name="Search the index").click()
    expect(page.locator("#search-results")).not_to_contain_text("ui/rocket")
    search_filter.fill('{"by": ["nobody", "browser"]}')
    page.get_by_role("button", name="Search the index").click()
    expect(page.locator("#search-results")).to_contain_text("ui/rocket")

    # Batch: three photos and a corrupt file; a CSV with four rows, the corrupt one an error.
    open_tab(page, "Batch")
    files = [photos[n] for n in ("coffee", "chelsea", "astronaut", "corrupt")]
    page.locator("#batch-files input[type=file]").set_input_files(files)
    page.get_by_role("button", name="Classify all").click()
    expect(page.locator("#batch-status")).to_contain_text("Done: 4 images, 1 failed.")
    with page.expect_download() as download:
        page.locator("#batch-csv a").first.click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [row["file"] for row in rows] == [p.name for p in files]
    assert rows[0]["top-1"] == "espresso" and not rows[0]["error"]
    assert rows[3]["error"].startswith("422 invalid_input") and not rows[3]["top-1"]
    screenshot(page, "batch", tmp_path)

    assert outside == [], f"the page reached outside: {outside}"


def test_the_model_tab_lists_versions_and_makes_a_ready_one_live(
    server: Server, page: Page
) -> None:
    added = httpx.post(
        f"{server.url}/v1/models", json={"name": "v2", "weights": "random"}, timeout=30
    )
    assert added.status_code == 202, added.text
    try:
        deadline = time.monotonic() + 120
        while (
            httpx.get(f"{server.url}/v1/models", timeout=30).json()["versions"][-1]["state"]
            != "ready"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        page.goto(f"{server.url}/ui/")
        versions = page.locator("#versions")
        expect(versions).to_contain_text("default (live)")
        expect(versions).to_contain_text("ready")
        page.locator("#version-choice input").click()
        page.get_by_role("option", name="v2").click()
        page.get_by_role("button", name="Make live").click()
        expect(versions).to_contain_text("v2 (live)")
        assert httpx.get(f"{server.url}/v1/models", timeout=30).json()["live"] == "v2"
    finally:  # the other tests share this server
        httpx.post(f"{server.url}/v1/models/default/activate", timeout=30)
        httpx.delete(f"{server.url}/v1/models/v2", timeout=30)


def test_errors_show_as_messages_and_the_page_keeps_working(
    server: Server, page: Page, photos: dict[str, Path]
) -> None:
    page.goto(f"{server.url}/ui/")
    open_tab(page, "Search")
    page.locator("#search-image input[type=file]").set_input_files(photos["coffee"])
    page.locator("#item-id textarea, #item-id input").first.fill("bad id with spaces")
    page.get_by_role("button", name="Add this image to the index").click()
    toast = page.locator(".toast-body").first
    expect(toast).to_contain_text("id")
    expect(toast).not_to_contain_text("Traceback")
    page.locator("#item-metadata textarea, #item-metadata input").first.fill("[1, 2]")
    page.locator("#item-id textarea, #item-id input").first.fill("ok-id")
    page.get_by_role("button", name="Add this image to the index").click()
    expect(page.get_by_text("Metadata must be a JSON object").first).to_be_visible()
    # Still working: a good request after the refusals.
    page.locator("#item-metadata textarea, #item-metadata input").first.fill("{}")
    page.get_by_role("button", name="Add this image to the index").click()
    expect(page.locator("#item-status")).to_contain_text("Added ok-id")


def test_api_docs_render_without_a_cdn(server: Server, page: Page, tmp_path: Path) -> None:
    outside: list[str] = []
    page.on(
        "request",
        lambda r: outside.append(r.url) if not r.url.startswith("http://127.0.0.1") else None,
    )
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .opblock-summary-path").first).to_be_visible()
    expect(page.locator(".swagger-ui")).to_contain_text("/v1/classify")
    screenshot(page, "docs", tmp_path)
    assert outside == [], f"/docs reached outside: {outside}"


def test_the_page_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_SERVE_UI", "false")
    settings = lite0_settings(tmp_path)
    assert not settings.ui
    with TestClient(create_app(settings)) as off:
        assert off.get("/ui/").status_code == 404
        assert off.get("/docs").status_code == 200
        classify = off.post(
            "/v1/classify",
            files={"file": ("c.png", encode(photo("coffee"), "PNG"), "image/png")},
        )
        assert json.loads(classify.text)["predictions"][0]["label"] == "espresso"


def test_with_an_api_key_the_page_asks_for_it_and_its_writes_carry_it(
    page: Page, photos: dict[str, Path], tmp_path: Path
) -> None:
    import httpx

    key = "ui-test-key-1234"
    locked = start_server(
        tmp_path, UI_ON | {"RESNET_SERVE_API_KEY": key, "RESNET_SERVE_LOG_FORMAT": "json"}
    )
    try:
        wrong = {"username": "anyone", "password": "not-the-key"}
        assert httpx.post(f"{locked.url}/ui/login", data=wrong).status_code == 400
        page.goto(f"{locked.url}/ui/")
        page.get_by_label("username").fill("anyone")
        page.get_by_label("password").fill(key)
        page.get_by_role("button", name="Login").click()
        open_tab(page, "Search")
        page.locator("#search-image input[type=file]").set_input_files(photos["rocket"])
        page.locator("#item-id textarea, #item-id input").first.fill("ui/keyed")
        page.get_by_role("button", name="Add this image to the index").click()
        expect(page.locator("#item-status")).to_contain_text("Added ui/keyed")
        # The API itself still wants the key for writes, and says so in the usual shape.
        put = httpx.put(
            f"{locked.url}/v1/items/api/unkeyed",
            files={"file": ("r.jpg", jpeg("rocket"), "image/jpeg")},
            headers={"X-Request-ID": "e2e-trace-1"},
        )
        assert put.status_code == 401 and put.json()["error"]["code"] == "unauthorized"
        assert put.headers["x-request-id"] == "e2e-trace-1"
    finally:
        locked.stop()
    lines = [json.loads(line) for line in locked.log().splitlines() if line.startswith("{")]
    traced = [line for line in lines if line["request_id"] == "e2e-trace-1"]
    assert traced and "PUT /v1/items/api/unkeyed" in traced[0]["message"]  # the access line
