"""Tokenizers: a SentencePiece-style Unigram tokenizer trained locally, or any Hugging Face one.

The local tokenizer uses XLM-R's special token ids (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4)
and its Metaspace pre-tokenisation, so it treats unsegmented scripts (Chinese, Japanese) the way
XLM-R's SentencePiece model does, and it saves in Hugging Face format so that `AutoTokenizer`
loads it offline exactly like a hub tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path
) -> PreTrainedTokenizerFast:
    """Train a Unigram tokenizer on `texts` and save it to `out_dir` in Hugging Face format."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        unk_token="<unk>",
        max_piece_length=8,
        show_progress=False,
    )
    try:
        tok.train_from_iterator(texts, trainer=trainer)
    except Exception as err:  # tokenizers raises a bare Exception
        if "not large enough" not in str(err):
            raise
        raise ValueError(
            f"model.vocab_size={vocab_size} cannot hold every character of the corpus (CJK text "
            "brings thousands); raise model.vocab_size"
        ) from err
    fast = xlmr_style(tok, bos_id=0, eos_id=2, model_max_length=512, mask_token="<mask>")
    fast.save_pretrained(str(out_dir))
    return fast


def xlmr_style(
    tok: Tokenizer, bos_id: int, eos_id: int, model_max_length: int, mask_token: str | None = None
) -> PreTrainedTokenizerFast:
    """`tok` as a Hugging Face tokenizer framing text as XLM-R does (`<s> A </s>`), with
    XLM-R's special token names (`<s>`, `</s>`, `<unk>`, `<pad>`) at the given ids."""
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
    return AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
