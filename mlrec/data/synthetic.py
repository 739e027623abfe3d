"""A seeded synthetic multilingual news-recommendation corpus in MIND/xMIND format.

Real MIND/xMIND data cannot be downloaded everywhere mlrec runs (CI, air-gapped clusters), yet
every stage (tokenisation, sharding, training, evaluation) needs a corpus that looks like it:
many scripts, parallel translations sharing news ids, users who read more than one language,
and clicks that depend on the text so a model that reads it beats chance.

The corpus is built from a concept lexicon. Each category and subcategory owns a set of concept
ids and ~100 "function" concepts are shared. Every concept has one surface word per language,
made from that language's script (syllables with language-flavoured letters for Latin and
Cyrillic, Arabic letters, CJK ideographs, kana and kanji, Hangul). A news item is a concept
sequence and each language lexicalises the SAME sequence, so translations are aligned. Users
prefer 1-3 categories; their clicks follow those preferences, so news text predicts clicks.

Files written under ``out_dir``::

    news/<lang>.tsv       nid, category, subcategory, title, abstract, url, title_entities,
                          abstract_entities (8 columns, no header, same ids and order per language)
    train/behaviors.tsv   impression_id, user_id, time, history, impressions (5 columns, no header)
    dev/behaviors.tsv     same; impression ids continue after train's, times are later
    users.tsv             user_id, home_language, second_language ("" if monolingual),
                          preferred categories as "cat:weight,cat:weight" (the generator's truth)
    corpus.json           metadata: languages and scripts, counts, categories, parameters

Item refs are ``<nid>@<lang>`` (e.g. ``N17@ru``, mlrec's extension of MIND) so one behaviors
file can mix languages; impressions are ``<ref>-1`` (clicked) / ``<ref>-0``. Train times cover
11/9-11/14/2019 and dev times 11/15/2019 (as in MIND), ascending in each file. Each user's
history is fixed (the same in every row of that user, as in MIND); it is empty only when
``history_length`` allows 0. Same arguments give byte-identical files: every random draw comes
from ``numpy.random.default_rng`` streams derived from ``seed``, and nothing depends on hash or
set ordering.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np

from mlrec.languages import DEFAULT_LANGUAGES, LANGUAGE_SCRIPTS, SUPPORTED_LANGUAGES

__all__ = ["CATEGORIES", "generate_corpus"]


# MIND-style English category and subcategory ids (subcategory ids are unique corpus-wide).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("news", ("politics", "world", "crime", "science")),
    ("sports", ("football", "basketball", "tennis", "baseball")),
    ("finance", ("markets", "companies", "personalfinance")),
    ("lifestyle", ("fashion", "relationships", "homeandgarden")),
    ("health", ("fitness", "nutrition", "medical")),
    ("foodanddrink", ("recipes", "restaurants", "wine")),
    ("travel", ("destinations", "traveltips")),
    ("autos", ("cars", "electricvehicles", "motorsports")),
    ("weather", ("forecast", "storms")),
    ("entertainment", ("celebrity", "awards", "gaming")),
    ("music", ("pop", "rock", "classical")),
    ("movies", ("reviews", "boxoffice")),
    ("tv", ("series", "reality", "talkshows")),
    ("technology", ("ai", "gadgets", "cybersecurity", "startups")),
)

_NUM_FUNCTION_CONCEPTS = 100
_CATEGORY_CONCEPTS = (30, 60)  # inclusive range of concepts per category
_SUBCATEGORY_CONCEPTS = (10, 20)  # inclusive range of concepts per subcategory
_TITLE_WORDS = (6, 12)
_ABSTRACT_WORDS = (15, 35)
# Probabilities of (subcategory, category, function) concepts per word; the rest is noise drawn
# from any content concept, so categories overlap a little in vocabulary.
_TITLE_MIX = (0.35, 0.35, 0.25)
_ABSTRACT_MIX = (0.25, 0.30, 0.40)
_CATEGORY_SKEW = 5.0  # Dirichlet concentration of news-per-category shares (lower: more skewed)
_HISTORY_PREFERRED = 0.85  # share of history clicks from the user's preferred categories
_POSITIVE_PREFERRED = 0.90  # share of impression clicks from preferred categories
_SECOND_LANGUAGE_SHARE = 0.30  # share of a bilingual user's refs in the second language
_LANGUAGE_ZIPF = 1.0  # home-language weight of the i-th listed language is 1 / (i + 1) ** this
_TRAIN_START = datetime(2019, 11, 9)  # MIND's train week is Nov 9-14 2019, dev is Nov 15
_TRAIN_SECONDS = 6 * 86400
_DEV_SECONDS = 86400
_CHUNK = 4096  # impressions drawn per vectorised batch while streaming
_UNSPACED = frozenset({"zh", "ja"})  # languages written without spaces between words
_CASED = frozenset({"Latn", "Cyrl"})  # scripts whose titles and sentences start capitalised

# Syllable inventories (onsets, vowels, codas) with each language's flavour letters.
_SYLLABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "en": (
        tuple("bcdfghjklmnprstvwyz")
        + (
            "br",
            "cr",
            "dr",
            "fr",
            "gr",
            "pr",
            "tr",
            "st",
            "sp",
            "sl",
            "bl",
            "cl",
            "fl",
            "pl",
            "th",
            "sh",
            "ch",
            "wh",
        ),
        ("a", "e", "i", "o", "u", "ea", "ee", "oo", "ou", "ai", "oa"),
        ("n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng", "rt", "x"),
    ),
    "de": (
        tuple("bdfghklmnprstwz") + ("sch", "st", "sp", "schw", "kr", "tr", "pf", "br", "gr"),
        ("a", "e", "i", "o", "u", "ä", "ö", "ü", "ei", "au", "eu", "ie"),
        ("n", "r", "s", "t", "ch", "ck", "ng", "tz", "ß", "rt", "nd", "lt", "mm"),
    ),
    "fr": (
        tuple("bcdfgjlmnprstv") + ("ch", "qu", "gr", "tr", "pr", "bl", "cr", "fl"),
        ("a", "e", "i", "o", "u", "é", "è", "ê", "ou", "eau", "ai", "oi", "au", "à", "ô"),
        ("n", "r", "s", "t", "x", "nt", "rs", "lle", "ç", "gne"),
    ),
    "es": (
        tuple("bcdfgjlmnprstv") + ("ll", "ñ", "ch", "br", "tr", "pr", "cr", "gr"),
        ("a", "e", "i", "o", "u", "á", "é", "í", "ó", "ú", "ue", "ie"),
        ("n", "s", "r", "l", "z", "d"),
    ),
    "it": (
        tuple("bcdfglmnprstvz") + ("gn", "gl", "sc", "ch", "tr", "pr", "st", "zz", "cc"),
        ("a", "e", "i", "o", "u", "à", "è", "ò", "ì", "io", "ia", "uo"),
        ("n", "l", "r"),
    ),
    "pt": (
        tuple("bcdfgjlmnprstv") + ("lh", "nh", "ch", "br", "tr", "pr", "gr"),
        ("a", "e", "i", "o", "u", "ã", "õ", "á", "é", "ê", "ô", "ão", "ç"),
        ("s", "r", "m", "l", "z"),
    ),
    "pl": (
        tuple("bcdgklłmnprstwz") + ("sz", "cz", "rz", "ż", "ś", "ź", "ć", "dz", "prz", "chw"),
        ("a", "e", "i", "o", "u", "y", "ą", "ę", "ó", "ie", "ia"),
        ("k", "ł", "ń", "sz", "ć", "m", "n", "ść", "ż", "j"),
    ),
    "ru": (
        tuple("бвгджзклмнпрстфхцчшщ") + ("бр", "пр", "ст", "тр", "кр", "зв", "сл", "гр"),
        tuple("аеиоуыэюяё") + ("ая", "ие"),
        ("н", "р", "с", "т", "й", "к", "л", "в", "ть", "нь", "сть", "ль", "ж"),
    ),
    "uk": (
        tuple("бвгґджзклмнпрстфхцчшщ") + ("тр", "пр", "ст", "кр", "зв", "сл", "гр"),
        tuple("аеиіїєоуюя") + ("ія", "ою"),
        ("н", "р", "с", "т", "й", "к", "в", "ць", "нь", "ль", "ть", "ч"),
    ),
}
_ARABIC_CONSONANTS = tuple("بتثجحخدذرزسشصضطظعغفقكلمنهوي")
_ARABIC_LONG_VOWELS = tuple("اوي")
_ARABIC_FUNCTION_LETTERS = tuple("فمنعليكبو")
_HIRAGANA = tuple(
    "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
    "がぎぐげござじずぜぞだでどばびぶべぼ"
)
_KATAKANA = tuple(
    "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン"
    "ガギグゲゴザジズゼゾダデドバビブベボパピプペポ"
)
_CJK_FIRST, _CJK_LAST = 0x4E00, 0x9FA5  # CJK Unified Ideographs (basic block)
_HANGUL_FIRST, _HANGUL_LAST = 0xAC00, 0xD7A3  # precomposed Hangul syllables
_HAN_POOL = {"zh": 3000, "ja": 1500}  # distinct ideographs each language draws its words from


class _Uniforms:
    """Buffered uniform draws: one numpy call per 4096 values keeps word generation fast."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf: list[float] = []
        self._pos = 0

    def index(self, n: int) -> int:
        """A uniform integer in [0, n)."""
        if self._pos == len(self._buf):
            self._buf = self._rng.random(4096).tolist()
            self._pos = 0
        value = self._buf[self._pos]
        self._pos += 1
        return int(value * n)

    def pick(self, options: Sequence[str]) -> str:
        return options[self.index(len(options))]

    def chance(self, p: float) -> bool:
        return self.index(1_000_000) < p * 1_000_000


