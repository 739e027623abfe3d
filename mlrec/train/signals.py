"""Stop training cleanly on a cluster's warning signal: checkpoint at a step boundary, then exit.

SLURM sends SIGUSR1 some time before a job's time limit (`#SBATCH --signal=USR1@180`) and
SIGTERM when it preempts or cancels a job. A signal can arrive in the middle of a step, when
the model and optimizer are half updated, so the handler only records it; the loop asks
`StopSignals.requested()` after each optimizer step, saves a checkpoint there and raises
`Preempted`, which the command turns into the exit code `EXIT_PREEMPTED`.

Under `accelerate launch` the launcher forwards the signal to every rank (SIGUSR1 only when it
is listed in `PET_SIGNALS_TO_HANDLE`, as launch/run_train.sh does), but not necessarily
between the same two steps: the decision is all-reduced, so every rank stops after the same
step and the collective checkpoint cannot deadlock.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command imports this module for its exit code: keep that light
    from accelerate import Accelerator

# sysexits.h EX_TEMPFAIL, "temporary failure, try again later": clear of 0/1, of mlrec's 2 for
# a bad config, of 124 (timeout) and of 128+N (killed by signal N), so scripts can tell
# "checkpointed because asked to stop, requeue me" from success and from a crash.
EXIT_PREEMPTED = 75

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint at `step`."""

    def __init__(self, step: int, signal_name: str) -> None:
        super().__init__(f"stopped on {signal_name} after step {step}; checkpoint saved")
        self.step = step
        self.signal_name = signal_name


class StopSignals:
    """Records SIGUSR1/SIGTERM while installed; `requested()` is the collective decision."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; nothing to catch
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def uninstall(self) -> None:
        """Put back the handlers found at install: a signal after the loop acts as it would."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the step in flight finishes, the checkpoint is taken at its boundary.
        if self.received is None:
            self.received = signal.Signals(signum)

    def requested(self, accelerator: Accelerator) -> bool:
        """True on every rank when any rank has received a stop signal (a collective call)."""
        local = self.received is not None
        if accelerator.num_processes == 1:
            return local
        import torch

        flag = torch.tensor([1.0 if local else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item() > 0)

    @property
    def signal_name(self) -> str:
        return self.received.name if self.received is not None else "a stop signal on another rank"
