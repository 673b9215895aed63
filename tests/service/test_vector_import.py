"""`resnet-serve index import-vectors`: embeddings from a Parquet file, checked, resumable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.collection import Collection
from index.milvus_collection import MilvusCollection
from service.commands.cli import main
from service.items.vector_import import ExpectedModel, ImportRefused, import_vectors
from service.settings import Settings
from tests.index.vectors import clustered

D = 32
FINGERPRINT = "fp-elsewhere"


def write_parquet(
    path: Path,
    ids: list[object],
    vectors: list[object],
    metadata: list[object] | None = None,
    vector_type: pa.DataType | None = None,
    row_group: int = 100,
) -> Path:
    columns = {
        "id": pa.array(ids, pa.string()),
        "vector": pa.array(vectors, vector_type or pa.list_(pa.float32())),
    }
    if metadata is not None:
        columns["metadata"] = pa.array(metadata, pa.string())
    pq.write_table(pa.table(columns), path, row_group_size=row_group)
    return path


def an_index(data_dir: Path) -> Path:
    """An index that holds one item of the model with FINGERPRINT (as a service leaves it)."""
    index_dir = Settings(data_dir=data_dir).index_dir
    collection = Collection(index_dir, d=D, fingerprint=FINGERPRINT, model="m")
    collection.put("seed", clustered(1, D, seed=9)[0], {}, None)
    collection.close()
    return index_dir


def run_import(data_dir: Path, file: Path, exit_code: int = 0) -> None:
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "index",
                "import-vectors",
                str(file),
                "--fingerprint",
                FINGERPRINT,
                "--no-progress",
                "--data-dir",
                str(data_dir),
            ]
        )
    assert exited.value.code == exit_code  # 1: nothing at all could be imported


def test_imported_vectors_are_normalised_searchable_and_keep_their_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index_dir = an_index(tmp_path)
    xb = clustered(500, D, seed=1) * 3.0  # not unit length: normalised on the way in
    ids = [f"v/{i}" for i in range(500)]
    metadata = [json.dumps({"n": i % 5}) for i in range(500)]
    file = write_parquet(tmp_path / "v.parquet", ids, xb.tolist(), metadata)
    run_import(tmp_path, file)
    assert "added 500, already present 0, skipped 0" in capsys.readouterr().out
    collection = Collection(index_dir, d=D, fingerprint=FINGERPRINT, model="m")
    try:
        assert collection.stats().count == 501
        hits = collection.search(xb[7] / 3.0, 3, where={"n": [2]})
        assert hits[0].id == "v/7" and abs(hits[0].score - 1.0) < 1e-3
        assert all(hit.metadata == {"n": 2} for hit in hits)
    finally:
        collection.close()


def test_malformed_rows_are_skipped_with_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    an_index(tmp_path)
    good = clustered(4, D, seed=2).tolist()
    ids: list[object] = ["ok/0", "bad id", None, "ok/1", "ok/2", "ok/3", "ok/0", "ok/4"]
    vectors: list[object] = [
        good[0],
        good[1],
        good[1],
        [1.0] * (D - 1),
        [float("nan")] * D,
        [0.0] * D,
        good[2],
        None,
    ]
    metadata: list[object] = [None, None, None, None, None, None, None, None]
    file = write_parquet(tmp_path / "m.parquet", ids, vectors, metadata)
    run_import(tmp_path, file)
    out = capsys.readouterr().out
    assert "added 1, already present 0, skipped 7" in out
    for why in (
        "item id may contain",
        "no id",
        f"not {D}",
        "NaN",
        "all zeros",
        "earlier row",
        "0 values",
    ):
        assert why in out, why
    metadata_file = write_parquet(
        tmp_path / "meta.parquet", ["ok/5", "ok/6"], [good[3], good[3]], ["[1, 2]", "{not json"]
    )
    run_import(tmp_path, metadata_file, exit_code=1)
    out = capsys.readouterr().out
    assert "not a JSON object" in out and "not valid JSON" in out


def test_an_interrupted_import_resumes_where_it_stopped(tmp_path: Path) -> None:
    index_dir = an_index(tmp_path)
    xb = clustered(1000, D, seed=3)
    file = write_parquet(tmp_path / "r.parquet", [f"r/{i}" for i in range(1000)], xb.tolist())
    expected = ExpectedModel(FINGERPRINT, D, "m")
    first = import_vectors(file, FINGERPRINT, expected, index_dir, progress=False)
    assert first.added == 1000
    # As if it had stopped after the first batches: drop the tail, then import again.
    collection = Collection(index_dir, d=D, fingerprint=FINGERPRINT, model="m")
    for i in range(600, 1000):
        collection.delete(f"r/{i}")
    collection.close()
    again = import_vectors(file, FINGERPRINT, expected, index_dir, progress=False)
    assert (again.added, again.already_present, again.failed) == (400, 600, 0)


@pytest.mark.parametrize(
    "fingerprint, vectors, message",
    [
        ("fp-other", clustered(3, D).tolist(), "not the fingerprint of the index's model"),
        (FINGERPRINT, clustered(3, D + 1).tolist(), f"have {D + 1} dimensions"),
    ],
)
def test_another_model_or_dimension_is_refused_before_anything_is_written(
    tmp_path: Path, fingerprint: str, vectors: list[object], message: str
) -> None:
    index_dir = an_index(tmp_path)
    file = write_parquet(tmp_path / "x.parquet", ["a", "b", "c"], vectors)
    with pytest.raises(ImportRefused, match=message):
        import_vectors(file, fingerprint, ExpectedModel(FINGERPRINT, D, "m"), index_dir, False)
    collection = Collection(index_dir, d=D, fingerprint=FINGERPRINT, model="m")
    assert collection.stats().count == 1
    collection.close()


def test_a_file_without_the_columns_is_refused(tmp_path: Path) -> None:
    index_dir = an_index(tmp_path)
    file = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"name": ["a"], "embedding": [[1.0] * D]}), file)
    with pytest.raises(ImportRefused, match="lacks the column"):
        import_vectors(file, FINGERPRINT, ExpectedModel(FINGERPRINT, D, "m"), index_dir, False)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ImportRefused, match="not a readable Parquet file"):
        import_vectors(
            tmp_path / "junk.parquet",
            FINGERPRINT,
            ExpectedModel(FINGERPRINT, D, "m"),
            index_dir,
            False,
        )


def test_a_fixed_size_float64_vector_column_is_read_too(tmp_path: Path) -> None:
    index_dir = an_index(tmp_path)
    xb = clustered(10, D, seed=4).astype(np.float64)
    file = write_parquet(
        tmp_path / "f.parquet",
        [f"f/{i}" for i in range(10)],
        xb.tolist(),
        vector_type=pa.list_(pa.float64(), D),
    )
    report = import_vectors(file, FINGERPRINT, ExpectedModel(FINGERPRINT, D, "m"), index_dir, False)
    assert report.added == 10


def test_without_pyarrow_the_command_says_how_to_install_it(tmp_path: Path) -> None:
    an_index(tmp_path)
    file = tmp_path / "v.parquet"
    file.write_bytes(b"PAR1")
    hidden = Path(__file__).parents[1] / "without_optional"
    path = os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "service", "index", "import-vectors", str(file)]
    command += ["--fingerprint", FINGERPRINT, "--data-dir", str(tmp_path), "--no-progress"]
    env = os.environ | {"PYTHONPATH": path, "WITHOUT_PACKAGES": "pyarrow"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 1
    assert "pip install 'resnet-serve[parquet]'" in finished.stderr


def test_import_into_milvus_skips_bad_rows_and_resumes(tmp_path: Path) -> None:
    milvus = MilvusCollection(
        str(tmp_path / "milvus.db"), d=D, fingerprint=FINGERPRINT, model="m", prefix="imported"
    )
    xb = clustered(20, D, seed=6) * 3  # not unit length: the import normalises
    ids: list[object] = [f"v/{i}" for i in range(20)]
    vectors: list[object] = xb.tolist()
    ids[3], vectors[5] = None, [0.0] * D  # no id; a vector with no direction
    metadata = [json.dumps({"i": i}) for i in range(20)]
    metadata[7] = "[not an object]"
    file = write_parquet(tmp_path / "v.parquet", ids, vectors, metadata)
    expected = ExpectedModel(FINGERPRINT, D, "m")
    report = import_vectors(file, FINGERPRINT, expected, tmp_path, False, into=milvus)
    assert (report.added, report.failed) == (17, 3)
    assert milvus.count() == 17
    hit = milvus.search(xb[10] / np.linalg.norm(xb[10]), 1)[0]
    assert (hit.id, hit.metadata) == ("v/10", {"i": 10})
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    again = import_vectors(file, FINGERPRINT, expected, tmp_path, False, into=milvus)
    assert (again.added, again.already_present) == (0, 17)  # run again: resumed, not doubled
    milvus.close()
