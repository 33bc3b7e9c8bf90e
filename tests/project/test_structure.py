"""The engine's module structure, and the published state that readers and the writer share.

1. The modules of ``logstore/`` import each other in one direction only: the
   import graph, built from the source (imports under ``TYPE_CHECKING`` and
   inside functions count too), has no circle.
2. No module of ``logstore/`` uses another's private names (``_x``): what
   they share goes through public methods and through
   :class:`logstore.embedded.published.Published`.
3. :class:`~logstore.embedded.published.Published` itself: its limits and counters,
   its waiting (``wait`` with a readiness test and a deadline, async waiters)
   and its wake-ups.
4. The backends stand side by side: a module of ``logstore.embedded`` or
   ``logstore.postgres`` imports its own backend's modules and the neutral
   top-level ones (``envelope``, ``errors``, ``tx``, ``checks``, ``readers``,
   ...), never the other backend nor the public face; a neutral module imports
   neutral ones only. Only the public face (``__init__``, ``opener``) and the
   adapters over both (``eventsourcing``) import a backend.
"""

from __future__ import annotations

import ast
import asyncio
import doctest
import gc
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

import logstore
import logstore.embedded.published
from logstore.embedded.published import Published

ENGINE = Path(logstore.__file__).resolve().parent
BACKENDS = ("embedded", "postgres")
# The public face and the adapters over both backends: they may import either backend (opener dispatches).
ABOVE = {"__init__", "__main__", "opener", "eventsourcing"}
# The neutral modules whose base classes both backends subclass.
SHARED_BASES = ("checks", "readers")
WAIT = 10.0  # seconds: a bound for joins; nothing waits this long when it works

# Names with a leading underscore that are public by their library's own documentation.
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_make", "_fields", "_exit"}


