"""The Debian catalog: parsing apt lists, joining translations, filtering, sessions; a fetch."""

import json
import os
import shutil
import time

import pytest

from mlrec.data import debian
from mlrec.data.mind import read_behaviors, read_news
from mlrec.data.rows import DataError

PREFIX = "deb.debian.org_debian_dists_bookworm_main"

GAMES = ["arcade-a", "arcade-b", "puzzle-c", "puzzle-d", "strategy-e", "strategy-f"]
EDITORS = ["edit-a", "edit-b", "edit-c", "edit-d", "edit-e", "edit-f"]
SOUND = ["audio-a", "audio-b", "audio-c"]


def _package(name, section, tags="", **relations):
    lines = [f"Package: {name}", "Version: 1.0-1", "Architecture: amd64"]
    lines += [f"{key.title()}: {value}" for key, value in relations.items()]
    lines += [f"Description: {name} in English", f"Description-md5: md5-{name}"]
    if tags:
        lines += ["Tag: " + tags]
    lines += [f"Section: {section}", "Priority: optional"]
    return "\n".join(lines) + "\n"


def _translation(name, lang, title, long=(" First line of the long text,", " continued.")):
    text = "\n".join(long)
    return f"Package: {name}\nDescription-md5: md5-{name}\nDescription-{lang}: {title}\n{text}\n"


def _write_lists(folder):
    """A small apt lists folder: games, editors, sound, libraries, metapackages, 3 languages."""
    packages = [
        _package(n, "games", "game::arcade, interface::x11,\n role::program") for n in GAMES
    ]
    packages += [_package(n, "contrib/editors", "role::program, use::editing") for n in EDITORS]
    packages += [_package(n, "sound", "works-with::audio") for n in SOUND]
    packages += [
        _package("libfoo1", "libs"),
        _package("libfoo-bin", "utils"),  # a library's tools: dropped by name
        _package("libreoffice-writer", "editors"),  # an office suite, not a library
        _package("foo-dev", "devel"),
        _package("foo-doc", "doc"),
        _package("python3-foo", "python"),
        _package("plain-tool", "utils"),  # no tags: subcategory falls back to the section
        _package(
            "games-mix",
            "metapackages",
            "role::metapackage",
            depends="games-tasks (= 5)",
            recommends=", ".join(GAMES[:4]) + ", libfoo1",
            suggests=f"not-a-package | {GAMES[4]}, {GAMES[5]} (>= 1.0), {GAMES[0]}",
        ),
        _package(
            "editors-all",
            "tasks",
            depends="tasksel, " + ", ".join(f"{n}:any" for n in EDITORS),
        ),
        _package("small-task", "tasks", depends=", ".join(SOUND)),  # under MIN_BASKET members
    ]
    (folder / f"{PREFIX}_binary-amd64_Packages").write_text("\n".join(packages))
    everything = GAMES + EDITORS + SOUND + ["libfoo1", "libfoo-bin", "foo-dev", "plain-tool"]
    everything.append("libreoffice-writer")
    en = [_translation(n, "en", f"{n} in English") for n in everything]
    en.append("Package: broken\nDescription-en: no md5 field\n")
    (folder / f"{PREFIX}_i18n_Translation-en").write_text("\n".join(en))
    de = [_translation(n, "de", f"{n} auf Deutsch") for n in GAMES + EDITORS[:3]]
    (folder / f"{PREFIX}_i18n_Translation-de").write_text("\n".join(de))
    pt = [
        _translation(n, "pt_BR", f"{n} em português", (" Um.", " .", " Dois\tcom tab."))
        for n in GAMES + SOUND
    ]
    (folder / f"{PREFIX}_i18n_Translation-pt%5fBR").write_text("\n".join(pt))


def _convert(tmp_path, **kwargs):
    lists = tmp_path / "lists"
    lists.mkdir()
    _write_lists(lists)
    root = tmp_path / "corpus"
    kwargs = {"sessions_per_basket": 2, "dev_fraction": 0.5, "seed": 0, **kwargs}
    meta = debian.convert(lists, root, ["en", "de", "pt_BR", "ja"], **kwargs)
    return root, meta


