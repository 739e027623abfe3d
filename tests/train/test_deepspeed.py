"""DeepSpeed ZeRO-2/3 through `accelerate launch --config_file launch/accelerate/...` with two real
processes on CPU (DS_ACCELERATOR=cpu, gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, TINY, tiny_config
from tests.train.test_trainer import scalars

pytest.importorskip("deepspeed", reason="DeepSpeed is in the dev extra")
pytestmark = pytest.mark.multiproc


def launch(run: Path, launch_args: list[str], env: dict[str, str], *overrides: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launch_args,
        "--num_processes",
        "2",
        "--main_process_port",
        "29547",
        "-m",
        "mlrec",
        "train",
        "--config",
        str(TINY),
        f"run_dir={run}",
        *overrides,
    ]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    assert out.returncode == 0, out.stderr[-4000:]


def zero(stage: int) -> list[str]:
    return ["--config_file", str(REPO / "launch" / "accelerate" / f"deepspeed_zero{stage}.yaml")]


DEEPSPEED_CPU = {"DS_ACCELERATOR": "cpu"}  # not ACCELERATE_USE_CPU: that replaces DeepSpeed by DDP


def test_zero2_trains_like_ddp(tmp_path, tiny_shards):
    common = [
        f"data.shards_dir={tiny_shards}",
        "train.steps=4",
        "train.log_every=1",
        "train.grad_accum=2",
        "train.warmup_steps=1",
    ]
    ddp, ds = tmp_path / "ddp", tmp_path / "zero2"
    launch(ddp, ["--multi_gpu"], {"ACCELERATE_USE_CPU": "true"}, *common)
    launch(ds, zero(2), DEEPSPEED_CPU, *common)
    # DeepSpeed really ran: its checkpoint layout, not accelerate's DDP one
    assert (ds / "checkpoints" / "step-00000004" / "pytorch_model").is_dir()
    assert (ddp / "checkpoints" / "step-00000004" / "model.safetensors").is_file()
    a, b = scalars(ddp / "tb", "train/loss"), scalars(ds / "tb", "train/loss")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert [b[s] for s in sorted(b)] == pytest.approx([a[s] for s in sorted(a)], rel=1e-4)
    # one schedule step per optimizer step (not per micro-batch or per process)
    lr = scalars(ds / "tb", "train/lr")
    assert lr == pytest.approx(scalars(ddp / "tb", "train/lr"))
    assert lr[1] == pytest.approx(2e-3) and lr[1] > lr[2] > lr[3]  # peak after 1 warmup step


@pytest.fixture(scope="module")
def pretrained_base(tmp_path_factory, tiny_shards) -> Path:
    """A small 'pretrained' encoder in a local folder, as users bring from the hub."""
    from accelerate.utils import set_seed
    from transformers import AutoTokenizer

    from mlrec.models.recommender import build_backbone

    out = tmp_path_factory.mktemp("base")
    tok = AutoTokenizer.from_pretrained(str(tiny_shards / "tokenizer"))
    set_seed(7)
    build_backbone(tiny_config(out).model, len(tok), tok.pad_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_zero3_adapters_are_whole_and_reload_to_the_same_scores(
    method, tmp_path, tiny_shards, pretrained_base
):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from mlrec.data.layout import load_manifest
    from mlrec.evaluation.ranking import evaluate
    from mlrec.models.adapters import load_adapter
    from mlrec.models.recommender import build_recommender

    run = tmp_path / method
    launch(
        run,
        zero(3),
        DEEPSPEED_CPU,
        f"data.shards_dir={tiny_shards}",
        "train.steps=6",
        "train.log_every=1",
        f"adapter.method={method}",
        f"model.name_or_path={pretrained_base}",
    )
    adapter = run / "adapter"
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora = {k: v for k, v in weights.items() if "lora_A" in k}
    assert lora and sum(v.numel() for v in lora.values()) > 0  # not the empty ZeRO-3 slices
    if method == "adalora":
        saved = json.loads((adapter / "adapter_config.json").read_text())
        assert saved["peft_type"] == "ADALORA"
        # ranks really were reallocated on the sharded weights: from 1.5 r down to the budget r
        ranks = scalars(run / "tb", "train/adalora_rank")
        modules = len(saved["rank_pattern"])
        assert max(ranks.values()) > ranks[6] == saved["r"] * modules

    cfg = tiny_config(
        run,
        f"data.shards_dir={tiny_shards}",
        f"adapter.method={method}",
        f"model.name_or_path={pretrained_base}",
    )
    set_seed(cfg.seed)
    pad = load_manifest(tiny_shards)["tokenizer"]["pad_token_id"]
    trained = json.loads((run / "eval" / "metrics.json").read_text())

    def scores_as_trained(model):
        metrics = evaluate(
            model, Accelerator(cpu=True), tiny_shards, pad,
            batch_size=64, max_history=cfg.data.max_history,
        )  # fmt: skip
        for key in ("auc", "mrr", "ndcg@10"):
            assert metrics["overall"][key] == pytest.approx(trained["overall"][key], abs=1e-5)

    scores_as_trained(load_adapter(build_recommender(cfg.model, 0, pad), adapter))
    # export's path: the model alone from the ZeRO-3 checkpoint (partitions consolidated on
    # CPU, no optimizer, no accelerator), scoring as the trained model did
    from mlrec.models.trained import load_trained
    from mlrec.runs import checkpoint_root, latest_checkpoint

    scores_as_trained(load_trained(cfg, latest_checkpoint(checkpoint_root(run)), 0, pad))
