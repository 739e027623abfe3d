"""data.source: table: Parquet/JSONL/CSV tables and Hugging Face datasets, converted into the
MIND layout; a click log trains and evaluates end to end, and an impression log gives the same
shards as the same corpus written in MIND format."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlrec.data.mind import read_behaviors
from mlrec.data.rows import DataError
from mlrec.data.synthetic import generate_corpus
from tests.conftest import REPO, TINY, tiny_config

LANGUAGES = ["en", "de", "ru", "ar", "zh", "ja"]
# the user's own column names, mapped onto mlrec's
COLUMNS = [
    "data.table.columns.item_id=doc",
    "data.table.columns.language=lang",
    "data.table.columns.title=headline",
    "data.table.columns.abstract=body",
    "data.table.columns.category=topic",
    "data.table.columns.user_id=uid",
    "data.table.columns.time=ts",
    "data.table.columns.item=doc",
    "data.table.columns.item_language=doc_lang",
]
IMPRESSIONS = ["data.table.columns.impression_id=imp", "data.table.columns.label=clicked"]


def _corpus(root: Path, train: int = 500, dev: int = 100) -> Path:
    generate_corpus(
        root, languages=LANGUAGES, num_news=120, num_users=80, train_impressions=train,
        dev_impressions=dev, seed=3,
    )  # fmt: skip
    return root


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%m/%d/%Y %I:%M:%S %p")


def _items(corpus: Path) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("doc", "lang", "topic", "sub", "headline", "body")}
    for lang in LANGUAGES:
        for line in (corpus / "news" / f"{lang}.tsv").read_text().splitlines():
            nid, category, subcategory, title, abstract = line.split("\t")[:5]
            for key, value in zip(
                cols, (nid, lang, category, subcategory, title, abstract), strict=True
            ):
                cols[key].append(value)
    return cols


def _impressions(corpus: Path) -> list[list[str]]:
    """The generated corpus' impressions (train, then dev), in time order (stable)."""
    rows = []
    for split in ("train", "dev"):
        for line in (corpus / split / "behaviors.tsv").read_text().splitlines():
            rows.append(line.split("\t"))
    return sorted(rows, key=lambda cols: _time(cols[2]))


def _clicks(corpus: Path) -> dict[str, list]:
    log: dict[str, list] = {"uid": [], "ts": [], "doc": [], "doc_lang": []}
    for _, user, time, _, shown in _impressions(corpus):
        for token in shown.split():
            if token.endswith("-1"):
                nid, lang = token[:-2].split("@")
                for key, value in zip(log, (user, _time(time), nid, lang), strict=True):
                    log[key].append(value)
    return log


