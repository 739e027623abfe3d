"""Code shipped inside an artifact runs only when the person running the command asks for it.

An export (or any model folder) can map its config's classes to its own Python files
(`auto_map`); transformers imports them when `trust_remote_code=True`. The opt-in is the
command line's `--trust-remote-code`, never a value in a config, run directory or export.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlrec.config import ConfigError, load_config
from tests.conftest import TINY, tiny_config
from tests.export.tiny_export import make_export
from tests.serve.server import running_service

MLREC = str(Path(sys.executable).parent / "mlrec")

EVIL_TOKENIZER = """
open({marker!r}, "w").close()
from transformers import PreTrainedTokenizerFast as EvilTokenizer
"""

EVIL_MODEL = """
open({marker!r}, "w").close()
from transformers import XLMRobertaConfig, XLMRobertaModel


class EvilConfig(XLMRobertaConfig):
    model_type = "evil-roberta"


class EvilModel(XLMRobertaModel):
    config_class = EvilConfig
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_shards) -> Path:
    return make_export(tmp_path_factory.mktemp("remote-code"), tiny_shards, onnx=False)


def _edit_json(path: Path, edit) -> None:
    values = json.loads(path.read_text())
    edit(values)
    path.write_text(json.dumps(values))


def evil_tokenizer(export: Path, root: Path) -> tuple[Path, Path]:
    """A copy of the export whose tokenizer_config.json points AutoTokenizer at its own script;
    transformers can still load it without the script (the model type is known)."""
    evil, marker = root / "evil-export", root / "tokenizer-code-ran"
    shutil.copytree(export, evil)
    (evil / "evil_tok.py").write_text(EVIL_TOKENIZER.format(marker=str(marker)))

    def point_at_script(config: dict) -> None:
        config.pop("tokenizer_class", None)
        config["auto_map"] = {"AutoTokenizer": [None, "evil_tok.EvilTokenizer"]}

    _edit_json(evil / "tokenizer_config.json", point_at_script)
    return evil, marker


def evil_model(export: Path, root: Path) -> tuple[Path, Path]:
    """A copy whose model type exists only in its own script: it cannot load without it."""
    evil, marker = root / "needs-code", root / "model-code-ran"
    shutil.copytree(export, evil)
    (evil / "evil_model.py").write_text(EVIL_MODEL.format(marker=str(marker)))

    def own_model_type(config: dict) -> None:
        config["model_type"] = "evil-roberta"
        config["auto_map"] = {
            "AutoConfig": "evil_model.EvilConfig",
            "AutoModel": "evil_model.EvilModel",
        }

    _edit_json(evil / "config.json", own_model_type)
    return evil, marker


def _mlrec(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MLREC, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_an_export_that_turns_remote_code_on_is_refused_before_loading(export, tmp_path):
    evil, marker = evil_tokenizer(export, tmp_path)
    saved = yaml.safe_load((evil / "mlrec_config.yaml").read_text())
    saved["model"]["trust_remote_code"] = True
    (evil / "mlrec_config.yaml").write_text(yaml.safe_dump(saved))
    done = _mlrec("serve", str(evil), "serve.backend=torch", "serve.port=1")
    assert done.returncode == 2, done.stderr
    assert "model.trust_remote_code cannot be turned on from a config" in done.stderr
    assert "--trust-remote-code" in done.stderr and "Traceback" not in done.stderr
    assert str(evil / "mlrec_config.yaml") in done.stderr
    assert not marker.exists()


def test_serving_an_export_with_its_own_tokenizer_code_does_not_run_it(export, tmp_path):
    evil, marker = evil_tokenizer(export, tmp_path)
    with running_service(evil, tmp_path / "serve.log", "serve.backend=torch") as client:
        assert client.get("/health").json()["status"] == "ok"
    assert not marker.exists()


def test_the_command_line_opt_in_runs_it(export, tmp_path):
    """The opt-in is real: the same folder with --trust-remote-code imports its script."""
    evil, marker = evil_tokenizer(export, tmp_path)
    with running_service(
        evil, tmp_path / "serve.log", "serve.backend=torch", "--trust-remote-code"
    ) as client:
        assert client.get("/health").json()["status"] == "ok"
    assert marker.exists()
    log = (tmp_path / "serve.log").read_text()
    assert "--trust-remote-code: code shipped with the models" in log


def test_a_model_that_needs_its_own_code_says_how_to_opt_in(export, tmp_path):
    evil, marker = evil_model(export, tmp_path)
    done = _mlrec("evaluate", str(evil), "--out", str(tmp_path / "eval"))
    assert done.returncode == 2, done.stderr
    assert f"the model {evil} ships its own Python code" in done.stderr
    assert "--trust-remote-code" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("where", ["file", "override"], ids=["in-a-config-file", "as-an-override"])
def test_configs_cannot_turn_remote_code_on(tmp_path, where):
    if where == "file":
        values = yaml.safe_load(TINY.read_text())
        values.setdefault("model", {})["trust_remote_code"] = True
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(values))
        with pytest.raises(ConfigError, match=rf"{path}: model.trust_remote_code cannot"):
            load_config(path)
    else:
        with pytest.raises(ConfigError, match="override .*model.trust_remote_code cannot"):
            tiny_config(tmp_path, "model.trust_remote_code=true")


def test_a_saved_config_never_carries_the_opt_in(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.model.trust_remote_code = True  # as --trust-remote-code sets it for one command
    cfg.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").model.trust_remote_code is False


def test_a_model_name_not_in_the_cache_while_offline_is_one_clear_error(tmp_path):
    run = tmp_path / "run"
    done = _mlrec(
        "shard", "--config", str(TINY), f"run_dir={run}",
        "model.tokenizer=", "model.name_or_path=no-such-org/no-such-model",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    name = "'no-such-org/no-such-model'"
    assert f"{name} is neither a local folder nor in the Hugging Face cache" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_damaged_tokenizer_file_is_one_clear_error(export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    (broken / "tokenizer.json").write_text('{"version": "1.0", "truncat')  # cut short
    done = _mlrec("evaluate", str(broken), "--out", str(tmp_path / "eval"))
    assert done.returncode == 2, done.stderr
    assert f"the tokenizer in {broken} cannot be loaded" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
