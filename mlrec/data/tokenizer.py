"""Tokenizers: a SentencePiece-style Unigram tokenizer trained locally, or any Hugging Face one.

The local tokenizer uses XLM-R's special token ids (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4)
and its Metaspace pre-tokenisation, so it treats unsegmented scripts (Chinese, Japanese) the way
XLM-R's SentencePiece model does, and it saves in Hugging Face format so that `AutoTokenizer`
loads it offline exactly like a hub tokenizer.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing

from mlrec.config import ConfigError
from mlrec.hub import from_pretrained

# transformers takes seconds to import: the functions below import it on use, so that modules
# which only pass a TokenizerSpec on (the data stage, shard slices, the merge) start fast.
if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

    from mlrec.config import ModelConfig

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


# One thread: SentencePiece's Unigram trainer gives the same model for the same input and thread
# count (and a different one for another count); tokenizers' own UnigramTrainer differs on every
# run, which changed the item table, and with it a trained model's scores, on every re-shard.
_TRAIN_THREADS = 1
_MAX_SENTENCES = 2_000_000  # SentencePiece samples this many (seeded) from a larger corpus


@dataclass(frozen=True)
class TokenizerSpec:
    """The item table's tokenizer: all that the data layer reads of `cfg.model`."""

    source: str  # a Hugging Face id or folder; "" trains one on the corpus
    vocab_size: int  # of the tokenizer trained when `source` is ""
    trust_remote_code: bool

    @classmethod
    def from_model(cls, model: ModelConfig) -> TokenizerSpec:
        source = model.tokenizer or model.name_or_path  # the model's own unless one is named
        return cls(source, model.vocab_size, model.trust_remote_code)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path
) -> PreTrainedTokenizerFast:
    """Train a Unigram tokenizer on `texts` and save it to `out_dir` in Hugging Face format.

    SentencePiece learns the pieces and their scores (deterministically); the tokenizer is then a
    `tokenizers` Unigram model over them with XLM-R's special tokens at ids 0-4, NFKC and
    Metaspace pre-tokenisation, as XLM-R's converted SentencePiece model has.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    lines = (text for text in texts if text.strip())
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines,
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size - len(SPECIAL_TOKENS) + 1,  # its <unk> is ours
            character_coverage=1.0,
            max_sentencepiece_length=8,
            hard_vocab_limit=False,  # a small corpus gets a smaller vocabulary, not an error
            num_threads=_TRAIN_THREADS,
            input_sentence_size=_MAX_SENTENCES,
            shuffle_input_sentence=True,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            unk_id=0,
            minloglevel=2,
        )
    except RuntimeError as err:
        if "Vocabulary size" not in str(err):
            raise
        raise ConfigError(
            f"model.vocab_size={vocab_size} cannot hold every character of the corpus (CJK text "
            f"brings thousands); raise model.vocab_size ({err})"
        ) from err
    pieces = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(token, 0.0) for token in SPECIAL_TOKENS]
    vocab += [(pieces.id_to_piece(i), pieces.get_score(i)) for i in range(1, len(pieces))]
    tok = Tokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index("<unk>")))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    fast = xlmr_style(tok, bos_id=0, eos_id=2, model_max_length=512, mask_token="<mask>")
    fast.save_pretrained(str(out_dir))
    return fast


def xlmr_style(
    tok: Tokenizer, bos_id: int, eos_id: int, model_max_length: int, mask_token: str | None = None
) -> PreTrainedTokenizerFast:
    """`tok` as a Hugging Face tokenizer framing text as XLM-R does (`<s> A </s>`), with
    XLM-R's special token names (`<s>`, `</s>`, `<unk>`, `<pad>`) at the given ids."""
    from transformers import PreTrainedTokenizerFast

    tok.post_processor = TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos_id), ("</s>", eos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        mask_token=mask_token,
        model_max_length=model_max_length,
    )


def load_tokenizer(
    name_or_path: str | Path, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return from_pretrained(AutoTokenizer, name_or_path, "tokenizer", trust_remote_code)
