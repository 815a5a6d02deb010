"""Opening FASTA files safely: format detection, plain-gzip conversion, a validation scan, and
per-process pyfaidx handles.

pyfaidx indexes plain and BGZF files but not plain gzip, and writes its `.fai`/`.gzi` beside the
file. So a plain-gzip FASTA is converted once to a BGZF copy in the cache, and any other FASTA is
linked into the cache and indexed there: the user's folder is never written to. Before any of that, one streaming
scan checks the whole file and fails with a message naming the file, record and line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_BASES = b"ACGTNacgtn"
_IUPAC = b"RYSWKMBDHVryswkmbdhv"
_LOWER = b"acgtnryswkmbdhv"
_SCAN_VERSION = 1


@dataclass
class RecordStats:
    name: str
    length: int
    n_count: int  # N or n in the file
    iupac_to_n: int  # ambiguity codes that the tokenizer reads as N
    soft_masked: int  # lowercase bases


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    root = Path(cache_dir or os.environ.get("MAMBA_SEQ_CACHE") or Path.home() / ".cache" / "mamba_seq")
    root.mkdir(parents=True, exist_ok=True)
    return root


def detect_format(path: Path) -> str:
    """'plain', 'bgzf' (gzip whose extra field has the 'BC' subfield) or 'gzip'."""
    with open(path, "rb") as f:
        head = f.read(18)
    if head[:2] != b"\x1f\x8b":
        return "plain"
    if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzf"
    return "gzip"


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _atomic_write(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def scan_fasta(path: Path) -> list[RecordStats]:
    """Stream the whole file once; return per-record stats or raise ValueError naming the place."""
    compressed = detect_format(path) != "plain"
    records: list[RecordStats] = []
    names: set[str] = set()
    lineno = 0
    line_len = None  # pyfaidx needs equal line lengths within a record (the last may be shorter)
    short_line_at = None
    blank_at = None

    def fail(msg: str, record: str | None = None):
        where = f"{path}, record {record!r}, line {lineno}" if record else f"{path}, line {lineno}"
        raise ValueError(f"{where}: {msg}")

    def close_record():
        if records and records[-1].length == 0:
            fail("empty record: a header with no sequence; fix or remove the record", records[-1].name)

    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            for raw in f:
                lineno += 1
                line = raw.rstrip(b"\r\n")
                if not line:
                    blank_at = lineno if records else blank_at
                    continue
                if line[:1] == b">":
                    close_record()
                    fields = line[1:].split()
                    if not fields:
                        fail("header with no name after '>'; give each record a name")
                    name = fields[0].decode("utf-8", errors="replace")
                    if name in names:
                        fail(f"duplicate record name {name!r}; record names must be unique", name)
                    names.add(name)
                    records.append(RecordStats(name, 0, 0, 0, 0))
                    line_len, short_line_at, blank_at = None, None, None
                    continue
                if not records:
                    fail("sequence before the first '>' header; a FASTA file starts with a '>name' line")
                rec = records[-1]
                if blank_at is not None:
                    lineno, at = blank_at, lineno
                    fail(f"blank line inside the sequence (sequence continues at line {at}); remove it", rec.name)
                rest = line.translate(None, _BASES + _IUPAC)
                if rest:
                    col = next(i for i, c in enumerate(line) if c not in _BASES + _IUPAC)
                    fail(
                        f"column {col + 1}: invalid character {chr(line[col])!r} (0-based position "
                        f"{rec.length + col} in the record); allowed are A C G T N, IUPAC codes and lowercase; "
                        "fix or remove the record",
                        rec.name,
                    )
                if short_line_at is not None:
                    lineno, at = short_line_at, lineno
                    fail(f"line shorter than the record's others ({line_len} bases) before line {at}; "
                         "re-wrap the record to equal line lengths (e.g. `seqkit seq -w 60`)", rec.name)
                if line_len is None:
                    line_len = len(line)
                elif len(line) > line_len:
                    fail(f"line of {len(line)} bases after lines of {line_len}; re-wrap the record to equal "
                         "line lengths", rec.name)
                elif len(line) < line_len:
                    short_line_at = lineno
                rec.length += len(line)
                rec.n_count += line.count(b"N") + line.count(b"n")
                rec.iupac_to_n += len(line) - len(line.translate(None, _IUPAC))
                rec.soft_masked += len(line) - len(line.translate(None, _LOWER))
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as err:
        last = f", record {records[-1].name!r}" if records else ""
        raise ValueError(
            f"{path}: compressed stream is truncated or corrupt after line {lineno}{last} ({err}); "
            "re-download or re-compress the file"
        ) from None
    if not records:
        raise ValueError(f"{path}: no FASTA records (empty file?); a FASTA file starts with a '>name' line")
    close_record()
    return records


class FastaFile:
    """A checked, indexed FASTA. `fetch` reads through a pyfaidx handle opened once per process,
    so DataLoader workers each get their own file handle (the handle is never pickled)."""

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.source = Path(path).expanduser()
        if not self.source.is_file():
            raise ValueError(f"FASTA file not found: {self.source}")
        self.format = detect_format(self.source)
        key = _file_key(self.source)
        cache = cache_root(cache_dir) / "fasta" / key
        cache.mkdir(parents=True, exist_ok=True)
        self.records = {r.name: r for r in self._scan(cache / "scan.json")}
        self.path = self._indexable_copy(cache)
        self._handle = None
        self._pid = None
        self._open()  # builds .fai/.gzi here, before any worker could race to write them

    def _scan(self, cached: Path) -> list[RecordStats]:
        if cached.is_file():
            data = json.loads(cached.read_text())
            if data.get("version") == _SCAN_VERSION:
                return [RecordStats(**r) for r in data["records"]]
        records = scan_fasta(self.source)
        payload = json.dumps({"version": _SCAN_VERSION, "records": [asdict(r) for r in records]})
        _atomic_write(cached, lambda p: p.write_text(payload))
        return records

    def _indexable_copy(self, cache: Path) -> Path:
        if self.format == "gzip":
            target = cache / (self.source.name.removesuffix(".gz") + ".bgz")
            if not target.is_file():
                from Bio import bgzf

                def convert(tmp: Path):
                    with gzip.open(self.source, "rb") as src, bgzf.BgzfWriter(str(tmp), "wb") as dst:
                        while block := src.read(1 << 22):
                            dst.write(block)

                _atomic_write(target, convert)
                log.info("plain-gzip FASTA %s converted to a bgzip copy %s (pyfaidx can't index plain gzip)",
                         self.source, target)
            return target
        # pyfaidx writes .fai/.gzi beside the file it opens: index a link in the cache, so the
        # user's folder (possibly read-only or shared) is never written to
        link = cache / self.source.name
        if not link.exists():
            link.symlink_to(self.source.resolve())
        return link

    def _open(self):
        import pyfaidx

        try:
            self._handle = pyfaidx.Fasta(str(self.path), as_raw=True, sequence_always_upper=False)
        except (pyfaidx.FastaIndexingError, ValueError) as err:  # the scan should have caught it first
            raise ValueError(f"{self.source}: pyfaidx could not index the file: {err}") from None
        self._pid = os.getpid()

    def fetch(self, name: str, start: int, end: int) -> str:
        """Bases [start, end) (0-based, half-open) of record `name`, case preserved."""
        if self._handle is None or self._pid != os.getpid():
            self._open()
        return self._handle[name][start:end]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None
        return state

    def __repr__(self):
        return f"FastaFile({str(self.source)!r}, {len(self.records)} records)"


def open_fasta(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> FastaFile:
    return FastaFile(path, cache_dir)
