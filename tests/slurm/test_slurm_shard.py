"""slurm/shard_array.sbatch under a fake SLURM: stub sbatch/srun on PATH that run each job at once
(in dependency order) with the SLURM_* variables a real array task gets."""

import json
import os
import subprocess
import sys
import textwrap

from mlrec.data.layout import load_manifest
from tests.conftest import REPO, TINY

FAKE_SBATCH = textwrap.dedent(
    """\
    #!/usr/bin/env python3
    # Records the submission, then runs the script now: once, or once per array task.
    import json, os, subprocess, sys
    args, env, array, dependency = sys.argv[1:], dict(os.environ), None, ""
    while args[0].startswith("--"):
        flag = args.pop(0)
        if flag.startswith("--export=ALL,"):
            env.update(kv.split("=", 1) for kv in flag[len("--export=ALL,"):].split(","))
        elif flag.startswith("--array="):
            first, last = flag[len("--array="):].split("-")
            array = range(int(first), int(last) + 1)
        elif flag.startswith("--dependency="):
            dependency = flag[len("--dependency="):]
    log = os.environ["FAKE_SLURM_LOG"]
    with open(log) as handle:
        job = 100 + sum(1 for _ in handle)
    with open(log, "a") as handle:
        handle.write(json.dumps({"job": job, "step": env.get("MLREC_SHARD_STEP"),
                                 "array": len(array) if array else 0,
                                 "dependency": dependency, "args": args[1:]}) + "\\n")
    for task in array or [None]:
        task_env = dict(env, SLURM_JOB_ID=str(job))
        if task is not None:
            task_env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(task),
                            SLURM_ARRAY_TASK_COUNT=str(len(array)))
        subprocess.run(["bash", *args], env=task_env, check=True)
    print(job)
    """
)


def test_array_job_writes_the_same_shards_as_one_process(tmp_path, tiny_shards):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    for stub in ("sbatch", "srun"):
        (bin_dir / stub).chmod(0o755)
    log = tmp_path / "jobs.jsonl"
    log.write_text("")
    run_dir = tmp_path / "run"
    corpus = tiny_shards.parent / "corpus"  # reuse the session's corpus and tokenizer
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_SLURM_LOG=str(log),
        CONFIG=str(TINY),
        TASKS="3",
        MLREC=f"{sys.executable} -m mlrec.cli",
    )
    overrides = [
        f"run_dir={run_dir}",
        f"data.dir={corpus}",
        "data.source=mind",
        f"model.tokenizer={tiny_shards / 'tokenizer'}",
    ]
    done = subprocess.run(
        ["bash", str(REPO / "slurm" / "shard_array.sbatch"), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(j["step"], j["array"]) for j in jobs] == [("items", 0), ("slice", 3), ("merge", 0)]
    assert jobs[1]["dependency"] == f"afterok:{jobs[0]['job']}"
    assert jobs[2]["dependency"] == f"afterok:{jobs[1]['job']}"
    assert all(j["args"] == overrides for j in jobs)
    manifest = load_manifest(run_dir / "shards")
    expected = load_manifest(tiny_shards)
    for split in ("train", "dev"):
        got = [(s["name"], s["sha256"]) for s in manifest["splits"][split]["shards"]]
        assert got == [(s["name"], s["sha256"]) for s in expected["splits"][split]["shards"]]
