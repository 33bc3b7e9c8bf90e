"""A store carried into a child made by ``fork()`` refuses every use there and leaves the parent's connections alone."""

from __future__ import annotations

import os

from logstore import Envelope, StoreForkedError


def test_a_forked_child_gets_store_forked_error_and_the_parent_goes_on(open_pg):
    store = open_pg()
    with store.transaction() as tx:
        tx.append("s", 0, [Envelope.new("Before", 0)])
    reader = store.stream("s")
    assert reader.try_next()
    tx, committer = store.begin_tx()
    tx.append("s", 1, [Envelope.new("Made before the fork", 1)])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what each use raised, close the store, leave without cleanup
        os.close(read_end)
        results = []
        for use in (lambda: store.head("s"), store.begin_tx, committer.commit, lambda: store.stream("s")):
            try:
                use()
                results.append("no error")
            except StoreForkedError:
                results.append("forked")
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                results.append(type(exc).__name__)
        store.close()
        os.write(write_end, ",".join(results).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        report = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert report == "forked,forked,forked,forked"
    # The child's close() sent nothing on the parent's connections: they all still work.
    assert committer.commit() == range(1, 2)
    assert reader.try_next() and reader.offset() == 1
    assert store.head("s") == 2
