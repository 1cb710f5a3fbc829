"""The expansion cache: a trained policy's expansions for a query log, in one SQLite file.

LESER is served from pre-computed expansions: the paper caches them for its ~600K most frequent
queries and leaves tail queries without (an open question it names). experiments/expand.py
fills this cache (leser_jax/expand.py); the search service (leser_jax/search_service.py) reads
it. It is a plain SQLite 3 file, so any tool reads it without our code, e.g.

    sqlite3 CACHE "SELECT query, count, expansions, status FROM expansions ORDER BY rank LIMIT 5"

Tables:

    expansions   key TEXT PRIMARY KEY  normalise(query), what a lookup matches
                 query TEXT            the spelling the policy was shown (the log's most frequent)
                 count INTEGER         occurrences in the log, every spelling of the key summed
                 rank INTEGER          position in the log ordered by count (0 = most frequent)
                 expansions TEXT       JSON list of strings; [] unless status is 'ok'
                 status TEXT           'ok', or parse_answer's rejection reason (no expansion)
                 completion TEXT       the policy's raw completion
    meta         name TEXT PRIMARY KEY, value TEXT (JSON): the settings that made the rows
                 (`SETTINGS_INFO` are informational, every other one must match to add rows)

Normalisation (`normalise`): Unicode NFC, lower case, whitespace runs collapsed to one space,
stripped; so "Office  Chair " and "office chair" are one entry. Punctuation is kept: the prompt
shows it to the policy.

Resuming: rows are added one batch per transaction (`put`), so a killed writer leaves whole
batches, and a rerun skips the keys present. Rows made with other settings (another policy,
context, temperature, ...) are never mixed in: `open_for_writing` refuses a file whose meta
differs, naming each difference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import unicodedata
from collections.abc import Iterable, Mapping

from leser_jax.checkpoint import flatten_settings

CACHE_FORMAT = 1
SETTINGS_INFO = ("policy_path",)  # recorded, never compared: a moved checkpoint is the same one

_SCHEMA = """
CREATE TABLE IF NOT EXISTS expansions (
  key TEXT PRIMARY KEY, query TEXT NOT NULL, count INTEGER NOT NULL, rank INTEGER NOT NULL,
  expansions TEXT NOT NULL, status TEXT NOT NULL, completion TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "key, query, count, rank, expansions, status, completion"


def normalise(query: str) -> str:
    """The cache key of a query: NFC, lower case, whitespace collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFC", query).lower().split())


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the expansions table."""

    key: str
    query: str
    count: int
    rank: int
    expansions: tuple[str, ...]
    status: str  # "ok" or the rejection reason
    completion: str

    def row(self) -> tuple:
        return (self.key, self.query, self.count, self.rank,
                json.dumps(list(self.expansions), ensure_ascii=False), self.status,
                self.completion)

    @classmethod
    def of_row(cls, row: tuple) -> Entry:
        key, query, count, rank, expansions, status, completion = row
        return cls(key, query, count, rank, tuple(json.loads(expansions)), status, completion)


class SettingsMismatch(ValueError):
    """The cache file holds rows made with other settings than this run's."""


class ExpansionCache:
    """An open cache file. `open_for_writing` (experiments.expand) or `open` (read-only, for the
    search service: one connection shared by its threads, behind a lock)."""

    def __init__(self, path: str | os.PathLike, connection: sqlite3.Connection):
        self.path = os.fspath(path)
        self._db = connection
        self._lock = threading.Lock()

    @classmethod
    def open_for_writing(cls, path: str | os.PathLike, settings: Mapping) -> ExpansionCache:
        """Creates the file with `settings` (JSON-able values), or reopens one made with the same
        settings (SettingsMismatch otherwise, naming every difference)."""
        db = sqlite3.connect(os.fspath(path))
        try:
            with db:
                db.executescript(_SCHEMA)
                saved = _read_meta(db)
                new = {"format": CACHE_FORMAT, **json.loads(json.dumps(dict(settings)))}
                old_flat, new_flat = flatten_settings(saved), flatten_settings(new)
                differ = [f"{name}: {old_flat.get(name, '(not set)')!r} there, "
                          f"{new_flat.get(name, '(not set)')!r} now"
                          for name in sorted(old_flat.keys() | new_flat.keys())
                          if name.split(".")[0] not in SETTINGS_INFO
                          and old_flat.get(name) != new_flat.get(name)]
                if saved and differ:
                    raise SettingsMismatch(
                        f"{path} holds expansions made with other settings:\n  "
                        + "\n  ".join(differ) + "\nNothing was changed there. Rerun with those "
                        "settings to resume it, or write another cache (--out).")
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                               [(k, json.dumps(v)) for k, v in new.items()])
        except BaseException:
            db.close()
            raise
        return cls(path, db)

    @classmethod
    def open(cls, path: str | os.PathLike) -> ExpansionCache:
        """Read-only (FileNotFoundError if there is no cache at `path`)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no expansion cache at {path} (write one with "
                                    "experiments.expand)")
        uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23")
        db = sqlite3.connect(uri + "?mode=ro", uri=True, check_same_thread=False)
        try:
            meta = _read_meta(db)
        except sqlite3.DatabaseError as e:  # not SQLite, or no meta table
            meta = {"error": str(e)}
        if meta.get("format") != CACHE_FORMAT:
            db.close()
            raise ValueError(f"{path} is not an expansion cache of format {CACHE_FORMAT}: "
                             f"{meta.get('error') or meta.get('format')}")
        return cls(path, db)

    def settings(self) -> dict:
        with self._lock:
            return _read_meta(self._db)

    def get(self, key: str) -> Entry | None:
        """The entry of a normalised key, or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM expansions WHERE key = ?",
                                   (key,)).fetchone()
        return None if row is None else Entry.of_row(row)

    def keys(self) -> set[str]:
        with self._lock:
            return {k for (k,) in self._db.execute("SELECT key FROM expansions")}

    def entries(self) -> list[Entry]:
        """Every entry, most frequent first (by rank)."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM expansions ORDER BY rank, key")
            return [Entry.of_row(r) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM expansions").fetchone()[0]

    def put(self, entries: Iterable[Entry]) -> None:
        """Adds (or replaces) entries in one transaction: all of them are written, or none."""
        with self._lock, self._db:
            self._db.executemany(f"INSERT OR REPLACE INTO expansions ({_COLUMNS}) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", [e.row() for e in entries])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _read_meta(db: sqlite3.Connection) -> dict:
    return {name: json.loads(value) for name, value in db.execute("SELECT name, value FROM meta")}
