"""Store concurrency (issue 10 items 1 and 2): gc beside live writers, put/rm races.

Each trial forks two writers storing 300 small records each (one by one, and in batches)
while a third process runs ``gc``
in a loop and two more race ``put`` and ``rm`` of one same content (a sixth reads it with
``get``). Afterwards every acknowledged record must be readable with its blob intact: records
lost are counted and reported (the rule is 0), and so are errors any worker saw.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import pytest
import torch

import conceptkit as ck
from conceptkit.errors import StoreError, UnknownNameError
from conceptkit.store import RecordDraft
from tests.adversarial.tally import tally

TRIALS = int(os.environ.get("CONCEPTKIT_RACE_TRIALS", "20"))
PER_WRITER = 300
CTX = mp.get_context("fork")  # the parent has imported torch and conceptkit already: forks start at once


def _draft(i: int) -> RecordDraft:
    return RecordDraft(tensors={"v": torch.full((4,), float(i))}, concept=f"c{i}")


RACED = _draft(-1)


def _writer(path: str, offset: int, out) -> None:  # type: ignore[no-untyped-def]
    acked, errors = [], []
    try:
        store = ck.open_store(path)
        # The first writer puts one record at a time; the second in batches of 20 (put_many),
        # whose blobs sit uncommitted longer: a wider window for gc to get wrong.
        batch = 1 if offset == 0 else 20
        for i in range(offset, offset + PER_WRITER, batch):
            try:
                acked += [r.id for r in store.put_many([_draft(j) for j in range(i, i + batch)])]
            except Exception as exc:  # noqa: BLE001 - counted, not raised
                errors.append(f"writer put {i}: {type(exc).__name__}: {exc}")
    except Exception:  # noqa: BLE001
        errors.append(traceback.format_exc())
    out.send((acked, errors))


def _loop(kind: str, path: str, stop, out) -> None:  # type: ignore[no-untyped-def]
    """``gc`` in a loop, or one side of the put/rm race on RACED, or a ``get`` reader."""
    errors, rounds = [], 0
    store = ck.open_store(path)
    rid = None
    while not stop.is_set() or rounds == 0:
        rounds += 1
        try:
            if kind == "gc":
                store.gc()
            elif kind == "put":
                rid = store.put(RACED).id
                try:
                    store.tensors(rid)  # just stored: the blob must be there unless rm ran since
                except UnknownNameError:
                    pass
            elif kind == "rm":
                try:
                    store.rm(RACED_ID)
                except UnknownNameError:
                    pass
            else:
                try:
                    store.get(RACED_ID)
                except UnknownNameError:
                    pass
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        time.sleep(0.005)  # race, but leave the writers (and the two cores) room to work
    out.send((rounds, errors))


RACED_ID = ck.store.local.content_id(RACED)


def _trial(path: Path) -> tuple[int, int, list[str], dict[str, int]]:
    """One trial: returns (acknowledged, lost, errors, rounds per looping worker)."""
    ck.open_store(path).close()
    stop = CTX.Event()
    writers, loops = [], []
    for offset in (0, 10_000):
        recv, send = CTX.Pipe(duplex=False)
        p = CTX.Process(target=_writer, args=(str(path), offset, send))
        p.start()
        writers.append((p, recv))
    for kind in ("gc", "put", "rm", "get"):
        recv, send = CTX.Pipe(duplex=False)
        p = CTX.Process(target=_loop, args=(kind, str(path), stop, send))
        p.start()
        loops.append((kind, p, recv))
    acked, errors = [], []
    for p, recv in writers:
        ids, errs = recv.recv()
        p.join()
        acked += ids
        errors += errs
    stop.set()
    rounds = {}
    for kind, p, recv in loops:
        n, errs = recv.recv()
        p.join()
        rounds[kind] = n
        errors += errs
    store = ck.open_store(path)
    lost = 0
    for rid in acked:
        try:
            store.tensors(rid)
        except (StoreError, UnknownNameError):
            lost += 1
    if RACED_ID in store:  # the race left the record: it must be whole
        try:
            store.tensors(RACED_ID)
        except StoreError as exc:
            errors.append(f"after the race: {exc}")
    store.put(RACED)  # and putting it again always leaves it readable
    store.tensors(RACED_ID)
    report = store.verify()
    if not report.ok:
        errors.append(f"verify: {report.lines()}")
    store.close()
    return len(acked), lost, errors, rounds


@pytest.fixture
def race_dir(tmp_path):
    """A folder on tmpfs where there is one (fsync is free there: the test is about locking, the
    SIGKILL tests in test_store.py cover durability), else pytest's tmp_path."""
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="ck-race-", dir="/dev/shm"))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path


@pytest.mark.slow
def test_gc_and_put_rm_race_beside_two_writers_lose_nothing(race_dir):
    """>= 20 trials of 2 writers x 300 records beside a looping gc and a put/rm/get race: 0 lost, 0 errors."""
    from conceptkit.plugin_manager import get_manager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_manager().registry  # load plugins once, before forking (record_saved would in each child)
    total_acked = total_lost = 0
    all_errors: list[str] = []
    for trial in range(TRIALS):
        acked, lost, errors, rounds = _trial(race_dir / f"t{trial}")
        total_acked += acked
        total_lost += lost
        all_errors += [f"trial {trial}: {e}" for e in errors]
        tally("store: concurrency (gc + put/rm race)", f"trial {trial}: {acked} acked, gc rounds {rounds['gc']}, put/rm rounds {rounds['put']}/{rounds['rm']}",
              "clear" if not errors else "crash", lost)
    print(f"\n{TRIALS} trials: {total_acked} records acknowledged, {total_lost} lost, {len(all_errors)} errors")
    assert total_lost == 0 and not all_errors, all_errors[:10]
    assert total_acked == TRIALS * 2 * PER_WRITER
