"""The item index on Milvus (index.milvus_collection), through Milvus Lite: a real Milvus
core, embedded, offline. The same behaviour as the FAISS engine's: put, replace, delete,
get, images, search and similar with exact answers on seeded data, filters (the same syntax;
values matched literally), reopening, and a collection of another model refused."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from index.collection import Collection
from index.filters import InvalidFilter, validate_filter
from index.milvus_collection import MilvusCollection
from index.milvus_filters import milvus_expression
from index.store import ModelMismatch, stored_form
from tests.index.vectors import clustered

D = 16


def open_milvus(path: Path, fingerprint: str = "fp-1", prefix: str = "items") -> MilvusCollection:
    return MilvusCollection(
        str(path / "milvus.db"), d=D, fingerprint=fingerprint, model="m", prefix=prefix
    )


OWNERS = ["ann", "bob", 'x" or 1 == 1 or "', "back\\slash"]


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MilvusCollection, Collection]]:
    """The same 60 items on both engines, metadata cutting across the vectors' clusters."""
    milvus = open_milvus(tmp_path_factory.mktemp("milvus"))
    faiss_engine = Collection(
        tmp_path_factory.mktemp("faiss"), d=D, fingerprint="fp-1", model="m", factory="Flat"
    )
    for i, vector in enumerate(clustered(60, D, clusters=6, seed=1)):
        metadata = {
            "owner": OWNERS[i % 4],
            "n": i % 5,
            "even": i % 2 == 0,
            "note": None if i == 7 else "y",
        }
        for engine in (milvus, faiss_engine):
            engine.put(f"item-{i}", stored_form(vector), metadata, None)
    yield milvus, faiss_engine
    milvus.close()
    faiss_engine.close()


def test_search_answers_as_the_faiss_engine_does(
    engines: tuple[MilvusCollection, Collection],
) -> None:
    milvus, faiss_engine = engines
    for q in (3, 17, 42):
        query = faiss_engine.store.vector(f"item-{q}")
        assert query is not None
        expected = faiss_engine.search(query, 5)
        hits = milvus.search(query, 5)
        assert [hit.id for hit in hits] == [hit.id for hit in expected]
        assert [hit.score for hit in hits] == pytest.approx(
            [hit.score for hit in expected], abs=1e-3
        )


@pytest.mark.parametrize(
    "where",
    [
        {"owner": "ann"},
        {"owner": ["bob", "ann"], "n": 2},
        {"owner": 'x" or 1 == 1 or "'},  # an injection attempt: matched literally
        {"owner": "back\\slash"},
        {"n": 2.0},  # numbers compare by value
        {"n": "2"},  # a string never equals a number
        {"even": True},
        {"note": None},
        {"owner": "nobody"},
    ],
)
def test_filters_match_what_the_faiss_engine_matches(
    engines: tuple[MilvusCollection, Collection], where: dict[str, object]
) -> None:
    milvus, faiss_engine = engines
    parsed = validate_filter(where)
    query = faiss_engine.store.vector("item-10")
    assert query is not None
    expected = [hit.id for hit in faiss_engine.search(query, 8, None, parsed)]
    assert [hit.id for hit in milvus.search(query, 8, where=parsed)] == expected
    if where == {"owner": 'x" or 1 == 1 or "'}:
        assert len(expected) == 8 and all(int(i[5:]) % 4 == 2 for i in expected)


def test_a_control_character_in_a_filter_is_refused_not_sent() -> None:
    with pytest.raises(InvalidFilter, match="control characters"):
        milvus_expression(validate_filter({"owner": "a\nb"}))


def test_put_replace_delete_get_image_and_similar(tmp_path: Path) -> None:
    collection = open_milvus(tmp_path)
    vectors = clustered(3, D, seed=2)
    image = bytes(range(256)) * 700  # 175 KB: three parts
    assert collection.put("a/b", vectors[0], {"k": 1}, image) is True
    assert collection.put("c", vectors[1], {}, None) is True
    assert collection.image("a/b") == image and collection.image("c") is None
    assert collection.put("a/b", vectors[2], {"k": 2}, b"small") is False  # replaced
    stored = collection.get("a/b")
    assert stored is not None and stored.metadata == {"k": 2}
    assert collection.image("a/b") == b"small"
    similar = collection.similar("c", 5)
    assert similar is not None and [hit.id for hit in similar] == ["a/b"]
    assert collection.similar("missing", 5) is None
    assert collection.delete("a/b") is True and collection.delete("a/b") is False
    assert collection.get("a/b") is None and collection.image("a/b") is None
    assert collection.count() == 1 and collection.ids() == {"c"}
    assert collection.stats().count == 1
    collection.close()


def test_labels_order_writes_for_a_model_versions_copy(tmp_path: Path) -> None:
    collection = open_milvus(tmp_path)
    vectors = clustered(3, D, seed=3)
    for i, name in enumerate(["x", "y", "z"]):
        collection.put(name, vectors[i], {}, None)
    first = collection.get("x")
    assert first is not None
    after = collection.written_after(first.label, 10)
    assert [item_id for _, item_id in after] == ["y", "z"]
    assert collection.max_label() == after[-1][0]
    assert collection.ids(up_to=first.label) == {"x"}
    collection.close()


def test_reopening_keeps_everything_and_another_model_is_refused(tmp_path: Path) -> None:
    collection = open_milvus(tmp_path)
    collection.put("kept", clustered(1, D, seed=4)[0], {"a": 1}, b"img")
    collection.close()
    reopened = open_milvus(tmp_path)
    kept = reopened.get("kept")
    assert kept is not None and kept.metadata == {"a": 1} and reopened.image("kept") == b"img"
    reopened.close()
    with pytest.raises(ModelMismatch, match="items_items"):
        open_milvus(tmp_path, fingerprint="fp-2")
    other = open_milvus(tmp_path, fingerprint="fp-2", prefix="other")  # its own collections
    assert other.count() == 0
    other.close()


def test_kill_9_during_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    database = str(tmp_path / "kill.db")
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.index.milvus_writer", database],
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    assert writer.stdout is not None
    for line in writer.stdout:  # event-driven: kill once enough writes were acknowledged
        acknowledged.append(line.strip())
        if len(acknowledged) >= 300:
            break
    writer.kill()
    writer.wait()
    acknowledged += [line.strip() for line in writer.stdout]  # what was printed before it died
    writer.stdout.close()
    put = {line.split()[1] for line in acknowledged if line.startswith("put ")}
    deleted = {line.split()[1] for line in acknowledged if line.startswith("deleted ")}
    reopened = MilvusCollection(database, d=8, fingerprint="f", model="m", prefix="kill")
    stored = reopened.ids()
    assert put - deleted <= stored  # every acknowledged put is there
    assert not deleted & stored  # every acknowledged delete stays gone
    reopened.close()