def _write_parquet(
    columns: dict[str, list], path: Path, parts: int = 1, part_of: list[int] | None = None
) -> None:
    """One file, or `parts` files `path-<i>.parquet` holding the rows whose `part_of` is i
    (default: interleaved rows, so that no file is a time range and the merge must order them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(columns.values())))
    part_of = part_of or [i % parts for i in range(n)]
    for part in range(parts):
        chunk = {
            k: [v for v, p in zip(vs, part_of, strict=True) if p == part]
            for k, vs in columns.items()
        }
        name = path if parts == 1 else path.with_name(f"{path.stem}-{part}{path.suffix}")
        pq.write_table(pa.table(chunk), name)


def _click_config(tmp: Path, *extra: str):
    corpus = _corpus(tmp / "generated")
    _write_parquet(_items(corpus), tmp / "tables" / "items.parquet")
    _write_parquet(_clicks(corpus), tmp / "tables" / "clicks.parquet", parts=2)
    return tiny_config(
        tmp / "run",
        "data.source=table",
        f"data.table.items={tmp / 'tables' / 'items.parquet'}",
        f"data.table.interactions={tmp / 'tables' / 'clicks-*.parquet'}",
        *COLUMNS,
        *extra,
    )


def test_a_parquet_click_log_trains_and_evaluates_end_to_end(tmp_path):
    cfg = _click_config(
        tmp_path,
        "data.table.negatives=same-category",
        "data.table.max_history=10",
        "train.steps=12",
    )
    from mlrec import pipeline

    pipeline.data(cfg)  # in this process: the conversion; then sharding
    pipeline.shard(cfg)
    cfg.save(tmp_path / "table.yaml")
    out = subprocess.run(  # the real entry point trains, then evaluates
        [sys.executable, "-m", "mlrec", "train", "--config", str(tmp_path / "table.yaml")],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    corpus = json.loads((cfg.corpus_dir / "corpus.json").read_text())
    clicks = sum(1 for _ in _clicks(tmp_path / "generated")["uid"])
    assert corpus["impressions"]["train"] + corpus["impressions"]["dev"] == clicks
    assert corpus["events"]["dev"] == round(clicks * cfg.data.table.dev_fraction)
    for counts in corpus["rows"]["files"].values():  # nothing lost: rows = kept + duplicates
        assert counts["rows"] == counts["kept"] + counts["duplicates"] and not counts["skipped"]
    metrics = json.loads((Path(cfg.run_dir) / "eval" / "metrics.json").read_text())
    assert metrics["overall"]["impressions"] == corpus["impressions"]["dev"]
    assert len(metrics["by_language"]) >= 4
    assert 0.0 <= metrics["overall"]["auc"] <= 1.0
    # the dev impressions are the latest clicks, each with 4 negatives of its category
    index = {}
    for lang in LANGUAGES:
        for line in (cfg.corpus_dir / "news" / f"{lang}.tsv").read_text().splitlines():
            nid, category = line.split("\t")[:2]
            index[(nid, lang)] = category
    dev = [imp for _, imp in read_behaviors(cfg.corpus_dir / "dev" / "behaviors.tsv", "en")]
    # small categories, used up by the history, give fewer negatives
    assert sum(len(imp.candidates) for imp in dev) > 3 * len(dev)
    outside = 0
    for imp in dev:
        assert sum(imp.labels) == 1 and 2 <= len(imp.candidates) <= 5
        click = imp.candidates[imp.labels.index(1)]
        outside += {index[c] for c in imp.candidates} != {index[click]}
        assert {lang for _, lang in imp.candidates} == {click[1]}
        assert not set(imp.candidates) - {click} & set(imp.history)
    assert outside < len(dev) / 4 and outside <= corpus["negatives_outside_category"]
    train = [imp for _, imp in read_behaviors(cfg.corpus_dir / "train" / "behaviors.tsv", "en")]
    assert max(_time_of(i) for i in train) <= min(_time_of(i) for i in dev)


def _time_of(imp) -> datetime:
    return datetime.fromisoformat(imp.time)


def _long_impressions(corpus: Path) -> tuple[dict[str, list], list[list[str]]]:
    """An impression log (one row per shown item, its impression's history as a list), and the
    impressions as MIND rows in the order the conversion writes them."""
    log: dict[str, list] = {k: [] for k in ("imp", "uid", "ts", "hist", "doc", "doc_lang")}
    log["clicked"] = []
    rows = _impressions(corpus)
    for imp, (_, user, time, history, shown) in enumerate(rows):
        for token in shown.split():
            nid, lang = token[:-2].split("@")
            values = (f"i{imp:06d}", user, _time(time), history.split(), nid, lang, int(token[-1]))
            for key, value in zip(log, values, strict=True):
                log[key].append(value)
    return log, rows


def _write_mind(corpus: Path, rows: list[list[str]], dev_fraction: float, out: Path) -> None:
    """The same impressions as MIND files: the latest dev_fraction of them are dev, numbered
    1, 2, ... per file, times as the conversion writes them."""
    dev = round(len(rows) * dev_fraction)
    for split, part in (("train", rows[:-dev]), ("dev", rows[-dev:])):
        lines = [
            "\t".join([str(i), user, str(_time(time)), history, shown])
            for i, (_, user, time, history, shown) in enumerate(part, start=1)
        ]
        (out / split).mkdir(parents=True)
        (out / split / "behaviors.tsv").write_text("\n".join(lines) + "\n")
    (out / "news").mkdir()
    for lang in LANGUAGES:
        lines = (corpus / "news" / f"{lang}.tsv").read_text().splitlines()
        # as the conversion writes items: 5 columns kept, url and entities left empty
        kept = ["\t".join(line.split("\t")[:5] + ["", "", ""]) for line in lines]
        (out / "news" / f"{lang}.tsv").write_text("\n".join(kept) + "\n")


def _shard_bytes(shards: Path) -> dict[str, bytes]:
    names = [p for p in sorted(shards.rglob("*")) if p.is_file() and p.suffix in (".tar", ".npy")]
    return {str(p.relative_to(shards)): p.read_bytes() for p in names} | {
        "index": (shards / "items" / "index.tsv").read_bytes()
    }


def test_an_impression_log_gives_the_same_shards_as_the_corpus_in_mind_format(tmp_path):
    from mlrec.data.shards import ShardInputs, build_shards

    corpus = _corpus(tmp_path / "generated", train=300, dev=60)
    items = _items(corpus)
    log, rows = _long_impressions(corpus)
    _write_parquet(items, tmp_path / "t" / "items.parquet")
    # the rows of one impression in one file (in their order): a file's rows are shown first
    by_impression = [int(imp[1:]) % 3 for imp in log["imp"]]
    _write_parquet(log, tmp_path / "t" / "log.parquet", parts=3, part_of=by_impression)
    table = tiny_config(
        tmp_path / "table",
        "data.source=table",
        f"data.table.items={tmp_path / 't' / 'items.parquet'}",
        f"data.table.interactions={tmp_path / 't' / 'log-*.parquet'}",
        *COLUMNS,
        *IMPRESSIONS,
        "data.table.columns.subcategory=sub",
        "data.table.columns.history=hist",
        "data.table.dev_fraction=0.2",
    )
    _write_mind(corpus, rows, 0.2, tmp_path / "mind")
    mind = tiny_config(tmp_path / "mindrun", "data.source=mind", f"data.dir={tmp_path / 'mind'}")
    build_shards(ShardInputs.of(table), progress=False)
    build_shards(ShardInputs.of(mind), progress=False)
    converted, written = _shard_bytes(table.shards_dir), _shard_bytes(mind.shards_dir)
    assert sum(n.endswith(".tar") for n in written) >= 6
    assert converted.keys() == written.keys()
    for name in written:
        assert converted[name] == written[name], name


def _small_tables(tmp: Path) -> tuple[dict[str, list], dict[str, list]]:
    items = {
        "doc": ["a", "b", "c", "d", "a", "e", "f", "g"],
        "lang": ["en", "en", "de", "de", "de", "en", "en", "de"],
        "headline": ["Alpha\tnews", "Beta", "Gamma", "Delta", "Alpha (de)", "E", "F", "G"],
        "topic": ["x", "x", "y", "y", "x", "x", "x", "y"],
        "body": ["", None, "text", "", "", "", "", ""],
    }
    log = {
        "uid": ["u1", "u2", "u1", "u2", "u1", "u2"],
        "ts": [1, 2, 3, 4, 5, 6],
        "doc": ["b", "c", "a", "d", "b", "c"],
        "doc_lang": ["en", "de", "en", "de", "en", "de"],
    }
    return items, log


def _table_config(tmp: Path, items: str, log: str, *extra: str):
    return tiny_config(
        tmp / "run",
        "data.source=table",
        f"data.table.items={items}",
        f"data.table.interactions={log}",
        *COLUMNS,
        "data.table.negatives_per_click=1",
        "data.table.dev_fraction=0.34",
        *extra,
    )


def _converted(cfg) -> dict[str, str]:
    from mlrec.data.corpus import prepare_corpus

    prepare_corpus(cfg.data, cfg.corpus_dir)
    return {
        str(p.relative_to(cfg.corpus_dir)): p.read_text()
        for p in sorted(cfg.corpus_dir.glob("*/*.tsv"))
    }


def test_parquet_jsonl_csv_and_a_streamed_hf_dataset_convert_alike(tmp_path):
    import datasets

    items, log = _small_tables(tmp_path)
    _write_parquet(items, tmp_path / "items.parquet")
    _write_parquet(log, tmp_path / "log.parquet")
    parquet = _converted(
        _table_config(tmp_path / "p", tmp_path / "items.parquet", tmp_path / "log.parquet")
    )
    assert parquet["news/en.tsv"].splitlines()[0].split("\t")[:4] == ["a", "x", "x", "Alpha news"]
    dev = parquet["dev/behaviors.tsv"].splitlines()
    assert [row.split("\t")[2] for row in dev] == ["5", "6"]  # the latest third, by time
    assert dev[0].split("\t")[3] == "b@en a@en"  # u1's earlier clicks, oldest first
    for name, write in (
        ("json", lambda t, p: p.write_text("".join(json.dumps(r) + "\n" for r in _records(t)))),
        ("csv", lambda t, p: p.write_text(_csv(t))),
    ):
        suffix = "jsonl" if name == "json" else "csv"
        write(items, tmp_path / f"items.{suffix}")
        write(log, tmp_path / f"log.{suffix}")
        cfg = _table_config(
            tmp_path / name, tmp_path / f"items.{suffix}", tmp_path / f"log.{suffix}"
        )
        assert _converted(cfg) == parquet, name
    datasets.Dataset.from_dict(items).save_to_disk(str(tmp_path / "hf-items"))
    datasets.Dataset.from_dict(log).save_to_disk(str(tmp_path / "hf-log"))
    cfg = _table_config(
        tmp_path / "hf", tmp_path / "hf-items", tmp_path / "hf-log", "data.table.streaming=true"
    )
    assert _converted(cfg) == parquet


def _records(columns: dict[str, list]) -> list[dict]:
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]


def _csv(columns: dict[str, list]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(zip(*columns.values(), strict=True))
    return out.getvalue()


def test_bad_rows_name_table_and_row_or_are_counted(tmp_path):
    items, log = _small_tables(tmp_path)
    items["doc"][1] = "b@x"  # "@" would read as a language
    items["headline"][3] = ""
    log["doc"][2] = "zz"  # no such item
    log["ts"][4] = None
    _write_parquet(items, tmp_path / "items.parquet")
    _write_parquet(log, tmp_path / "log.parquet")
    cfg = _table_config(tmp_path / "strict", tmp_path / "items.parquet", tmp_path / "log.parquet")
    with pytest.raises(DataError, match=r"items\.parquet: row 2: item id 'b@x' holds '@'"):
        _converted(cfg)
    skip = _table_config(
        tmp_path / "skip", tmp_path / "items.parquet", tmp_path / "log.parquet",
        "data.on_error=skip",
    )  # fmt: skip
    _converted(skip)
    rows = json.loads((skip.corpus_dir / "corpus.json").read_text())["rows"]["files"]
    items_rows, log_rows = (
        rows[str(tmp_path / "items.parquet")],
        rows[str(tmp_path / "log.parquet")],
    )
    assert items_rows == {
        "rows": 8, "kept": 6, "duplicates": 0, "skipped": {"bad news id": 1, "empty title": 1},
    }  # fmt: skip
    # b is gone, so the clicks on b are unknown items too
    assert log_rows["rows"] == 6 and log_rows["skipped"]["missing time"] == 1
    assert log_rows["kept"] + sum(log_rows["skipped"].values()) == 6
    log["ts"][4] = 5
    log["ts"][1], log["ts"][2] = 3, 2  # out of time order
    _write_parquet(log, tmp_path / "log.parquet")
    streamed = _table_config(
        tmp_path / "stream", tmp_path / "items.parquet", tmp_path / "log.parquet",
        "data.on_error=skip", "data.table.streaming=true",
    )  # fmt: skip
    with pytest.raises(DataError, match=r"log\.parquet: row 3: earlier than row 2"):
        _converted(streamed)


def test_popularity_negatives_follow_training_clicks(tmp_path):
    items = {
        "doc": [f"n{i}" for i in range(20)],
        "lang": ["en"] * 20,
        "headline": [f"item {i}" for i in range(20)],
        "topic": ["t"] * 20,
        "body": [""] * 20,
    }
    popular = ["n0"] * 150 + ["n1"] * 50  # n0 holds most clicks
    log = {
        "uid": [f"u{i}" for i in range(200)],  # no history: only the click is excluded
        "ts": list(range(200)),
        "doc": [popular[(i * 37) % 200] for i in range(200)],
        "doc_lang": ["en"] * 200,
    }
    _write_parquet(items, tmp_path / "items.parquet")
    _write_parquet(log, tmp_path / "log.parquet")
    cfg = _table_config(
        tmp_path, tmp_path / "items.parquet", tmp_path / "log.parquet",
        "data.table.negatives=popularity",
    )  # fmt: skip
    _converted(cfg)
    drawn = Counter()
    for _, imp in read_behaviors(cfg.corpus_dir / "train" / "behaviors.tsv", "en"):
        click = imp.candidates[imp.labels.index(1)]
        negatives = [c for c, y in zip(imp.candidates, imp.labels, strict=True) if not y]
        assert click not in negatives and len(negatives) == 1
        drawn.update(nid for nid, _ in negatives)
    rare = sum(drawn[f"n{i}"] for i in range(2, 20)) / 18
    assert drawn["n0"] > 3 * rare and drawn["n1"] > 2 * rare


def test_table_config_errors_name_the_key(tmp_path):
    from mlrec.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.table.items must name"):
        load_config(TINY, ["data.source=table"])
    with pytest.raises(ConfigError, match="data.table.columns.label and"):
        load_config(
            TINY,
            ["data.source=table", "data.table.items=a", "data.table.interactions=b",
             "data.table.columns.label=clicked"],
        )  # fmt: skip
    items, log = _small_tables(tmp_path)
    _write_parquet(items, tmp_path / "items.parquet")
    _write_parquet(log, tmp_path / "log.parquet")
    cfg = _table_config(
        tmp_path, tmp_path / "items.parquet", tmp_path / "log.parquet",
        "data.table.columns.time=when",
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"data.table.columns.time: .*log.parquet has no column 'when'"
    ):
        _converted(cfg)


def test_impression_log_rows_without_a_click_or_an_id_are_errors_or_counted(tmp_path):
    items, _ = _small_tables(tmp_path)
    log = {
        "imp": ["i1", "i1", "i2", "i2", None, "i3", "i3"],
        "uid": ["u1", "u1", "u2", "u2", "u1", "u1", "u1"],
        "ts": [1, 1, 2, 2, 3, 4, 4],
        "doc": ["a", "b", "c", "d", "a", "e", "f"],
        "doc_lang": ["en", "en", "de", "de", "en", "en", "en"],
        "clicked": [1, 0, 0, 0, 1, 1, 2],
    }
    _write_parquet(items, tmp_path / "items.parquet")
    _write_parquet(log, tmp_path / "log.parquet")
    args = (tmp_path / "items.parquet", tmp_path / "log.parquet", *IMPRESSIONS)
    with pytest.raises(DataError, match=r"log\.parquet: row 5: no impression id"):
        _converted(_table_config(tmp_path / "strict", *args))
    skip = _table_config(tmp_path / "skip", *args, "data.on_error=skip")
    converted = _converted(skip)
    counts = json.loads((skip.corpus_dir / "corpus.json").read_text())["rows"]["files"]
    assert counts[str(tmp_path / "log.parquet")] == {
        "rows": 7, "kept": 3, "duplicates": 0,
        "skipped": {"bad impression id": 1, "bad label": 1, "no clicked candidate": 2},
    }  # fmt: skip
    assert converted["train/behaviors.tsv"].split("\t")[4] == "a@en-1 b@en-0\n"
    assert converted["dev/behaviors.tsv"].split("\t")[4] == "e@en-1\n"


def test_tables_read_from_an_http_url_convert_as_local_ones(tmp_path):
    """`python -m http.server` on 127.0.0.1 serving the tables: read through fsspec, streamed
    and not, they give the corpus the local files give."""
    import socket
    import time

    items, log = _small_tables(tmp_path)
    _write_parquet(items, tmp_path / "served" / "items.parquet")
    _write_parquet(log, tmp_path / "served" / "log.parquet")
    local = _converted(
        _table_config(
            tmp_path / "local", tmp_path / "served" / "items.parquet",
            tmp_path / "served" / "log.parquet",
        )
    )  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path / "served", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        for streaming in ("false", "true"):
            cfg = _table_config(
                tmp_path / f"http-{streaming}", f"{url}/items.parquet", f"{url}/log.parquet",
                f"data.table.streaming={streaming}",
            )  # fmt: skip
            assert _converted(cfg) == local, streaming
        missing = _table_config(
            tmp_path / "missing", f"{url}/nothing.parquet", f"{url}/log.parquet"
        )
        with pytest.raises(Exception, match=r"data.table.items: .*nothing.parquet"):
            _converted(missing)
    finally:
        server.terminate()
        server.wait(timeout=30)