def _syllable_word(u: _Uniforms, lang: str, syllables: int) -> str:
    onsets, vowels, codas = _SYLLABLES[lang]
    parts = []
    for i in range(syllables):
        if i > 0 or u.chance(0.85):
            parts.append(u.pick(onsets))
        parts.append(u.pick(vowels))
        if u.chance(0.55 if i == syllables - 1 else 0.2):
            parts.append(u.pick(codas))
    return "".join(parts)


def _arabic_word(u: _Uniforms, function: bool) -> str:
    if function:
        return "".join(u.pick(_ARABIC_FUNCTION_LETTERS) for _ in range(1 + u.index(3)))
    letters = []
    for _ in range(3 + u.index(3)):
        letters.append(u.pick(_ARABIC_CONSONANTS))
        if u.chance(0.3):
            letters.append(u.pick(_ARABIC_LONG_VOWELS))
    word = "".join(letters)
    if u.chance(0.15):
        word += "ة"
    return "ال" + word if u.chance(0.3) else word


def _japanese_word(u: _Uniforms, function: bool, kanji: Sequence[str]) -> str:
    if function:
        return "".join(u.pick(_HIRAGANA) for _ in range(1 + u.index(2)))
    kind = u.index(20)
    if kind < 9:  # kanji compound
        return "".join(u.pick(kanji) for _ in range(2))
    if kind < 13:  # kanji stem + okurigana
        return u.pick(kanji) + "".join(u.pick(_HIRAGANA) for _ in range(1 + u.index(2)))
    word = "".join(u.pick(_KATAKANA) for _ in range(2 + u.index(3)))  # loanword
    return word + "ー" if u.chance(0.25) else word


