"""json-file logs: Docker's byte format, line splitting, rotation, reading (tail/since/until/follow), time args."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from datetime import datetime
from pathlib import Path

import pytest

from engine.errors import InvalidArgument
from engine.logs import (
    MAX_LINE,
    LogRecord,
    LogWriter,
    StreamLogger,
    encode_entry,
    log_file_path,
    parse_log_opts,
    parse_time_arg,
    read_logs,
)

T0 = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z


async def collect(path: Path, **kwargs: object) -> list[LogRecord]:
    return [record async for record in read_logs(path, **kwargs)]  # type: ignore[arg-type]


def write_lines(writer: LogWriter, count: int, start: int = 0, stream: str = "stdout") -> None:
    for i in range(start, start + count):
        writer.write(stream, f"line {i}\n".encode(), T0 + i * 10**9)


def texts(records: list[LogRecord]) -> list[str]:
    return [r.data.decode() for r in records]


# --- format ------------------------------------------------------------------------------------------------


def test_entry_matches_dockers_bytes() -> None:
    assert encode_entry(b"Hello from Docker!\n", "stdout", "2019-05-31T10:41:13.123456789Z") == (
        b'{"log":"Hello from Docker!\\n","stream":"stdout","time":"2019-05-31T10:41:13.123456789Z"}\n'
    )


def test_escaping_follows_mobys_jsonlog() -> None:
    raw = b'<a href="x">&\t\x01\xe2\x80\xa8\\\r\n'
    assert encode_entry(raw, "stderr", "T") == (
        b'{"log":"\\u003ca href=\\"x\\"\\u003e\\u0026\\u0009\\u0001\\u2028\\\\\\r\\n","stream":"stderr","time":"T"}\n'
    )


def test_invalid_utf8_is_replaced_byte_by_byte_and_valid_text_passes_through() -> None:
    entry = encode_entry(b"\xff\xe2\x82A \xc3\xa9 \xef\xbf\xbd", "stdout", "T")
    assert entry == b'{"log":"\\ufffd\\ufffd\\ufffdA \xc3\xa9 \xef\xbf\xbd","stream":"stdout","time":"T"}\n'
    assert json.loads(entry)["log"] == "\ufffd\ufffd\ufffdA é \ufffd"


def test_empty_log_is_omitted() -> None:
    assert encode_entry(b"", "stdout", "T") == b'{"stream":"stdout","time":"T"}\n'


def test_time_is_rfc3339nano_with_trailing_zeros_trimmed(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path)
    writer.write("stdout", b"a\n", T0 + 120_000_000)
    writer.write("stdout", b"b\n", T0)
    writer.close()
    times = [json.loads(line)["time"] for line in path.read_text().splitlines()]
    assert times == ["2023-11-14T22:13:20.12Z", "2023-11-14T22:13:20Z"]


def test_log_file_path_is_dockers() -> None:
    assert log_file_path(Path("/r/containers/abc"), "abc") == Path("/r/containers/abc/abc-json.log")


# --- splitting ---------------------------------------------------------------------------------------------


def test_long_lines_split_at_16k_and_only_the_last_chunk_has_the_newline(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path)
    logger = StreamLogger(writer, "stdout")
    logger.feed(b"x" * (2 * MAX_LINE + 100) + b"\nshort\n")
    writer.close()
    logs = [json.loads(line)["log"] for line in path.read_text().splitlines()]
    assert [len(x) for x in logs] == [MAX_LINE, MAX_LINE, 101, 6]
    assert [x.endswith("\n") for x in logs] == [False, False, True, True]


def test_lines_are_assembled_across_reads_and_a_final_partial_line_is_flushed(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path)
    logger = StreamLogger(writer, "stderr")
    logger.feed(b"hel")
    logger.feed(b"lo\nwor")
    assert [json.loads(line)["log"] for line in path.read_text().splitlines()] == ["hello\n"]
    logger.flush()
    writer.close()
    assert [json.loads(line)["log"] for line in path.read_text().splitlines()] == ["hello\n", "wor"]


# --- rotation ----------------------------------------------------------------------------------------------


async def test_a_log_that_never_rotates_has_no_rotation_lock(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path)
    write_lines(writer, 3)
    assert len(await collect(path, follow=True, is_running=lambda: False)) == 3  # a follower does not make one
    writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["c-json.log"]


async def test_rotation_shifts_files_and_keeps_max_file(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path, max_size=300, max_file=3)
    write_lines(writer, 40)
    writer.close()
    # (and the rotation lock, made at the first rotation, which followers share while they list the files)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c-json.log.rotate", "c-json.log", "c-json.log.1",
                                                          "c-json.log.2"]
    entry_size = len(path.read_text().splitlines()[0]) + 1
    for name in ("c-json.log.1", "c-json.log.2"):
        assert 300 <= (tmp_path / name).stat().st_size < 300 + entry_size  # checked before each write
    lines = texts(await collect(path))
    assert lines == [f"line {i}\n" for i in range(40 - len(lines), 40)]  # oldest dropped, order kept


async def test_max_file_one_truncates_by_recreating(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path, max_size=200, max_file=1)
    write_lines(writer, 2)
    inode = path.stat().st_ino
    write_lines(writer, 10, start=2)
    writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["c-json.log"]
    assert path.stat().st_ino != inode
    assert path.stat().st_size < 300
    assert texts(await collect(path))[-1] == "line 11\n"


def test_parse_log_opts() -> None:
    assert parse_log_opts({}) == (None, 1)
    assert parse_log_opts({"max-size": "10m", "max-file": "3"}) == (10 * 1024**2, 3)
    assert parse_log_opts({"max-size": "100k"}) == (100 * 1024, 1)
    assert parse_log_opts({"max-size": "1g", "compress": "false", "tag": "x"}) == (1024**3, 1)
    assert parse_log_opts({"max-size": "1.5MB"}) == (int(1.5 * 1024**2), 1)
    for opts, named in (
        ({"max-size": "ten"}, "max-size"),
        ({"max-size": "0"}, "max-size"),
        ({"max-size": "1m", "max-file": "0"}, "max-file"),
        ({"max-file": "2"}, "max-file"),
        ({"max-size": "1m", "compress": "true"}, "compress"),
        ({"max-sise": "1m"}, "max-sise"),
    ):
        with pytest.raises(InvalidArgument, match=named):
            parse_log_opts(opts)


# --- reading -----------------------------------------------------------------------------------------------


async def test_tail_counts_back_across_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path, max_size=250, max_file=10)
    write_lines(writer, 30)
    writer.close()
    assert len(list(tmp_path.iterdir())) > 3
    assert texts(await collect(path, tail=7)) == [f"line {i}\n" for i in range(23, 30)]
    assert texts(await collect(path, tail=0)) == []
    assert len(await collect(path, tail=1000)) == 30
    assert len(await collect(path)) == 30


async def test_tail_ignores_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path)
    write_lines(writer, 3)
    writer.close()
    with path.open("ab") as f:
        f.write(b'{"log":"torn')
    assert texts(await collect(path, tail=2)) == ["line 1\n", "line 2\n"]


async def test_since_stops_filtering_after_the_first_match_and_until_stops_reading(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path)
    for label, offset in (("a", 10), ("b", 30), ("c", 20), ("d", 40), ("e", 15), ("f", 50)):
        writer.write("stdout", f"{label}\n".encode(), T0 + offset * 10**9)
    writer.close()
    base = T0 / 1e9
    assert texts(await collect(path, since=base + 25)) == ["b\n", "c\n", "d\n", "e\n", "f\n"]
    assert texts(await collect(path, until=base + 35)) == ["a\n", "b\n", "c\n"]
    assert texts(await collect(path, since=base + 25, until=base + 45)) == ["b\n", "c\n", "d\n", "e\n"]


async def test_missing_log_reads_as_empty(tmp_path: Path) -> None:
    assert await collect(tmp_path / "none-json.log") == []


async def test_follow_delivers_every_line_exactly_once_across_the_seam_and_rotations(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path, max_size=4096, max_file=100)
    write_lines(writer, 50)  # history before the reader starts
    done = threading.Event()
    started = threading.Event()

    def produce() -> None:
        started.wait()
        for i in range(50, 1500):
            writer.write("stdout" if i % 2 else "stderr", f"line {i}\n".encode(), T0 + i)
        writer.close()
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    received: list[str] = []
    try:
        async for record in read_logs(path, follow=True, is_running=lambda: not done.is_set()):
            received.append(record.data.decode())
            started.set()
    finally:
        started.set()
        thread.join()
    assert received == [f"line {i}\n" for i in range(1500)]
    assert len(list(tmp_path.iterdir())) > 5  # rotations happened while following


async def test_follow_loses_no_file_when_the_writer_rotates_while_the_names_are_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The follower lists the rotated files and opens the next one under the writer's rotation lock: a writer that
    rotates right after the listing (here, forced by a hook) waits instead of shifting the names under the
    follower -- which then opened a newer file than the next one, and a whole file of records was skipped."""
    from engine import logs

    path = tmp_path / "c-json.log"
    writer = LogWriter(path, max_size=300, max_file=50)
    reader = logs._Cursor(path, None)
    write_lines(writer, 10)  # a few rotations: the reader has successors to find
    real_chain = logs._Cursor._chain
    rotating: list[threading.Thread] = []

    def chain_then_the_writer_rotates(self: logs._Cursor) -> list[tuple[Path, int]]:
        found = real_chain(self)
        if not rotating:  # once: the writer rotates (and writes) between the listing and the open
            rotating.append(threading.Thread(target=write_lines, args=(writer, 20, 10)))
            rotating[0].start()
            rotating[0].join(0.2)  # it cannot shift the names while the follower holds the lock
        return found

    monkeypatch.setattr(logs._Cursor, "_chain", chain_then_the_writer_rotates)
    received: list[str] = []
    while batch := reader.read_batch():
        received += texts(batch)
    rotating[0].join()
    while batch := reader.read_batch():
        received += texts(batch)
    writer.close()
    reader.close()
    assert received == [f"line {i}\n" for i in range(30)]


