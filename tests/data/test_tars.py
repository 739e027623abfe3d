"""TarWriter writes what tarfile writes (USTAR, fixed metadata), byte for byte."""

import hashlib
import io
import random
import tarfile

import pytest

from mlrec.data.tars import MODE, TarWriter, header


def _tarfile_bytes(path, members):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), 0, MODE
            tar.addfile(info, io.BytesIO(payload))
    return path.read_bytes()


@pytest.mark.parametrize("count", [1, 2, 19, 20, 21, 700])
def test_archives_equal_tarfile(tmp_path, count):
    rng = random.Random(count)
    # sizes around block edges; enough members to cross the writer's 1 MiB flush
    sizes = [0, 1, 511, 512, 513, 1024, 4000]
    members = [
        (f"train-{rng.randrange(10**12)}.json", rng.randbytes(rng.choice(sizes)))
        for _ in range(count)
    ]
    expected = _tarfile_bytes(tmp_path / "ref.tar", members)
    with TarWriter(tmp_path / "mine.tar") as tar:
        for name, payload in members:
            tar.add(name, payload)
    assert (tmp_path / "mine.tar").read_bytes() == expected
    assert (tar.samples, tar.size) == (count, len(expected))
    assert tar.sha256 == hashlib.sha256(expected).hexdigest()
    with tarfile.open(tmp_path / "mine.tar") as tar:
        assert [m.name for m in tar.getmembers()] == [n for n, _ in members]


def test_headers_equal_tarfile_including_the_cases_it_handles_itself():
    rng = random.Random(0)
    names = ["x", "a" * 100, "dev-0.json", "zé.json", "a" * 98 + "é"]
    names += [
        "".join(rng.choice("ab-_.019") for _ in range(rng.randint(1, 100))) for _ in range(300)
    ]
    for name in names:
        for size in (0, 1, 512, 10**6, 8**11 - 1):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = size, 0, MODE
            assert header(name, size) == info.tobuf(
                tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"
            )
    with pytest.raises(ValueError, match="too long"):
        header("a" * 101, 0)  # as tarfile refuses it
