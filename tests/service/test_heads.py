"""Task heads while the service serves: attached, replaced and removed under load without a
failed request or a removed head in any answer after its removal; detached when a version
of another base goes live, attached again when theirs comes back."""

import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from loadtest.common.synthetic_head import write_head
from service.app import create_app
from tests.conftest import lite0_settings
from tests.photos import jpeg


def classify(http: TestClient) -> dict[str, Any]:
    files = {"file": ("cup.jpg", jpeg("coffee") + uuid.uuid4().bytes, "image/jpeg")}
    answer = http.post("/v1/classify", files=files)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_attach_replace_and_remove_while_requests_are_served(tmp_path: Path) -> None:
    with TestClient(create_app(lite0_settings(tmp_path / "data"))) as http:
        fingerprint = http.get("/readyz").json()["fingerprint"]
        small = write_head(tmp_path / "small", classes=3, dim=1280, base_fingerprint=fingerprint)
        large = write_head(tmp_path / "large", classes=700, dim=1280, base_fingerprint=fingerprint)
        answers: list[dict[str, Any]] = []
        stop = threading.Event()

        def keep_classifying() -> None:
            while not stop.is_set():
                answers.append(classify(http))

        loader = threading.Thread(target=keep_classifying)
        loader.start()
        try:
            assert http.put("/v1/heads/h", json={"source": str(small)}).status_code == 201
            assert http.put("/v1/heads/h", json={"source": str(large)}).status_code == 200
            replaced = classify(http)
            assert len(replaced["heads"]["h"]["predictions"]) == 5  # top_k of 700 classes
            files = [("files", ("a.jpg", jpeg("rocket"), "image/jpeg"))] * 2
            batch = http.post("/v1/classify/batch", files=files, params={"top_k": 2}).json()
            assert [len(r["heads"]["h"]["predictions"]) for r in batch["results"]] == [2, 2]
            assert http.delete("/v1/heads/h").status_code == 204
            removed_at = len(answers)
            after = [classify(http) for _ in range(3)]
        finally:
            stop.set()
            loader.join(60)
        assert all(answer["heads"] == {} for answer in after)
        # Whatever was in flight at the removal, nothing after it answered with the head.
        assert all("h" not in answer["heads"] for answer in answers[removed_at + 1 :])
        assert {
            len(a["heads"].get("h", {"predictions": [0] * 3})["predictions"]) for a in answers
        } <= {3, 5}


def test_a_version_of_another_base_detaches_the_heads_until_theirs_is_back(
    tmp_path: Path,
) -> None:
    with TestClient(create_app(lite0_settings(tmp_path / "data"))) as http:
        fingerprint = http.get("/readyz").json()["fingerprint"]
        head = write_head(tmp_path / "head", classes=4, dim=1280, base_fingerprint=fingerprint)
        assert http.put("/v1/heads/h", json={"source": str(head)}).status_code == 201
        assert http.post("/v1/models", json={"name": "v2", "weights": "random"}).status_code == 202
        deadline = time.monotonic() + 120
        while http.get("/v1/models").json()["versions"][-1]["state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert http.post("/v1/models/v2/activate").status_code == 200
        (listed,) = http.get("/v1/heads").json()["heads"]
        assert not listed["attached"] and classify(http)["heads"] == {}
        assert http.post("/v1/models/default/activate").status_code == 200
        assert http.get("/v1/heads").json()["heads"][0]["attached"]
        assert set(classify(http)["heads"]) == {"h"}
