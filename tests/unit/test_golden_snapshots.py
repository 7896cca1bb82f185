"""Every snapshot shape still loads, or is knowingly ignored.

The files in tests/golden/snapshots are committed fixtures (``<Type>.s<N>.json``, snapshot
version N), never rewritten by tests. The current shape of each snapshotted aggregate type must
restore from its file; an older shape must be ignored (the aggregate then loads from its full
history), never half-read.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import orjson
import pytest

import workers.knowledge.document  # noqa: F401  (registers the Document aggregate)
from workers.aggregate import aggregate_types
from workers.snapshots import decode

GOLDEN = Path(__file__).parent.parent / "golden" / "snapshots"
FILES = sorted(GOLDEN.glob("*.json"))
NAME = re.compile(r"^(?P<type>\w+)\.s(?P<version>\d+)\.json$")


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_a_stored_snapshot_restores_in_its_current_shape_or_is_ignored(path: Path) -> None:
    match = NAME.match(path.name)
    assert match, f"snapshot golden files are named <Type>.s<N>.json, not {path.name}"
    cls = aggregate_types()[match["type"]]
    raw = path.read_bytes()
    assert orjson.loads(raw)["v"] == int(match["version"])
    snapshot = decode(match["type"], 42, raw)
    if int(match["version"]) != cls.SNAPSHOT_VERSION:
        assert snapshot is None, "a snapshot of an older shape must be ignored"
        return
    assert snapshot is not None
    aggregate = cls.from_snapshot(uuid.uuid4(), snapshot.version, snapshot.state)
    assert aggregate.version == 42
    assert aggregate.state() == orjson.loads(raw)["state"]


def test_every_snapshotted_aggregate_type_has_a_golden_file_for_its_current_shape() -> None:
    have = {(m["type"], int(m["version"])) for p in FILES if (m := NAME.match(p.name))}
    for name, cls in aggregate_types().items():
        if cls.SNAPSHOT_VERSION is not None:
            assert (name, cls.SNAPSHOT_VERSION) in have, (
                f"add tests/golden/snapshots/{name}.s{cls.SNAPSHOT_VERSION}.json"
            )


def test_a_snapshot_of_an_unknown_type_is_ignored() -> None:
    assert decode("NoSuchAggregate", 3, b'{"v": 1, "state": {}}') is None
