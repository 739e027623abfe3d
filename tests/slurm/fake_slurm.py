"""A fake cluster on PATH: `srun`, `sbatch`, `scontrol`, `scancel`, `accelerate`, `python`,
`mlrec` and `nvidia-smi` stubs that record their argv, so the real sbatch and launch scripts run
unchanged and the tests read back exactly what each node would have run.

`srun` runs its command once per node (SLURM_NNODES) with that node's SLURM_NODEID, in parallel
like the real one. `accelerate` behaves as FAKE_TRAINING says: ok (exit 0), fail (exit 1), or
preempt (wait until `scancel --signal=USR1` has been called, then exit 1 as the real launcher
does once its ranks have checkpointed and exited 75).
"""

from __future__ import annotations

import os
from pathlib import Path

RECORD = r"""
record() {
  local line=$1 arg
  shift
  for arg in "$@"; do line+=$'\t'$arg; done
  printf '%s\n' "$line" >> "$FAKE_DIR/calls"  # one write per call: nodes run in parallel
}
"""

STUBS = {
    "srun": r"""
record srun "$@"
while [ $# -gt 0 ] && [[ $1 == -* ]]; do shift; done  # options (all in --name=value form)
pids=()
for ((node = 0; node < ${SLURM_NNODES:-1}; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" &
  pids+=("$!")
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit "$rc"
""",
    "sbatch": r"""
record sbatch "$@"
echo "$((1000 + $(grep -c '^sbatch' "$FAKE_DIR/calls")));fakecluster"
""",
    "scontrol": r"""
record scontrol "$@"
if [ "$1 $2" = "show hostnames" ]; then
  for host in $FAKE_HOSTS; do echo "$host"; done
fi
""",
    "scancel": r"""
record scancel "$@"
if [ "$1" = "--signal=USR1" ]; then touch "$FAKE_DIR/usr1"; fi
""",
    "accelerate": r"""
record accelerate "$@"
env | grep -E '^(ACCELERATE_USE_CPU|DS_ACCELERATOR|PET_SIGNALS_TO_HANDLE|TORCH_ELASTIC_\w+)=' \
  | sort > "$FAKE_DIR/env.${SLURM_NODEID:-0}" || true
case "${FAKE_TRAINING:-ok}" in
  ok) exit 0 ;;
  fail) exit 1 ;;
  preempt)
    touch "$FAKE_DIR/started.${SLURM_NODEID:-0}"
    for _ in $(seq 300); do
      if [ -e "$FAKE_DIR/usr1" ]; then exit 1; fi
      sleep 0.1
    done
    exit 9 ;;
esac
""",
    "python": 'record python "$@"\n',
    "mlrec": 'record mlrec "$@"\n',
    "nvidia-smi": r"""
for ((i = 0; i < ${FAKE_GPUS:-0}; i++)); do echo "GPU $i: Fake GPU (UUID: GPU-$i)"; done
""",
}


class FakeCluster:
    def __init__(self, root: Path) -> None:
        self.dir = root
        bin_dir = root / "bin"
        bin_dir.mkdir(parents=True)
        for name, body in STUBS.items():
            stub = bin_dir / name
            stub.write_text(f"#!/usr/bin/env bash\nset -euo pipefail\n{RECORD}{body}")
            stub.chmod(0o755)
        (root / "calls").touch()
        self.path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"

    def env(self, **extra: str) -> dict[str, str]:
        """The caller's environment without any real SLURM job, plus the stubs and `extra`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        for name in ("NGPU", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "CONFIG"):
            env.pop(name, None)
        env.pop("ACCELERATE_CONFIG", None)
        env.update(PATH=self.path, FAKE_DIR=str(self.dir), **extra)
        return env

    def calls(self, name: str) -> list[list[str]]:
        lines = (self.dir / "calls").read_text().splitlines()
        return [line.split("\t")[1:] for line in lines if line.split("\t")[0] == name]

    def launcher_env(self, node: int) -> dict[str, str]:
        lines = (self.dir / f"env.{node}").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)