async def test_follow_of_a_stopped_container_returns_after_the_history(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path)
    write_lines(writer, 3)
    writer.close()
    records = await asyncio.wait_for(collect(path, follow=True, is_running=lambda: False), 5)
    assert len(records) == 3


async def test_follow_wakes_up_on_new_records(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = LogWriter(path)
    running = True
    stream = read_logs(path, follow=True, is_running=lambda: running)
    reader = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0)  # let the reader reach its wait; correctness does not depend on it
    writer.write("stdout", b"late\n")
    record = await asyncio.wait_for(reader, 0.5)  # well below the 1 s safety re-check: inotify woke it
    assert record.data == b"late\n"
    running = False
    writer.close()
    assert [r async for r in stream] == []


def test_negative_tail_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="tail"):
        asyncio.run(collect(tmp_path / "x", tail=-1))


# --- time arguments ----------------------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("text", "expected"), [
    ("10m", NOW - 600), ("1h30m", NOW - 5400), ("1.5s", NOW - 1.5), ("250ms", NOW - 0.25), ("-1h", NOW + 3600),
    ("2023-11-14T22:13:20Z", NOW), ("2023-11-14T22:13:20.5Z", NOW + 0.5), ("2023-11-14T23:13:20+01:00", NOW),
    ("2023-11-14T21:13:20.000000001-01:00", NOW + 1e-9), ("1700000000", NOW), ("1700000000.25", NOW + 0.25),
    ("0", 0.0),
])
def test_parse_time_arg(text: str, expected: float) -> None:
    assert parse_time_arg(text, NOW) == pytest.approx(expected, abs=1e-6)


def test_time_without_zone_is_local() -> None:
    expected = datetime(2023, 11, 14, 22, 13, 20).astimezone().timestamp()
    assert parse_time_arg("2023-11-14T22:13:20", NOW) == expected
    assert parse_time_arg("2023-11-14", NOW) == datetime(2023, 11, 14).astimezone().timestamp()


@pytest.mark.parametrize("text", ["", "yesterday", "10x", "2023-13-01T00:00:00Z", "1h-", "12:00"])
def test_parse_time_arg_refuses_garbage(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid time"):
        parse_time_arg(text, NOW)


def test_writer_refuses_bad_limits(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="max-size"):
        LogWriter(tmp_path / "l", max_size=0)
    with pytest.raises(InvalidArgument, match="max-file"):
        LogWriter(tmp_path / "l", max_file=0)
    assert not os.path.exists(tmp_path / "l")
