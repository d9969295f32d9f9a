"""Crash safety: acknowledged writes survive kill -9, unfinished ones leave nothing, opens race safely."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import spasticity_cds.store
from spasticity_cds.store import PageContext, PageFeedback, open_store
from spasticity_cds.store.migrate import current_revision, head_revision

SRC_DIR = Path(spasticity_cds.store.__file__).resolve().parents[2]
CREATED_AT = datetime(2026, 3, 14, 14, 26, 53, tzinfo=UTC)

# The child writes one page-feedback row; in "pause-before-commit" mode it stops inside the transaction.
CHILD_WRITER = textwrap.dedent(
    """
    import sys, time, uuid
    from datetime import datetime
    from sqlalchemy import event
    from spasticity_cds.store import PageContext, PageFeedback, open_store

    url, feedback_id, created_at, mode = sys.argv[1:5]
    store = open_store(url)
    if mode == "pause-before-commit":
        def pause(connection):
            print("COMMITTING", flush=True)
            time.sleep(600)
        event.listen(store.engine, "commit", pause)
    item = PageFeedback(uuid.UUID(feedback_id), PageContext.ANSWER_PAGE, datetime.fromisoformat(created_at),
                        answered=True, useful=True, comment="written by a process about to die")
    stored = store.record_page_feedback(item)
    print(f"WRITTEN {stored}", flush=True)
    time.sleep(600)
    """
)

CHILD_OPENER = textwrap.dedent(
    """
    import sys, time
    from spasticity_cds.store import open_store

    url, start_at = sys.argv[1], float(sys.argv[2])
    time.sleep(max(0.0, start_at - time.time()))
    open_store(url).close()
    print("OPENED", flush=True)
    """
)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def _start_child(program: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", program, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())


def _wait_for_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if not line:
        child.wait(timeout=30)
        assert child.stderr is not None
        raise AssertionError(f"child exited early: {child.stderr.read()}")
    return line


def _kill_hard(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    for stream in (child.stdout, child.stderr):
        if stream is not None:
            stream.close()


def _feedback(feedback_id: uuid.UUID) -> PageFeedback:
    return PageFeedback(
        feedback_id,
        PageContext.ANSWER_PAGE,
        CREATED_AT,
        answered=True,
        useful=True,
        comment="written by a process about to die",
    )


def test_acknowledged_feedback_survives_kill_9(store_url: str) -> None:
    feedback_id = uuid.uuid4()
    child = _start_child(CHILD_WRITER, store_url, str(feedback_id), CREATED_AT.isoformat(), "normal")

    assert _wait_for_line(child) == "WRITTEN True"
    _kill_hard(child)

    with open_store(store_url) as store:
        assert store.list_page_feedback() == [_feedback(feedback_id)]


def test_a_crash_before_commit_leaves_no_row_and_the_retry_succeeds(store_url: str) -> None:
    feedback_id = uuid.uuid4()
    mode = "pause-before-commit"
    child = _start_child(CHILD_WRITER, store_url, str(feedback_id), CREATED_AT.isoformat(), mode)

    assert _wait_for_line(child) == "COMMITTING"
    _kill_hard(child)

    with open_store(store_url) as store:
        assert store.counts().page_feedback == 0
        assert store.record_page_feedback(_feedback(feedback_id)) is True
        assert store.list_page_feedback() == [_feedback(feedback_id)]


def test_processes_opening_a_new_store_at_once_migrate_it_once(store_url: str) -> None:
    start_at = time.time() + 2.0
    children = [_start_child(CHILD_OPENER, store_url, str(start_at)) for _ in range(4)]

    outputs = [child.communicate(timeout=120) for child in children]

    assert [child.returncode for child in children] == [0, 0, 0, 0], [err for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["OPENED"] * 4
    with open_store(store_url) as store, store.engine.connect() as connection:
        assert current_revision(connection) == head_revision()
