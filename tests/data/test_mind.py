import pytest

from mlrec.data.mind import read_behaviors, read_news
from mlrec.data.rows import DataError
from mlrec.languages import parse_ref

NEWS_ROW = "N1\tsports\tfootball\tA title\tAn abstract\thttps://x/N1\t[]\t[]\n"


def test_read_news_and_refs(tmp_path):
    path = tmp_path / "news.tsv"
    path.write_text(NEWS_ROW + NEWS_ROW.replace("N1", "N2"))
    items = list(read_news(path, "de"))
    assert [(i.nid, i.lang, i.category) for i in items] == [
        ("N1", "de", "sports"),
        ("N2", "de", "sports"),
    ]
    assert items[0].text(["title", "abstract"]) == "A title An abstract"
    assert parse_ref("N7@ru", "en") == ("N7", "ru")
    assert parse_ref("N7", "en") == ("N7", "en")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("N1\tsports\tfootball\tA title\n", "expected 8"),
        ("N1\tsports\tfootball\t \tabs\tu\t[]\t[]\n", "empty title"),
    ],
)
def test_bad_news_rows_name_file_and_line(tmp_path, row, reason):
    path = tmp_path / "news.tsv"
    path.write_text(NEWS_ROW + row)
    with pytest.raises(DataError, match=f"{path}:2: .*{reason}"):
        list(read_news(path, "en"))


def test_undecodable_text_names_line(tmp_path):
    path = tmp_path / "news.tsv"
    path.write_bytes(NEWS_ROW.encode() + b"N2\tsports\tf\t\xff\xfe\ta\tu\t[]\t[]\n")
    with pytest.raises(DataError, match=f"{path}:2: text is not valid UTF-8"):
        list(read_news(path, "en"))


def test_read_behaviors(tmp_path):
    path = tmp_path / "behaviors.tsv"
    path.write_text("1\tU1\t11/15/2019 8:55:22 AM\tN1 N2@de\tN3@ru-1 N4-0 N5@ru-0\n")
    [(line, imp)] = list(read_behaviors(path, "en"))
    assert line == 1
    assert imp.history == [("N1", "en"), ("N2", "de")]
    assert imp.candidates == [("N3", "ru"), ("N4", "en"), ("N5", "ru")]
    assert imp.labels == [1, 0, 0]
    assert imp.lang == "ru"  # most candidates are shown in Russian


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2\tU1\ttime\tN1\n", "expected 5"),
        ("x\tU1\ttime\tN1\tN2-1\n", "not a non-negative integer"),
        ("2\tU1\ttime\tN1\tN2-3\n", "must end in -1"),
        ("2\tU1\ttime\tN1\t\n", "no impressions"),
    ],
)
def test_bad_behaviors_rows_name_file_and_line(tmp_path, row, reason):
    path = tmp_path / "behaviors.tsv"
    path.write_text("1\tU1\ttime\t\tN1-1 N2-0\n" + row)
    with pytest.raises(DataError, match=f"{path}:2: .*{reason}"):
        list(read_behaviors(path, "en"))
