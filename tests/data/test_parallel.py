import struct

import pytest

from mlrec.data.parallel import Pair, mo_pairs, read_mo, read_parallel_tsv
from mlrec.data.rows import COLUMNS, DataError, RowLog


def _write_mo(path, entries, order="<"):
    """A .mo file as GNU msgfmt lays it out (header entry first, ids sorted)."""
    entries = sorted(entries.items())
    n = len(entries)
    ids = b"".join(k.encode() + b"\0" for k, _ in entries)
    strs = b"".join(v.encode() + b"\0" for _, v in entries)
    start = 28 + 16 * n
    table_o, table_t, pos = b"", b"", start
    for k, _ in entries:
        table_o += struct.pack(f"{order}2I", len(k.encode()), pos)
        pos += len(k.encode()) + 1
    for _, v in entries:
        table_t += struct.pack(f"{order}2I", len(v.encode()), pos)
        pos += len(v.encode()) + 1
    head = struct.pack(f"{order}7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    path.write_bytes(head + table_o + table_t + ids + strs)


@pytest.mark.parametrize("order", ["<", ">"])
def test_read_mo_both_byte_orders(tmp_path, order):
    path = tmp_path / "fr.mo"
    entries = {
        "": "Content-Type: text/plain; charset=UTF-8\n",
        "Open file": "Ouvrir le fichier",
        "Untranslated": "",
        "Quit": "Quitter",
    }
    _write_mo(path, entries, order)
    assert list(read_mo(path)) == [("Open file", "Ouvrir le fichier"), ("Quit", "Quitter")]
    assert next(mo_pairs(path, "en", "fr")) == Pair("Open file", "Ouvrir le fichier", "en", "fr")
    (tmp_path / "bad.mo").write_bytes(b"\0" * 40)
    with pytest.raises(DataError, match="bad.mo: not a gettext .mo file"):
        list(read_mo(tmp_path / "bad.mo"))


def test_parallel_tsv_rows_are_accounted(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("Hello\tHallo\ten\tde\nbroken row\ten\n\nCat\tКот\ten\tru\n")
    with pytest.raises(DataError, match=f"{path}:2: expected 4"):
        list(read_parallel_tsv(path))
    rows = RowLog("skip")
    pairs = list(read_parallel_tsv(path, rows))
    assert [p.target for p in pairs] == ["Hallo", "Кот"]
    assert rows.files[str(path)] == {"rows": 3, "kept": 2, "duplicates": 0, "skipped": {COLUMNS: 1}}


@pytest.mark.fetch
def test_real_vlc_catalog(tmp_path):
    import shutil
    import subprocess

    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("needs apt-get and dpkg-deb to fetch vlc-l10n")
    got = subprocess.run(["apt-get", "download", "vlc-l10n"], cwd=tmp_path, capture_output=True)
    debs = list(tmp_path.glob("vlc-l10n_*.deb"))
    if got.returncode or not debs:
        pytest.skip(f"apt-get download vlc-l10n failed: {got.stderr.decode()[-300:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp_path / "x")], check=True)
    catalogs = list((tmp_path / "x").rglob("de/LC_MESSAGES/vlc.mo"))
    assert catalogs
    pairs = list(read_mo(catalogs[0]))
    assert len(pairs) > 1000
    assert any(src == "Quit" or "Beenden" in tgt for src, tgt in pairs)
