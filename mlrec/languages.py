"""Languages and item references: the one place that knows which languages mlrec generates
and fetches, and how an item id names its language.

An item is a (news id, language) pair, `ItemKey`. In behaviors files and service requests it is
written `N123@de`; a bare `N123` means the configured `data.default_language`, as MIND's own
files (all English) are written. The language code never contains "@", so the last "@" splits.
"""

from __future__ import annotations

ItemKey = tuple[str, str]  # (news id, language)

# ISO 15924 script of each language the synthetic corpus can render (ko in Hangul only).
LANGUAGE_SCRIPTS: dict[str, str] = {
    "en": "Latn",
    "de": "Latn",
    "fr": "Latn",
    "es": "Latn",
    "it": "Latn",
    "pt": "Latn",
    "pl": "Latn",
    "ru": "Cyrl",
    "uk": "Cyrl",
    "ar": "Arab",
    "zh": "Hani",
    "ja": "Jpan",
    "ko": "Hang",
}
SUPPORTED_LANGUAGES: tuple[str, ...] = tuple(LANGUAGE_SCRIPTS)
# the synthetic corpus' default: 9 languages in 4 scripts
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "ru", "uk", "ar", "zh", "ja")
# Debian's description translations, largest first (bookworm: en 20k items ... vi 28)
DEBIAN_LANGUAGES: tuple[str, ...] = tuple(
    "en da it fr de sk pt_BR ja ko pl uk ru cs es zh_CN fi nl sv hu vi".split()  # noqa: SIM905
)


def parse_ref(token: str, default_language: str) -> ItemKey:
    """`N123@de` -> ("N123", "de"); a bare `N123` -> ("N123", default_language)."""
    nid, sep, lang = token.rpartition("@")
    return (nid, lang) if sep else (token, default_language)


def format_ref(key: ItemKey) -> str:
    """("N123", "de") -> `N123@de`, the form item tables and the service use."""
    return f"{key[0]}@{key[1]}"