def _word_maker(lang: str, u: _Uniforms) -> Callable[[bool], str]:
    """The function making one candidate word (function or content) in ``lang``'s script."""
    if lang in _SYLLABLES:
        # function words: 1-2 syllables; content words: 1 (10%), 2 (50%) or 3 (40%)
        return lambda function: _syllable_word(
            u, lang, 1 + u.index(2) if function else (1, 2, 2, 2, 2, 2, 3, 3, 3, 3)[u.index(10)]
        )
    if lang == "ar":
        return lambda function: _arabic_word(u, function)
    if lang == "ko":
        return lambda function: "".join(
            chr(_HANGUL_FIRST + u.index(_HANGUL_LAST - _HANGUL_FIRST + 1))
            for _ in range(1 if function else 2 + u.index(2))
        )
    pool = [chr(_CJK_FIRST + u.index(_CJK_LAST - _CJK_FIRST + 1)) for _ in range(_HAN_POOL[lang])]
    if lang == "ja":
        return lambda function: _japanese_word(u, function, pool)
    return lambda function: "".join(
        u.pick(pool) for _ in range(1 if function or u.chance(0.15) else 2)
    )


def _lexicon(seed: int, lang: str, num_function: int, num_concepts: int) -> list[str]:
    """One distinct word per concept; depends only on (seed, lang), not on the other languages."""
    u = _Uniforms(np.random.default_rng([seed, 1000 + SUPPORTED_LANGUAGES.index(lang)]))
    make = _word_maker(lang, u)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < num_concepts:
        word = make(len(words) < num_function)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class _Concepts:
    """Concept id layout: function concepts first, then each category's, then each subcategory's."""

    def __init__(self, rng: np.random.Generator) -> None:
        subcats = [len(subs) for _, subs in CATEGORIES]
        cat_sizes = rng.integers(_CATEGORY_CONCEPTS[0], _CATEGORY_CONCEPTS[1] + 1, len(CATEGORIES))
        sub_sizes = rng.integers(
            _SUBCATEGORY_CONCEPTS[0], _SUBCATEGORY_CONCEPTS[1] + 1, sum(subcats)
        )
        self.num_function = _NUM_FUNCTION_CONCEPTS
        self.cat_start = self.num_function + np.concatenate([[0], np.cumsum(cat_sizes)[:-1]])
        self.cat_size = cat_sizes
        sub_base = self.num_function + int(cat_sizes.sum())
        self.sub_start = sub_base + np.concatenate([[0], np.cumsum(sub_sizes)[:-1]])
        self.sub_size = sub_sizes
        self.total = sub_base + int(sub_sizes.sum())
        # global subcategory index of each category's first subcategory
        self.first_sub = np.concatenate([[0], np.cumsum(subcats)[:-1]])
        self.num_subs = np.array(subcats)

    def sequence(
        self,
        rng: np.random.Generator,
        cat: int,
        sub: int,
        length: int,
        mix: tuple[float, float, float],
    ) -> np.ndarray:
        """A concept sequence of one text field of a news item in (``cat``, global ``sub``)."""
        kind = rng.random(length)
        pick = rng.random(length)
        edges = np.cumsum(mix)
        return np.select(
            [kind < edges[0], kind < edges[1], kind < edges[2]],
            [
                self.sub_start[sub] + (pick * self.sub_size[sub]).astype(np.int64),
                self.cat_start[cat] + (pick * self.cat_size[cat]).astype(np.int64),
                (pick * self.num_function).astype(np.int64),
            ],
            self.num_function + (pick * (self.total - self.num_function)).astype(np.int64),
        )


