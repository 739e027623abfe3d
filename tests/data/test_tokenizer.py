"""The locally trained tokenizer: deterministic, XLM-R's special ids, reloadable offline."""

import pytest
from transformers import AutoTokenizer

from mlrec.data.tokenizer import SPECIAL_TOKENS, train_tokenizer

TEXTS = [
    "Elections in Berlin: the new coalition meets on Monday",
    "Wahlen in Berlin: die neue Koalition trifft sich am Montag",
    "Новости спорта: сборная выиграла финал",
    "東京で新しい博物館が開館しました",
    "Le gouvernement présente son budget pour l'année prochaine",
] * 40


def test_the_same_texts_give_the_same_tokenizer(tmp_path):
    # tokenizers' own Unigram trainer gave a different vocabulary on every run, which
    # renumbered the item table and silently changed a trained checkpoint's scores
    files = []
    for run in ("a", "b"):
        train_tokenizer(iter(TEXTS), 300, tmp_path / run)
        files.append((tmp_path / run / "tokenizer.json").read_bytes())
    assert files[0] == files[1]


def test_xlmr_special_ids_and_offline_reload(tmp_path):
    train_tokenizer(TEXTS, 300, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) <= 300  # as many pieces as the small corpus has, at most the size asked
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    ids = tok("Wahlen in Berlin")["input_ids"]
    assert ids[0] == tok.bos_token_id == 0 and ids[-1] == tok.eos_token_id == 2
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "Wahlen in Berlin"


def test_a_vocabulary_too_small_for_the_characters_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="raise model.vocab_size"):
        train_tokenizer(TEXTS, 20, tmp_path)
