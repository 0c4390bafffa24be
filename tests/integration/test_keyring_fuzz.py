"""Whatever bytes a keyring file or a sealed value holds, a reader either loads a
valid ring or raises StoreCorrupt / SealingError: never any other error.

(The h11 invariant, for stek's readers.)  A hostile keyring (``Infinity``,
deep nesting, instants past int64) used to escape as OverflowError or
RecursionError and stop whatever was reading it, the agent included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.store_servers import child_env
from stek import Keyring, Policy, SealingError, StoreCorrupt
from stek.keyring import nesting_depth
from stek.rotation import init_ring
from stek.stores import FileStore, MemoryStore
from stek.stores.sealing import KEK_LEN, Sealer, SharedStore, WatchThread

VALID = init_ring(MemoryStore(), Policy()).ring
DOC = json.loads(VALID.to_bytes())
KEK = os.urandom(KEK_LEN)
RID = "fuzz ring"

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(DOC)[1:]


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


@st.composite
def hostile_rings(draw: st.DrawFn) -> bytes:
    """A valid ring with one field replaced, raw junk, or a crafted hostile document."""
    kind = draw(st.sampled_from(["field", "bytes", "crafted"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "crafted":
        depth = draw(st.integers(1, 200_000))
        return draw(st.sampled_from([
            b"[" * depth, b'{"a":' * depth,
            VALID.to_bytes().replace(b'"generation": ', b'"generation": 1' + b"0" * 5000 + b"+"),
            json.dumps(_replace(DOC, ("generation",), 0)).encode().replace(b"0", b"Infinity", 1),
        ]))
    path = draw(st.sampled_from(PATHS))
    value = draw(json_values | st.integers(min_value=2**62, max_value=2**80) |
                 st.sampled_from([float("inf"), float("nan"), -(2**70)]))
    return json.dumps(_replace(DOC, path, value), allow_nan=True).encode()


def _reads_or_refuses(read: Callable[[], Keyring]) -> None:
    try:
        ring = read()
    except (StoreCorrupt, SealingError) as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(ring, Keyring)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=hostile_rings())
def test_file_store_reads_a_ring_or_raises_store_corrupt(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "ring.json"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    _reads_or_refuses(FileStore(path).read)


class _Cell(SharedStore[int]):
    def __init__(self, blob: bytes) -> None:
        super().__init__("fuzz://", Sealer(KEK))
        self.blob = blob

    @property
    def ring_id(self) -> str:
        return RID

    def _load(self) -> tuple[bytes | None, int]:
        return self.blob, 0

    def _swap(self, token: int, data: bytes) -> bool:
        raise AssertionError("a reader never writes")

    def subscribe(self, on_change: Callable[[], None]) -> WatchThread:
        raise NotImplementedError


@settings(max_examples=300, deadline=None)
@given(data=hostile_rings(), generation=st.integers(0, 2**64 - 1))
def test_sealed_envelope_opens_a_ring_or_raises(data: bytes, generation: int) -> None:
    """Sealed genuinely (a KEK holder gone rogue): the contents are still checked."""
    _reads_or_refuses(_Cell(Sealer(KEK).seal(data, RID, generation)).read)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=200), flip=st.integers(0, 10_000))
def test_any_store_value_opens_or_raises(blob: bytes, flip: int) -> None:
    """Garbage, or a genuine value with one bit flipped."""
    genuine = bytearray(Sealer(KEK).seal(VALID.to_bytes(), RID, VALID.generation))
    genuine[flip % len(genuine)] ^= 1 << (flip % 8)
    for value in (blob, b"STEKSEAL\x02" + blob, bytes(genuine)):
        _reads_or_refuses(_Cell(value).read)


@pytest.mark.parametrize(("text", "reason"), [
    (json.dumps(DOC).replace('"generation": 1', '"generation": Infinity'), "not JSON"),
    (json.dumps(_replace(DOC, ("policy", "rotate_every"), 1e400)), "not JSON"),
    ("[" * 100_000, "not JSON"),
    (json.dumps(_replace(DOC, ("keys", 0, "expires_at"), 2**70)), "expires_at"),
    (json.dumps(_replace(DOC, ("keys", 0, "activates_at"), 1.5)), "activates_at"),
], ids=["infinite-generation", "infinite-rotate-every", "deep-array", "huge-expires-at",
        "fractional-activates-at"])
def test_hostile_keyring_is_one_clear_line(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "ring.json"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(StoreCorrupt, match=reason) as info:
        FileStore(path).read()
    assert "\n" not in str(info.value)
    done = subprocess.run([sys.executable, "-m", "stek", "status", "--store", f"file:{path}"],
                          env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode in (1, 2)
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


#: A small thread stack, as a refresher or a server's worker thread may have.
SMALL_STACK = 256 * 1024
DEEP = [b"[" * 1_000_000, b'{"a":' * 200_000, b'[{"k":"]]]\\\\"},' * 50_000]


def _in_small_stack(target: Callable[[], None]) -> None:
    """Run ``target`` in a thread with a SMALL_STACK stack; the default is restored."""
    old = threading.stack_size(SMALL_STACK)
    try:
        t = threading.Thread(target=target)
        t.start()
    finally:
        threading.stack_size(old)
    t.join()


@pytest.mark.parametrize("data", DEEP, ids=["arrays", "objects", "strings"])
def test_deep_nesting_is_refused_in_a_small_thread_stack(tmp_path: Path, data: bytes) -> None:
    """Refreshers run in threads: the refusal comes before the parser, which would recurse."""
    path = tmp_path / "ring.json"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            FileStore(path).read()
        except BaseException as exc:
            errors.append(exc)

    _in_small_stack(read)
    assert threading.stack_size() == 0
    assert len(errors) == 1 and isinstance(errors[0], StoreCorrupt), errors
    assert "nested more than 16 levels deep" in str(errors[0])


def test_deep_nesting_needs_no_stack_even_with_a_raised_recursion_limit(tmp_path: Path) -> None:
    """An application that raised sys.setrecursionlimit() (json's C parser then recursed until
    the thread's stack overflowed: a segmentation fault) still gets StoreCorrupt."""
    path = tmp_path / "ring.json"
    path.write_bytes(DEEP[0])
    os.chmod(path, 0o600)
    code = (
        "import sys, threading\n"
        "from stek import StoreCorrupt\n"
        "from stek.stores import FileStore\n"
        "sys.setrecursionlimit(1_000_000)\n"
        f"threading.stack_size({SMALL_STACK})\n"
        "out = []\n"
        "def read():\n"
        "    try:\n"
        f"        FileStore({str(path)!r}).read()\n"
        "    except StoreCorrupt as exc:\n"
        "        out.append(str(exc))\n"
        "t = threading.Thread(target=read)\n"
        "t.start()\n"
        "t.join()\n"
        "print(out)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "nested more than 16 levels deep" in done.stdout


@pytest.mark.parametrize("command", [["status"], ["rotate"], ["init"]])
def test_deep_nesting_is_one_line_from_the_cli(tmp_path: Path, command: list[str]) -> None:
    """`stek status|rotate|init|agent` on a deeply nested keyring: one line, no traceback."""
    path = tmp_path / "ring.json"
    path.write_bytes(DEEP[0])
    os.chmod(path, 0o600)
    done = subprocess.run([sys.executable, "-m", "stek", *command, "--store", f"file:{path}"],
                          env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode in (1, 2), done
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "nested more than 16 levels deep" in done.stderr
    assert path.read_bytes() == DEEP[0]


@settings(max_examples=300, deadline=None)
@given(value=json_values | st.recursive(st.text(alphabet='[]{}"\\a'), lambda inner:
                                        st.lists(inner, max_size=3), max_leaves=30))
def test_nesting_depth_is_the_parsers(value: Any) -> None:
    """nesting_depth() agrees with the parsed value, brackets and escapes in strings included."""
    def depth(v: Any) -> int:
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        return 0 if children is None else 1 + max(map(depth, children), default=0)

    for ensure_ascii in (True, False):
        text = json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=True).encode()
        assert nesting_depth(text) == depth(value)
