"""Shard tars written byte for byte as tarfile writes them (USTAR, fixed metadata), but fast.

tarfile.addfile costs ~80 µs a member (a TarInfo copy, a header built field by field, a BytesIO,
small writes), more than everything else a ~1 kB impression sample needs. In our headers only the
name, the size and the checksum vary, so `TarWriter` fills those three into a header template cut
from one tarfile made on this Python, and ends the archive as TarFile.close does; the bytes are
tarfile's own (tests/data/test_tars.py compares them). It also hashes what it writes, so a
finished shard is not read back for its checksum.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from types import TracebackType

MODE = 0o444  # every member: read-only, owner 0, mtime 0, so the same input gives the same bytes
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_FLUSH = 1 << 20


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, MODE
    return info


def _reference_header(name: str, size: int) -> bytes:
    return _info(name, size).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")


# Header layout: name[0:100] mode/uid/gid[100:124] size[124:136] mtime[136:148] chksum[148:156]
# then type, link name, magic, owner names, device numbers and prefix [156:512].
_SAMPLE = _reference_header("x", 0)
_IDS, _MTIME, _TAIL = _SAMPLE[100:124], _SAMPLE[136:148], _SAMPLE[156:]
# The checksum counts its own 8 bytes as spaces (tarfile.calc_chksums).
_FIXED_SUM = 8 * ord(" ") + sum(_IDS) + sum(_MTIME) + sum(_TAIL)
_ZEROS = bytes(_RECORD)


def header(name: str, size: int) -> bytes:
    """The 512-byte header tarfile writes for a member `name` of `size` bytes."""
    if not name.isascii() or len(name) > 100 or size >= 8**11:
        # tarfile encodes, splits into a prefix or refuses these; let it do exactly that
        return _reference_header(name, size)
    raw = name.encode()
    size_field = b"%011o\0" % size
    checksum = _FIXED_SUM + sum(raw) + sum(size_field)
    return b"".join((raw.ljust(100, b"\0"), _IDS, size_field, _MTIME, b"%06o\0 " % checksum, _TAIL))


class TarWriter:
    """Append members to a new tar at `path`; `close` ends it and sets `size` and `sha256`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples = 0
        self.size = 0
        self.sha256 = ""
        self._digest = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._handle = open(path, "wb")  # noqa: SIM115 (closed by close or __exit__)

    def add(self, name: str, payload: bytes) -> None:
        pad = -len(payload) % _BLOCK
        self._pending += (header(name, len(payload)), payload, _ZEROS[:pad])
        self._pending_bytes += _BLOCK + len(payload) + pad
        self.samples += 1
        if self._pending_bytes >= _FLUSH:
            self._flush()

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._digest.update(data)
        self._handle.write(data)
        self.size += len(data)
        self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        # As TarFile.close: two zero blocks, then zeros up to a whole record.
        end = self.size + self._pending_bytes + 2 * _BLOCK
        self._pending += (_ZEROS[: 2 * _BLOCK], _ZEROS[: -end % _RECORD])
        self._flush()
        self._handle.close()
        self.sha256 = self._digest.hexdigest()

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            if not self._handle.closed:
                self.close()
        else:
            self._handle.close()  # an unfinished temporary file; the next run replaces it