class _ClickModel:
    """Per-user preferences and the sampler of clicked items that follows them."""

    def __init__(
        self,
        rng: np.random.Generator,
        news_cat: np.ndarray,
        num_users: int,
        num_langs: int,
        mixed_fraction: float,
    ) -> None:
        num_news = len(news_cat)
        self.num_news = num_news
        counts = np.bincount(news_cat, minlength=len(CATEGORIES))
        self.by_cat = np.argsort(news_cat, kind="stable")
        self.cat_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.cat_count = counts
        present = np.flatnonzero(counts)

        weights = 1.0 / np.arange(1, num_langs + 1) ** _LANGUAGE_ZIPF
        self.home = rng.choice(num_langs, size=num_users, p=weights / weights.sum())
        if num_users >= num_langs:  # every language gets at least one home user
            self.home[rng.permutation(num_users)[:num_langs]] = np.arange(num_langs)
        self.second = np.full(num_users, -1)
        num_mixed = round(mixed_fraction * num_users) if num_langs > 1 else 0
        for user in np.sort(rng.permutation(num_users)[:num_mixed]).tolist():
            w = weights.copy()
            w[self.home[user]] = 0.0
            self.second[user] = rng.choice(num_langs, p=w / w.sum())

        num_pref = rng.integers(1, min(3, len(present)) + 1, size=num_users)
        self.pref_cats = np.zeros((num_users, 3), dtype=np.int64)
        self.pref_cum = np.ones((num_users, 3))
        self.pref_weights: list[np.ndarray] = []
        for user, k in enumerate(num_pref.tolist()):
            cats = rng.choice(present, size=k, replace=False)
            w = rng.dirichlet(np.full(k, 2.0))
            self.pref_cats[user, :k] = cats
            self.pref_cats[user, k:] = cats[-1]
            self.pref_cum[user, : k - 1] = np.cumsum(w)[:-1]
            self.pref_weights.append(w)

    def clicks(self, rng: np.random.Generator, users: np.ndarray, preferred: float) -> np.ndarray:
        """One clicked item per entry of ``users``.

        With probability ``preferred`` it comes from one of the user's categories (picked by the
        user's weights), otherwise uniformly from all news.
        """
        slot = (rng.random(users.shape)[..., None] >= self.pref_cum[users]).sum(-1)
        cat = np.take_along_axis(self.pref_cats[users], slot[..., None], -1)[..., 0]
        within = (rng.random(users.shape) * self.cat_count[cat]).astype(np.int64)
        in_pref = self.by_cat[self.cat_start[cat] + within]
        anywhere = rng.integers(self.num_news, size=users.shape)
        return np.where(rng.random(users.shape) < preferred, in_pref, anywhere)

    def languages(self, rng: np.random.Generator, users: np.ndarray, width: int) -> np.ndarray:
        """Language index of ``width`` refs per user: home, or the second language for ~30%."""
        second = self.second[users][:, None]
        use_second = (second >= 0) & (rng.random((len(users), width)) < _SECOND_LANGUAGE_SHARE)
        return np.where(use_second, second, self.home[users][:, None])


