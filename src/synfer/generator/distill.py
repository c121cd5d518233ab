"""``synfer distill``: a few-step student of a synfer generator, by latent consistency distillation.

Latent consistency distillation (LCD; Luo et al. 2023, "Latent Consistency Models", after Song et al. 2023,
"Consistency Models"): the student ``f(z_t, t, c)`` learns to map any point of the teacher's guided sampling
trajectory straight to its end. On the grid of ``num_ddim_steps`` DDIM timesteps ``t_n = n k - 1``
(``k = 1000 / num_ddim_steps``), for a real face's latent ``z_0`` noised to ``t_{n+1}``:

* the **teacher** (the generator at its saved guidance defaults, text and AU classifier-free guidance, frozen)
  takes one DDIM step ``z_{t_{n+1}} -> z_{t_n}`` with its guided noise prediction;
* the **target network** (an EMA of the student, decay ``target_decay``) reads ``z_{t_n}``:
  ``y = f_target(z_{t_n}, t_n, c)``;
* the **student** reads ``z_{t_{n+1}}`` and is pulled to ``y`` by a pseudo-Huber loss (Song & Dhariwal 2023:
  ``sqrt(d^2 + c^2) - c``, ``c = 0.00054 sqrt(dim)``).

``f(z, t) = c_skip(t) z + c_out(t) x0(z, eps(z, t))`` with LCM's boundary scalings (diffusers' ``LCMScheduler``,
which samples the student: a step predicts ``f``, then noises it to the next timestep of a 2-8 step schedule).
The guidance is folded in: the student samples with the fully conditional row alone (text + AU tokens, guidance
scales 1), one UNet evaluation per step, so 4 steps cost a fifth of the teacher's 10 steps x 2 rows.

The student is the teacher's UNet and AU adapter, copied and trained together; the VAE and text encoder are the
teacher's, frozen. Conditions are those of ``train-adapter``: each face's caption (or, with ``class_prompts``, a
class-level prompt for its expression, as ``generate`` sends) and its AU vector (the adapter's null tokens with
probability ``au_dropout`` and where a face has none; the teacher then guides on text alone).

Each epoch the raw and the EMA student sample the same fixed validation conditions and noise in
``sample_steps`` steps, and the one whose final latents lie closer (MSE) to the teacher's own samples of them is
exported. The run folder::

    OUT/pipeline/             the student SynferPipeline (LCMScheduler, ``sample_steps`` steps, guidance 1/1)
    OUT/samples/epoch_NNN.png teacher (top row) and student faces for the same conditions and seeds
    OUT/metrics.jsonl         train loss, val MSE to the teacher (raw, EMA), images/s per epoch
    OUT/train_config.json, OUT/state/
"""

from __future__ import annotations

import copy
import inspect
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.dataset import DatasetError
from ..core.images import save_grid
from ..core.options import RunOptions, Schedule
from ..core.runtime import autocast, resolve_precision
from ..core.splits import index_loader, load_split
from ..core.training import EMA, Trainer, atomic_save_dir, batch_draw, start_run
from ..models.denoiser import denoise
from .captions import CaptionEmbedder
from .guidance import predict_x0
from .train_adapter import class_level_prompts
from .train_vae import encode_latents

#: Validation conditions sampled by teacher and student each epoch.
VAL_FACES = 256