def test_paragraphs_and_descriptions():
    text = (
        "Package: a\nTag: x::y,\n z::w\n\n\nPackage: b\nDescription-de: Titel\n Eins\n .\n Zwei\n"
    )
    records = list(debian.paragraphs(text.splitlines(keepends=True)))
    assert records == [
        {"package": "a", "tag": "x::y,\n z::w"},
        {"package": "b", "description-de": "Titel\n Eins\n .\n Zwei"},
    ]
    assert debian.parse_description(records[1]["description-de"]) == ("Titel", "Eins Zwei")
    relations = debian.parse_relations(
        {"depends": "a (>= 1), b:any | c", "suggests": "d [amd64],\n e"}
    )
    assert relations == [["a"], ["b", "c"], ["d"], ["e"]]


def test_list_files_unquote_language_names(tmp_path):
    _write_lists(tmp_path)
    (tmp_path / "partial").mkdir()
    packages, translations = debian.list_files(tmp_path)
    assert [p.name for p in packages] == [f"{PREFIX}_binary-amd64_Packages"]
    assert sorted(translations) == ["de", "en", "pt_BR"]


def test_items_join_translations_by_md5_and_drop_libraries(tmp_path):
    root, meta = _convert(tmp_path)
    news = {
        lang: {it.nid: it for it in read_news(root / "news" / f"{lang}.tsv", lang)}
        for lang in ("en", "de", "pt_BR")
    }
    kept = set(GAMES + EDITORS + SOUND + ["plain-tool", "libreoffice-writer"])
    assert set(news["en"]) == kept  # no lib*, -dev, -doc, python module, metapackage
    assert set(news["de"]) == set(GAMES + EDITORS[:3])  # absent where untranslated
    assert set(news["pt_BR"]) == set(GAMES + SOUND)
    assert not (root / "news" / "ja.tsv").exists()  # asked for, but no Translation file
    arcade = news["de"]["arcade-a"]
    assert (arcade.category, arcade.subcategory) == ("games", "game::arcade")
    assert arcade.title == "arcade-a auf Deutsch"
    assert arcade.abstract == "First line of the long text, continued."
    assert news["pt_BR"]["puzzle-c"].abstract == "Um. Dois com tab."
    editor = news["en"]["edit-a"]
    assert (editor.category, editor.subcategory) == ("editors", "use::editing")  # contrib/ gone
    assert news["en"]["plain-tool"].subcategory == "utils"
    assert meta["items"] == {"de": 9, "en": 17, "pt_BR": 9}
    assert meta["packages"]["not items"] == {debian.LIBRARY: 5, debian.BASKET: 3}
    for counts in meta["files"].values():  # every record read is kept or dropped with a reason
        assert counts["records"] == counts["kept"] + sum(counts["dropped"].values())
    en_counts = next(c for p, c in meta["files"].items() if p.endswith("Translation-en"))
    assert en_counts["dropped"] == {debian.INCOMPLETE: 1, debian.UNUSED: 3}


def test_sessions_are_per_language_baskets(tmp_path):
    root, meta = _convert(tmp_path, dev_fraction=0.01)
    assert meta["baskets"] == 2  # small-task has 3 members: too few
    rows = [imp for _, imp in read_behaviors(root / "train" / "behaviors.tsv", "en")]
    news_en = {it.nid: it for it in read_news(root / "news" / "en.tsv", "en")}
    # games-mix: en, de, pt_BR; editors-all: en only (3 German members are too few); 2 draws each
    assert sorted((imp.user, imp.lang) for imp in rows) == sorted(
        [("games-mix", lang) for lang in ("de", "en", "pt_BR") for _ in range(2)]
        + [("editors-all", "en")] * 2
    )
    assert meta["sessions"] == {"train": 8, "dev": 0}
    for imp in rows:
        basket = set(GAMES if imp.user == "games-mix" else EDITORS)
        langs = {lang for _, lang in imp.history + imp.candidates}
        assert langs == {imp.lang}
        shown = list(zip(imp.candidates, imp.labels, strict=True))
        positives = {nid for (nid, _), label in shown if label}
        negatives = {nid for (nid, _), label in shown if not label}
        history = {nid for nid, _ in imp.history}
        assert positives and positives <= basket and history <= basket
        assert not positives & history
        assert len(history) + len(positives) == len(basket)
        # negatives: other sections only (en: 11 such items; de: 3 editors; pt_BR: 3 sound)
        sections = {news_en[n].category for n in basket}
        assert negatives and not {news_en[n].category for n in negatives} & sections
        expected = debian.NEGATIVES * len(positives) if imp.lang == "en" else 3
        assert len(negatives) == expected
    assert {imp.impression_id for imp in rows} == set(range(1, 9))