def _mind_time(start: datetime, offset_s: int) -> str:
    """MIND's timestamp format, e.g. ``11/15/2019 8:55:22 AM``."""
    t = start + timedelta(seconds=offset_s)
    hour = t.hour % 12 or 12
    half = "AM" if t.hour < 12 else "PM"
    return f"{t.month}/{t.day}/{t.year} {hour}:{t.minute:02d}:{t.second:02d} {half}"


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_range(name: str, value: Any, low: int, high: int) -> None:
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
        and low <= value[0] <= value[1] <= high
    )
    if not ok:
        raise ValueError(
            f"{name} must be a (min, max) pair of integers with {low} <= min <= max <= {high}"
            f" (max is bounded by num_news), got {value!r}"
        )


def _validate(
    languages: Sequence[str],
    counts: dict[str, Any],
    fraction: Any,
    history_length: Any,
    candidates: Any,
    seed: Any,
) -> tuple[str, ...]:
    if isinstance(languages, str):
        raise ValueError(
            f"languages must be a sequence of language codes, got the string {languages!r}"
        )
    langs = tuple(languages)
    if not langs:
        raise ValueError("languages must not be empty")
    unknown = [lang for lang in langs if lang not in LANGUAGE_SCRIPTS]
    if unknown:
        raise ValueError(f"unknown language(s) {unknown}; supported: {list(SUPPORTED_LANGUAGES)}")
    if len(set(langs)) != len(langs):
        raise ValueError(f"languages contain duplicates: {list(langs)}")
    for name, value in counts.items():
        _check_count(name, value)
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not (0.0 <= fraction <= 1.0)
    ):
        raise ValueError(f"mixed_language_fraction must be in [0, 1], got {fraction!r}")
    _check_range("history_length", history_length, 0, counts["num_news"])
    _check_range("candidates", candidates, 2, counts["num_news"])
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return langs


def _write_news(
    out_dir: Path,
    langs: tuple[str, ...],
    lexicons: dict[str, list[str]],
    news_cat: np.ndarray,
    news_sub: np.ndarray,
    titles: list[np.ndarray],
    abstracts: list[np.ndarray],
) -> None:
    sub_names = [sub for _, subs in CATEGORIES for sub in subs]
    (out_dir / "news").mkdir(parents=True, exist_ok=True)
    for lang in langs:
        words = np.array(lexicons[lang], dtype=object)
        sep = "" if lang in _UNSPACED else " "
        stop = "。" if lang in _UNSPACED else "."
        cased = LANGUAGE_SCRIPTS[lang] in _CASED
        with open(out_dir / "news" / f"{lang}.tsv", "w", encoding="utf-8", newline="\n") as fh:
            for i in range(len(news_cat)):
                fields = []
                for concepts in (titles[i], abstracts[i]):
                    text = sep.join(words[concepts])
                    fields.append(text[:1].upper() + text[1:] if cased else text)
                nid = f"N{i + 1}"
                fh.write(
                    f"{nid}\t{CATEGORIES[news_cat[i]][0]}\t{sub_names[news_sub[i]]}\t{fields[0]}\t"
                    f"{fields[1]}{stop}\thttps://news.example/{nid}\t[]\t[]\n"
                )


