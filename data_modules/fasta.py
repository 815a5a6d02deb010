"""Opening FASTA files safely: format detection, plain-gzip conversion, a validation scan, and
per-process pyfaidx handles.

* Format by magic bytes: plain text, BGZF (gzip whose extra field has the 'BC' subfield) or plain
  gzip. pyfaidx indexes plain and BGZF, not plain gzip: a plain-gzip FASTA is converted once
  (streaming) to a BGZF copy in the cache.
* pyfaidx writes `.fai` (and `.gzi` for BGZF) beside the file it opens. An up-to-date index beside
  the FASTA is reused; otherwise a symlink in the cache is indexed, so the user's folder is never
  written to.
* Before any of that, one streaming scan checks the whole file and fails with a message naming the
  file, record and line. Its per-record stats are cached, so a large genome is scanned once.
* `n_runs()` finds the runs of N (gaps) by reading the records in chunks through the index, once;
  the runs are cached too.

Cache: `cache_dir`, else $MAMBA_SEQ_CACHE, else ~/.cache/mamba_seq; one folder per source file,
keyed on its absolute path, size and mtime, so a changed file is scanned and converted again.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import logging
import os
import re
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_BASES = b"ACGTNacgtn"
_IUPAC = b"RYSWKMBDHVryswkmbdhv"
_VALID = _BASES + _IUPAC
_LOWER = b"acgtnryswkmbdhv"
_SCAN_VERSION = 2
_N_RUNS_VERSION = 1
_N_LIKE = re.compile("[NnRYSWKMBDHVryswkmbdhv]+")  # what the tokenizer reads as N
# the empty block that ends every BGZF file (SAM spec 4.1.2); pyfaidx refuses a file without it
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


@dataclass
class RecordStats:
    name: str
    length: int
    n_count: int  # N or n in the file
    iupac_to_n: int  # ambiguity codes (R Y S W K M B D H V, either case) that the tokenizer reads as N
    soft_masked: int  # lowercase bases (acgtn and lowercase ambiguity codes)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    root = Path(cache_dir or os.environ.get("MAMBA_SEQ_CACHE") or Path.home() / ".cache" / "mamba_seq")
    root = root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def detect_format(path: str | os.PathLike) -> str:
    """'plain', 'bgzf' (gzip whose extra field holds the 'BC' subfield) or 'gzip', by magic bytes."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:2] != b"\x1f\x8b":
            return "plain"
        if len(head) < 12 or not head[3] & 4:  # FEXTRA flag unset: no extra field
            return "gzip"
        xlen = int.from_bytes(head[10:12], "little")
        extra = f.read(xlen)
    i = 0
    while i + 4 <= len(extra):  # subfields: SI1 SI2 LEN(2, little-endian) data
        size = int.from_bytes(extra[i + 2 : i + 4], "little")
        if extra[i : i + 2] == b"BC" and size == 2:
            return "bgzf"
        i += 4 + size
    return "gzip"


def _file_key(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:60]
    return f"{stem}-{digest}"


def _atomic_write(target: Path, write) -> None:
    """write(tmp_path) then rename over target, so a reader never sees a half-written file."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(lock_path: Path):
    """Exclusive lock across processes (e.g. DDP ranks opening the same file at once)."""
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fresh(index: Path, source: Path) -> bool:
    """pyfaidx's own rule: an index is stale when it is older than the FASTA."""
    return index.is_file() and index.stat().st_mtime >= source.stat().st_mtime