class ConsistencyDistiller:
    """The teacher, the student (UNet + AU adapter, installed), its target network and the loss of one batch.

    Args:
        pipe: the teacher SynferPipeline (frozen; its adapter is installed on its UNet while this object lives).
        num_ddim_steps: N, the DDIM grid the teacher steps on.
        target_decay: EMA decay of the target network.
        precision: a resolved precision (autocast of every UNet call; the loss in fp32).
        adapter_scale: the teacher's AU adapter scale (None: its saved default).
    """

    def __init__(self, pipe: Any, num_ddim_steps: int, target_decay: float, precision: str,
                 adapter_scale: float | None = None) -> None:
        from diffusers import LCMScheduler

        if pipe.au_adapter is None:
            raise ValueError("distill needs a generator with an AU adapter (the student learns the AU condition).")
        if not 1 < num_ddim_steps <= pipe.scheduler.config.num_train_timesteps // 2:
            raise ValueError(f"num_ddim_steps must be in 2..{pipe.scheduler.config.num_train_timesteps // 2}; got "
                             f"{num_ddim_steps}.")
        self.pipe, self.precision = pipe, precision
        defaults = pipe.generation_defaults()
        self.w_text, self.w_au = defaults["guidance_scale_text"], defaults["guidance_scale_au"]
        self.adapter_scale = float(defaults["au_adapter_scale"] if adapter_scale is None else adapter_scale)
        self.teacher_unet, self.teacher_adapter = pipe.unet, pipe.au_adapter
        self.unet = copy.deepcopy(pipe.unet).requires_grad_(True)
        self.adapter = copy.deepcopy(pipe.au_adapter).requires_grad_(True)
        self.teacher_unet.requires_grad_(False).eval()
        self.teacher_adapter.requires_grad_(False).eval()
        self.teacher_adapter.install(self.teacher_unet)
        self._teacher_scale = self.teacher_adapter.scaled(self.adapter_scale)  # undone by close()
        self._teacher_scale.__enter__()
        self.adapter.install(self.unet)
        self.adapter.set_scale(1.0)
        # the teacher's noise schedule, and LCM's own settings for the rest (its other solver keys do not apply)
        keep = set(inspect.signature(LCMScheduler.__init__).parameters) - {"timestep_spacing", "set_alpha_to_one"}
        self.scheduler = LCMScheduler(**{k: v for k, v in pipe.scheduler.config.items() if k in keep
                                         and k != "original_inference_steps"}, original_inference_steps=num_ddim_steps)
        self.alphas = self.scheduler.alphas_cumprod.float()
        n_train = self.scheduler.config.num_train_timesteps
        self.k = n_train // num_ddim_steps
        self.grid = torch.arange(1, num_ddim_steps + 1) * self.k - 1  # t_1 .. t_N = k-1 .. n_train-1
        self.params = [p for m in (self.unet, self.adapter) for p in m.parameters()]
        self.target = EMA(self.params, target_decay)
        dim = math.prod((pipe.unet.config.in_channels, *(_size(pipe.unet.config.sample_size))))
        self.huber_c = 0.00054 * math.sqrt(dim)

    def close(self) -> None:
        """Take the adapters off the UNets (the teacher pipeline is as it was)."""
        self._teacher_scale.__exit__(None, None, None)
        self.teacher_adapter.remove(self.teacher_unet)
        self.adapter.remove(self.unet)

    def boundary(self, t: torch.Tensor, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``f = c_skip(t) z + c_out(t) x0(z, eps)`` per face (the scalings of the LCMScheduler that samples the
        student); t (B,), z and eps (B, c, h, w) fp32."""
        c_skip, c_out = self.scheduler.get_scalings_for_boundary_condition_discrete(t.float().view(-1, 1, 1, 1))
        return c_skip * z + c_out * predict_x0(self.scheduler, z, eps, t)

    @torch.no_grad()
    def teacher_step(self, z: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, text: torch.Tensor,
                     empty: torch.Tensor, aus: torch.Tensor, use_aus: torch.Tensor) -> torch.Tensor:
        """One guided DDIM step of the teacher from ``t`` to ``t_prev`` (both (B,)) under the pipeline's rows:
        "" + null tokens, text + null tokens, text + AU tokens (null tokens where ``use_aus`` is False)."""
        null = self.teacher_adapter.encode(None, batch_size=len(z)).to(text.dtype)
        cond = self.teacher_adapter.condition(text, aus, ~use_aus)
        w_t, w_a = self.w_text, self.w_au
        # per face: (uncond, text, text + AUs) weights of the pipeline's rule; text only where AUs are dropped
        weights = torch.stack([torch.full_like(t, 1 - w_t, dtype=torch.float32),
                               torch.where(use_aus, w_t - w_a, w_t).float(),
                               torch.where(use_aus, w_a, 0.0).float()])  # (3, B)
        rows = [r for r in range(3) if bool(weights[r].ne(0).any())]
        conds = {0: torch.cat([empty, null], 1), 1: torch.cat([text, null], 1), 2: cond}
        with autocast(z.device, self.precision):
            out = denoise(self.teacher_unet, torch.cat([z] * len(rows)), torch.cat([t] * len(rows)),
                          torch.cat([conds[r] for r in rows])).float()
        eps = sum(weights[r].view(-1, 1, 1, 1) * part for r, part in zip(rows, out.chunk(len(rows)), strict=True))
        a_prev = self.alphas.to(z.device)[t_prev].view(-1, 1, 1, 1)
        x0 = predict_x0(self.scheduler, z, eps, t)
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps

    def student(self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``f_student(z, t, cond)`` (B, c, h, w) in fp32, with gradients."""
        with autocast(z.device, self.precision):
            eps = denoise(self.unet, z, t, cond)
        return self.boundary(t, z, eps.float())

    def loss(self, z0: torch.Tensor, text: torch.Tensor, empty: torch.Tensor, aus: torch.Tensor,
             use_aus: torch.Tensor) -> torch.Tensor:
        """The consistency-distillation loss of one batch of clean latents (B, c, h, w) under its conditions:
        text (B, L, D), the "" text, AU vectors (B, A) and which faces use them (B,) bool."""
        n = batch_draw(lambda m: torch.randint(0, len(self.grid), (m,)), len(z0))
        t = self.grid[n].to(z0.device)
        t_prev = (t - self.k).clamp(min=0)
        noise = batch_draw(lambda m: torch.randn((m, *z0.shape[1:]), device=z0.device, dtype=z0.dtype), len(z0))
        z_t = self.scheduler.add_noise(z0, noise, t)
        z_prev = self.teacher_step(z_t, t, t_prev, text, empty, aus, use_aus)
        with torch.no_grad(), self.target.swapped():  # before the student's forward: its graph keeps the weights
            target = self.student(z_prev, t_prev, self.adapter.condition(text, aus, ~use_aus))
        pred = self.student(z_t, t, self.adapter.condition(text, aus, ~use_aus))
        d2 = (pred - target).pow(2).flatten(1).mean(1)
        return (torch.sqrt(d2 + self.huber_c**2) - self.huber_c).mean()

    @torch.no_grad()
    def sample(self, unet: Any, cond: torch.Tensor, noise: torch.Tensor, steps: int,
               generator_seeds: list[int]) -> torch.Tensor:
        """The student's ``steps``-step LCM sample (B, c, h, w) from ``noise`` under ``cond``."""
        sched = copy.deepcopy(self.scheduler)
        sched.set_timesteps(steps, device=noise.device)
        gens = [torch.Generator().manual_seed(s) for s in generator_seeds]
        z = noise.clone()
        for t in sched.timesteps:
            with autocast(z.device, self.precision):
                eps = denoise(unet, z, t, cond).float()
            z = sched.step(eps, t, z, generator=gens, return_dict=False)[0]
        return z


def _size(sample_size: Any) -> tuple[int, int]:
    return (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)


def distill(
    data: list[Path],
    out: Path,
    pipeline: str = "bundled",
    split: str = "train",
    val_split: str = "val",
    num_ddim_steps: int = 50,
    sample_steps: int = 4,
    class_prompts: float = 0.5,
    au_dropout: float = 0.1,
    target_decay: float = 0.95,
    ema_decay: float = 0.999,
    teacher_adapter_scale: float | None = None,
    text_cache: Path | None = None,
    schedule: Schedule = Schedule(6, 64, 5e-5),
    run: RunOptions = RunOptions(),
) -> Path:
    """Distil a generator into a few-step student (latent consistency distillation; see the module docs).

    Args:
        data: prepared dataset folders (captions and AUs, from ``synfer prepare``), in the adapter's AU order.
        out: run folder (see the module docs).
        pipeline: the teacher: a SynferPipeline folder or bundled name; sampled at its saved guidance defaults.
        split, val_split: trained on / validated on (without a val split: a fixed set of training faces).
        num_ddim_steps: the teacher's DDIM grid (LCM's 50); the student's schedules are subsets of it.
        sample_steps: the student's default number of steps (saved with it; 2-8 work).
        class_prompts: probability of a class-level prompt instead of the face's caption (as ``train-adapter``).
        au_dropout: probability of sampling a face without its AUs (text-only guidance for the teacher).
        schedule: AdamW with warm-up and cosine decay over the student's UNet and adapter (plain flags work:
            --epochs, --batch-size, --lr).
        target_decay: EMA decay of the target network (LCM's 0.95).
        ema_decay: EMA of the student for export (the better of raw and EMA on validation is exported).
        teacher_adapter_scale: the teacher's AU adapter scale (None: its saved default); the student learns the AU
            condition at that strength and samples at adapter scale 1.
        run: seed, limit, precision, resume, overwrite, report_to (plain flags work: --seed 1, --resume).
        text_cache: a folder for the frozen caption states (as ``train-generator``).

    Returns:
        ``OUT/pipeline``, the student.
    """
    from ..core.assets import resolve
    from .au_targets import AU_TARGETS_FILE
    from .pipeline import load_pipeline

    out = Path(out)
    _check_options(class_prompts, au_dropout, sample_steps, num_ddim_steps, schedule.epochs)
    teacher_dir = resolve("generator", pipeline)
    probe = load_split(data, split, labelled=False, need_captions=True, need_aus=True, limit=1)
    teacher = load_pipeline(teacher_dir)
    if teacher.au_adapter is None:
        raise ValueError(f"{pipeline} has no AU adapter; distill needs one (train it with `synfer train-adapter`).")
    teacher.au_adapter.check_aus(probe.au_names, str(data[0]))
    accel, resume = start_run(out, run, schedule, precision="fp32")  # autocast is applied per call here
    device = accel.device
    precision = resolve_precision(run.precision, device)
    teacher.to(device)
    teacher.text_encoder.requires_grad_(False).eval()
    teacher.vae.requires_grad_(False).eval()
    dist = ConsistencyDistiller(teacher, num_ddim_steps, target_decay, precision, teacher_adapter_scale)

    # 1. data: latents once, captions once (class-level prompts beside them), AU vectors
    cfg = teacher.vae.config
    size = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    read = {"labelled": False, "input_size": size, "need_captions": True, "need_aus": True, "limit": run.limit}
    train, val = load_split(data, split, **read), load_split(data, val_split, **read)
    val = val if len(val) else train
    if len(train) < schedule.batch_size:
        raise DatasetError(f"{len(train)} captioned training faces is less than one batch of "
                           f"{schedule.batch_size}.")
    latents = encode_latents(teacher.vae, train.images).cpu()
    alt = class_level_prompts(train) if class_prompts > 0 else train.captions
    val_alt = class_level_prompts(val)
    embed = CaptionEmbedder(teacher.text_encoder, train.captions + alt + val_alt, device, cache=text_cache)
    ids, alt_ids = embed.ids_of(train.captions), embed.ids_of(alt)
    aus, has_aus = train.aus, train.has_aus
    loader = accel.prepare(index_loader(len(latents), schedule.batch_size, run.seed,
                                        lambda idx: (latents[idx], ids[idx], aus[idx], has_aus[idx], alt_ids[idx])))

    def loss_fn(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        z0, rows, vectors, has, alt_rows = batch
        rows = torch.where(batch_draw(torch.rand, len(rows)) < class_prompts, alt_rows.cpu(), rows.cpu())
        use = (batch_draw(torch.rand, len(rows)) >= au_dropout) & has.cpu()
        return dist.loss(z0.to(device), embed(rows), embed(torch.full_like(rows, embed.empty)),
                         vectors.to(device), use.to(device))

    # 2. the fixed validation draw (faces with AUs): class-level prompts, their AUs, noise, the teacher's samples
    draw = _ValDraw.of(teacher, val, val_alt, embed, run.seed, precision, dist.adapter_scale)

    options = {"data": [str(Path(p).resolve()) for p in data], "split": split, "size": list(size),
               "pipeline": str(teacher_dir.resolve()), "num_ddim_steps": num_ddim_steps,
               "class_prompts": class_prompts, "au_dropout": au_dropout, "batch_size": schedule.batch_size,
               "lr": schedule.lr, "target_decay": target_decay, "ema_decay": ema_decay, "precision": precision,
               "seed": run.seed, "limit": run.limit, "teacher_guidance": [dist.w_text, dist.w_au],
               "teacher_adapter_scale": dist.adapter_scale}
    trainer = Trainer(accel, out, {"unet": dist.unet, "adapter": dist.adapter}, schedule.epochs, len(loader),
                      schedule.lr, ema_decay=ema_decay, fingerprint=options, extra_state={"target": dist.target})
    trainer.begin(resume, "distill", {**options, "epochs": schedule.epochs, "sample_steps": sample_steps},
                  data={"train_faces": len(train), "with_aus": int(has_aus.sum()), "val_faces": len(draw.seeds)})

    def end_epoch(epoch: int) -> dict[str, Any]:
        scores, samples = {}, {}
        for which in ("raw", "ema") if trainer.ema is not None else ("raw",):
            with trainer.weights(which), torch.no_grad():
                cond = dist.adapter.condition(draw.text, draw.aus)
                samples[which] = dist.sample(dist.unet, cond, draw.noise.to(device), sample_steps, draw.seeds)
            scores[which] = float(F.mse_loss(samples[which].cpu(), draw.teacher_latents))
        pick = min(scores, key=scores.get)
        with trainer.weights(pick):
            _export(out / "pipeline", teacher, dist, sample_steps, teacher_dir / AU_TARGETS_FILE)
        with torch.no_grad():
            grid = torch.cat([teacher.decode_latents(draw.teacher_latents[:8].to(device)),
                              teacher.decode_latents(samples[pick][:8])])
        save_grid(grid, out / "samples" / f"epoch_{epoch + 1:03d}.png", nrow=8)
        return {"val_mse_to_teacher": scores[pick], **{f"val_mse_{k}": v for k, v in scores.items()}, "weights": pick}

    try:
        trainer.fit(loader, loss_fn, end_epoch, after_step=dist.target.update)
    finally:
        dist.close()
    accel.print(f"student exported to {out / 'pipeline'} ({sample_steps} steps; SynferPipeline.from_pretrained)")
    return out / "pipeline"


def _check_options(class_prompts: float, au_dropout: float, sample_steps: int, num_ddim_steps: int,
                   epochs: int) -> None:
    for name, p in (("class_prompts", class_prompts), ("au_dropout", au_dropout)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be in [0, 1]; got {p}.")
    if not 1 <= sample_steps <= num_ddim_steps:
        raise ValueError(f"sample_steps must be in 1..num_ddim_steps ({num_ddim_steps}); got {sample_steps}.")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}.")


@dataclass
class _ValDraw:
    """The fixed validation draw: up to VAL_FACES val faces with AUs, their class-level prompts' text states
    (N, L, D), AUs (N, A), starting noise (N, c, h, w), per-face seeds and the teacher's final latents from it."""

    text: torch.Tensor
    aus: torch.Tensor
    noise: torch.Tensor
    seeds: list[int]
    teacher_latents: torch.Tensor

    @classmethod
    def of(cls, teacher: Any, val: Any, prompts: list[str], embed: Any, seed: int, precision: str,
           adapter_scale: float) -> _ValDraw:
        g = torch.Generator().manual_seed(seed)
        with_aus = torch.nonzero(val.has_aus).flatten()
        keep = with_aus[torch.randperm(len(with_aus), generator=g)[:VAL_FACES]]
        picked = [prompts[i] for i in keep.tolist()]
        aus = val.aus[keep].to(teacher.device)
        noise = torch.randn(len(keep), teacher.vae.config.latent_channels, *_size(teacher.unet.config.sample_size),
                            generator=g)
        return cls(embed(embed.ids_of(picked)), aus, noise, [seed * 1_000_003 + i for i in range(len(keep))],
                   _teacher_samples(teacher, picked, aus, noise, precision, adapter_scale))


@torch.no_grad()
def _teacher_samples(teacher: Any, prompts: list[str], aus: torch.Tensor, noise: torch.Tensor, precision: str,
                     adapter_scale: float, batch: int = 64) -> torch.Tensor:
    """The teacher's final latents (N, c, h, w) for the validation conditions, at its saved guidance and the
    distillation's adapter scale."""
    return torch.cat([teacher(prompts[s:s + batch], aus=aus[s:s + batch], latents=noise[s:s + batch].to(teacher.device),
                              output_type="latent", precision=precision,
                              au_adapter_scale=adapter_scale).images.float().cpu()
                      for s in range(0, len(prompts), batch)])


def _export(dest: Path, teacher: Any, dist: ConsistencyDistiller, sample_steps: int, au_targets: Path) -> None:
    """The student as a SynferPipeline folder (the teacher's VAE and text encoder, the LCM scheduler)."""
    from .pipeline import SynferPipeline

    dist.adapter.remove(dist.unet)  # saved unattached: the pipeline installs it per call
    try:
        student = SynferPipeline(vae=teacher.vae, unet=dist.unet, text_encoder=teacher.text_encoder,
                                 scheduler=dist.scheduler, au_adapter=dist.adapter,
                                 default_num_inference_steps=sample_steps, default_guidance_scale_text=1.0,
                                 default_guidance_scale_au=1.0)

        def write(folder: Path) -> None:
            student.save_pretrained(folder)
            if au_targets.is_file():
                shutil.copy2(au_targets, folder / au_targets.name)

        atomic_save_dir(dest, write)
    finally:
        dist.adapter.install(dist.unet)
