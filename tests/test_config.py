from pathlib import Path

import pytest
import yaml

from mlrec.config import Config, ConfigError, config_from_dict, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 3


def _fake_mind_folder(root: Path) -> None:
    for rel in ("train/behaviors.tsv", "dev/behaviors.tsv", "train/news.tsv", "news/en.tsv"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_loads_and_validates(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    first_comment = path.read_text().splitlines()[0]
    assert first_comment.startswith("#"), "configs open with a comment saying what they are"
    assert "mlrec " in path.read_text() or "accelerate launch" in path.read_text(), (
        "configs name the command that launches them"
    )
    overrides = []
    if raw.get("data", {}).get("source") == "mind":
        # point a real-data config at a stand-in folder: the keys and types are what is checked
        _fake_mind_folder(tmp_path)
        overrides = [f"data.dir={tmp_path}", f"data.shards_dir={tmp_path / 'shards'}"]
    cfg = load_config(path, overrides)
    assert isinstance(cfg, Config)


def test_quickstart_yaml_matches_defaults():
    assert load_config(REPO / "configs" / "quickstart.yaml").to_dict() == Config().to_dict()


def test_overrides_are_typed():
    cfg = load_config(
        None, ["train.lr=3e-4", "data.negatives=7", "model.name_or_path=xlm-roberta-large"]
    )
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.data.negatives == 7
    assert cfg.model.name_or_path == "xlm-roberta-large"
    assert parse_override("data.text_fields=[title, abstract]") == (
        "data.text_fields",
        ["title", "abstract"],
    )


def test_no_is_a_string_not_false(tmp_path):
    # accelerate's spelling `mixed_precision: no` must not become False (YAML 1.1 would)
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  mixed_precision: no\n  gradient_checkpointing: true\n")
    cfg = load_config(path)
    assert cfg.train.mixed_precision == "no" and cfg.train.gradient_checkpointing is True
    message = _error(None, ["train.gradient_checkpointing=yes"])
    assert "train.gradient_checkpointing must be" in message and "'yes'" in message


def _error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    message = _error(path)
    assert str(path) in message and "train.lrr" in message


def test_wrong_type_names_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  negatives: four\n")
    message = _error(path)
    assert "data.negatives" in message and "integer" in message and str(path) in message


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=-1", "train.lr"),
        ("data.negatives=0", "data.negatives"),
        ("adapter.method=prefix", "adapter.method"),
        ("model.num_heads=3", "model.num_heads"),
        ("data.synthetic.languages=[en, xx]", "data.synthetic.languages"),
        ("model.name_or_path=./no/such/model", "model.name_or_path"),
        ("train.resume=/no/such/checkpoint", "train.resume"),
        ("data.source=mind", "data.dir"),
        ("bogus=1", "bogus"),
    ],
)
def test_impossible_values_stop_with_the_key(override, key):
    message = _error(None, [override])
    assert key in message
    if override.startswith(key):
        assert "command line" in message  # where the bad value came from


def test_missing_mind_files_are_named(tmp_path):
    message = _error(None, ["data.source=mind", f"data.dir={tmp_path}"])
    assert "data.train_behaviors" in message and str(tmp_path) in message


def test_missing_config_file():
    assert "not found" in _error(Path("/no/such.yaml"))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.steps=70", f"run_dir={tmp_path}"])
    cfg.save(tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again.to_dict() == cfg.to_dict()