def _name(path: Path) -> str:
    """A module's name inside the package: ``__init__``, ``envelope``, ``embedded.store``, ``postgres`` (its init)."""
    parts = list(path.relative_to(ENGINE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    """Every module of the ``logstore`` package and its backends (``index`` and ``tools`` are packages apart)."""
    paths = [*ENGINE.glob("*.py"), *(p for sub in BACKENDS for p in (ENGINE / sub).glob("*.py"))]
    return {_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(paths)}


def _target(dotted: str, modules: set[str]) -> str | None:
    """The module of ``modules`` that ``logstore.<dotted>`` names (a name inside a module counts as the module)."""
    parts = dotted.split(".") if dotted else []
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    # "import logstore" or "from logstore import Envelope": the package's own __init__; "logstore.index.x": none
    return "__init__" if "__init__" in modules and "." not in dotted else None


def _imported(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that module ``name`` imports, anywhere in its source."""
    package = name.rsplit(".", 1)[0] if "." in name else ""
    if name in BACKENDS:  # a backend's __init__: its relative imports start from the backend itself
        package = name
    out: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "logstore" or alias.name.startswith("logstore."):
                    out.add(_target(alias.name.removeprefix("logstore").lstrip("."), modules))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: "from . import x" or "from .x import y"
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                within = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module == "logstore" or (node.module or "").startswith("logstore."):
                within = (node.module or "").removeprefix("logstore").lstrip(".")
            else:
                continue
            for alias in node.names:  # "from logstore.embedded import store" imports the module embedded.store
                out.add(_target(f"{within}.{alias.name}" if within else alias.name, modules))
    return {m for m in out if m is not None and m != name}


def import_graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    names = set(modules)
    return {name: _imported(name, tree, names) for name, tree in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_circles_and_only_circles() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import logstore.b\n"
        "if TYPE_CHECKING:\n    from logstore.c import C\n"
        "def f():\n    from logstore import d, Envelope\n"
        "from logstore.index.catalog import Catalog\n"
    )
    assert _imported("a", tree, {"a", "b", "c", "d", "__init__"}) == {"b", "c", "d", "__init__"}


def test_the_modules_of_logstore_import_each_other_in_one_direction() -> None:
    graph = import_graph(_modules())
    assert {"embedded.store", "embedded.reader", "embedded.writer", "postgres.store", "postgres.reader", "tx"} <= set(
        graph
    )
    found = circles(graph)
    assert not found, "modules of logstore/ that import each other in a circle: " + "; ".join(
        " <-> ".join(c) for c in found
    )


def _side(module: str) -> str:
    """Which part of the package a module belongs to: a backend's name, "above" or "neutral"."""
    head = module.split(".", maxsplit=1)[0]
    if head in BACKENDS:
        return head
    return "above" if module in ABOVE else "neutral"


def layer_breaches(graph: dict[str, set[str]]) -> list[str]:
    """The imports that break the rule between the backends, the neutral modules and the public face."""
    out = []
    for module, imported in sorted(graph.items()):
        side = _side(module)
        if side == "above":
            continue
        allowed = {"neutral"} if side == "neutral" else {"neutral", side}
        out += [f"{module} imports {target}" for target in sorted(imported) if _side(target) not in allowed]
    return out


def test_the_layer_rule_finds_every_kind_of_breach() -> None:
    graph = {
        "embedded.store": {"postgres.store", "checks", "embedded.log"},
        "postgres.store": {"opener", "readers"},
        "checks": {"embedded.layout", "errors"},
        "opener": {"embedded.store", "postgres"},
        "embedded.log": set(),
        "postgres": set(),
        "readers": set(),
        "errors": set(),
        "embedded.layout": set(),
    }
    assert layer_breaches(graph) == [
        "checks imports embedded.layout",
        "embedded.store imports postgres.store",
        "postgres.store imports opener",
    ]


def test_the_backends_import_neither_each_other_nor_the_public_face() -> None:
    graph = import_graph(_modules())
    assert {"embedded.store", "postgres.store", "postgres.reader", "checks", "readers", "opener"} <= set(graph)
    assert "postgres" in graph["opener"] and "embedded.store" in graph["opener"]  # the checker sees dispatch
    assert layer_breaches(graph) == []


def test_the_published_state_depends_on_no_other_engine_module() -> None:
    """The bottom of the drawing in logstore/embedded/published.py: everyone may use it, it uses none of them."""
    graph = import_graph(_modules())
    assert graph["embedded.published"] <= {"errors"}, graph["embedded.published"]
    for user in ("store", "writer", "reader", "log"):
        assert "embedded.published" in graph[f"embedded.{user}"], user


def _own_private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines: functions, classes, attributes set on ``self``, slots, globals."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            for elt in ast.walk(node.value):
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                    own.add(elt.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Attribute):
            own.add(node.target.attr)
    return {n for n in own if n.startswith("_") and not n.startswith("__")}


def foreign_private_uses(name: str, tree: ast.Module, inherited: frozenset[str] = frozenset()) -> list[str]:
    """Uses in module ``name`` of a private name that it does not define itself: another module's insides.

    Attribute access ``x._y`` where ``_y`` is defined nowhere in the module,
    and ``from logstore.m import _y``. (A private name defined in both
    modules would slip through; the seamed modules do not share one.)
    """
    own = _own_private_names(tree) | inherited
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            attr = node.attr
            if attr.startswith("_") and not attr.startswith("__") and attr not in own | PUBLIC_UNDERSCORE:
                out.append(f"{name}.py:{node.lineno}: .{attr}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("logstore"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    out.append(f"{name}.py:{node.lineno}: imports {node.module}.{alias.name}")
    return out


def test_the_private_name_check_sees_another_modules_insides() -> None:
    tree = ast.parse(
        "from logstore.embedded.reader import _Reader\n"
        "class A:\n    def __init__(self, s):\n        self._own = s\n        s._theirs.add(self._own)\n"
    )
    assert foreign_private_uses("m", tree) == ["m.py:1: imports logstore.embedded.reader._Reader", "m.py:5: ._theirs"]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_engine_module_uses_another_ones_private_names(name: str) -> None:
    modules = _modules()
    # The base classes the backends share (StoreBase, Reader) hand their subclasses private hooks to
    # supply and helpers to call: a module that builds on them may use those names as its own.
    bases = import_graph(modules)[name] & set(SHARED_BASES)
    inherited = frozenset(n for base in bases for n in _own_private_names(modules[base]))
    assert foreign_private_uses(name, modules[name], inherited) == []


# -- Published -------------------------------------------------------------------------------------


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _waiter(pub: Published, ready: Callable[[], bool]) -> tuple[threading.Thread, list[object], threading.Semaphore]:
    """A thread in ``pub.wait`` until ``ready()``: it, its result, a semaphore released at each readiness test."""
    tests = threading.Semaphore(0)

    def tested() -> bool:
        tests.release()
        return ready()

    thread, result = _in_thread(lambda: pub.wait(tested, time.monotonic() + WAIT))
    return thread, result, tests


def test_a_new_published_state_shows_nothing_and_nobody_waits() -> None:
    pub = Published()
    assert (pub.visible_end, pub.log_start, pub.removals, pub.closed, pub.forked_error) == (0, 0, 0, False, None)
    assert len(pub.catalog) == 0 and not pub.waiting() and len(pub.readers) == 0


def test_wait_returns_at_once_when_ready_and_false_at_the_deadline() -> None:
    pub = Published()
    assert pub.wait(lambda: True, None) is True
    assert pub.wait(lambda: True, time.monotonic() - 1) is True  # ready wins over a passed deadline
    calls: list[bool] = []

    def never() -> bool:
        calls.append(True)
        return False

    started = time.monotonic()
    assert pub.wait(never, started + 0.05) is False
    assert time.monotonic() - started >= 0.05 and calls
    assert not pub.waiting()


def test_wake_ends_a_wait_whose_readiness_changed_and_counts_the_waiter_meanwhile() -> None:
    pub = Published()
    thread, result, tests = _waiter(pub, lambda: pub.visible_end > 0)
    assert tests.acquire(timeout=WAIT)
    assert pub.waiting()  # counted before its first readiness test
    pub.visible_end = 1
    pub.wake()
    thread.join(WAIT)
    assert result == [True] and not pub.waiting()


def test_a_wake_with_nothing_new_leaves_the_waiter_waiting() -> None:
    pub = Published()
    thread, result, tests = _waiter(pub, lambda: pub.visible_end > 0)
    assert tests.acquire(timeout=WAIT)
    pub.wake()
    assert tests.acquire(timeout=WAIT)  # it tested again, found nothing, and went on waiting
    assert thread.is_alive() and result == []
    pub.visible_end = 3
    pub.wake()
    thread.join(WAIT)
    assert result == [True]


def test_removed_counts_and_wakes() -> None:
    pub = Published()
    thread, result, tests = _waiter(pub, lambda: pub.removals > 0)
    assert tests.acquire(timeout=WAIT)
    pub.removed()
    thread.join(WAIT)
    assert result == [True] and pub.removals == 1


def test_wake_resolves_registered_async_waiters_in_their_loops_and_skips_closed_loops() -> None:
    pub = Published()

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (loop, future)
        pub.add_async_waiter(waiter)
        assert pub.waiting()
        try:
            threading.Thread(target=pub.wake).start()
            await asyncio.wait_for(future, WAIT)
        finally:
            pub.discard_async_waiter(waiter)
        return future.done()

    dead = asyncio.new_event_loop()
    dead_future: asyncio.Future[None] = dead.create_future()
    dead.close()
    pub.add_async_waiter((dead, dead_future))  # its loop is closed: wake() must pass over it
    assert asyncio.run(main()) is True
    pub.discard_async_waiter((dead, dead_future))
    assert not pub.waiting()
    pub.wake()  # nobody waits: nothing to do


def test_a_store_publishes_through_one_published_state(tmp_path: Path) -> None:
    """The store's limits, heads and removals are those of its Published, which its readers wait on.

    Reaches into ``store._pub`` on purpose: that the one object is what the store and its readers
    share is the point of the test.
    """
    with logstore.open(tmp_path / "s", segment_size=1 << 20) as store:
        pub = store._pub
        reader = store.stream("a")
        assert reader in pub.readers
        thread, result = _in_thread(lambda: reader.next(timeout=WAIT))
        with store.transaction() as tx:
            tx.append("a", 0, [logstore.Envelope.new("T", 1), logstore.Envelope.new("T", 2)])
        thread.join(WAIT)
        assert result == [None] and reader.offset() == 0
        assert pub.visible_end == store.global_head == 2
        assert pub.catalog.head_of("a") == store.head("a") == 2
        store.truncate_stream("a", 1)
        assert pub.removals == 1 and store.stream_info("a") == (1, 2, False)
        reader.close()
        assert reader not in pub.readers
        other = store.global_stream()
    assert pub.closed and other.closed


def test_the_published_modules_example_runs() -> None:
    failures, tried = doctest.testmod(logstore.embedded.published, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


def test_a_reader_keeps_its_store_alive(tmp_path: Path) -> None:
    """The fork hook finds stores through a weak set: a store whose only reference is a reader's must
    stay in it, so that a child still closes that reader."""
    store = logstore.open(tmp_path / "s", segment_size=1 << 20)
    reader = store.global_stream()
    ref = weakref.ref(store)
    del store
    gc.collect()
    kept = ref()
    assert kept is not None and not reader.closed
    kept.close()
    assert reader.closed
