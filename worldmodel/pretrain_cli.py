"""`worldmodel pretrain`: LightningCLI over `JEPAPretrainer` + `VideoDataModule`.

On top of Lightning's own arguments this adds:

    --run_dir DIR            where logs (CSV, TensorBoard), config.yaml, checkpoints and data_errors.csv go
    --checkpoint_every N     write checkpoints/last.ckpt every N optimiser steps and at the last step
                             (more checkpoint callbacks, e.g. ModelCheckpoint, can be added in the config)
    --resume PATH|auto       continue from a checkpoint, mid-epoch and exactly; `auto` = DIR/checkpoints/last.ckpt

Under SLURM (srun), SIGUSR1 stops the run at the end of the current batch, writes last.ckpt there and
requeues the job (`scontrol requeue`), whose `--resume auto` continues exactly: ask SLURM for the signal
ahead of the time limit with `#SBATCH --signal=USR1@120` (scripts/launch_slurm.sh does). Lightning's own
handler, which saves an hpc_ckpt in the middle of a step that `--resume auto` would not read, is off.

Checkpoints are written atomically and read with weights_only=True (`worldmodel.checkpoints`).
Multi-GPU and multi-node runs are Lightning's: `--trainer.devices 8 --trainer.num_nodes 4
--trainer.strategy ddp` under torchrun or SLURM (see scripts/).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import threading
import warnings
from pathlib import Path
from typing import IO, Any

from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from worldmodel.checkpoints import (
    AtomicCheckpointIO, CheckpointError, LastCheckpoint, optimizer_stepped, reached_max_steps,
)  # fmt: skip
from worldmodel.data.datamodule import DataErrorCallback, VideoDataModule
from worldmodel.data.datasets import DataConfigError, DataFailureError, SampleFailureError
from worldmodel.data.loader import DataProgressCallback
from worldmodel.pretrain import ConfigError, JEPAPretrainer, NonFiniteLossError

# what a start can fail with before its first batch because of a setting, a file or the machine: one
# line, and the run folder as it was (`LogsSnapshot`)
SETUP_ERRORS = (ConfigError, DataConfigError, ValueError, TypeError, CheckpointError, OSError, MisconfigurationException)


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer deletes a run folder's metrics.csv when it starts. This one keeps the rows
    of the steps before the first step it logs: a resumed run (SLURM requeue, `--resume auto`) continues
    the history, and a fresh run in the same folder (first step 0) starts a new one."""

    def __init__(self, log_dir: str) -> None:
        path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self._history: list[dict[str, str]] | None = None
        if os.path.isfile(path):
            with open(path, newline="") as f:
                self._history = list(csv.DictReader(f))
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        pass  # the old rows are in memory; the file is rewritten at the first save

    def save(self) -> None:
        if self._history is None or not self.metrics:
            return super().save()
        first = min(int(m["step"]) for m in self.metrics)
        kept = [row for row in self._history if _step_of(row) < first]
        self._history = None
        self.metrics_keys = sorted(set().union(*kept, *self.metrics))
        with open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
            writer.writerows(self.metrics)
        self.metrics = []


