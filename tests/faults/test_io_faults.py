"""I/O errors at every file operation: nothing failed is acknowledged, the store refuses writes, the directory reopens.

``tests/faults/test_write_failures.py`` fails the segment ``pwrite`` or
``fdatasync`` of a commit. Here a :class:`tests.faultfs.FaultFS` fails
*each* counted file operation of a workload in turn (``fail_at=N``) with
``EIO`` or ``ENOSPC``, once or from then on: the operations of creating the
store, of commits, segment rolls, checkpoints, truncations, deletions,
retention and compaction, of a reopen that recovers an abandoned store, and
of the final close. For each N:

- the call during which operation N failed raised, unless what it promised
  was already durable and published when the operation failed (a commit is
  acknowledged after its fsync; the checkpoint that follows a roll may fail
  after that): no commit whose write or sync failed is acknowledged;
- a failure in the writer thread fails the store: the next commit, and
  ``close()``, raise ``StoreFailedError`` whose message says that a write or
  fsync failed, carries the injected error and says to reopen; a failed
  ``open`` raises the ``OSError`` itself; a failed compaction copy (the
  calling thread) leaves the store working, and so does a full file system
  (``ENOSPC``) while compaction's roll creates the next segment's file, up
  to the rename that names it (nothing changed; the report names the
  active segment as not reached);
- reopened with plain I/O, the directory recovers to the model after K
  actions, acknowledged <= K <= handed over (so no partial transaction and
  every acknowledged one present), takes a new transaction, and verifies
  clean after closing.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import logstore
import tests.faults.test_crash_points as cp
from logstore import StoreFailedError
from tests.faultfs import FaultFS, Op, write_image
from tests.stress import SEED, STRESS, scale

COMBOS = [(errno.EIO, False), (errno.ENOSPC, False), (errno.EIO, True), (errno.ENOSPC, True)]


@dataclass
class Run:
    """What one run of the workload with one injected error did."""

    acked: int = 0
    submitted: int = 0
    raised: dict[int, BaseException] = field(default_factory=dict)  # action -> what its call raised
    published_at_fault: bool | None = None  # was the action in flight already published when the op failed?
    fault_action: int | None = None
    open_error: BaseException | None = None
    close_error: BaseException | None = None
    after: BaseException | str | None = "none"  # what the next action after the failure did (None: succeeded)
    # The first phase's store had failed when it was abandoned (a failure after its last action returned, such as
    # releasing the write lock at the end of that action's turn: the process dies before anything reports it).
    failed_at_abandon: StoreFailedError | None = None


def run_with_fault(path: Path, wl: cp.Workload, fs: FaultFS) -> Run:
    """Create the store, run half the actions, abandon it, reopen (recovery), run the rest, close."""
    run = Run()
    progress = cp.Progress()
    state: dict[str, int | None] = {"inflight": None}

    def on_fault(_fs: FaultFS, _op: Op) -> None:
        if run.published_at_fault is None:
            k = state["inflight"]
            run.fault_action = k
            run.published_at_fault = k is not None and cp.published(progress.store, wl.actions[k])

    fs.on_fault = on_fault
    half = len(wl.actions) // 2
    phases = [range(half), range(half, len(wl.actions))]
    for phase, actions in enumerate(phases):
        try:
            store = logstore.open(path, io=fs, **wl.options)
        except (OSError, StoreFailedError) as exc:
            run.open_error = exc
            return run
        progress.store = store
        for k in actions:
            state["inflight"] = k
            run.submitted = k + 1
            try:
                cp.perform(store, wl, k)
            except (OSError, StoreFailedError) as exc:
                run.raised[k] = exc
                state["inflight"] = None
                if k + 1 < len(wl.actions):  # the next write: refused if the store failed
                    run.submitted = k + 2
                    try:
                        _probe(store, wl, k + 1)
                        run.acked = k + 2
                        run.after = None
                    except (OSError, StoreFailedError) as exc:
                        run.after = exc
                _close(store, run)
                return run
            run.acked = k + 1
            state["inflight"] = None
        progress.store = None
        if phase == 0:
            run.failed_at_abandon = store._writer.failed
            store._abandon()  # the process dies: the reopen recovers
        else:
            _close(store, run)
    return run


def _probe(store: logstore.Store, wl: cp.Workload, j: int) -> None:
    """Action ``j``, at the offsets the store has now (a failed transaction left the heads where they were)."""
    action = wl.actions[j]
    if action.kind != "tx":
        cp.perform(store, wl, j)
        return
    tx, committer = store.begin_tx()
    for stream, _offset, n in action.appends:
        offset = store.head(stream)
        store.append_messages(tx, stream, offset, cp.envelopes(wl.seed, j, stream, offset, n))
    committer.commit()


def _close(store: logstore.Store, run: Run) -> None:
    try:
        store.close()
    except (OSError, StoreFailedError) as exc:
        run.close_error = exc


def check_run(run: Run, fs: FaultFS, code: int, persistent: bool, wl: cp.Workload, path: Path) -> list[str]:
    """Every problem with one run (empty if it behaved); see the module docstring."""
    problems: list[str] = []
    failed = fs.failed_ops
    if not failed:
        return problems  # the operation was never reached (the run took another path)
    op = failed[0]
    message_parts = ("a write or fsync failed", os.strerror(code), f"injected at {op}", "reopen")

    def says_what_failed(exc: BaseException) -> bool:
        return all(part in str(exc) for part in message_parts)

    k = run.fault_action
    # Compaction's roll found no room for the next segment's file, up to and including the rename that
    # names it (a failed rename changes nothing): the store goes on and the report names the active
    # segment (ENOSPC only).
    no_room_to_roll = (
        code == errno.ENOSPC and k is not None and wl.actions[k].kind == "compact" and op.site.endswith(":segment.tmp")
    )
    in_writer = op.thread == "logstore-writer" and not no_room_to_roll
    if run.open_error is not None:
        if not isinstance(run.open_error, OSError | StoreFailedError):
            problems.append(f"open raised {run.open_error!r}")
        if isinstance(run.open_error, OSError) and run.open_error.errno != code:
            problems.append(f"open raised errno {run.open_error.errno}, injected {code}")
    elif k is not None and k not in run.raised and not run.published_at_fault:
        # The call returned although one of its operations failed: only if it was durable and published before.
        problems.append(f"action {k} ({wl.actions[k].kind}) was acknowledged although {op} failed before it")
    if in_writer:
        # The writer failed: the store refuses every write from now on, and says why.
        if run.after is None:
            problems.append(f"the action after the failure of {op} was acknowledged")
        for what, exc in (
            ("the next action", run.after),
            ("close", run.close_error),
            ("the abandoned store", run.failed_at_abandon),
        ):
            if isinstance(exc, BaseException) and not (isinstance(exc, StoreFailedError) and says_what_failed(exc)):
                problems.append(f"{what} raised {exc!r}, which does not say what failed")
        if run.close_error is None and run.open_error is None and run.failed_at_abandon is None:
            problems.append("close() did not report that the store had failed")
    elif k is not None and wl.actions[k].kind == "compact" and not persistent and run.after not in (None, "none"):
        what = "roll" if no_room_to_roll else "copy"
        problems.append(f"a failed compaction {what} ({op}) broke the store: the next commit raised {run.after!r}")
    # The directory reopens with plain I/O, consistent, with every acknowledged action and no partial one.
    rec = cp.recover(path, wl, new_stream="after-fault")
    if rec.problem is not None:
        problems.append(f"reopen: {rec.problem}")
    elif not any(run.acked <= kk <= run.submitted for kk in rec.ks):
        problems.append(f"reopen holds {sorted(rec.ks)} actions; acknowledged {run.acked}, handed over {run.submitted}")
    return problems


def io_workload(seed: int) -> cp.Workload:
    """Transactions, truncations, deletions and compactions over two segment rolls and a retention drop."""
    wl = cp.removal_workload(seed, scale(36, 60))
    del wl.options["retention_bytes"]
    wl.actions.append(cp.Action("compact", before=cp.SMALL_SEGMENT))  # retention drops every sealed segment
    wl.states.append(wl.states[-1])
    return wl


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    root = cp.scratch_root(tmp_path)
    with cp.quiet_logstore():
        yield root
    shutil.rmtree(root, ignore_errors=True)


def _count(wl: cp.Workload, scratch: Path) -> list[Op]:
    path = scratch / "count"
    path.mkdir()
    fs = FaultFS(path)
    run = run_with_fault(path, wl, fs)
    assert run.acked == len(wl.actions) and run.close_error is None and run.open_error is None, run
    shutil.rmtree(path)
    return fs.ops


@pytest.mark.slow
def test_an_io_error_at_every_operation_is_never_acknowledged_and_the_store_reopens(scratch: Path) -> None:
    findings: list[str] = []
    runs = 0
    for seed in range(SEED + 400, SEED + 400 + scale(1, 4)):
        wl = io_workload(seed)
        ops = _count(wl, scratch)
        sites = {op.site for op in ops}
        # Every kind of operation of the engine is reached: creation, commits, rolls, checkpoints, retention,
        # compaction, the recovering reopen and the close.
        for needed in ("mkdir:segments", "fallocate:segment.tmp", "rename:CHECKPOINT.tmp", "pwrite:segment"):
            assert needed in sites, (needed, sites)
        assert {"rename:segment.compact", "unlink:segment", "fdatasync:segment"} <= sites, sites
        for n in range(1, len(ops) + 1):
            combos = COMBOS if STRESS else [COMBOS[n % len(COMBOS)]]
            for code, persistent in combos:
                path = scratch / f"run-{seed}-{n}-{code}-{persistent}"
                path.mkdir()
                fs = FaultFS(path, fail_at=n, errno=code, persistent=persistent)
                run = run_with_fault(path, wl, fs)
                runs += 1
                assert fs.failed_ops and fs.failed_ops[0].index == n, (n, fs.failed_ops)
                for problem in check_run(run, fs, code, persistent, wl, path):
                    findings.append(
                        f"seed {seed}, {os.strerror(code)} {'from' if persistent else 'at'} {ops[n - 1]}"
                        f" ({ops[n - 1].site}): {problem}"
                    )
                shutil.rmtree(path)
    print(f"io fault runs: {runs}, problems: {len(findings)}")
    assert not findings, "\n".join(findings[:20])
    assert runs >= scale(150, 2000)


@pytest.mark.parametrize("site", ["fdatasync:segment", "pwrite:pos", "rename:CHECKPOINT.tmp", "fsync_dir:segments"])
def test_a_persistent_error_at_one_site_fails_the_store_with_its_cause(scratch: Path, site: str) -> None:
    """Failing every operation of one site from the first commit on: the error names the operation that failed."""
    wl = io_workload(SEED + 500)
    path = scratch / "store"
    path.mkdir()
    fs = FaultFS(path, fail_at=40, errno=errno.EIO, persistent=True, site=site)
    run = run_with_fault(path, wl, fs)
    assert fs.failed_ops, f"no {site} operation after op 40"
    assert all(op.site == site for op in fs.failed_ops)
    assert run.raised or run.close_error is not None or run.open_error is not None
    problems = check_run(run, fs, errno.EIO, True, wl, path)
    assert not problems, problems


def test_an_io_error_at_every_operation_of_a_recovery_that_cuts_a_torn_tail(scratch: Path) -> None:
    """The recovering open fails at each of its operations (saving to lost+found, zeroing, checkpoint): it raises,
    and the next open with plain I/O recovers the same prefix of whole transactions."""
    wl = cp.plain_workload(SEED + 600, 30)
    images: list[tuple[dict[str, bytes | None], int, int]] = []
    progress = cp.Progress()

    segment_writes = 0

    def on_op(fs: FaultFS, op: Op) -> None:
        nonlocal segment_writes
        if op.site != "pwrite:segment":
            return
        segment_writes += 1  # counted apart from other operations, whose number changes with the engine
        if segment_writes % scale(9, 3) == 0:
            lo, hi = cp.bounds(wl, progress)
            images.append((fs.image_files("torn", cp.rng_for("io-recovery", op.index)), lo, hi))

    work = scratch / "work"
    work.mkdir()
    assert cp.run_workload(work, wl, FaultFS(work, on_op=on_op), progress) is None
    assert len(images) >= 3
    findings = []
    runs = cuts = 0
    for i, (files, lo, hi) in enumerate(images):
        count = scratch / f"count-{i}"
        write_image(count, files)
        counter = FaultFS(count)
        logstore.open(count, io=counter, **wl.options).close()
        cuts += any(op.kind == "lost+found" for op in counter.ops)
        for n in range(1, counter.count + 1):
            code, persistent = COMBOS[(n + i) % len(COMBOS)]
            path = scratch / f"image-{i}-{n}"
            write_image(path, files)
            fs = FaultFS(path, fail_at=n, errno=code, persistent=persistent)
            try:
                logstore.open(path, io=fs, **wl.options).close()
            except OSError as exc:
                if exc.errno != code:
                    findings.append(f"image {i}, {fs.failed_ops[0]}: open raised {exc!r}")
            except StoreFailedError as exc:
                if os.strerror(code) not in str(exc):
                    findings.append(f"image {i}, {fs.failed_ops[0]}: {exc!r} does not say what failed")
            else:
                if fs.failed_ops:
                    findings.append(f"image {i}: open and close succeeded although {fs.failed_ops[0]} failed")
            rec = cp.recover(path, wl, new_stream="after-fault")
            runs += 1
            if rec.problem is not None:
                findings.append(f"image {i}, {counter.ops[n - 1]} failed, then reopen: {rec.problem}")
            elif not any(lo <= k <= hi for k in rec.ks):
                findings.append(
                    f"image {i}, {counter.ops[n - 1]} failed: reopen holds {sorted(rec.ks)}, not [{lo}, {hi}]"
                )
            shutil.rmtree(path)
    print(f"recovery io fault runs: {runs}, problems: {len(findings)}")
    assert not findings, "\n".join(findings[:20])
    assert cuts >= 2, "the recoveries cut torn tails into lost+found"
