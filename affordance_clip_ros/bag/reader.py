"""Reading a rosbag2 (mcap or sqlite3) as far as it can be read, without ROS.

A bag is a folder with ``metadata.yaml`` and its storage files, as ``ros2 bag record`` leaves it,
or a single ``.mcap`` / ``.db3`` file. rosbags reads it. A recording that was killed has no
``metadata.yaml`` and may end in the middle of a record; rosbags refuses such a file, so it is
then read record by record from its start until the damage: an MCAP file with the ``mcap``
library's stream reader, a sqlite3 file row by row in insertion order with Python's sqlite3
(read-only, its size taken from the file rather than from its header). :attr:`BagReader.stopped`
then says where reading stopped and why.
"""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader
from rosbags.rosbag2 import Reader, ReaderError

Item = tuple[str, int, bytes]  # (topic, log time in ns, CDR bytes)


class BagError(ValueError):
    """A bag that cannot be read at all, or that lacks what the command needs."""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int | None  # messages, when the storage says (a file read record by record does not)
    qos: tuple = ()  # offered QoS profiles as recorded (rosbags Qos)


class _RosbagsSource:
    """A whole bag folder or one storage file that rosbags can open."""

    def __init__(self, path: Path):
        self.name = path.name
        self._reader = Reader(path)
        self._reader.open()
        self.topics: dict[str, TopicInfo] = {}
        for c in self._reader.connections:
            known = self.topics.get(c.topic)
            self.topics[c.topic] = TopicInfo(c.topic, c.msgtype, c.msgcount + (known.count if known else 0),
                                             tuple(getattr(c.ext, "offered_qos_profiles", ())))

    def messages(self, topics: set[str]) -> Iterator[Item]:
        connections = [c for c in self._reader.connections if c.topic in topics]
        if connections:  # rosbags reads every topic when given none
            for connection, timestamp, data in self._reader.messages(connections):
                yield connection.topic, timestamp, data

    def close(self) -> None:
        self._reader.close()


class _McapRecords:
    """An MCAP file rosbags refuses (cut short: no footer, no index), read record by record."""

    def __init__(self, path: Path):
        self.name, self._path = path.name, path
        schemas: dict[int, str] = {}
        channels: dict[int, Channel] = {}
        counts: dict[int, int] = {}
        try:
            for record in self._records():
                if isinstance(record, Schema):
                    schemas[record.id] = record.name
                elif isinstance(record, Channel):
                    channels[record.id] = record
                elif isinstance(record, Message):
                    counts[record.channel_id] = counts.get(record.channel_id, 0) + 1
        except Exception:
            pass
        self._topic_of = {cid: ch.topic for cid, ch in channels.items()}
        self.topics = {ch.topic: TopicInfo(ch.topic, schemas.get(ch.schema_id, ""), None)
                       for cid, ch in channels.items() if counts.get(cid)}

    def _records(self):
        with self._path.open("rb") as stream:
            yield from StreamReader(stream).records

    def messages(self, topics: set[str]) -> Iterator[Item]:
        for record in self._records():
            if isinstance(record, Message) and self._topic_of.get(record.channel_id) in topics:
                yield self._topic_of[record.channel_id], record.log_time, record.data

    def close(self) -> None:
        pass


class _SqliteRows:
    """A sqlite3 file rosbags refuses (cut short), read row by row in the order it was written."""

    def __init__(self, path: Path):
        self.name = path.name
        # Read-only and immutable: nothing can be written. writable_schema makes SQLite take the
        # database size from the file instead of refusing a file shorter than its header says.
        self._db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        self._db.execute("PRAGMA writable_schema=ON")
        try:
            rows = self._db.execute("SELECT id, name, type FROM topics").fetchall()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise BagError(f"{path}: not a readable rosbag2 sqlite3 file: {e}") from e
        self._topic_of = {topic_id: name for topic_id, name, _ in rows}
        self.topics = {name: TopicInfo(name, msgtype, None) for _, name, msgtype in rows}

    def messages(self, topics: set[str]) -> Iterator[Item]:
        ids = [topic_id for topic_id, name in self._topic_of.items() if name in topics]
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        query = f"SELECT topic_id, timestamp, data FROM messages WHERE topic_id IN ({marks}) ORDER BY id"
        for topic_id, timestamp, data in self._db.execute(query, ids):
            yield self._topic_of[topic_id], timestamp, data

    def close(self) -> None:
        self._db.close()


_RECORD_BY_RECORD = {".mcap": _McapRecords, ".db3": _SqliteRows}


def storage_files(folder: Path) -> list[Path]:
    """The .mcap and .db3 files of a bag folder in recording order (``bag_2`` before ``bag_10``)."""
    def key(path: Path):
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]

    return sorted((p for p in folder.iterdir() if p.suffix in _RECORD_BY_RECORD and p.is_file()), key=key)


class BagReader:
    """The messages of some topics of a bag, in recording order, up to where the bag is damaged.

    ``notes`` says how the bag was opened when it was not the usual way; after :meth:`messages`
    has run, ``stopped`` says where and why reading ended early (None: the whole bag was read).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.notes: list[str] = []
        self.stopped: str | None = None
        self._sources: list = []
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        path = self.path
        if not path.exists():
            raise FileNotFoundError(f"bag '{path}' does not exist")
        if path.is_dir():
            if (path / "metadata.yaml").is_file():
                try:
                    self._sources.append(_RosbagsSource(path))
                    return
                except ReaderError as e:
                    self.notes.append(f"metadata.yaml cannot be used ({e}): reading the storage files one by one")
            else:
                self.notes.append("no metadata.yaml (a recording that did not end cleanly?): reading the storage "
                                  "files one by one")
            files = storage_files(path)
            if not files:
                raise BagError(f"'{path}' holds no .mcap or .db3 file: not a rosbag2 folder")
        else:
            files = [path]
        for file in files:
            self._sources.append(self._open_file(file))

    def _open_file(self, file: Path):
        try:
            return _RosbagsSource(file)
        except ReaderError as e:
            recovering = _RECORD_BY_RECORD.get(file.suffix)
            if recovering is None:
                raise BagError(f"'{file}' is not a rosbag2 storage file (.mcap, .db3, or a bag folder): {e}") from e
            self.notes.append(f"{file.name}: {e} (cut short?): reading it record by record up to the damage")
            return recovering(file)

    @property
    def topics(self) -> dict[str, TopicInfo]:
        topics: dict[str, TopicInfo] = {}
        for source in self._sources:
            for name, info in source.topics.items():
                if (known := topics.get(name)) is not None:
                    info = replace(known, count=None if None in (known.count, info.count) else known.count + info.count)
                topics[name] = info
        return topics

    def messages(self, topics: Iterable[str]) -> Iterator[Item]:
        wanted = set(topics)
        for source in self._sources:
            items, read, last = source.messages(wanted), 0, None
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    break
                except Exception as e:
                    when = f" (last recorded at {last / 1e9:.3f} s)" if last is not None else ""
                    why = f"{type(e).__name__}: {str(e) or 'the file ends inside a record'}"
                    self.stopped = f"{source.name}: stopped after {read} message(s) of the topics read{when}: {why}"
                    return
                read, last = read + 1, item[1]
                yield item

    def close(self) -> None:
        for source in self._sources:
            source.close()
        self._sources = []

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