def test_split_by_basket_and_deterministic(tmp_path):
    first = tmp_path / "a"
    first.mkdir()
    root, _ = _convert(first, dev_fraction=0.5, seed=3)
    second = tmp_path / "b"
    second.mkdir()
    again, _ = _convert(second, dev_fraction=0.5, seed=3)
    for rel in ("train/behaviors.tsv", "dev/behaviors.tsv", "news/en.tsv", "news/de.tsv"):
        assert (root / rel).read_bytes() == (again / rel).read_bytes()
    users = {
        split: {imp.user for _, imp in read_behaviors(root / split / "behaviors.tsv", "en")}
        for split in ("train", "dev")
    }
    assert users["train"] and users["dev"] and not users["train"] & users["dev"]
    assert users["train"] | users["dev"] == {"games-mix", "editors-all"}


def test_missing_lists_is_an_error(tmp_path):
    with pytest.raises(DataError, match="fetch the lists first"):
        debian.convert(tmp_path, tmp_path / "corpus", ["en"])


def test_data_stage_converts_an_existing_lists_folder(tmp_path):
    from mlrec import pipeline
    from mlrec.config import load_config
    from mlrec.data.corpus import news_files

    lists = tmp_path / "lists"
    lists.mkdir()
    _write_lists(lists)
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            "data.source=debian",
            f"data.debian.lists_dir={lists}",
            "data.debian.languages=[en, de]",
        ],
    )
    root = pipeline.data(cfg)
    assert json.loads((root / "corpus.json").read_text())["languages"] == ["de", "en"]
    assert sorted(news_files(cfg.data, root)) == ["de", "en"]
    assert (root / "train" / "behaviors.tsv").is_file()