def _step_of(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")  # compares false: such a row is not kept


class RunCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives a resume (see `_HistoryWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(log_dir=self.log_dir)
        return self._experiment


class StopOnSignal(Callback):
    """Stops training at the end of the batch during which `signum` arrived (any rank's signal stops all).

    With gradient accumulation it stops at the end of the first batch that completes an optimiser step.
    `LastCheckpoint` writes last.ckpt whenever the trainer stops, so the checkpoint holds that batch and
    a resumed run continues exactly; `worldmodel pretrain` then requeues a SLURM job (`requeue_job`).
    The handler is installed for fit only (not for a later validate / test / predict of the same trainer),
    from the main thread, and the previous one restored after.

    It is the only handler of its signal during fit: Lightning installs its own SIGTERM handler after the
    setup hooks, just before building the data loaders, and that handler runs a collective (a broadcast)
    inside the signal handler, on the rank that got the signal; a SIGTERM reaching some ranks only, or
    the whole process group, deadlocked a multi-process run for good. So the callback takes the signal
    back as soon as Lightning has installed its handlers (and again when training starts, in case a
    Lightning version installs them elsewhere). Here the handler only sets a flag, and the ranks agree at
    the next batch end.
    """

    def __init__(self, signum: int = signal.SIGUSR1) -> None:
        self.signum = signum
        self.received = False
        self._previous: Any = None

    def _on_signal(self, signum, frame) -> None:
        self.received = True

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(self.signum, self._on_signal)
            if self._previous is None:
                self._previous = previous  # the handler from before fit, put back at teardown

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._install()
            self._take_over_after_lightning(trainer)

    @staticmethod
    def _take_over_after_lightning(trainer) -> None:
        """Make the trainer's signal registration (Lightning's `_SignalConnector.register_signal_handlers`,
        called once per trainer call after `setup`) re-install every StopOnSignal handler right after it,
        when that call is a fit. Without that method (another Lightning version) nothing changes:
        `on_train_start` still takes over."""
        connector = getattr(trainer, "_signal_connector", None)
        register = getattr(connector, "register_signal_handlers", None)
        if register is None or getattr(register, "_stop_on_signal", False):
            return

        def register_then_take_over() -> None:
            register()
            if trainer.state.fn != TrainerFn.FITTING:
                return  # validate / test / predict: Lightning's handling, as without this callback
            for callback in trainer.callbacks:
                if isinstance(callback, StopOnSignal):
                    callback._install()

        register_then_take_over._stop_on_signal = True
        connector.register_signal_handlers = register_then_take_over

    def on_train_start(self, trainer, pl_module) -> None:
        self._install()  # again: over the handler Lightning installed when fit started

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not optimizer_stepped(trainer):
            return  # stop where an optimiser step ends: a checkpoint there holds every consumed batch's gradient
        stop = self.received
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.received = True
            trainer.should_stop = True

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            if signal.getsignal(self.signum) == self._on_signal:  # (Lightning may have restored its own snapshot)
                signal.signal(self.signum, self._previous)
            self._previous = None


def requeue_job(job_id: str | None = None) -> str:
    """Requeue this SLURM job (`scontrol requeue JOB`); returns what happened, for the log."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return "not a SLURM job: nothing requeued; continue with --resume auto"
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return f"scontrol not found: job {job_id} not requeued; resubmit it (its --resume auto continues)"
    done = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True)
    if done.returncode != 0:
        return f"scontrol requeue {job_id} failed ({done.stderr.strip() or done.returncode}); resubmit the job"
    return f"requeued SLURM job {job_id}"


class PretrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", type=str, default="runs/tiny", help="output folder of the run")
        parser.add_argument("--checkpoint_every", type=int, default=100, help="checkpoint every N steps")
        parser.add_argument(
            "--resume", type=str | None, default=None, help="checkpoint to resume from, or 'auto' (run_dir's last.ckpt)"
        )

    def before_instantiate_classes(self) -> None:
        """A config that asks for a GPU on a machine where torch has none is refused before the model is built
        (ViT-g takes half a minute and 8 GB to build, only for the trainer to refuse the accelerator)."""
        import torch

        accelerator = str(self.config.get("trainer", {}).get("accelerator")).lower()
        mps = accelerator == "gpu" and torch.backends.mps.is_available()  # Lightning's "gpu" on Apple silicon
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not mps:
            raise ValueError(f"trainer.accelerator={accelerator}, but torch finds no usable GPU (CUDA or MPS) here")

    def instantiate_trainer(self, **kwargs: Any):
        config = self.config_init
        run_dir = Path(config["run_dir"])
        if config["checkpoint_every"] < 1:
            raise ValueError(f"--checkpoint_every must be >= 1 (optimiser steps), got {config['checkpoint_every']}")
        trainer_cfg = config["trainer"]
        if trainer_cfg.get("default_root_dir") in (None, "", "."):
            kwargs["default_root_dir"] = str(run_dir)
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = [
                RunCSVLogger(save_dir=str(run_dir), name="logs", version=""),
                TensorBoardLogger(save_dir=str(run_dir), name="logs", version=""),
            ]
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if trainer_cfg.get("enable_checkpointing") is None and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            # LastCheckpoint is the run's checkpoint; without this Lightning adds its default ModelCheckpoint,
            # a second full copy under logs/checkpoints/
            trainer_cfg["enable_checkpointing"] = False
        if not any(isinstance(c, DataErrorCallback) for c in callbacks):
            callbacks.append(DataErrorCallback(out_dir=str(run_dir)))
        callbacks.append(DataProgressCallback())
        callbacks.append(LogsSnapshot(run_dir))  # before Lightning writes logs/ for this start
        plugins = trainer_cfg.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
            # our stop-at-a-batch-end on SIGUSR1 instead of Lightning's save-in-the-middle-of-a-step
            plugins.append(SLURMEnvironment(auto_requeue=False))
            if not any(isinstance(c, StopOnSignal) and c.signum == signal.SIGUSR1 for c in callbacks):
                callbacks.append(StopOnSignal())
        if not any(isinstance(c, StopOnSignal) and c.signum == signal.SIGTERM for c in callbacks):
            # kill, docker stop, a scheduler's preemption: stop at the batch's end with last.ckpt written there
            # (the command then exits with status 143, `_stopped_by_sigterm`)
            callbacks.append(StopOnSignal(signal.SIGTERM))
        # last: callbacks run in list order at the end of a batch, so the checkpoint holds that batch's
        # data-error counts too
        callbacks.append(LastCheckpoint(run_dir / "checkpoints", every_n_steps=config["checkpoint_every"]))
        trainer_cfg["callbacks"] = callbacks
        if not any(hasattr(p, "save_checkpoint") for p in plugins):
            plugins.append(AtomicCheckpointIO())
        trainer_cfg["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)


class LogsSnapshot(Callback):
    """A run folder's `logs/` as it was before a start, put back when the start fails before its first batch.

    Lightning writes `logs/config.yaml`, `hparams.yaml` and a new TensorBoard events file while it sets a
    run up. A resume refused at setup (another batch size, another architecture) would otherwise leave
    the run's config.yaml holding the refused settings, which the error itself points the user to, and
    a stray TensorBoard run; a failed first start would leave a run folder with logs and no checkpoint.
    `restore` (best effort, only while no batch has started) puts back the bytes of config.yaml and
    hparams.yaml, removes the files that appeared in logs/, and a run folder this start created when it
    is left empty. Symbolic links are left alone.
    """

    KEPT = ("config.yaml", "hparams.yaml")

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.logs = self.run_dir / "logs"
        self.started = False
        self.run_dir_existed = self.run_dir.exists()
        self.logs_existed = self.logs.is_dir()
        self.names: set[str] = set()
        self.kept: dict[str, bytes] = {}
        try:
            if self.logs_existed:
                self.names = {path.name for path in self.logs.iterdir()}
                for name in self.KEPT:
                    path = self.logs / name
                    if path.is_file() and not path.is_symlink():
                        self.kept[name] = path.read_bytes()
        except OSError:
            self.names, self.kept = set(), {}
            self.started = True  # cannot tell what was there: restore nothing

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.started = True

    def restore(self) -> None:
        if self.started:
            return
        try:
            if self.logs.is_dir():
                for path in self.logs.iterdir():
                    if path.name not in self.names and path.is_file() and not path.is_symlink():
                        path.unlink(missing_ok=True)
            for name, data in self.kept.items():
                path = self.logs / name
                if path.is_file() and not path.is_symlink() and path.read_bytes() != data:
                    tmp = path.with_name(f".{name}.restore")
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
            if not self.run_dir_existed:  # (the lock file of this start: the folder goes as it came)
                (self.run_dir / ".lock").unlink(missing_ok=True)
            for folder, existed in ((self.logs, self.logs_existed), (self.run_dir, self.run_dir_existed)):
                if not existed and folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        except OSError:
            pass  # best effort: the error that stopped the start is what matters


def resolve_resume(resume: str | None, run_dir: str) -> str | None:
    if resume is None:
        return None
    if resume == "auto":
        last = Path(run_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).is_file():
        raise SystemExit(f"worldmodel pretrain: --resume {resume}: no such checkpoint file")
    return resume


def _first_process() -> bool:
    """Whether this is the job's first process (global rank 0), from the launchers' environment variables
    (torchrun, SLURM, Lightning's own launcher), before the trainer has set up its process group."""
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


def _lock_run_dir(run_dir: Path) -> IO[str] | None:
    """One run at a time in a run folder: the job's first process holds an exclusive lock on `run_dir/.lock`
    while it runs. A second start in the same folder (the same command run twice, a relaunch while the
    first job's rank 0 still trains) wrote the same last.ckpt and metrics.csv rows twice; it now stops at
    once. Returns the open lock file (closing it lets go; so does the process's end), None where nothing is
    locked: another rank, or a file system that cannot lock (some network file systems)."""
    import fcntl

    if not _first_process():
        return None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")
    except OSError:
        return None  # the run's own writes will say what is wrong with the folder
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise SystemExit(f"worldmodel pretrain: error: another run is using {run_dir} (process {holder}); wait for it "
                         "to end (or stop it), or use another --run_dir") from None
    except OSError:
        handle.close()
        return None  # no locks on this file system
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _resume_over_a_run(ckpt: str | None, final: Path) -> str | None:
    """The checkpoint to start from, when --resume names another file while run_dir already holds a run
    (its checkpoints/last.ckpt): starting there would overwrite that run's progress at the first save.
    Refused, except in a requeued SLURM job (SLURM_RESTART_COUNT >= 1), which replays its first command
    line (`sbatch launch_slurm.sh ... --resume OTHER.ckpt`) and must continue its own run, not restart
    from OTHER.ckpt every time."""
    if ckpt is None or not final.is_file() or Path(ckpt).resolve() == final.resolve():
        return ckpt
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) >= 1:
        print(f"[worldmodel] requeued SLURM job: continuing this run from {final}, not from --resume {ckpt} "
              "(where its first start began)", flush=True)  # fmt: skip
        return str(final)
    raise SystemExit(
        f"worldmodel pretrain: error: --resume {ckpt}: {final.parent.parent} already holds a run ({final}), which "
        "starting from another checkpoint would overwrite; continue that run with --resume auto, or start from "
        f"{ckpt} in another --run_dir (or delete that folder first)"
    )


PRETRAIN_HELP = (
    "Pretrain a video JEPA with Lightning. Without --config the shipped `tiny` config runs (CPU, the "
    "built-in corpus). The defaults listed below are the classes' own, NOT the config's: see what a run "
    "will use with `worldmodel pretrain [--config NAME] --print_config`, and the shipped configs with "
    "`worldmodel pretrain --list-configs`. Options override the config in dotted form, e.g. "
    "--trainer.max_steps 800 --data.batch_size 16."
)


def run_pretrain_cli(argv: list[str]) -> PretrainCLI:
    # `worldmodel pretrain ARGS` hands ARGS (with the config resolved) to LightningCLI; sys.argv keeps
    # the whole command so Lightning's DDP launcher can start the other ranks with it.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    # deprecations inside Lightning's own calls into torch (its all_gather and pytree helpers): nothing a
    # user can act on, printed by every process of a multi-process run
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    try:
        cli = PretrainCLI(
            JEPAPretrainer,
            VideoDataModule,
            args=argv,
            run=False,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"use_distributed_sampler": False},
            seed_everything_default=0,
            # the optimiser is the model's (AdamW, no decay on biases / norms / mask tokens, scheduled lr
            # and wd): no --optimizer / --lr_scheduler options that it would ignore
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "worldmodel pretrain", "description": PRETRAIN_HELP},
        )
    except (ValueError, TypeError, OSError, MisconfigurationException) as err:  # a setting refused: say which
        raise SystemExit(f"worldmodel pretrain: error: {err}{_gpu_hint(err)}") from None
    run_dir = Path(cli.config["run_dir"])
    final = run_dir / "checkpoints" / "last.ckpt"
    if cli.config["resume"] is None and final.exists():  # a new run would overwrite that one's checkpoint
        raise SystemExit(
            f"worldmodel pretrain: error: {run_dir} already holds a run ({final}); continue it with --resume auto, or "
            "start a new run in another --run_dir (or delete that folder first)"
        )
    ckpt = resolve_resume(cli.config["resume"], cli.config["run_dir"])
    ckpt = _resume_over_a_run(ckpt, final)
    lock = _lock_run_dir(run_dir)
    try:
        return _fit(cli, ckpt, final)
    finally:
        if lock is not None:
            lock.close()


def _fit(cli: PretrainCLI, ckpt: str | None, final: Path) -> PretrainCLI:
    snapshot = next((c for c in cli.trainer.callbacks if isinstance(c, LogsSnapshot)), None)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    except DataFailureError as err:  # too many unusable videos: the message lists them, a traceback adds nothing
        # the threshold stops every rank at the same batch: rank 0 says why, for all of them; a sample that
        # found no usable video stops the rank it was drawn on, which says so itself
        said = cli.trainer.is_global_zero or isinstance(err, SampleFailureError)
        raise SystemExit(f"worldmodel pretrain: stopped: {err}" if said else 1) from None
    except NonFiniteLossError as err:
        where = (f"Checkpoint: {final}" if final.exists() else
                 f"No checkpoint was written before it (the first is due at step {cli.config['checkpoint_every']}).")
        # every rank stops at the same step (JEPAPretrainer._loss_over_ranks); rank 0 says why, naming the ranks
        raise SystemExit(f"worldmodel pretrain: stopped: {err} {where}" if cli.trainer.is_global_zero else 1) from None
    except SIGTERMException:  # (Lightning's own handler: only where StopOnSignal could not replace it at once)
        _stopped_by_sigterm(cli, final)
    except SETUP_ERRORS as err:
        if snapshot is None or snapshot.started:
            raise  # during training: a fault, with its traceback
        if cli.trainer.is_global_zero:  # the run folder as it was: its config.yaml keeps the run's settings
            snapshot.restore()
        raise SystemExit(f"worldmodel pretrain: error: {err}{_gpu_hint(err)}") from None
    signals = {c.signum for c in cli.trainer.callbacks if isinstance(c, StopOnSignal) and c.received}
    # a SLURM stop (SIGUSR1) requeues the job, whatever came after it; a SIGTERM after the last step is no stop
    if signal.SIGTERM in signals and not reached_max_steps(cli.trainer) and not signals - {signal.SIGTERM}:
        _stopped_by_sigterm(cli, final)
    stopped = bool(signals - {signal.SIGTERM})
    timer = next((c for c in cli.trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining("train") if timer is not None else None
    if cli.trainer.is_global_zero:
        if stopped:
            print(f"[worldmodel] stopped by signal at step {cli.trainer.global_step}; checkpoint: {final}; {requeue_job()}")
        elif remaining is not None and remaining <= 0:
            print(f"[worldmodel] stopped by trainer.max_time at step {cli.trainer.global_step}; checkpoint: {final}; "
                  "continue with --resume auto (and a later max_time)")
        else:
            print(f"[worldmodel] finished at step {cli.trainer.global_step}; checkpoint: {final}")
    return cli


def _stopped_by_sigterm(cli: PretrainCLI, final: Path) -> None:
    """SIGTERM (kill, docker stop, a scheduler): StopOnSignal stopped every rank at the end of a batch and
    LastCheckpoint wrote last.ckpt there, when it was a whole optimiser step. Says where, exits 143."""
    if cli.trainer.is_global_zero:
        saver = next((c for c in cli.trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        saved = saver.saved_step if saver is not None else -1
        if saved == cli.trainer.global_step:
            where = f"checkpoint: {final}"
        elif final.exists():  # part-way through gradient accumulation: no checkpoint for this step
            where = f"the latest checkpoint, {final}, is from an earlier step (stopped part-way through accumulation)"
        else:
            where = "no checkpoint was written yet"
        print(f"[worldmodel] stopped by SIGTERM at step {cli.trainer.global_step}; {where}; "
              "continue with --resume auto", flush=True)  # fmt: skip
    raise SystemExit(128 + signal.SIGTERM)


def _gpu_hint(err: BaseException) -> str:
    """What to do about Lightning's 'no GPU' errors on a machine without one."""
    text = str(err).lower()
    if "gpu" not in text and "cuda" not in text:
        return ""
    import torch

    if torch.version.cuda is None and torch.version.hip is None:  # the GPU may be there: this torch cannot use it
        return (f"; this torch ({torch.__version__}) is a CPU-only build, which cannot use a GPU even where there is "
                "one (e.g. installed on a login node without a GPU): reinstall with the CUDA build, "
                "`TORCH_BUILD=cuda bash scripts/install.sh`, or run on the CPU: --trainer.accelerator cpu "
                "--trainer.devices 1 --trainer.strategy auto --trainer.precision 32")
    return ("; this config asks for a GPU (trainer.accelerator / devices / strategy / precision) and torch finds none "
            "here: run it where there is one, or on the CPU: --trainer.accelerator cpu --trainer.devices 1 "
            "--trainer.strategy auto --trainer.precision 32")
