"""The issued-card writer: batches many calls' records into one transaction, and one bad record loses no other."""

from __future__ import annotations

import threading

import pytest

from spasticity_cds.cds_hooks.writer import BatchWriter


class _Table:
    """A store whose transaction fails whole when any record in it is bad, like a database's."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.transactions = 0
        self.lock = threading.Lock()

    def write(self, records: list[str]) -> None:
        with self.lock:
            self.transactions += 1
            if any(record.startswith("bad") for record in records):
                raise ValueError("value too long for type character varying(128)")
            self.rows.extend(records)


def test_a_burst_shares_one_transaction() -> None:
    table = _Table()
    writer: BatchWriter[str] = BatchWriter(table.write, linger_s=0.2)
    for n in range(10):
        writer.submit([f"card-{n}"])
    assert writer.flush()
    assert sorted(table.rows) == sorted(f"card-{n}" for n in range(10))
    assert table.transactions == 1


def test_one_bad_record_loses_no_other_record_of_its_batch(caplog: pytest.LogCaptureFixture) -> None:
    table = _Table()
    writer: BatchWriter[str] = BatchWriter(table.write, linger_s=0.2)
    writer.submit(["card-1", "card-2"])
    writer.submit(["bad-" + "x" * 200])
    writer.submit(["card-3"])
    assert writer.flush()
    assert sorted(table.rows) == ["card-1", "card-2", "card-3"]
    assert "could not store an issued card" in caplog.text