def _histories(
    rng: np.random.Generator,
    model: _ClickModel,
    lang_codes: tuple[str, ...],
    history_length: tuple[int, int],
) -> list[str]:
    """Each user's fixed click history, rendered as the MIND history column."""
    num_users = len(model.home)
    lengths = rng.integers(history_length[0], history_length[1] + 1, size=num_users)
    draws = 3 * lengths + 5  # oversample, then keep the first distinct items
    items = model.clicks(rng, np.repeat(np.arange(num_users), draws), _HISTORY_PREFERRED).tolist()
    langs = model.languages(rng, np.arange(num_users), max(int(lengths.max()), 1)).tolist()
    fill = rng.permutation(model.num_news).tolist()
    out = []
    offset = 0
    for user, (length, n) in enumerate(zip(lengths.tolist(), draws.tolist(), strict=True)):
        chosen: list[int] = []
        seen: set[int] = set()
        _extend_distinct(chosen, seen, items[offset : offset + n], length)
        _extend_distinct(chosen, seen, fill, length)  # only when the oversample had too few
        offset += n
        out.append(
            " ".join(
                f"N{item + 1}@{lang_codes[lang]}"
                for item, lang in zip(chosen, langs[user], strict=False)
            )
        )
    return out


def _extend_distinct(items: list[int], chosen: set[int], pool: Sequence[int], size: int) -> None:
    """Append items of ``pool`` not yet in ``chosen`` until ``items`` has ``size`` entries."""
    for item in pool:
        if len(items) == size:
            return
        if item not in chosen:
            chosen.add(item)
            items.append(item)


def _shown_items(
    rng: np.random.Generator, num_news: int, positives: list[int], negatives: list[int], size: int
) -> tuple[list[int], int]:
    """The ``size`` distinct items of one impression, clicked ones first, and how many clicked."""
    items = list(dict.fromkeys(positives))  # a repeated positive counts once
    num_clicked = len(items)
    chosen = set(items)
    _extend_distinct(items, chosen, negatives, size)
    if len(items) < size:  # too few distinct negatives among the draws (tiny corpora)
        _extend_distinct(items, chosen, rng.permutation(num_news).tolist(), size)
    return items, num_clicked


def _write_behaviors(
    fh: IO[str],
    rng: np.random.Generator,
    model: _ClickModel,
    histories: list[str],
    lang_codes: tuple[str, ...],
    num: int,
    first_id: int,
    start: datetime,
    span_s: int,
    candidates: tuple[int, int],
    on_chunk: Callable[[int], None],
) -> np.ndarray:
    """Stream ``num`` impressions in vectorised chunks; returns impressions per home language."""
    per_lang = np.zeros(len(lang_codes), dtype=np.int64)
    num_users = len(histories)
    lo, hi = candidates
    extra = hi + 8  # negatives drawn per impression before falling back to a permutation
    nids = [f"N{i + 1}" for i in range(model.num_news)]
    for begin in range(0, num, _CHUNK):
        b = min(_CHUNK, num - begin)
        users = rng.integers(num_users, size=b)
        sizes = rng.integers(lo, hi + 1, size=b)
        num_pos = np.minimum(1 + (rng.random(b) < 0.5), sizes - 1)
        pos = model.clicks(rng, np.repeat(users[:, None], 2, axis=1), _POSITIVE_PREFERRED)
        negs = rng.integers(model.num_news, size=(b, extra))
        langs = model.languages(rng, users, hi)
        order = np.argsort(rng.random((b, hi)), axis=1)
        offsets = ((begin + np.arange(b) + rng.random(b)) * (span_s / num)).astype(np.int64)
        per_lang += np.bincount(model.home[users], minlength=len(lang_codes))
        rows = []
        for i, (user, size, npos, p, neg, lrow, orow, off) in enumerate(
            zip(
                users.tolist(),
                sizes.tolist(),
                num_pos.tolist(),
                pos.tolist(),
                negs.tolist(),
                langs.tolist(),
                order.tolist(),
                offsets.tolist(),
                strict=True,
            )
        ):
            items, num_clicked = _shown_items(rng, model.num_news, p[:npos], neg, size)
            refs = " ".join(
                f"{nids[items[j]]}@{lang_codes[lang]}-{int(j < num_clicked)}"
                for j, lang in zip((j for j in orow if j < size), lrow, strict=False)
            )
            rows.append(
                f"{first_id + begin + i}\tU{user + 1}\t{_mind_time(start, off)}\t"
                f"{histories[user]}\t{refs}\n"
            )
        fh.write("".join(rows))
        on_chunk(b)
    return per_lang


