"""The Spark engine (local[2]) writes the same Tasks, problems and counts as the local engine on the same input."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spasticity_cds.batch.problems import DETAIL_CAP

from .batch_helpers import line_of, read_ndjson, run

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark_session() -> Iterator[Any]:
    """One local[2] session for the module (the runner reuses an active session and leaves it running)."""
    pyspark_sql = pytest.importorskip("pyspark.sql")
    if shutil.which("java") is None:
        pytest.skip("Java is not installed: Spark cannot start")
    patch = pytest.MonkeyPatch()
    patch.setenv("PYSPARK_PYTHON", sys.executable)  # workers run this virtualenv's interpreter, not PATH's python3
    session = (
        pyspark_sql.SparkSession.builder.master("local[2]")
        .appName("spasticity-cds batch tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.pyspark.python", sys.executable)
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    patch.undo()


MAX_SPLIT = "spark.sql.files.maxPartitionBytes"


@pytest.fixture
def small_splits(spark_session: Any) -> Iterator[None]:
    """Spark cuts a file into 128 KiB splits, so that line numbers must come out right across partitions."""
    spark_session.conf.set(MAX_SPLIT, str(128 * 1024))
    yield
    spark_session.conf.unset(MAX_SPLIT)


def _by_id(path: Path) -> dict[str, Any]:
    return {record["id"]: record for record in read_ndjson(path)}


#: The outputs both engines must write byte for byte alike.
SAME_OUTPUTS = ("Task.ndjson", "OperationOutcome.ndjson", "rule_counts.json")


def _both_engines(source: Path, tmp_path: Path) -> tuple[Any, Any]:
    """The local and the Spark run of one input (in ``tmp_path/local`` and ``/spark``), having checked that they
    wrote the same Tasks, problems and rule counts."""
    local = run(source, tmp_path / "local")
    spark = run(source, tmp_path / "spark", engine="spark")
    _assert_same(tmp_path, SAME_OUTPUTS)
    return local, spark


def _assert_same(tmp_path: Path, names: tuple[str, ...]) -> None:
    for name in names:
        assert (tmp_path / "spark" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_spark_and_local_engines_agree(
    spark_session: Any, small_splits: None, bad_cohort: Path, tmp_path: Path
) -> None:
    observations = bad_cohort / "Observation.ndjson"
    assert spark_session.read.text(str(observations)).rdd.getNumPartitions() > 1
    local = run(bad_cohort, tmp_path / "local")
    spark = run(bad_cohort, tmp_path / "spark", engine="spark")
    invalid = f"{observations.name}:{line_of(observations, b'bad-utf8')}"  # found by the bytes Spark hands over
    assert invalid in {
        o["issue"][0]["location"][0] for o in read_ndjson(tmp_path / "spark" / "OperationOutcome.ndjson")
    }
    assert _by_id(tmp_path / "spark" / "Task.ndjson") == _by_id(tmp_path / "local" / "Task.ndjson")
    assert _by_id(tmp_path / "spark" / "OperationOutcome.ndjson") == _by_id(
        tmp_path / "local" / "OperationOutcome.ndjson"
    )
    assert (tmp_path / "spark" / "Task.ndjson").read_bytes() == (tmp_path / "local" / "Task.ndjson").read_bytes()
    assert (tmp_path / "spark" / "rule_counts.json").read_bytes() == (
        tmp_path / "local" / "rule_counts.json"
    ).read_bytes()
    assert spark.counts["problems"] == local.counts["problems"]
    assert spark.counts["patients"] == local.counts["patients"]
    assert spark.manifest["engine"] == {"name": "spark", "master": "local[2]"}


def test_spark_and_local_engines_report_invalid_utf8_alike(
    spark_session: Any, invalid_utf8_export: Path, tmp_path: Path
) -> None:
    local, spark = _both_engines(invalid_utf8_export, tmp_path)
    assert spark.counts == local.counts and spark.counts["problems"] == {"invalid-utf8": DETAIL_CAP + 4}
    assert spark.manifest["input"] == local.manifest["input"]


def test_a_file_spark_would_skip_as_hidden_is_refused(clean_cohort: Path, tmp_path: Path) -> None:
    from spasticity_cds.errors import BatchError

    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    (export / "Patient.ndjson").rename(export / "_Patient.ndjson")
    with pytest.raises(BatchError, match=r"_Patient\.ndjson: the Spark engine cannot read a file whose name starts"):
        run(export, tmp_path / "out", engine="spark")
    assert not (tmp_path / "out").exists()


def test_spark_since_matches_local_since(spark_session: Any, clean_cohort: Path, tmp_path: Path) -> None:
    run(clean_cohort, tmp_path / "first")
    uk = {"jurisdiction": "uk"}  # changed settings: every item is superseded, in both engines alike
    local = run(clean_cohort, tmp_path / "local", since=tmp_path / "first", settings=uk)
    spark = run(clean_cohort, tmp_path / "spark", since=tmp_path / "first", engine="spark", settings=uk)
    assert local.counts["tasks"]["closed"] > 0
    assert spark.manifest["settings"] == local.manifest["settings"] == uk
    _assert_same(tmp_path, ("Task.ndjson", "closed.ndjson", "open.ndjson", "worklist.csv"))


@pytest.mark.parametrize("layout", ["synthea_export", "bundle_folder"])
def test_spark_and_local_engines_agree_on_synthea_data(
    spark_session: Any, layout: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    source: Path = request.getfixturevalue(layout)
    local, spark = _both_engines(source, tmp_path)
    assert spark.counts == local.counts
    assert spark.manifest["input"] == local.manifest["input"]


def test_spark_reads_one_bundle_per_line_as_the_local_engine_does(
    spark_session: Any, clean_cohort: Path, tmp_path: Path
) -> None:
    from spasticity_cds.synth import write_cohort

    from .batch_helpers import SEED, N

    source = tmp_path / "bundles"
    write_cohort(source, n=N, profile="lean", seed=SEED, fmt="bundles")
    _both_engines(source, tmp_path)
    run(clean_cohort, tmp_path / "bulk")
    assert (tmp_path / "local" / "Task.ndjson").read_bytes() == (tmp_path / "bulk" / "Task.ndjson").read_bytes()


def test_a_spark_master_that_cannot_be_used_is_a_batch_error(
    clean_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spasticity_cds.errors import BatchError

    pyspark_sql = pytest.importorskip("pyspark.sql")

    def refuse(self: object) -> None:
        raise ValueError("Could not parse Master URL: 'bogus://nowhere'\n\tat org.apache.spark...")

    # With no session active Spark would start a JVM to refuse the master; its refusal is what is checked.
    monkeypatch.setattr(pyspark_sql.SparkSession.Builder, "getOrCreate", refuse)
    with pytest.raises(BatchError, match="cannot start Spark: Could not parse Master URL") as refused:
        run(clean_cohort, tmp_path / "out", engine="spark", spark_master="bogus://nowhere")
    assert "org.apache" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_a_file_spark_cannot_read_is_a_batch_error_naming_the_cause(
    spark_session: Any, clean_cohort: Path, tmp_path: Path
) -> None:
    from spasticity_cds.errors import BatchError

    export = tmp_path / "export"
    shutil.copytree(clean_cohort, export)
    (export / "Fake.ndjson.gz").write_bytes(b'{"resourceType": "Patient", "id": "plain-text"}\n')
    with pytest.raises(BatchError, match=r"Spark could not finish the run: java\.io\.IOException: not a gzip file"):
        run(export, tmp_path / "out", engine="spark")
    assert not (tmp_path / "out").exists()


def test_spark_and_local_engines_report_duplicates_and_links_alike(
    spark_session: Any, odd_links_export: Path, tmp_path: Path
) -> None:
    local, spark = _both_engines(odd_links_export, tmp_path)
    assert spark.counts == local.counts
    assert spark.counts["problems"] == {"duplicate": 1, "conditional-reference": 1, "no-patient": 1}