FAKE_APT_GET = """#!/bin/sh
# records its arguments, then writes a Packages list where Dir::State::Lists points
for arg in "$@"; do echo "$arg" >> "$APT_ARGS"; done
for arg in "$@"; do
  case "$arg" in Dir::State::Lists=*) lists="${arg#Dir::State::Lists=}" ;; esac
done
mkdir -p "$lists" && cp "$PACKAGES" "$lists/"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="fetch_lists refuses to run apt-get unless root")
def test_a_relative_lists_dir_reaches_apt_get_as_an_absolute_path(tmp_path, monkeypatch):
    """apt-get reads a relative Dir::State::Lists against its own root (/): with a relative
    run_dir the lists went under /runs/... and mlrec found none ("failed (exit 0)")."""
    source = tmp_path / "source"
    source.mkdir()
    _write_lists(source)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(FAKE_APT_GET)
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("APT_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("PACKAGES", str(source / f"{PREFIX}_binary-amd64_Packages"))
    monkeypatch.chdir(tmp_path)
    lists = debian.fetch_lists("run/apt-lists", ["en"])
    given = [a for a in (tmp_path / "args").read_text().splitlines() if "Dir::State" in a]
    assert given == [f"Dir::State::Lists={tmp_path / 'run' / 'apt-lists' / 'lists'}"]
    assert lists == tmp_path / "run" / "apt-lists" / "lists"
    assert debian.list_files(lists)[0]


@pytest.mark.fetch
def test_real_debian_catalog(tmp_path):
    """Fetch the real lists, convert them, check real figures; then shard and train a little."""
    import os

    from mlrec import pipeline
    from tests.conftest import tiny_config

    if not shutil.which("apt-get") or not os.path.exists(debian.APT_HELPER):
        pytest.skip("needs apt-get and apt-helper (a Debian or Ubuntu machine)")
    if os.geteuid() != 0:
        pytest.skip("apt-get update into a private folder needs root")
    start = time.perf_counter()
    try:
        lists = debian.fetch_lists(tmp_path / "apt", debian_languages())
    except DataError as err:
        pytest.skip(f"fetching the Debian lists failed (no network?): {err}")
    meta = debian.convert(lists, tmp_path / "corpus", debian_languages())
    seconds = time.perf_counter() - start
    assert len(meta["languages"]) >= 10, meta["items"]
    assert {"games", "sound", "graphics", "science", "mail"} <= set(meta["sections"])
    assert sum(meta["sessions"].values()) >= 100 and meta["sessions"]["dev"] > 0
    news = {
        lang: {it.nid: it for it in read_news(tmp_path / "corpus" / "news" / f"{lang}.tsv", lang)}
        for lang in ("en", "de", "ja")
    }
    shared = set(news["en"]) & set(news["de"]) & set(news["ja"])
    assert len(shared) > 500  # the same package, described in three languages
    nid = "0ad" if "0ad" in shared else sorted(shared)[0]
    assert len({news[lang][nid].category for lang in news}) == 1
    assert len({news[lang][nid].title for lang in news}) == 3
    if seconds > 30:
        return  # a slow mirror: leave out sharding and training to keep the test short
    # shard and train on three mid-sized languages of the same lists (a smaller item table)
    small = debian.convert(lists, tmp_path / "small", ["ja", "uk", "pt_BR"])
    cfg = tiny_config(
        tmp_path / "run",
        "data.source=debian",
        f"data.dir={tmp_path / 'small'}",
        "data.debian.languages=[ja, uk, pt_BR]",
        "data.shard_max_samples=1000",
    )
    pipeline.shard(cfg)
    metrics = pipeline.train(cfg)
    assert metrics["overall"]["impressions"] == small["sessions"]["dev"]
    assert set(metrics["by_language"]) <= {"ja", "uk", "pt_BR"}
    assert 0.0 <= metrics["overall"]["auc"] <= 1.0


def debian_languages():
    from mlrec.config import DEBIAN_LANGUAGES

    return list(DEBIAN_LANGUAGES)


def test_transfer_options_english_training_hard_negatives_unseen_items(tmp_path):
    """data.debian.train_languages, negatives=same-section and heldout_items, for a zero-shot
    transfer benchmark: English-only training, negatives a category cannot rule out, and dev
    items no training session showed."""
    lists = tmp_path / "lists"
    lists.mkdir()
    _write_lists(lists)
    spare = ["arcade-z", "puzzle-z"]  # games in no basket: same-section negatives for games-mix
    with (lists / f"{PREFIX}_binary-amd64_Packages").open("a") as out:
        out.write("\n" + "\n".join(_package(n, "games", "game::arcade") for n in spare))
    for lang, files in (("en", "Translation-en"), ("de", "Translation-de")):
        with (lists / f"{PREFIX}_i18n_{files}").open("a") as out:
            out.write("\n" + "\n".join(_translation(n, lang, f"{n} ({lang})") for n in spare))
    root = tmp_path / "corpus"
    meta = debian.convert(
        lists,
        root,
        ["en", "de", "pt_BR", "ja"],
        sessions_per_basket=2,
        dev_fraction=0.5,
        seed=0,  # games-mix goes to dev, editors-all to train
        train_languages=["en"],
        negatives="same-section",
        heldout_items=True,
    )
    assert meta["params"]["negatives"] == "same-section"
    news_en = {it.nid: it for it in read_news(root / "news" / "en.tsv", "en")}
    train = [imp for _, imp in read_behaviors(root / "train" / "behaviors.tsv", "en")]
    dev = [imp for _, imp in read_behaviors(root / "dev" / "behaviors.tsv", "en")]
    assert train and dev
    assert {imp.lang for imp in train} == {"en"}  # training: English only
    assert len({imp.lang for imp in dev}) > 1  # dev: every language with a basket
    dev_items = {nid for imp in dev for nid, _ in imp.history + imp.candidates}
    train_items = {nid for imp in train for nid, _ in imp.history + imp.candidates}
    assert not dev_items & train_items  # held out in every language
    for imp in dev + train:
        shown = list(zip(imp.candidates, imp.labels, strict=True))
        clicked = {news_en[nid].category for (nid, _), label in shown if label}
        negatives = [nid for (nid, _), label in shown if not label]
        basket = {nid for nid, _ in imp.history} | {nid for (nid, _), y in shown if y}
        assert negatives and {news_en[n].category for n in negatives} <= clicked
        assert not set(negatives) & basket


def test_bilingual_users_and_more_dev_sessions(tmp_path):
    """data.debian.bilingual_from: dev users whose history is in English and whose candidates
    are in another language (xMIND's mixed setting), in a dev set of their own; and
    dev_sessions_per_basket: more dev sessions from the same held-out baskets, training as
    before."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "mixed").mkdir()
    _, plain = _convert(tmp_path / "plain")
    root, meta = _convert(tmp_path / "mixed", dev_sessions_per_basket=5, bilingual_from="en")
    assert meta["sessions"]["train"] == plain["sessions"]["train"]
    # seed 0, dev_fraction 0.5: games-mix is the dev basket, in en, de and pt_BR
    assert plain["sessions"]["dev"] == 3 * 2 and meta["sessions"]["dev"] == 3 * 5
    assert (root / "train/behaviors.tsv").read_bytes() == (
        tmp_path / "plain/corpus/train/behaviors.tsv"
    ).read_bytes()
    mixed = [imp for _, imp in read_behaviors(root / "dev-bilingual" / "behaviors.tsv", "en")]
    assert sorted({imp.lang for imp in mixed}) == ["de", "pt_BR"] and len(mixed) == 2 * 5
    for imp in mixed:
        assert {lang for _, lang in imp.history} == {"en"}
        assert {lang for _, lang in imp.candidates} == {imp.lang}
        assert not {n for n, _ in imp.history} & {n for n, _ in imp.candidates}


def test_a_corpus_converted_with_other_options_is_refused(tmp_path):
    """The corpus folder is reused when it exists; one converted with other data.debian options
    was trained and scored as if it were the new one."""
    from mlrec import pipeline
    from mlrec.config import load_config

    lists = tmp_path / "lists"
    lists.mkdir()
    _write_lists(lists)
    base = [f"run_dir={tmp_path / 'run'}", "data.source=debian", f"data.debian.lists_dir={lists}"]
    pipeline.data(load_config(None, base))
    pipeline.data(load_config(None, base))  # the same options: reused
    with pytest.raises(DataError, match=r"data.debian.negatives: 'other-sections' there"):
        pipeline.data(load_config(None, [*base, "data.debian.negatives=same-section"]))
    with pytest.raises(DataError, match="data.debian.languages"):
        pipeline.data(load_config(None, [*base, "data.debian.languages=[en, de]"]))


def test_package_neighbourhoods_add_training_sessions_only(tmp_path):
    """data.debian.related_sessions: each item package with what it depends on, recommends or
    suggests and what names it is one more training basket; dev stays the metapackages, and
    with heldout_items no dev item enters them. Off (0), the corpus is as before."""
    lists = tmp_path / "lists"
    lists.mkdir()
    _write_lists(lists)
    with (lists / f"{PREFIX}_binary-amd64_Packages").open("a") as out:
        # hub-tool's neighbourhood: itself, edit-a, edit-b, audio-a, audio-b, arcade-a (6);
        # arcade-a's would be 2 (itself and hub-tool), too small; libfoo1 is no item
        out.write(
            "\n"
            + _package(
                "hub-tool",
                "utils",
                recommends="edit-a, edit-b, libfoo1",
                suggests="audio-a | edit-c, audio-b, arcade-a",
            )
        )
    with (lists / f"{PREFIX}_i18n_Translation-en").open("a") as out:
        out.write("\n" + _translation("hub-tool", "en", "hub-tool in English"))
    common = {"sessions_per_basket": 2, "dev_fraction": 0.5, "seed": 0, "train_languages": ["en"]}
    common["negatives"] = "same-section"  # the neighbourhood spans every section there is
    plain = debian.convert(lists, tmp_path / "plain", ["en", "de", "pt_BR"], **common)
    root = tmp_path / "related"
    meta = debian.convert(lists, root, ["en", "de", "pt_BR"], related_sessions=3, **common)
    assert meta["related_baskets"] == 1 and meta["params"]["related_sessions"] == 3
    train = [imp for _, imp in read_behaviors(root / "train" / "behaviors.tsv", "en")]
    related = [imp for imp in train if imp.user == "related:hub-tool"]
    assert len(related) == 3 and {imp.lang for imp in related} == {"en"}
    hood = {"hub-tool", "edit-a", "edit-b", "audio-a", "audio-b", "arcade-a"}
    for imp in related:
        shown = {nid for (nid, _), label in zip(imp.candidates, imp.labels, strict=True) if label}
        assert shown | {nid for nid, _ in imp.history} <= hood
    assert meta["sessions"]["train"] == plain["sessions"]["train"] + 3
    assert (root / "dev/behaviors.tsv").read_bytes() == (
        tmp_path / "plain/dev/behaviors.tsv"
    ).read_bytes()
    # games-mix is the dev basket at seed 0: with heldout_items, arcade-a leaves hub-tool's
    # neighbourhood, which keeps 5 members without it
    assert all("arcade-a" in {nid for nid, _ in imp.history + imp.candidates} for imp in related)
    held = debian.convert(
        lists,
        tmp_path / "held",
        ["en", "de", "pt_BR"],
        related_sessions=3,
        heldout_items=True,
        **common,
    )
    held_train = [imp for _, imp in read_behaviors(tmp_path / "held/train/behaviors.tsv", "en")]
    held_related = [imp for imp in held_train if imp.user == "related:hub-tool"]
    assert held["related_baskets"] == 1 and len(held_related) == 3
    assert not any(
        "arcade-a" in {n for n, _ in imp.history + imp.candidates} for imp in held_related
    )