def scan_fasta(path: str | os.PathLike) -> list[RecordStats]:
    """Stream the whole file once (plain, gzip or BGZF); return per-record stats or raise a
    ValueError naming the file, the record and the 1-based line (and column) of the problem."""
    path = Path(path)
    fmt = detect_format(path)
    records: list[RecordStats] = []
    names: set[str] = set()
    lineno = 0
    rec: RecordStats | None = None
    header_line = 0
    blanks: list[int] = []  # blank lines since the record's last sequence line
    raw_len = None  # bytes per line (newline included) of the record's first line
    eol = b""
    short_line_at = None  # a line shorter than raw_len: only allowed as the record's last line
    blank_crlf = False  # the last blank line was not a bare "\n"

    def fail(msg: str, record: str | None = None, line: int | None = None):
        where = f"{path}, record {record!r}, line {line or lineno}" if record else f"{path}, line {line or lineno}"
        raise ValueError(f"{where}: {msg}")

    def close_record():
        if rec is None:
            return
        if rec.length == 0:
            fail("empty record: a header with no sequence; fix or remove the record", rec.name, header_line)
        if len(blanks) > 1:
            fail(f"{len(blanks)} blank lines after the sequence (lines {blanks[0]}-{blanks[-1]}); pyfaidx's "
                 "index allows at most one blank line between records: remove the others", rec.name, blanks[0])
        if blanks and blank_crlf and short_line_at is not None:
            fail("blank line ending in '\\r\\n' after a short last line: pyfaidx can't index that; remove the "
                 "blank line or convert the line endings (e.g. `dos2unix`)", rec.name, blanks[0])

    opener = open if fmt == "plain" else gzip.open
    try:
        with opener(path, "rb") as f:
            for raw in f:
                lineno += 1
                line = raw.rstrip(b"\r\n")
                if not line:
                    if rec is not None:
                        blanks.append(lineno)
                        blank_crlf = raw != b"\n"
                    continue
                if line[0] == 62:  # '>'
                    close_record()
                    try:
                        fields = line[1:].decode("utf-8").split()  # as pyfaidx: name = first word
                    except UnicodeDecodeError:
                        fail("header is not valid UTF-8 text; fix the header")
                    if not fields:
                        fail("header with no name after '>'; give each record a name")
                    name = fields[0]
                    if name in names:
                        fail(f"duplicate record name {name!r}; record names (the header's first word) must be "
                             "unique: rename or remove one of the records", name)
                    names.add(name)
                    rec = RecordStats(name, 0, 0, 0, 0)
                    records.append(rec)
                    header_line, blanks, raw_len, short_line_at = lineno, [], None, None
                    continue
                if rec is None:
                    fail("sequence before the first '>' header (or not a FASTA file); a FASTA file starts "
                         "with a '>name' line: add a header or remove the text")
                if blanks:
                    fail(f"blank line inside the sequence (the sequence goes on at line {lineno}); remove it",
                         rec.name, blanks[0])
                if line.translate(None, _VALID):
                    col = next(i for i, c in enumerate(line) if c not in _VALID)
                    code = line[col]
                    what = f"invalid character {chr(code)!r}" if code < 128 else f"invalid non-ASCII byte 0x{code:02x}"
                    fail(f"column {col + 1}: {what} (0-based position {rec.length + col} in "
                         "the record); a sequence may hold A C G T N, the IUPAC codes R Y S W K M B D H V and "
                         "their lowercase forms: fix or remove the record", rec.name)
                # pyfaidx's index needs equal line lengths (in bytes) within a record, the last may be shorter
                if raw_len is None:
                    raw_len, eol = len(raw), raw[len(line):]
                else:
                    if short_line_at is not None:
                        fail(f"line shorter than the record's other lines, but not its last; re-wrap the "
                             "record to one line length (e.g. `seqkit seq -w 60`)", rec.name, short_line_at)
                    this_eol = raw[len(line):]
                    if this_eol and this_eol != eol:
                        fail(f"line ends in {this_eol!r} but the record's first line in {eol!r}; use one kind of "
                             "line ending (e.g. `dos2unix`)", rec.name)
                    if len(raw) > raw_len:
                        fail(f"line of {len(line)} bases after lines of {raw_len - len(eol)}; re-wrap the record "
                             "to one line length (e.g. `seqkit seq -w 60`)", rec.name)
                    if len(raw) < raw_len:
                        short_line_at = lineno
                rec.length += len(line)
                rec.n_count += line.count(b"N") + line.count(b"n")
                rec.iupac_to_n += len(line) - len(line.translate(None, _IUPAC))
                rec.soft_masked += len(line) - len(line.translate(None, _LOWER))
    except (EOFError, zlib.error, OSError) as err:  # gzip.BadGzipFile is an OSError
        last = f", in record {rec.name!r}" if rec else ""
        what = "compressed stream is truncated or corrupt" if fmt != "plain" else "read failed"
        raise ValueError(
            f"{path}: {what} after line {lineno}{last} ({type(err).__name__}: {err}); "
            "re-download or re-compress the file"
        ) from None
    if not records:
        raise ValueError(f"{path}: no FASTA records (empty file?); a FASTA file starts with a '>name' line")
    close_record()
    if fmt == "bgzf":
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - len(_BGZF_EOF)))
            if f.read() != _BGZF_EOF:
                raise ValueError(
                    f"{path}: BGZF file has no end-of-file marker block: truncated after line {lineno} (record "
                    f"{rec.name!r}), or written by a tool that leaves it out; pyfaidx can't index it: "
                    "re-download it, or re-compress it with `bgzip`"
                )
    return records


