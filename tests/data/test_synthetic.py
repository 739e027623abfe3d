"""Tests of the synthetic MIND/xMIND corpus generator: formats, scripts, determinism, signal."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from mlrec.data.synthetic import CATEGORIES, generate_corpus
from mlrec.languages import DEFAULT_LANGUAGES, LANGUAGE_SCRIPTS, SUPPORTED_LANGUAGES

SMALL = dict(
    num_news=300,
    num_users=120,
    train_impressions=600,
    dev_impressions=400,
    mixed_language_fraction=0.5,
    seed=7,
)
SPACED = ("en", "de", "fr", "es", "ru", "uk", "ar")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus")
    return out, generate_corpus(out, **SMALL)


def read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [line.rstrip("\n").split("\t") for line in fh]


def parse_ref(ref: str) -> tuple[str, str]:
    nid, lang = ref.split("@")
    return nid, lang


def parse_impressions(field: str) -> list[tuple[str, str, int]]:
    out = []
    for token in field.split(" "):
        ref, label = token.rsplit("-", 1)
        out.append((*parse_ref(ref), int(label)))
    return out


def user_refs(out: Path) -> dict[str, list[tuple[str, str]]]:
    """All (nid, lang) refs each user has in either split, history and candidates."""
    refs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split in ("train", "dev"):
        for row in read_tsv(out / split / "behaviors.tsv"):
            refs[row[1]].extend(parse_ref(r) for r in row[3].split())
            refs[row[1]].extend((nid, lang) for nid, lang, _ in parse_impressions(row[4]))
    return refs


def group_auc(rows: list[tuple[list[float], list[int]]]) -> float:
    """Mean per-impression ROC AUC; ties count one half."""
    aucs = []
    for scores, labels in rows:
        pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
        neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
        wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
        aucs.append(wins / (len(pos) * len(neg)))
    return sum(aucs) / len(aucs)


def test_group_auc_helper() -> None:
    assert group_auc([([0.9, 0.1, 0.5], [1, 0, 0])]) == 1.0
    assert group_auc([([0.1, 0.9], [1, 0]), ([0.5, 0.5], [1, 0])]) == 0.25


def test_news_files_are_aligned_translations(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    subcats = dict(CATEGORIES)
    tables = {lang: read_tsv(out / "news" / f"{lang}.tsv") for lang in DEFAULT_LANGUAGES}
    ids = [f"N{i}" for i in range(1, SMALL["num_news"] + 1)]
    en = tables["en"]
    for lang, rows in tables.items():
        assert all(len(row) == 8 for row in rows), lang
        assert [row[0] for row in rows] == ids, lang
        for row, en_row in zip(rows, en, strict=True):
            nid, cat, sub, title, abstract, url, t_ent, a_ent = row
            assert (cat, sub) == (en_row[1], en_row[2])
            assert sub in subcats[cat]
            assert url == f"https://news.example/{nid}"
            assert (t_ent, a_ent) == ("[]", "[]")
            assert title and abstract
            if lang in SPACED:
                assert 6 <= len(title.split(" ")) <= 12
                assert 15 <= len(abstract.split(" ")) <= 35
            else:
                assert " " not in title + abstract
            if lang != "en":
                assert title != en_row[3]


def test_translations_are_word_aligned(corpus: tuple[Path, dict]) -> None:
    """Each en word maps to exactly one word per language and back: same concepts, no collisions."""
    out, _ = corpus
    en = read_tsv(out / "news" / "en.tsv")
    for lang in SPACED[1:]:
        forward: dict[str, set[str]] = defaultdict(set)
        backward: dict[str, set[str]] = defaultdict(set)
        for en_row, row in zip(en, read_tsv(out / "news" / f"{lang}.tsv"), strict=True):
            for col in (3, 4):
                src = en_row[col].rstrip(".").lower().split(" ")
                dst = row[col].rstrip(".").lower().split(" ")
                assert len(src) == len(dst)
                for a, b in zip(src, dst, strict=True):
                    forward[a].add(b)
                    backward[b].add(a)
        assert all(len(v) == 1 for v in forward.values()), lang
        assert all(len(v) == 1 for v in backward.values()), lang
        assert len(forward) > 200  # a real vocabulary, not a handful of words


def in_range(text: str, low: int, high: int) -> bool:
    return any(low <= ord(ch) <= high for ch in text)


def test_every_supported_language_uses_its_script(tmp_path: Path) -> None:
    meta = generate_corpus(
        tmp_path,
        languages=SUPPORTED_LANGUAGES,
        num_news=40,
        num_users=30,
        train_impressions=20,
        dev_impressions=10,
        seed=3,
    )
    assert {lang: v["script"] for lang, v in meta["languages"].items()} == LANGUAGE_SCRIPTS
    text = {}
    for lang in SUPPORTED_LANGUAGES:
        rows = read_tsv(tmp_path / "news" / f"{lang}.tsv")
        text[lang] = " ".join(row[3] + " " + row[4] for row in rows)
    for lang, flavour in {
        "de": "äöüß",
        "fr": "éèêç",
        "es": "ñáíóú",
        "it": "àèòì",
        "pt": "ãõç",
        "pl": "ąęłśżźćń",
        "uk": "іїєґ",
    }.items():
        assert any(ch in text[lang] for ch in flavour), lang
    latin = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .")
    assert set(text["en"]) <= latin
    for lang, (low, high) in {
        "ru": (0x0400, 0x04FF),
        "uk": (0x0400, 0x04FF),
        "ar": (0x0600, 0x06FF),
        "zh": (0x4E00, 0x9FFF),
        "ja": (0x3040, 0x30FF),
        "ko": (0xAC00, 0xD7A3),
    }.items():
        assert in_range(text[lang], low, high), lang
        assert not set(text[lang]) & (latin - {" ", "."}), lang
    assert in_range(text["ja"], 0x4E00, 0x9FFF)  # kanji besides kana
    assert "ы" in text["ru"] and "ы" not in text["uk"]
    assert not in_range(text["zh"], 0x3040, 0x30FF)


def test_behaviors_parse_and_resolve(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    news_ids = {row[0] for row in read_tsv(out / "news" / "en.tsv")}
    next_id = 1
    last_train = None
    history_of: dict[str, str] = {}
    users_by_split = {}
    for split in ("train", "dev"):
        rows = read_tsv(out / split / "behaviors.tsv")
        times = []
        for row in rows:
            assert len(row) == 5
            imp_id, user, time, history, impressions = row
            assert int(imp_id) == next_id  # 1-based, continuing from train into dev
            next_id += 1
            assert 1 <= int(user.removeprefix("U")) <= SMALL["num_users"]
            times.append(datetime.strptime(time, "%m/%d/%Y %I:%M:%S %p"))
            assert history_of.setdefault(user, history) == history  # fixed per user
            for nid, lang in map(parse_ref, history.split()):
                assert nid in news_ids and lang in DEFAULT_LANGUAGES
            cands = parse_impressions(impressions)
            assert 5 <= len(cands) <= 20
            labels = [y for _, _, y in cands]
            assert 1 in labels and 0 in labels and set(labels) == {0, 1}
            assert len({nid for nid, _, _ in cands}) == len(cands)
            assert all(nid in news_ids and lang in DEFAULT_LANGUAGES for nid, lang, _ in cands)
        assert times == sorted(times)
        if last_train is not None:
            assert times[0] > last_train
        last_train = times[-1]
        users_by_split[split] = {row[1] for row in rows}
    assert len(users_by_split["train"] & users_by_split["dev"]) > 50


def test_category_oracle_beats_chance_on_dev(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    category = {row[0]: row[1] for row in read_tsv(out / "news" / "en.tsv")}
    rows = []
    for row in read_tsv(out / "dev" / "behaviors.tsv"):
        hist = [category[parse_ref(r)[0]] for r in row[3].split()]
        cands = parse_impressions(row[4])
        scores = [hist.count(category[nid]) / max(len(hist), 1) for nid, _, _ in cands]
        rows.append((scores, [y for _, _, y in cands]))
    assert group_auc(rows) > 0.8


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    args = dict(num_news=60, num_users=25, train_impressions=50, dev_impressions=20)
    generate_corpus(tmp_path / "a", seed=5, **args)
    generate_corpus(tmp_path / "b", seed=5, **args)
    generate_corpus(tmp_path / "c", seed=6, **args)
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert len(files) == len(DEFAULT_LANGUAGES) + 4
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for rel in ("news/en.tsv", "news/zh.tsv", "train/behaviors.tsv", "dev/behaviors.tsv"):
        assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes(), rel


def test_mixed_language_users(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    out, meta = corpus
    users = {row[0]: row for row in read_tsv(out / "users.tsv")}
    refs = user_refs(out)
    mixed = 0
    for user, user_ref in refs.items():
        _, home, second, _ = users[user]
        langs = {lang for _, lang in user_ref}
        assert langs <= {home, second} - {""}
        mixed += len(langs) == 2
    assert mixed > 20
    assert meta["counts"]["bilingual_users"] == sum(row[2] != "" for row in users.values())

    mono = generate_corpus(tmp_path, **{**SMALL, "mixed_language_fraction": 0.0})
    assert mono["counts"]["bilingual_users"] == 0
    for user_ref in user_refs(tmp_path).values():
        assert len({lang for _, lang in user_ref}) == 1


def test_corpus_json_matches_files(corpus: tuple[Path, dict]) -> None:
    out, meta = corpus
    assert json.loads((out / "corpus.json").read_text(encoding="utf-8")) == meta
    assert meta["synthetic"] is True
    assert meta["seed"] == SMALL["seed"]
    assert {k: meta["params"][k] for k in SMALL} == SMALL
    assert list(meta["languages"]) == list(DEFAULT_LANGUAGES)
    assert {"Latn", "Cyrl", "Arab", "Hani"} <= set(meta["scripts"])
    assert meta["categories"] == {cat: list(subs) for cat, subs in CATEGORIES}
    counts = meta["counts"]
    assert counts["news"] == len(read_tsv(out / "news" / "en.tsv"))
    users = read_tsv(out / "users.tsv")
    assert counts["users"] == len(users) == SMALL["num_users"]
    home = {row[0]: row[1] for row in users}
    assert sum(v["home_users"] for v in meta["languages"].values()) == len(users)
    for split in ("train", "dev"):
        rows = read_tsv(out / split / "behaviors.tsv")
        assert counts["impressions"][split] == len(rows)
        per_lang = dict.fromkeys(DEFAULT_LANGUAGES, 0)
        for row in rows:
            per_lang[home[row[1]]] += 1
        assert counts["impressions_per_language"][split] == per_lang
    # Zipf-weighted home languages: high- and low-resource languages, none empty
    home_users = [v["home_users"] for v in meta["languages"].values()]
    assert min(home_users) >= 1 and home_users[0] > 2 * home_users[-1]


def test_tiny_corpora_stay_valid(tmp_path: Path) -> None:
    """Minimal candidate lists, empty histories and one home user per language still work."""
    meta = generate_corpus(
        tmp_path / "a",
        num_news=4,
        num_users=20,
        train_impressions=200,
        dev_impressions=50,
        history_length=(0, 3),
        candidates=(2, 3),
        languages=("en",),
    )
    assert meta["counts"]["bilingual_users"] == 0  # no second language to read
    histories = []
    for split in ("train", "dev"):
        for row in read_tsv(tmp_path / "a" / split / "behaviors.tsv"):
            history = [parse_ref(r)[0] for r in row[3].split()]
            assert len(history) == len(set(history)) <= 3
            histories.append(history)
            cands = parse_impressions(row[4])
            labels = [y for _, _, y in cands]
            assert 2 <= len(cands) <= 3 and 1 in labels and 0 in labels
            assert len({nid for nid, _, _ in cands}) == len(cands)
    assert [] in histories

    meta = generate_corpus(
        tmp_path / "b",
        num_news=5,
        num_users=len(DEFAULT_LANGUAGES),
        train_impressions=20,
        dev_impressions=5,
        history_length=(5, 5),
        candidates=(2, 5),
    )
    assert all(v["home_users"] == 1 for v in meta["languages"].values())
    for row in read_tsv(tmp_path / "b" / "train" / "behaviors.tsv"):  # histories hold all news
        assert sorted(parse_ref(r)[0] for r in row[3].split()) == [f"N{i}" for i in range(1, 6)]


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_corpus(
        tmp_path, num_news=30, num_users=10, train_impressions=30, dev_impressions=10, progress=True
    )
    assert "40/40" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(languages=("en", "xx")), "unknown language"),
        (dict(languages="en"), "sequence of language codes"),
        (dict(languages=()), "must not be empty"),
        (dict(languages=("en", "en")), "duplicates"),
        (dict(num_news=0), "num_news"),
        (dict(num_users=-3), "num_users"),
        (dict(train_impressions=0), "train_impressions"),
        (dict(dev_impressions=1.5), "dev_impressions"),
        (dict(mixed_language_fraction=1.2), "mixed_language_fraction"),
        (dict(mixed_language_fraction=-0.1), "mixed_language_fraction"),
        (dict(history_length=(5, 3)), "history_length"),
        (dict(history_length=(-1, 3)), "history_length"),
        (dict(candidates=(1, 5)), "candidates"),
        (dict(num_news=10, history_length=(0, 5), candidates=(5, 20)), "candidates"),
        (dict(seed=-1), "seed"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_corpus(tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()  # rejected before anything is written