def _draw_news(
    rng: np.random.Generator, concepts: _Concepts, num_news: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Each news item's category, global subcategory, and title and abstract concept sequences."""
    shares = rng.dirichlet(np.full(len(CATEGORIES), _CATEGORY_SKEW))
    news_cat = rng.choice(len(CATEGORIES), size=num_news, p=shares)
    news_sub = concepts.first_sub[news_cat] + (
        rng.random(num_news) * concepts.num_subs[news_cat]
    ).astype(np.int64)
    titles, abstracts = [], []
    for cat, sub in zip(news_cat.tolist(), news_sub.tolist(), strict=True):
        n_title = int(rng.integers(_TITLE_WORDS[0], _TITLE_WORDS[1] + 1))
        n_abstract = int(rng.integers(_ABSTRACT_WORDS[0], _ABSTRACT_WORDS[1] + 1))
        titles.append(concepts.sequence(rng, cat, sub, n_title, _TITLE_MIX))
        abstracts.append(concepts.sequence(rng, cat, sub, n_abstract, _ABSTRACT_MIX))
    return news_cat, news_sub, titles, abstracts


def _write_users(out_dir: Path, langs: tuple[str, ...], model: _ClickModel) -> None:
    """users.tsv: each user's home and second language and preferred categories with weights."""
    with open(out_dir / "users.tsv", "w", encoding="utf-8", newline="\n") as fh:
        for user in range(len(model.home)):
            second = langs[model.second[user]] if model.second[user] >= 0 else ""
            prefs = ",".join(
                f"{CATEGORIES[c][0]}:{w:.3f}"
                for c, w in zip(
                    model.pref_cats[user].tolist(), model.pref_weights[user].tolist(), strict=False
                )
            )
            fh.write(f"U{user + 1}\t{langs[model.home[user]]}\t{second}\t{prefs}\n")


def _write_splits(
    out_dir: Path,
    seed: int,
    model: _ClickModel,
    histories: list[str],
    langs: tuple[str, ...],
    impressions: dict[str, int],
    candidates: tuple[int, int],
    progress: bool,
) -> dict[str, dict[str, int]]:
    """train/ and dev/behaviors.tsv (dev's ids and times follow train's); returns, per split,
    the impressions per home language."""
    train, dev = impressions["train"], impressions["dev"]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=train + dev, unit="imp", desc="impressions")
    on_chunk = bar.update if bar is not None else (lambda _n: None)
    dev_start = _TRAIN_START + timedelta(seconds=_TRAIN_SECONDS)
    splits = (
        ("train", train, 1, _TRAIN_START, _TRAIN_SECONDS),
        ("dev", dev, train + 1, dev_start, _DEV_SECONDS),
    )
    per_lang: dict[str, dict[str, int]] = {}
    try:
        for index, (split, num, first_id, start, span_s) in enumerate(splits):
            (out_dir / split).mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, 4 + index])
            path = out_dir / split / "behaviors.tsv"
            with open(path, "w", encoding="utf-8", newline="\n") as fh:
                counts_by_lang = _write_behaviors(
                    fh,
                    rng,
                    model,
                    histories,
                    langs,
                    num,
                    first_id,
                    start,
                    span_s,
                    candidates,
                    on_chunk,
                )
            per_lang[split] = dict(zip(langs, counts_by_lang.tolist(), strict=True))
    finally:
        if bar is not None:
            bar.close()
    return per_lang


