"""The one training loop of every training verb: run folders, the optimiser and schedule, EMA, exact resume.

``train-vae``, ``train-generator``, ``train-adapter``, ``distill``, ``train-fer``, ``train-au-estimator`` and
``train-annotator`` differ in their modules, data, loss and what they score on validation; :class:`Trainer` runs
the rest: AdamW or SGD (Nesterov) on the modules' trainable parameters (linear warm-up, cosine decay), accelerate
for devices and mixed precision (:mod:`synfer.core.runtime`), optional gradient clipping, an EMA with warm-up,
a progress bar with rates, one ``metrics.jsonl`` line per epoch, the best validation result so far, and
pickle-free resume state (:mod:`synfer.core.train_state`) in ``OUT/state`` guarded by an options fingerprint.

Exact resume: weights, optimizer, schedule, EMA and every RNG are restored, and the loader is told its epoch
(accelerate's loader overrides the sampler's epoch otherwise). Validation and sample grids draw from their own
seeded generators, so judging a run never shifts its training randomness.

Modules are moved to the device but not wrapped in DistributedDataParallel: the AU adapter's weights are used
inside the UNet's attention processors, not through a ``forward`` of their own, which DDP cannot follow. With
several processes the gradients are averaged by one all-reduce per step instead.

Process counts: every process seeds its generators alike and draws the per-face randomness of a step (noise,
timesteps, caption and AU dropout) for the whole global batch through :func:`batch_draw`, keeping its own rows, so a
run of a per-face denoising loss (train-generator, train-adapter, distill, train-vae) on N processes takes the steps
of a run on one, within the all-reduce's rounding. What only makes sense per process (augmentation, dropout and
sampled labels of its own rows in train-fer and train-au-estimator) draws inside :func:`local_draws`, from a stream
forked per process off the shared one; losses averaged over a per-process count (the AU-consistency term, masked AU
losses) and BatchNorm statistics are per process, as in any data-parallel run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .dataset import DatasetError, FolderLock, replace_path
from .options import RunOptions, Schedule
from .runtime import make_accelerator, resolve_device, resolve_precision
from .train_state import load_state, open_run_dir, rng_state, save_state, set_rng_state, warmup_cosine

# -- run folder and accelerator ----------------------------------------------------------------------------------
#: ``report_to`` values: accelerate's tracker name and the package it needs.
TRACKERS = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb"}


def check_report_to(report_to: str) -> str | None:
    """The accelerate tracker for ``report_to`` (None for ``none``); refused, before anything is written, when
    unknown or when its package is missing."""
    import importlib.util

    if report_to not in TRACKERS:
        raise ValueError(f"report_to must be one of {', '.join(TRACKERS)}; got {report_to!r}.")
    package = TRACKERS[report_to]
    if package is not None and importlib.util.find_spec(package) is None:
        raise ValueError(f"report_to={report_to} needs the {package} package: pip install 'synfer[tracking]' "
                         f"(or pip install {package}).")
    return package and report_to


def start_run(out: Path, run: RunOptions, schedule: Schedule, precision: str | None = None) -> tuple[Any, bool]:
    """Check the options and the run folder, make the Accelerator (``run.precision``, or ``precision`` where the
    verb decides it: see :mod:`synfer.core.runtime`; ``run.report_to``: :data:`TRACKERS`, logging under
    ``out/logs``) and seed everything; returns ``(accelerator, resume)``.

    ``resume`` comes back False where the folder holds no finished epoch yet (start from scratch in it).
    """
    from accelerate.utils import set_seed

    processes = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun / accelerate launch set it
    if schedule.batch_size % processes:
        raise ValueError(f"batch_size {schedule.batch_size} must be a multiple of the {processes} processes (each "
                         "takes an equal share of every batch).")
    precision = precision or run.precision
    resolve_precision(precision, resolve_device("auto"))  # checked before the run folder is touched
    tracker = check_report_to(run.report_to)
    # the main process checks, locks and (with overwrite) clears the folder; the others learn whether it resumes
    main = os.environ.get("RANK", "0") == "0"
    resume = open_run_dir(out, run.resume, run.overwrite) if main else run.resume
    accel = make_accelerator(precision, log_with=tracker, project_dir=out / "logs" if tracker else None)
    if accel.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        resume = bool(broadcast_object_list([resume], from_process=0)[0])
    if tracker:
        accel.init_trackers(out.name)
    set_seed(run.seed)  # alike on every process: batch_draw slices one draw for the global batch
    return accel, resume


def batch_draw(draw: Callable[[int], torch.Tensor], rows: int) -> torch.Tensor:
    """``draw(n)`` (random numbers for n faces, along dim 0) for the whole global batch, and this process's ``rows``
    of it: process k holds rows k*rows .. (k+1)*rows of each batch (accelerate's ``split_batches``). Each face then
    gets the same noise, timestep and dropout whatever the number of processes; with one process it is
    ``draw(rows)``, the same stream as before."""
    from accelerate import PartialState

    state = PartialState()
    n, k = state.num_processes, state.process_index
    return draw(rows) if n == 1 else draw(rows * n)[k * rows:(k + 1) * rows]


@contextmanager
def local_draws() -> Iterator[None]:
    """Random draws inside are this process's own: with several processes, from a stream forked off the shared one
    and seeded by one number drawn from it plus the process index (the shared streams stay in step, the processes'
    augmentations and dropout masks differ); with one process, the shared stream itself, unchanged."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,))) + state.process_index  # drawn by all: shared streams stay in step
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)  # the current device only: the one forked
        yield