class FastaFile:
    """A checked, indexed FASTA.

    path:     the file pyfaidx opens (the source, a BGZF copy, or a link in the cache)
    records:  {name: RecordStats} in file order; `names`, `lengths` for convenience
    fetch(name, start, end): bases [start, end) (0-based, half-open), case preserved.

    The pyfaidx handle is opened per process (re-opened when the pid changes, never pickled), so
    DataLoader workers each read through their own file handle."""

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.source = Path(path).expanduser()
        if not self.source.is_file():
            raise ValueError(f"FASTA file not found: {self.source}")
        self.format = detect_format(self.source)
        self.cache = cache_root(cache_dir) / "fasta" / _file_key(self.source)
        self.cache.mkdir(parents=True, exist_ok=True)
        self._handle = None
        self._pid = None
        self._n_runs: dict[str, np.ndarray] | None = None
        with _locked(self.cache / ".lock"):
            self.records = {r.name: r for r in self._scan(self.cache / "scan.json")}
            self.path = self._indexable_path()
            self._open(rebuild=True)  # builds .fai/.gzi now, before any DataLoader worker exists
        self._check_index()

    # -- set-up ------------------------------------------------------------------------------
    def _scan(self, cached: Path) -> list[RecordStats]:
        if cached.is_file():
            try:
                data = json.loads(cached.read_text())
                if data.get("version") == _SCAN_VERSION:
                    return [RecordStats(**r) for r in data["records"]]
            except (ValueError, TypeError, KeyError):
                pass  # unreadable cache entry: scan again
        records = scan_fasta(self.source)
        payload = json.dumps({"version": _SCAN_VERSION, "source": str(self.source.resolve()),
                              "records": [asdict(r) for r in records]})
        _atomic_write(cached, lambda p: p.write_text(payload))
        return records

    def _indexable_path(self) -> Path:
        if self.format == "gzip":
            target = self.cache / (self.source.name.removesuffix(".gz") + ".bgz")
            if not target.is_file():
                from Bio import bgzf

                log.info("plain-gzip FASTA %s -> BGZF copy %s (pyfaidx can't index plain gzip; converted once, "
                         "then reused)", self.source, target)

                def convert(tmp: Path):
                    with gzip.open(self.source, "rb") as src, bgzf.BgzfWriter(str(tmp), "wb") as dst:
                        while block := src.read(1 << 22):
                            dst.write(block)

                _atomic_write(target, convert)
            return target
        src = self.source
        indexes = [Path(f"{src}.fai")] + ([Path(f"{src}.gzi")] if self.format == "bgzf" else [])
        if all(_fresh(i, src) for i in indexes):
            return src  # an up-to-date index beside the file (e.g. from samtools faidx) is reused
        # otherwise index a link in the cache: the user's folder (maybe shared, read-only or the
        # installed package) is never written to
        link = self.cache / src.name
        if not link.is_symlink():
            log.info("%s: indexing it through a link %s", src, link)
            with contextlib.suppress(FileExistsError):
                link.symlink_to(src.resolve())
        return link

    def _open(self, rebuild: bool):
        import pyfaidx

        try:
            self._handle = pyfaidx.Fasta(str(self.path), as_raw=True, sequence_always_upper=False,
                                         rebuild=rebuild, build_index=rebuild)
        # struct.error, zlib.error, EOFError: Bio.bgzf reading a BGZF block whose header (e.g. BSIZE) is
        # corrupt, which the gzip-based scan can't see
        except (pyfaidx.FastaIndexingError, RuntimeError, ValueError, OSError, EOFError, struct.error,
                zlib.error) as err:
            raise ValueError(f"{self.source}: pyfaidx could not index or open {self.path} "
                             f"({type(err).__name__}: {err}); fix the file, or delete a stale index beside it") from None
        self._pid = os.getpid()

    def _check_index(self):
        got = {k: v.rlen for k, v in self._handle.faidx.index.items()}
        want = self.lengths
        if got != want:
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:5]
            raise ValueError(f"{self.source}: the index of {self.path} disagrees with the file's contents "
                             f"(e.g. records {diff}); delete {self.path}.fai (and .gzi) and try again")

    # -- reading -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.records)

    @property
    def lengths(self) -> dict[str, int]:
        return {k: r.length for k, r in self.records.items()}

    def fetch(self, name: str, start: int, end: int) -> str:
        """Bases [start, end) (0-based, half-open) of record `name`, case preserved."""
        rec = self.records.get(name)
        if rec is None:
            raise ValueError(f"{self.source}: no record {name!r}; records: {self.names[:20]}")
        if not 0 <= start <= end <= rec.length:
            raise ValueError(f"{self.source}: {name}:{start}-{end} is outside the record (length {rec.length})")
        if self._handle is None or self._pid != os.getpid():
            self._open(rebuild=False)  # a worker: the index exists, never write it from here
        return self._handle[name][start:end]

    def region_stats(self, regions: list[tuple[str, int, int]], chunk: int = 1 << 22) -> list[dict]:
        """{"bases", "n_count", "iupac_to_n", "soft_masked"} for each (name, start, end), read from
        the file (in chunks) and cached beside the scan, so a large genome is counted once."""
        cached = self.cache / "regions.json"
        try:
            table = json.loads(cached.read_text()) if cached.is_file() else {}
        except ValueError:
            table = {}
        missing = [r for r in regions if f"{r[0]}:{r[1]}-{r[2]}" not in table]
        for name, start, end in missing:
            counts = {"bases": end - start, "n_count": 0, "iupac_to_n": 0, "soft_masked": 0}
            for s in range(start, end, chunk):
                seq = self.fetch(name, s, min(end, s + chunk)).encode("ascii")
                counts["n_count"] += seq.count(b"N") + seq.count(b"n")
                counts["iupac_to_n"] += len(seq) - len(seq.translate(None, _IUPAC))
                counts["soft_masked"] += len(seq) - len(seq.translate(None, _LOWER))
            table[f"{name}:{start}-{end}"] = counts
        if missing:
            with _locked(self.cache / ".lock"):
                _atomic_write(cached, lambda p: p.write_text(json.dumps(table)))
        return [dict(table[f"{n}:{s}-{e}"]) for n, s, e in regions]

    def n_runs(self, chunk: int = 1 << 22) -> dict[str, np.ndarray]:
        """{record: (R, 2) int64 [start, end)}: the maximal runs of bases the tokenizer reads as N
        (N and the IUPAC ambiguity codes, either case), sorted. Read from the file in chunks of
        `chunk` bases (never a whole record at once) and cached beside the scan, so a 3 Gb genome is
        read once; later calls, and other processes, load the cache."""
        if self._n_runs is not None:
            return self._n_runs
        cached = self.cache / "n_runs.npz"
        runs = None
        if cached.is_file():
            try:
                with np.load(cached) as data:
                    if int(data["version"]) == _N_RUNS_VERSION and int(data["n_records"]) == len(self.records):
                        runs = {name: data[f"r{i}"] for i, name in enumerate(self.records)}
            except (OSError, ValueError, KeyError):
                runs = None  # unreadable cache entry: scan again
        if runs is None:
            runs = {name: self._scan_n_runs(name, rec.length, chunk) for name, rec in self.records.items()}
            arrays = {f"r{i}": a for i, a in enumerate(runs.values())}

            def write(tmp: Path):
                with open(tmp, "wb") as fh:  # a file object: np.savez would append '.npz' to a path
                    np.savez(fh, version=_N_RUNS_VERSION, n_records=len(runs), **arrays)

            with _locked(self.cache / ".lock"):
                _atomic_write(cached, write)
            log.info("%s: %d runs of N (%d bases) in %d records, cached in %s", self.source,
                     sum(len(a) for a in runs.values()), sum(int((a[:, 1] - a[:, 0]).sum()) for a in runs.values()),
                     len(runs), cached)
        self._n_runs = runs
        return runs

    def _scan_n_runs(self, name: str, length: int, chunk: int) -> np.ndarray:
        if self.records[name].n_count + self.records[name].iupac_to_n == 0:
            return np.zeros((0, 2), dtype=np.int64)  # the validation scan counted none: nothing to read
        runs: list[list[int]] = []
        for s in range(0, length, chunk):
            for m in _N_LIKE.finditer(self.fetch(name, s, min(length, s + chunk))):
                a, b = s + m.start(), s + m.end()
                if runs and runs[-1][1] == a:  # a run cut by the chunk boundary
                    runs[-1][1] = b
                else:
                    runs.append([a, b])
        return np.asarray(runs, dtype=np.int64).reshape(-1, 2)

    def close(self):
        if self._handle is not None:
            self._handle.close()
        self._handle = self._pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None
        return state

    def __repr__(self):
        return f"FastaFile({str(self.source)!r}, {self.format}, {len(self.records)} records)"


def open_fasta(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> FastaFile:
    """Check, (convert,) index and open a FASTA file; see FastaFile."""
    return FastaFile(path, cache_dir)