def _metadata(
    langs: tuple[str, ...],
    counts: dict[str, Any],
    model: _ClickModel,
    news_cat: np.ndarray,
    num_concepts: int,
    per_lang: dict[str, dict[str, int]],
    params: dict[str, Any],
) -> dict:
    """corpus.json's content; ``counts`` are the sizes as given, ``params`` every argument."""
    home_counts = np.bincount(model.home, minlength=len(langs)).tolist()
    news_per_category = np.bincount(news_cat, minlength=len(CATEGORIES))
    return {
        "synthetic": True,
        "generator": "mlrec.data.synthetic",
        "format": "MIND/xMIND; item refs are <nid>@<lang>",
        "languages": {
            lang: {"script": LANGUAGE_SCRIPTS[lang], "home_users": n}
            for lang, n in zip(langs, home_counts, strict=True)
        },
        "scripts": sorted({LANGUAGE_SCRIPTS[lang] for lang in langs}),
        "categories": {cat: list(subs) for cat, subs in CATEGORIES},
        "counts": {
            "news": counts["num_news"],
            "users": counts["num_users"],
            "bilingual_users": int((model.second >= 0).sum()),
            "impressions": {"train": counts["train_impressions"], "dev": counts["dev_impressions"]},
            "impressions_per_language": per_lang,
            "news_per_category": {
                cat: int(n) for (cat, _), n in zip(CATEGORIES, news_per_category, strict=True)
            },
            "concepts": num_concepts,
        },
        "impression_ids": "1-based, continuing from train into dev",
        "impressions_per_language_by": "the user's home language (see users.tsv)",
        "seed": params["seed"],
        "params": params,
        "files": {
            "news": {lang: f"news/{lang}.tsv" for lang in langs},
            "train_behaviors": "train/behaviors.tsv",
            "dev_behaviors": "dev/behaviors.tsv",
            "users": "users.tsv",
        },
    }


def generate_corpus(
    out_dir: str | Path,
    *,
    languages: Sequence[str] = DEFAULT_LANGUAGES,
    num_news: int = 2000,
    num_users: int = 1500,
    train_impressions: int = 20000,
    dev_impressions: int = 3000,
    mixed_language_fraction: float = 0.2,
    history_length: tuple[int, int] = (5, 30),
    candidates: tuple[int, int] = (5, 20),
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Write a synthetic MIND/xMIND-format corpus to ``out_dir`` and return its metadata.

    The metadata (also written to ``out_dir/corpus.json``) lists the languages and scripts, the
    categories, every parameter and the counts of news, users and impressions. Same arguments
    give byte-identical files. Raises ValueError for unknown languages and impossible sizes.
    """
    counts = {
        "num_news": num_news,
        "num_users": num_users,
        "train_impressions": train_impressions,
        "dev_impressions": dev_impressions,
    }
    langs = _validate(languages, counts, mixed_language_fraction, history_length, candidates, seed)
    history_length = (int(history_length[0]), int(history_length[1]))
    candidates = (int(candidates[0]), int(candidates[1]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Each stage draws from its own default_rng([seed, k]) stream (each lexicon from one per
    # language), so how many values one stage draws does not shift the draws of the next.
    concepts = _Concepts(np.random.default_rng([seed, 1]))
    lexicons = {lang: _lexicon(seed, lang, concepts.num_function, concepts.total) for lang in langs}
    news_cat, news_sub, titles, abstracts = _draw_news(
        np.random.default_rng([seed, 2]), concepts, num_news
    )
    _write_news(out, langs, lexicons, news_cat, news_sub, titles, abstracts)

    user_rng = np.random.default_rng([seed, 3])
    model = _ClickModel(user_rng, news_cat, num_users, len(langs), mixed_language_fraction)
    histories = _histories(user_rng, model, langs, history_length)
    _write_users(out, langs, model)
    impressions = {"train": train_impressions, "dev": dev_impressions}
    per_lang = _write_splits(out, seed, model, histories, langs, impressions, candidates, progress)

    params = {
        "languages": list(langs),
        **{name: int(value) for name, value in counts.items()},
        "mixed_language_fraction": float(mixed_language_fraction),
        "history_length": list(history_length),
        "candidates": list(candidates),
        "seed": int(seed),
    }
    meta = _metadata(langs, counts, model, news_cat, concepts.total, per_lang, params)
    with open(out / "corpus.json", "w", encoding="utf-8", newline="\n") as fh:
        json.dump(meta, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
    return meta
