"""The RocksDB tables' memory is bounded (issue 19), seen where RocksDB itself records it: the
OPTIONS file of every table partition database a real worker opened after a small run.
Faust's defaults (64 MB memtables, 3 kept) never flushed the tables' small, swept rows, and a
worker's RSS grew about 1.9 MB a batch for as long as it ran (docs/reliability.md, make soak).
"""

from __future__ import annotations

from pathlib import Path

from simapp.config import load_settings


def rocksdb_options(datadir: Path) -> dict[str, dict[str, str]]:
    """Each table partition database's newest OPTIONS file, as key -> value."""
    out = {}
    for db in sorted(datadir.rglob("*.db")):
        files = sorted(db.glob("OPTIONS-*"))
        if not files:
            continue
        pairs = (line.strip().split("=", 1) for line in files[-1].read_text().splitlines())
        out[db.name] = {p[0]: p[1] for p in pairs if len(p) == 2}
    return out


def test_every_table_database_opens_with_the_bounded_memtables(live_worker_run):
    datadir = Path(live_worker_run["worker"].extra["env"]["WORKER_DATADIR"])
    options = rocksdb_options(datadir)
    tables = {name.rsplit("-", 1)[0] for name in options}
    assert {"progress", "simulations", "reports"} <= tables, sorted(options)
    defaults = load_settings(_env_file=None)
    for name, values in options.items():
        assert values["write_buffer_size"] == str(defaults.rocksdb_write_buffer_bytes), name
        assert values["max_write_buffer_number"] == "2", name
