"""A real multilingual item catalog: Debian's translated package descriptions, in MIND format.

Debian translates package descriptions into some 20 languages by hand, and groups packages into
metapackages (tasks and blends such as `games-strategy`, `science-mathematics`, `task-german`).
That gives what a multilingual recommender needs, all real: items with categories, the same item
in several languages, and baskets of items that belong together. `mlrec data` with
`data.source: debian` fetches apt's package lists and converts them.

Fetching (`fetch_lists`): `apt-get update` with a private `Dir::State::Lists` and `Dir::Cache`
and `Acquire::Languages=<data.debian.languages>`, so the system's own apt state is untouched;
it needs root and the Debian mirrors in the machine's apt sources. The list files are usually
lz4-compressed: `/usr/lib/apt/apt-helper cat-file` reads them. A language code's `_` is written
`%5f` in the file name (`Translation-pt%5fBR`).

Items (`news/<lang>.tsv`, 8 MIND columns; one file per language, xMIND style):
- nid: the package name, the same in every language; a package without a translation into a
  language is absent from that language's file.
- category: the package's Section without its `contrib/`, `non-free/` or `non-free-firmware/`
  prefix.
- subcategory: the first debtags tag (the `Tag:` field, in its sorted order) whose facet names a
  topic (`game::arcade`, `field::mathematics`, `use::learning`, `works-with::audio`), skipping
  facets that describe the build rather than the subject (`role`, `interface`,
  `implemented-in`, `uitoolkit`, `scope`, `suite`, `made-of`, `special`, `x11`); else the
  section.
- title: the first line of `Description-<lang>`; abstract: the long description, its lines
  joined by spaces (the ` .` paragraph breaks too).
- Dropped, not items: libraries, development, debug and documentation packages (sections
  `libs`, `libdevel`, `oldlibs`, `debug`, `doc`, `introspection`; names starting with `lib`,
  which takes a library's tools such as `libfoo-bin` too, `libreoffice*` excepted; names ending
  in `-dev`, `-dbg`, `-dbgsym` or `-doc`); the sections of one programming language's modules
  (`python`, `perl`, `ruby`, `javascript`, `php`, `gnu-r`, `golang`, `rust`, `haskell`,
  `ocaml`, `java`, `lisp`, `cli-mono`: `python3-*`, `r-cran-*`, `node-*` and the like,
  thousands of near-identical library descriptions, with the few programs filed there); and the
  metapackages themselves (sections `metapackages` and `tasks`, or the debtag
  `role::metapackage`), which become sessions.

Sessions (`train/behaviors.tsv`, `dev/behaviors.tsv`, 5 MIND columns; item refs `nid@lang`):
- A basket is a metapackage's Depends + Recommends + Suggests, in that order, each group's first
  alternative that is an item, without duplicates. A basket with at least `MIN_BASKET` (5)
  members in a language gives `sessions_per_basket` sessions in that language.
- Session i of basket B in language L shuffles B's members in L with a generator seeded by
  (seed, B, L, i); the first n_pos = clamp(n // 4, 1, 5) are the clicked items (label 1), the
  next ones, at most `MAX_HISTORY` (50), the history. Each positive gets `NEGATIVES` (4)
  negatives (label 0) drawn from the items in L whose section no member of B has (fewer when
  L has fewer such items; no session when it has none). The impression list is shuffled with the
  same generator. The user id is `B`, the time is empty.
- Package neighbourhoods (`related_sessions` > 0): each item package with the items its
  Depends/Recommends/Suggests name and the items naming it in theirs is one more basket
  (`related:<package>`, MIN_BASKET to MAX_RELATED members) that gives `related_sessions`
  training sessions per language, made as above; these never go to dev, which stays the
  metapackages. With `heldout_items` they lose the dev items too.
- Split: a whole basket goes to dev when the first 8 hex digits of sha1(seed/B) fall below
  `dev_fraction`; all its sessions in every language go there, so dev measures how well the
  model completes groupings it never trained on.
- For cross-lingual transfer (`data.debian.*`): `train_languages` keeps training sessions to
  those languages (e.g. [en]: zero-shot transfer; dev keeps every language); `negatives:
  same-section` draws each session's negatives from its clicked items' own sections, minus the
  basket, instead of from the sections no member has, so a category alone cannot tell them
  apart; `heldout_items` also drops the dev baskets' items from every training session and
  negative pool, so dev items were never seen in training in any language.
Impression ids are consecutive per file, in basket and language order. Same lists and seed give
byte-identical files.

Every record read is accounted for in `corpus.json` (per list file: records = kept + dropped by
reason), with the counts of items per language, sections, baskets and sessions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mlrec.config import DebianCatalogConfig
from mlrec.data.rows import DataError

log = logging.getLogger(__name__)

MIN_BASKET = 5  # members a basket needs in a language to give sessions there
MAX_HISTORY = 50
NEGATIVES = 4  # negatives per positive
APT_HELPER = "/usr/lib/apt/apt-helper"

NON_ITEM_SECTIONS = {"libs", "libdevel", "oldlibs", "debug", "doc", "introspection"}
# modules of one programming language (python3-*, r-cran-*, node-*, ...): libraries too
LANGUAGE_LIBRARY_SECTIONS = {
    "cli-mono",
    "gnu-r",
    "golang",
    "haskell",
    "java",
    "javascript",
    "lisp",
    "ocaml",
    "perl",
    "php",
    "python",
    "ruby",
    "rust",
}
BASKET_SECTIONS = {"metapackages", "tasks"}
NON_ITEM_SUFFIXES = ("-dev", "-dbg", "-dbgsym", "-doc")
NON_TOPIC_FACETS = {
    "role",
    "interface",
    "implemented-in",
    "uitoolkit",
    "scope",
    "suite",
    "made-of",
    "special",
    "x11",
}
_COMPRESSED = (".lz4", ".gz", ".xz", ".zst", ".bz2", ".lzma")
_SECTION_PREFIX = re.compile(r"^(contrib|non-free|non-free-firmware)/")

# Reasons a Packages record is not an item (the keys of corpus.json's `dropped` counts).
LIBRARY = "library, development, debug or documentation package"
BASKET = "metapackage (a basket, not an item)"
DUPLICATE = "package already read from another list"
INCOMPLETE = "no Package or Description-md5 field"
UNUSED = "translation of no kept package"


@dataclass
class Package:
    name: str
    section: str
    md5: str
    tags: list[str] = field(default_factory=list)
    relations: list[list[str]] = field(default_factory=list)  # Depends+Recommends+Suggests

    @property
    def is_basket(self) -> bool:
        return self.section in BASKET_SECTIONS or "role::metapackage" in self.tags

    @property
    def is_library(self) -> bool:
        return (
            self.section in NON_ITEM_SECTIONS
            or self.section in LANGUAGE_LIBRARY_SECTIONS
            or (self.name.startswith("lib") and not self.name.startswith("libreoffice"))
            or self.name.endswith(NON_ITEM_SUFFIXES)
        )

    @property
    def subcategory(self) -> str:
        for tag in self.tags:
            facet, sep, _ = tag.partition("::")
            if sep and facet not in NON_TOPIC_FACETS:
                return tag
        return self.section


@dataclass(frozen=True)
class Item:
    nid: str
    category: str
    subcategory: str
    title: str
    abstract: str


# ---------------------------------------------------------------------------- fetching


def fetch_lists(lists_dir: str | Path, languages: list[str]) -> Path:
    """The folder holding the list files: `lists_dir` itself when it already holds some (for
    example /var/lib/apt/lists), else `lists_dir/lists`, filled by a private `apt-get update`."""
    # absolute: apt-get reads a relative Dir::State::Lists against its own Dir (/), so a
    # relative run_dir had the lists written under /runs/... and found none here
    lists_dir = Path(lists_dir).resolve()
    if list_files(lists_dir)[0]:
        return lists_dir
    if (lists_dir / "fetched.json").is_file():
        return lists_dir / "lists"
    if not shutil.which("apt-get"):
        raise DataError("data.source debian needs apt-get (a Debian or Ubuntu machine)")
    if os.geteuid() != 0:
        raise DataError(
            f"fetching the Debian lists needs root (apt-get update); run `mlrec data` as root, "
            f"or fetch them yourself into {lists_dir} with the command in mlrec/data/debian.py"
        )
    (lists_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (lists_dir / "cache").mkdir(parents=True, exist_ok=True)
    cmd = [
        "apt-get",
        "-q",
        "-o",
        f"Dir::State::Lists={lists_dir / 'lists'}",
        "-o",
        f"Dir::Cache={lists_dir / 'cache'}",
        "-o",
        f"Acquire::Languages={','.join(languages)}",
        "update",
    ]
    log.info("fetching Debian package lists: %s", " ".join(cmd))
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    packages, _ = list_files(lists_dir / "lists")
    if done.returncode or not packages:
        why = done.stderr.strip()[-500:] or "it wrote no Packages file there"
        raise DataError(f"apt-get update into {lists_dir} failed (exit {done.returncode}): {why}")
    (lists_dir / "fetched.json").write_text(
        json.dumps({"languages": languages, "seconds": round(time.perf_counter() - start, 1)})
    )
    return lists_dir / "lists"


def list_files(folder: str | Path) -> tuple[list[Path], dict[str, list[Path]]]:
    """The Packages files and, per language, the Translation files of an apt lists folder."""
    packages, translations = [], {}
    for path in sorted(Path(folder).glob("*")):
        name = unquote(_strip_compression(path.name))
        if not path.is_file():
            continue
        if re.search(r"_binary-[^_]+_Packages$", name):
            packages.append(path)
        elif m := re.search(r"_i18n_Translation-([A-Za-z_]+)$", name):
            translations.setdefault(m.group(1), []).append(path)
    return packages, translations


def _strip_compression(name: str) -> str:
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_lines(path: Path) -> Iterator[str]:
    """Lines of a list file, decompressed by apt-helper when the name says it is compressed."""
    if path.name.endswith(_COMPRESSED):
        proc = subprocess.Popen(
            [APT_HELPER, "cat-file", str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        with proc.stdout:
            yield from proc.stdout
        if proc.wait():
            raise DataError(f"{path}: {APT_HELPER} cat-file failed (exit {proc.returncode})")
    else:
        with open(path, encoding="utf-8") as handle:
            yield from handle


# ---------------------------------------------------------------------------- parsing


def paragraphs(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """RFC 822-style records: `Field: value`, continuation lines kept (with their leading space)
    after a newline, records separated by blank lines. Field names are case-insensitive (lower)."""
    record: dict[str, str] = {}
    key = ""
    for line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            if record:
                yield record
            record, key = {}, ""
        elif line[0] in " \t":
            if key:
                record[key] += "\n" + line
        else:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            record[key] = value.strip()
    if record:
        yield record


def parse_description(text: str) -> tuple[str, str]:
    """(title, abstract) of a Description field: the first line, then the long text with its
    lines and ` .` paragraph breaks joined by spaces (tabs too: TSV cells)."""
    first, _, rest = text.partition("\n")
    long_lines = [ln.strip() for ln in rest.split("\n")]
    words = " ".join(ln for ln in long_lines if ln and ln != ".")
    return _clean(first), _clean(words)


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def parse_relations(record: dict[str, str]) -> list[list[str]]:
    """Depends, Recommends, Suggests as alternative groups of bare package names."""
    groups = []
    for key in ("depends", "recommends", "suggests"):
        for group in record.get(key, "").replace("\n", " ").split(","):
            names = [re.split(r"[\s(:\[]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")]
            if names := [n for n in names if n]:
                groups.append(names)
    return groups


def section(raw: str) -> str:
    return _SECTION_PREFIX.sub("", raw.strip()) or "misc"


def read_packages(paths: list[Path], stats: dict[str, Any]) -> dict[str, Package]:
    """Every package of the Packages files (first list wins for a name read twice)."""
    packages: dict[str, Package] = {}
    for path in paths:
        counts = _file_stats(stats, path)
        for record in paragraphs(read_lines(path)):
            counts["records"] += 1
            name, md5 = record.get("package", ""), record.get("description-md5", "")
            if not name or not md5:
                _drop(counts, INCOMPLETE)
            elif name in packages:
                _drop(counts, DUPLICATE)
            else:
                counts["kept"] += 1
                tags = [t.strip() for t in record.get("tag", "").replace("\n", " ").split(",")]
                packages[name] = Package(
                    name,
                    section(record.get("section", "")),
                    md5,
                    [t for t in tags if t],
                    parse_relations(record),
                )
    return packages


def read_translations(
    paths: list[Path], lang: str, wanted: set[str], stats: dict[str, Any]
) -> dict[str, tuple[str, str]]:
    """Description-md5 -> (title, abstract) in `lang`, for the md5s in `wanted`."""
    out: dict[str, tuple[str, str]] = {}
    for path in paths:
        counts = _file_stats(stats, path)
        for record in paragraphs(read_lines(path)):
            counts["records"] += 1
            md5 = record.get("description-md5", "")
            text = record.get(f"description-{lang.lower()}", "")
            title, abstract = parse_description(text)
            if not md5 or not title:
                _drop(counts, INCOMPLETE)
            elif md5 not in wanted:
                _drop(counts, UNUSED)
            elif md5 in out:
                _drop(counts, DUPLICATE)
            else:
                counts["kept"] += 1
                out[md5] = (title, abstract)
    return out


def _file_stats(stats: dict[str, Any], path: Path) -> dict[str, Any]:
    return stats.setdefault(str(path), {"records": 0, "kept": 0, "dropped": {}})


def _drop(counts: dict[str, Any], reason: str) -> None:
    counts["dropped"][reason] = counts["dropped"].get(reason, 0) + 1


# ---------------------------------------------------------------------------- converting


def build_items(
    packages: dict[str, Package], descriptions: dict[str, dict[str, tuple[str, str]]]
) -> dict[str, dict[str, Item]]:
    """language -> nid -> Item, for every kept package that has a description in that language."""
    items: dict[str, dict[str, Item]] = {}
    for lang, by_md5 in descriptions.items():
        mine = items.setdefault(lang, {})
        for pkg in packages.values():
            if pkg.md5 in by_md5:
                title, abstract = by_md5[pkg.md5]
                mine[pkg.name] = Item(pkg.name, pkg.section, pkg.subcategory, title, abstract)
    return items


def item_packages(packages: dict[str, Package], stats: dict[str, Any]) -> dict[str, Package]:
    """The packages that are catalog items; the others are counted in `stats` by reason."""
    kept = {}
    reasons: Counter[str] = Counter()
    for name, pkg in packages.items():
        if pkg.is_basket:
            reasons[BASKET] += 1
        elif pkg.is_library:
            reasons[LIBRARY] += 1
        else:
            kept[name] = pkg
    stats["packages"] = {"read": len(packages), "items": len(kept), "not items": dict(reasons)}
    return kept


def baskets(packages: dict[str, Package], is_item: set[str]) -> dict[str, list[str]]:
    """Metapackage -> its member items (first item alternative of each group, no duplicates)."""
    out = {}
    for name in sorted(packages):
        pkg = packages[name]
        if not pkg.is_basket:
            continue
        members: list[str] = []
        for group in pkg.relations:
            first = next((n for n in group if n in is_item), None)
            if first and first not in members:
                members.append(first)
        if len(members) >= MIN_BASKET:
            out[name] = members
    return out


RELATED_PREFIX = "related:"  # a package-neighbourhood basket's name (":" is in no package name)
MAX_RELATED = 50  # a neighbourhood with more members is a hub (xdg-utils, ...), not a grouping


def related_baskets(packages: dict[str, Package], is_item: set[str]) -> dict[str, list[str]]:
    """Item package p -> its neighbourhood: p, the items its Depends/Recommends/Suggests name
    (each group's first item alternative) and the items that name p in theirs, without
    duplicates; kept when it has MIN_BASKET to MAX_RELATED members. Training-only baskets
    (`related_sessions`): what a package is installed with, where metapackages say what a
    task is made of."""
    items = {n for n in is_item if n in packages and not packages[n].is_basket}
    forward: dict[str, list[str]] = {}
    reverse: dict[str, list[str]] = {}
    for name in sorted(items):
        for group in packages[name].relations:
            first = next((n for n in group if n in items), None)
            if first and first != name and first not in forward.setdefault(name, []):
                forward[name].append(first)
                reverse.setdefault(first, []).append(name)
    out = {}
    for name in sorted(items):
        members = list(dict.fromkeys([name, *forward.get(name, []), *reverse.get(name, [])]))
        if MIN_BASKET <= len(members) <= MAX_RELATED:
            out[RELATED_PREFIX + name] = members
    return out


@dataclass(frozen=True)
class Session:
    basket: str
    lang: str  # the candidates' language
    history: list[str]
    impressions: list[tuple[str, int]]
    history_lang: str = ""  # a bilingual user's history language ("": lang)

    def row(self, impression_id: int) -> str:
        history = " ".join(f"{n}@{self.history_lang or self.lang}" for n in self.history)
        shown = " ".join(f"{n}@{self.lang}-{label}" for n, label in self.impressions)
        return f"{impression_id}\t{self.basket}\t\t{history}\t{shown}\n"


NEGATIVE_POOLS = ("other-sections", "same-section")


def _is_dev(basket: str, dev_fraction: float, seed: int) -> bool:
    digest = hashlib.sha1(f"{seed}/{basket}".encode()).hexdigest()
    return int(digest[:8], 16) / 16**8 < dev_fraction


def build_sessions(
    members: dict[str, list[str]],
    items: dict[str, dict[str, Item]],
    *,
    sessions_per_basket: int,
    dev_fraction: float,
    seed: int,
    train_languages: list[str] | None = None,
    negatives: str = "other-sections",
    heldout_items: bool = False,
    dev_sessions_per_basket: int = 0,
    bilingual_from: str = "",
    related: dict[str, list[str]] | None = None,
    related_sessions: int = 0,
) -> dict[str, list[Session]]:
    """split -> sessions, by the rules in the module docstring ("dev-bilingual" too, with
    `bilingual_from`; `related_sessions` training sessions per basket of `related`, which never
    go to dev)."""
    split: dict[str, list[Session]] = {"train": [], "dev": []}
    if bilingual_from:
        split["dev-bilingual"] = []
    pools = {  # language -> section -> sorted nids, for negatives
        lang: _by_section(by_nid) for lang, by_nid in items.items()
    }
    dev_baskets = {b for b in members if _is_dev(b, dev_fraction, seed)}
    # the dev baskets' items, kept out of training altogether (heldout_items): dev then asks
    # for items no training session showed, in any language, as a new catalog entry would
    unseen = {n for b in dev_baskets for n in members[b]} if heldout_items else set()
    extra = related if related and related_sessions else {}
    for basket, names in [*members.items(), *extra.items()]:
        dev = basket in dev_baskets
        languages = sorted(items) if dev or not train_languages else sorted(train_languages)
        count = (dev_sessions_per_basket or sessions_per_basket) if dev else sessions_per_basket
        count = related_sessions if basket in extra else count
        for lang in (lang for lang in languages if lang in items):
            present = [n for n in names if n in items[lang] and (dev or n not in unseen)]
            exclude = set() if dev else unseen
            pool_of = _PoolOf(pools[lang], items[lang], set(names), negatives, exclude)
            made = _sessions(basket, lang, present, pool_of, count, seed)
            split["dev" if dev else "train"] += [Session(basket, lang, h, s) for h, s in made]
            if dev and bilingual_from and lang != bilingual_from:
                # the history in the user's own language, the candidates in `lang`: only the
                # members both have, so the two sessions of a basket show the same items
                both = [n for n in present if n in items.get(bilingual_from, {})]
                made = _sessions(basket, f"{lang}<{bilingual_from}", both, pool_of, count, seed)
                split["dev-bilingual"] += [
                    Session(basket, lang, h, shown, history_lang=bilingual_from)
                    for h, shown in made
                ]
    return split


@dataclass(frozen=True)
class _PoolOf:
    """The negative pool of a session in one language (see `_negative_pool`)."""

    by_section: dict[str, list[str]]
    by_nid: dict[str, Item]
    basket: set[str]
    negatives: str
    exclude: set[str]  # items no negative may be (heldout_items: the dev items, in training)

    def __call__(self, present: list[str], positives: list[str]) -> list[str]:
        pool = _negative_pool(
            self.by_section, self.by_nid, self.basket, present, positives, self.negatives
        )
        return [n for n in pool if n not in self.exclude] if self.exclude else pool


def _sessions(
    basket: str, tag: str, present: list[str], pool_of: _PoolOf, count: int, seed: int
) -> list[tuple[list[str], list[tuple[str, int]]]]:
    """(history, shown) of `count` sessions over the basket members `present`, each from a
    generator seeded by (seed, basket, tag, i); none when fewer than MIN_BASKET are present."""
    if len(present) < MIN_BASKET:
        return []
    out = []
    for i in range(count):
        rng = random.Random(f"{seed}/{basket}/{tag}/{i}")
        order = present[:]
        rng.shuffle(order)
        n_pos = min(5, max(1, len(order) // 4))
        positives, history = order[:n_pos], order[n_pos : n_pos + MAX_HISTORY]
        pool = pool_of(present, positives)
        drawn = rng.sample(pool, min(len(pool), NEGATIVES * n_pos))
        if not drawn:
            continue  # no item in this language to serve as a negative
        shown = [(n, 1) for n in positives] + [(n, 0) for n in drawn]
        rng.shuffle(shown)
        out.append((history, shown))
    return out


def _negative_pool(
    by_section: dict[str, list[str]],
    by_nid: dict[str, Item],
    basket: set[str],
    present: list[str],
    positives: list[str],
    negatives: str,
) -> list[str]:
    """The items a session's negatives are drawn from: those of the sections no member has
    (other-sections: a category alone separates them), or those of the clicked items' own
    sections that are not in the basket (same-section: only what the items say separates
    them)."""
    if negatives == "same-section":
        sections = sorted({by_nid[n].category for n in positives})
        return [n for sec in sections for n in by_section[sec] if n not in basket]
    sections = {by_nid[n].category for n in present}
    return [n for sec, nids in by_section.items() if sec not in sections for n in nids]


def _by_section(by_nid: dict[str, Item]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for nid in sorted(by_nid):
        out.setdefault(by_nid[nid].category, []).append(nid)
    return out


def write_corpus(
    root: Path, items: dict[str, dict[str, Item]], sessions: dict[str, list[Session]]
) -> None:
    (root / "news").mkdir(parents=True, exist_ok=True)
    for lang, by_nid in sorted(items.items()):
        with open(root / "news" / f"{lang}.tsv", "w", encoding="utf-8", newline="\n") as fh:
            for nid in sorted(by_nid):
                it = by_nid[nid]
                fh.write(
                    f"{nid}\t{it.category}\t{it.subcategory}\t{it.title}\t{it.abstract}\t\t\t\n"
                )
    for name, rows in sessions.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        with open(root / name / "behaviors.tsv", "w", encoding="utf-8", newline="\n") as fh:
            for i, session in enumerate(rows, start=1):
                fh.write(session.row(i))


def convert(
    lists: str | Path,
    root: str | Path,
    languages: list[str],
    *,
    sessions_per_basket: int = 3,
    dev_fraction: float = 0.1,
    seed: int = 0,
    train_languages: list[str] | None = None,
    negatives: str = "other-sections",
    heldout_items: bool = False,
    dev_sessions_per_basket: int = 0,
    bilingual_from: str = "",
    related_sessions: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Convert an apt lists folder into a MIND-format corpus in `root`; return corpus.json's
    content (also written there)."""
    start = time.perf_counter()
    root = Path(root)
    package_files, translation_files = list_files(lists)
    langs = _translated_languages(lists, languages, package_files, translation_files)
    files: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    packages, kept, descriptions = _read_lists(
        package_files, translation_files, langs, files, stats, progress
    )
    items = {lang: by_nid for lang, by_nid in build_items(kept, descriptions).items() if by_nid}
    with_text = set().union(*(set(by_nid) for by_nid in items.values())) if items else set()
    members = baskets(packages, with_text)
    params: dict[str, Any] = {
        "sessions_per_basket": sessions_per_basket,
        "dev_fraction": dev_fraction,
        "seed": seed,
        "train_languages": list(train_languages or []),
        "negatives": negatives,
        "heldout_items": heldout_items,
        "dev_sessions_per_basket": dev_sessions_per_basket,
        "bilingual_from": bilingual_from,
        "related_sessions": related_sessions,
    }
    related = related_baskets(packages, with_text) if related_sessions else {}
    sessions = build_sessions(members, items, related=related, **params)
    write_corpus(root, items, sessions)
    meta = {
        "source": "debian",
        "lists": str(lists),
        "requested_languages": list(languages),
        **_corpus_counts(items, with_text, members, sessions),
        "related_baskets": len(related),
        "params": {**params, "min_basket": MIN_BASKET, "negatives_per_click": NEGATIVES},
        **stats,
        "files": files,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (root / "corpus.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    return meta


def _translated_languages(
    lists: str | Path,
    languages: list[str],
    package_files: list[Path],
    translation_files: dict[str, list[Path]],
) -> list[str]:
    """The languages of `languages` that have a Translation file (a warning names the others);
    a DataError when there is no Packages file or none of them has one."""
    missing = [lang for lang in languages if lang not in translation_files]
    if not package_files or len(missing) == len(languages):
        raise DataError(
            f"{lists}: no Packages file or no Translation file for {', '.join(languages)}: "
            "fetch the lists first (fetch_lists, or `mlrec data` as root)"
        )
    if missing:
        log.warning("no Translation file for %s in %s", ", ".join(missing), lists)
    return [lang for lang in languages if lang in translation_files]


def _read_lists(
    package_files: list[Path],
    translation_files: dict[str, list[Path]],
    langs: list[str],
    files: dict[str, Any],
    stats: dict[str, Any],
    progress: bool,
) -> tuple[dict[str, Package], dict[str, Package], dict[str, dict[str, tuple[str, str]]]]:
    """All packages, the item packages, and per language their descriptions by md5. Records read
    are counted per list file in `files`, packages that are not items by reason in `stats`."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=1 + len(langs), unit="list", desc="debian lists")
    packages = read_packages(package_files, files)
    if bar is not None:
        bar.update()
    kept = item_packages(packages, stats)
    # Translation files describe libraries and metapackages too: read, counted as unused
    wanted = {p.md5 for p in kept.values()}
    descriptions = {}
    for lang in langs:
        if bar is not None:
            bar.set_postfix_str(lang)
        descriptions[lang] = read_translations(translation_files[lang], lang, wanted, files)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return packages, kept, descriptions


def _corpus_counts(
    items: dict[str, dict[str, Item]],
    with_text: set[str],
    members: dict[str, list[str]],
    sessions: dict[str, list[Session]],
) -> dict[str, Any]:
    """corpus.json's counts of items per language, sections, baskets and sessions."""
    sections = Counter(it.category for by_nid in items.values() for it in by_nid.values())
    return {
        "languages": sorted(items),
        "items": {lang: len(by_nid) for lang, by_nid in sorted(items.items())},
        "distinct_items": len(with_text),
        "sections": dict(sections.most_common()),
        "baskets": len(members),
        "sessions": {name: len(rows) for name, rows in sessions.items()},
        "sessions_by_language": {
            name: dict(Counter(s.lang for s in rows).most_common())
            for name, rows in sessions.items()
        },
    }


def _convert_options(deb: DebianCatalogConfig) -> dict[str, Any]:
    """The section's fields that decide what `convert` writes, as its keyword arguments."""
    return {
        "sessions_per_basket": deb.sessions_per_basket,
        "dev_fraction": deb.dev_fraction,
        "seed": deb.seed,
        "train_languages": list(deb.train_languages),
        "negatives": deb.negatives,
        "heldout_items": deb.heldout_items,
        "dev_sessions_per_basket": deb.dev_sessions_per_basket,
        "bilingual_from": deb.bilingual_from,
        "related_sessions": deb.related_sessions,
    }


def check_catalog(deb: DebianCatalogConfig, root: Path) -> None:
    """A corpus converted before is used only if it was converted with the same options: one
    made with others would be trained and scored under the wrong name."""
    meta = json.loads((root / "corpus.json").read_text())
    recorded = {**meta.get("params", {}), "languages": meta.get("requested_languages")}
    wanted = {**_convert_options(deb), "languages": list(deb.languages)}
    differ = [
        k for k in wanted if k in recorded and recorded[k] is not None and recorded[k] != wanted[k]
    ]
    if differ:
        said = ", ".join(
            f"data.debian.{k}: {recorded[k]!r} there, {wanted[k]!r} now" for k in differ
        )
        raise DataError(
            f"{root / 'corpus.json'}: the corpus there was converted with other options ({said}); "
            "remove that folder to convert again, or give this config its own run_dir"
        )


def prepare_catalog(deb: DebianCatalogConfig, root: Path) -> dict[str, Any]:
    """`mlrec data` for `data.source: debian`: fetch the lists (unless cached) and convert them
    into the corpus folder `root`."""
    lists = fetch_lists(deb.lists_dir or root / "apt-lists", deb.languages)
    meta = convert(lists, root, deb.languages, **_convert_options(deb), progress=True)
    log.info(
        "Debian catalog in %s: %d items in %d languages, %d baskets, %s sessions (%.1f s)",
        root,
        meta["distinct_items"],
        len(meta["languages"]),
        meta["baskets"],
        meta["sessions"],
        meta["seconds"],
    )
    return meta