def append_metrics(out: Path, row: dict[str, Any]) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def atomic_save_dir(dest: Path, write: Callable[[Path], Any]) -> Path:
    """Let ``write(folder)`` fill a temporary folder beside ``dest``, then swap it in: never a half-written folder."""
    tmp = dest.with_name(f".tmp-{dest.name}")
    if tmp.exists():  # left by a killed run
        shutil.rmtree(tmp)
    write(tmp)
    replace_path(tmp, dest)
    return dest


# -- EMA -----------------------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of parameters, with warm-up: decay_k = min(decay, (1 + k) / (10 + k)).

    Without the warm-up the average of a short run is mostly the random initialisation (0.999 ** 1000 = 0.37).
    """

    def __init__(self, params: Sequence[nn.Parameter], decay: float) -> None:
        self.params, self.decay, self.updates = list(params), float(decay), 0
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().float(), 1.0 - d)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The parameters hold the average inside the block and their exact training values after it."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup, strict=True):
                    p.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = [s.to(p.device, torch.float32) for s, p in zip(state["shadow"], self.params, strict=True)]
        self.updates = int(state["updates"])


# -- the loop ------------------------------------------------------------------------------------------------------
def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """What a resume restores of a module: the parameters that train (a frozen backbone, a LoRA's base weights
    are left out) and the buffers of the submodules that own them (BatchNorm's running statistics)."""
    state = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    for name, sub in module.named_modules():
        if any(p.requires_grad for p in sub.parameters(recurse=False)):
            for b, t in sub.named_buffers(recurse=False):
                if t is not None and b not in sub._non_persistent_buffers_set:
                    state[f"{name}.{b}" if name else b] = t.detach()
    return state


def canonical_fingerprint(value: Any) -> Any:
    """``value`` without the keys that start with ``_``, at any depth. diffusers configs carry bookkeeping such as
    ``_use_default_values``, a list built from a set: its order changes from one Python process to the next, so
    a run resumed in a new process would otherwise look as if it had been started with other options."""
    if isinstance(value, dict):
        return {k: canonical_fingerprint(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [canonical_fingerprint(v) for v in value]
    return value


class Trainer:
    """AdamW + warm-up/cosine schedule + EMA over the trainable parameters of ``modules``; see the module docs.

    Args:
        accel: the Accelerator of :func:`start_run`.
        out: run folder (``metrics.jsonl``, ``state/``).
        modules: name -> module (already on ``accel.device``); their ``requires_grad`` parameters train.
        epochs, steps_per_epoch: for the schedule (steps per process).
        lr, weight_decay, warmup_steps, max_grad_norm, ema_decay: the optimisation (ema_decay 0 = no EMA,
            max_grad_norm 0 = no clipping); warm-up is at most a tenth of the run.
        optimizer: ``adamw`` or ``sgd`` (Nesterov, ``momentum``).
        decay_1d: weight decay on 1-d parameters (biases, norms) too; False leaves them undecayed.
        fingerprint: the options that shape the run (architecture, data); a resume with other values is refused.
        extra_state: more objects with ``state_dict`` / ``load_state_dict`` (e.g. a distillation's target
            network, an :class:`EMA` of its own) saved in and restored from the resume state.
    """

    def __init__(self, accel: Any, out: Path, modules: dict[str, nn.Module], epochs: int, steps_per_epoch: int,
                 lr: float, weight_decay: float = 1e-2, warmup_steps: int = 500, max_grad_norm: float = 1.0,
                 ema_decay: float = 0.0, fingerprint: dict[str, Any] | None = None,
                 extra_state: dict[str, Any] | None = None, optimizer: str = "adamw", momentum: float = 0.9,
                 decay_1d: bool = True) -> None:
        self.accel, self.out, self.modules, self.epochs = accel, out, modules, epochs
        self._share_main_weights()
        self.extra_state = dict(extra_state or {})
        self.fingerprint = canonical_fingerprint(json.loads(json.dumps(fingerprint or {})))  # as read from JSON
        self.params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("Nothing to train: every parameter is frozen.")
        self.max_grad_norm = max_grad_norm
        groups = [{"params": self.params, "weight_decay": weight_decay}] if decay_1d else [
            {"params": [p for p in self.params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in self.params if p.ndim <= 1], "weight_decay": 0.0}]
        if optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr)
        elif optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
        else:
            raise ValueError(f"optimizer must be adamw or sgd; got {optimizer!r}.")
        # warm-up: warmup_steps, but at most a tenth of the run (short runs still get their cosine decay)
        total = max(1, epochs * steps_per_epoch)
        warm = max(1, min(warmup_steps, total // 10))
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warm, total))
        self.opt = accel.prepare(opt)  # fp16's grad scaler lives in the prepared optimizer
        self.ema = EMA(self.params, ema_decay) if ema_decay > 0 else None
        self.step, self.start_epoch = 0, 0
        self.best: dict[str, Any] = {}  # the best validation result so far (the verb decides what is best)
        self.epoch = 0

    @torch.no_grad()
    def _share_main_weights(self) -> None:
        """Every process starts from the main process's weights and buffers: fresh layers are initialised from
        per-process seeds (``start_run`` seeds each process on its own), and gradients are averaged, not weights."""
        if self.accel.num_processes == 1:
            return
        from accelerate.utils import broadcast

        for module in self.modules.values():
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.copy_(broadcast(tensor.detach().clone(), from_process=0))

    def begin(self, resume: bool, stage: str, record: dict[str, Any], data: dict[str, Any]) -> None:
        """Restore the last finished epoch when ``resume`` (:meth:`load`), then write ``OUT/train_config.json``
        from the main process: the verb's ``stage``, its resolved options (``record``), library versions, the
        process count and a summary of the ``data``."""
        from .dataset import atomic_write_json
        from .provenance import provenance_entry

        if resume:
            self.load()
        if self.accel.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "train_config.json", provenance_entry(
                stage, record, data=data, processes=self.accel.num_processes))

    def load(self) -> None:
        """Restore ``OUT/state`` (weights, optimizer, schedule, EMA, RNG, epoch). Call it right before :meth:`fit`
        (anything drawing random numbers in between would make the resumed run differ from an uninterrupted one)."""
        st = load_state(self.out / "state")
        saved_fp = canonical_fingerprint(st["fingerprint"])  # bookkeeping keys are never compared
        if saved_fp != self.fingerprint:
            diff = {k: (saved_fp.get(k), self.fingerprint.get(k)) for k in set(saved_fp) | set(self.fingerprint)
                    if saved_fp.get(k) != self.fingerprint.get(k)}
            raise DatasetError(f"{self.out} was started with other options, (then, now): {diff}; resume with the "
                               "same options or pass --overwrite to restart.")
        for name, module in self.modules.items():
            saved, want = st["modules"][name], trainable_state(module)
            if set(saved) != set(want) or any(saved[k].shape != want[k].shape for k in want):
                raise DatasetError(f"{self.out / 'state'}: the saved {name} weights do not match this run's model "
                                   "(other options?); resume with the run's own options or pass --overwrite.")
            with torch.no_grad():
                for k, v in want.items():
                    v.copy_(saved[k])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(st["ema"])
        for name, obj in self.extra_state.items():
            obj.load_state_dict(st["extra"][name])
        set_rng_state(st["rng"])
        self.step, self.start_epoch, self.best = st["step"], st["epoch"] + 1, dict(st.get("best") or {})
        metrics = self.out / "metrics.jsonl"
        if metrics.exists() and self.accel.is_main_process:  # lines of an epoch whose state was never saved go
            lines = [x for x in metrics.read_text().splitlines() if x and json.loads(x)["epoch"] <= self.start_epoch]
            tmp = metrics.with_name(".tmp-metrics.jsonl")
            tmp.write_text("".join(x + "\n" for x in lines))
            os.replace(tmp, metrics)
        self.accel.print(f"resuming {self.out} at epoch {self.start_epoch + 1}")

    def _average_gradients(self) -> None:
        if self.accel.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.accel.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
        for p, g in zip(self.params, flat.split([g.numel() for g in grads]), strict=True):
            p.grad = g.view_as(p)

    def fit(self, loader: Any, loss_fn: Callable[[Any], torch.Tensor],
            end_epoch: Callable[[int], dict[str, Any]], after_step: Callable[[], None] | None = None) -> None:
        """Train from ``start_epoch`` to ``epochs``.

        ``loss_fn(batch)`` returns the scalar loss (run under autocast); a batch's first element gives its size.
        ``after_step()`` runs after every optimiser step (and the EMA's update), e.g. to move a target network.
        ``end_epoch(epoch)`` runs on the main process after each epoch (validation, grids, export) and returns
        metrics for that epoch's line; the resume state is saved after it.
        """
        accel = self.accel
        for epoch in range(self.start_epoch, self.epochs):
            self.epoch = epoch  # the epoch running (0-based), for end_epoch
            for m in self.modules.values():
                m.train()
            loader.set_epoch(epoch)  # accelerate's loader passes its own epoch count to the sampler otherwise
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                       disable=not accel.is_local_main_process, mininterval=2.0)
            for batch in bar:
                with accel.autocast():
                    loss = loss_fn(batch)
                self.opt.zero_grad(set_to_none=True)
                accel.backward(loss)
                self._average_gradients()
                if self.max_grad_norm:
                    accel.clip_grad_norm_(self.params, self.max_grad_norm)
                self.opt.step()
                self.sched.step()
                if self.ema is not None:
                    self.ema.update()
                if after_step is not None:
                    after_step()
                self.step += 1
                n = len(batch[0])
                seen, loss_sum = seen + n, loss_sum + loss.item() * n
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{self.sched.get_last_lr()[0]:.2e}")
            train_s = time.perf_counter() - t0
            if accel.is_main_process:
                for m in self.modules.values():
                    m.eval()
                row = {"epoch": epoch + 1, "step": self.step, "train_loss": loss_sum / max(1, seen),
                       "lr": self.sched.get_last_lr()[0], "images_per_s": seen * accel.num_processes / train_s}
                row.update(end_epoch(epoch))
                row["epoch_s"] = time.perf_counter() - t0
                append_metrics(self.out, row)
                accel.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                          step=self.step)  # the trackers of report_to (none: nothing)
                accel.print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
                save_state(self.out / "state", {
                    "modules": {k: trainable_state(m) for k, m in self.modules.items()},
                    "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "ema": self.ema.state_dict() if self.ema is not None else None, "rng": rng_state(),
                    "extra": {k: v.state_dict() for k, v in self.extra_state.items()},
                    "epoch": epoch, "step": self.step, "fingerprint": self.fingerprint, "best": self.best,
                })
            accel.wait_for_everyone()
        if accel.num_processes > 1:  # the main process judged the epochs: every process learns the result
            from accelerate.utils import broadcast_object_list

            self.best = broadcast_object_list([self.best], from_process=0)[0]
        accel.end_training()  # flush and close the trackers
        FolderLock(self.out).release()  # taken by start_run (open_run_dir)

    @contextmanager
    def weights(self, which: str) -> Iterator[None]:
        """``"raw"`` (as trained) or ``"ema"`` weights inside the block."""
        if which == "ema" and self.ema is not None:
            with self.ema.swapped():
                yield
        else:
            yield
