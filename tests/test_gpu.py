"""GPU-only paths (bf16, NCCL, ZeRO-3 on GPU, throughput): skipped on machines without CUDA."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_check_script(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--out", str(out), "--steps", "5"],
        check=True,
        timeout=1200,
    )
    result = json.loads(out.read_text())
    assert result["nccl"]["all_reduce_ok"]
    assert result["bf16_training_base"]["loss_finite"]
    assert 0 < result["bf16_training_base"]["mfu"] < 1
    assert result["zero3_lora"]["returncode"] == 0
    assert result["zero3_lora"]["deepspeed_checkpoint"]
    assert result["zero3_lora"]["adapter_min_numel"] > 0
