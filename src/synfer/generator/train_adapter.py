"""``synfer train-adapter``: the AU adapter (SynFER §2) trained on a frozen generator.

Everything of the pipeline stays frozen (UNet, VAE, text encoder with its projection); only
``AUAdapter.trainable_parameters()`` train (with ``train_unet``, the UNet with them), with the generator's own
denoising loss and the adapter installed on the UNet (``applied_to``). The AU vector of a face is replaced by the
adapter's learned null tokens with probability ``au_dropout``, and always where the record has no AUs; its caption
by "" with probability ``caption_dropout`` (drawn independently, so both are dropped together 0.5% of the time at
the defaults). That gives the three rows of the pipeline's two-condition guidance.

Captions from ``synfer prepare`` spell out the face's AUs ("jaw dropped strongly, outer brows raised"), so with its
caption in view the adapter has little left to add and learns little. At sampling time the prompt is often only
class-level (an enriched prompt without target AUs names the expression's prototype AUs, the same for every face).
``class_prompts`` trains that case: with this probability a face's caption is replaced by such a class-level
prompt for its expression (:func:`synfer.annotate.prompts.enrich_prompt`, seeded per face), and the face's own AUs
must come from the adapter. AU order is data: the adapter takes the folders' header order, every
folder must share it, and an adapter given to continue is checked against it.

``au_loss`` > 0 adds an AU-consistency term (:mod:`.au_consistency`): the differentiable AU estimator reads the
decoded one-step clean estimate of the low-noise faces, and its binary cross-entropy to the faces' AUs is added to
the denoising loss; the epoch's mean of that term is logged as ``train_au_term``.

The run folder::

    OUT/adapter/              the AUAdapter (config.json + safetensors)
    OUT/pipeline/             the input pipeline with the adapter attached (and its fine-tuned UNet with train_unet)
    OUT/samples/epoch_NNN.png sample prompts with their faces' AUs (AU guidance 2), fixed seeds
    OUT/metrics.jsonl, OUT/train_config.json, OUT/state/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..annotate.au.distill import VARYING_STD
from ..annotate.prompts import enrich_prompt
from ..core.dataset import DatasetError, read_header
from ..core.options import RunOptions, Schedule
from ..core.splits import Split, index_loader, load_split
from ..core.training import Trainer, atomic_save_dir, batch_draw, start_run
from ..models.au_adapter import AUAdapter
from .captions import CaptionEmbedder
from .train_unet import ValDraw, denoise_step, noise_loss, sample_grid, sample_prompts_from
from .train_vae import encode_latents


def train_adapter(
    data: list[Path],
    out: Path,
    pipeline: Path,
    adapter: Path | None = None,
    split: str = "train",
    val_split: str = "val",
    num_tokens: int = 4,
    hidden_dim: int = 256,
    au_dropout: float = 0.1,
    caption_dropout: float = 0.05,
    class_balance: float = 0.0,
    class_prompts: float = 0.0,
    ema_decay: float = 0.999,
    snr_gamma: float | None = None,
    sample_every_epochs: int = 1,
    sample_steps: int = 25,
    text_cache: Path | None = None,
    au_loss: float = 0.0,
    au_loss_max_timestep: int = 400,
    au_estimator: str | Path | None = None,
    train_unet: bool = False,
    standardize_aus: bool = False,
    gradient_checkpointing: bool = False,
    schedule: Schedule = Schedule(10, 64, 1e-4),
    run: RunOptions = RunOptions(),
) -> Path:
    """Train an AU adapter for a frozen SynferPipeline; save it and the pipeline with it attached.

    Args:
        data: dataset folders with captions and AUs (from ``synfer prepare``), all in one AU order.
        out: run folder (see the module docs).
        pipeline: a SynferPipeline folder (``train-generator``'s ``OUT/pipeline``); never modified.
        adapter: an AUAdapter folder to continue training (its AU order must equal the data's); default a new
            one built for the pipeline's UNet (AU key/values initialised from the text ones).
        split, val_split: trained on / scored on (without a val split: a fixed set of training faces).
        num_tokens, hidden_dim: AU tokens per face and the MLP's hidden width (new adapters only).
        au_dropout: probability of training on the null AU tokens (classifier-free guidance on AUs).
        caption_dropout: probability of training on "" instead of the caption.
        class_balance: class-balanced sampling as in ``train-generator`` (0 = every face once per epoch).
        class_prompts: probability of training on a class-level prompt for the face's expression instead of its
            AU-describing caption (see the module docs); faces without an expression keep their caption. The
            validation draw uses class-level prompts for the same share of its faces (fixed).
        schedule: AdamW with warm-up and cosine decay (plain flags work: --epochs, --batch-size, --lr).
        ema_decay, snr_gamma: as in ``train-generator``.
        sample_every_epochs, sample_steps: sample grids (validation captions with their AUs).
        run: seed, limit, precision, resume, overwrite, report_to (plain flags work: --seed 1, --resume).
        text_cache: as in ``train-generator`` (one folder can serve both; an entry is reused for the same caption
            set, which differs here with class_prompts or faces without AUs).
        au_loss: weight of the AU-consistency term (:mod:`.au_consistency`; 0 = denoising loss only): BCE between
            the AU estimator's reading of the decoded one-step clean estimate and the face's AUs, for the faces
            whose AU tokens are in use and whose timestep is below ``au_loss_max_timestep``.
        au_loss_max_timestep: faces noised at or above this timestep (of the training schedule's, e.g. 1000) get
            no AU term: their one-step estimate is too blurred to read.
        au_estimator: the differentiable AU estimator of that term (a ``train-au-estimator`` folder or a bundled
            name; default the bundled distilled one); its AU order must equal the data's.
        train_unet: fine-tune the UNet jointly with the adapter (same lr and EMA), so that every layer can learn
            to use the AU tokens, not only the adapter's key/values; the frozen base is the default (the SynFER
            recipe). ``OUT/pipeline`` then holds the fine-tuned UNet: its adapter-removed output is no longer
            the input pipeline's.
        standardize_aus: feed the adapter's MLP standardised AU vectors, ``(aus - mean) / std`` with the
            training faces' per-AU statistics (std floored at 0.02), so that rarely active AUs (std ~0.04)
            weigh as much as common ones (~0.3); an adapter given to continue is refolded to the same function
            (:meth:`AUAdapter.with_standardized_inputs`), one that is already standardised keeps its statistics.
        gradient_checkpointing: recompute the denoiser's blocks in the backward pass (the adapter's gradients flow
            through all of them) instead of keeping their activations: less memory, about a third more time per
            step; the same steps (not in the options a resume must match).

    Returns:
        ``OUT/adapter``.
    """
    from .pipeline import SynferPipeline

    out = Path(out)
    _check_options(au_loss, au_loss_max_timestep, au_estimator, au_dropout, caption_dropout, class_prompts)
    # 1. data first: a folder without AUs or captions is refused before anything is loaded or written
    au_names = load_split(data, split, labelled=False, need_captions=True, need_aus=True, limit=1).au_names
    init = AUAdapter.from_pretrained(str(adapter)) if adapter is not None else None
    if init is not None:
        init.check_aus(au_names, str(data[0]))
    estimator = _au_term_estimator(data, au_names, au_loss, au_estimator)
    accel, resume = start_run(out, run, schedule)

    # 2. the frozen pipeline, the adapter (and the UNet with train_unet), the faces and their conditions
    pipe = SynferPipeline.from_pretrained(pipeline)
    for module in (pipe.vae, pipe.unet, pipe.text_encoder):
        module.requires_grad_(False).eval().to(accel.device)
    if train_unet:  # the adapter's weights sit outside unet.parameters() (unregistered processors): no overlap
        pipe.unet.requires_grad_(True)
    if gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    au = init if init is not None else AUAdapter.for_unet(pipe.unet, au_names, num_tokens=num_tokens,
                                                          hidden_dim=hidden_dim)
    faces = _AdapterFaces(pipe, data, split, val_split, run.limit, class_prompts, run.seed, accel.device,
                          text_cache)
    if standardize_aus and au.config.get("au_mean") is None:
        au = au.with_standardized_inputs(*au_statistics(faces.train))
    au.to(accel.device)
    step = _AdapterRun(pipe, au, faces, accel.device, snr_gamma, caption_dropout, au_dropout, class_prompts,
                       au_loss, estimator, au_loss_max_timestep)

    # 3. the trainer over the adapter (and the UNet), resumable with the same options only
    loader = accel.prepare(index_loader(len(faces.latents), schedule.batch_size, run.seed, faces.batch,
                                        faces.train.label_names(), class_balance))
    options = {"data": [str(Path(p).resolve()) for p in data], "split": split, "size": list(faces.size),
               "pipeline": str(Path(pipeline).resolve()), "adapter": None if adapter is None else str(adapter),
               "au_names": list(au_names), "num_tokens": au.config.num_tokens, "hidden_dim": au.config.hidden_dim,
               "au_dropout": au_dropout, "caption_dropout": caption_dropout, "class_balance": class_balance,
               "class_prompts": class_prompts, "batch_size": schedule.batch_size, "lr": schedule.lr,
               "ema_decay": ema_decay, "snr_gamma": snr_gamma, "seed": run.seed, "limit": run.limit,
               "train_unet": train_unet,
               "standardize_aus": standardize_aus, "au_loss": au_loss,
               "au_loss_max_timestep": au_loss_max_timestep if au_loss else None,
               "au_estimator": _estimator_record(estimator)}
    modules: dict[str, torch.nn.Module] = {"adapter": au, **({"unet": pipe.unet} if train_unet else {})}
    trainer = Trainer(accel, out, modules, schedule.epochs, len(loader), schedule.lr, ema_decay=ema_decay,
                      fingerprint=options)
    # nothing below draws random numbers before fit(): a resumed run replays the same one
    trainer.begin(resume, "train-adapter", {**options, "epochs": schedule.epochs, "sample_prompts": faces.prompts,
                                            "sample_steps": sample_steps, "precision": run.precision,
                                            "gradient_checkpointing": gradient_checkpointing},
                  data={"train_faces": len(faces.train), "with_aus": int(faces.train.has_aus.sum()),
                        "val_faces": len(faces.draw.ids), "skipped_without_caption": faces.train.skipped,
                        "text_cache": faces.embed.mode})

    # 4. after each epoch: raw vs EMA on the fixed draw; the better one exported and sampled
    def end_epoch(epoch: int) -> dict[str, Any]:
        grid = (epoch + 1) % sample_every_epochs == 0 or epoch + 1 == schedule.epochs
        return step.end_epoch(trainer, accel, out, epoch, grid, run.seed, sample_steps)

    with au.applied_to(pipe.unet):
        trainer.fit(loader, step.loss, end_epoch)
    accel.print(f"adapter exported to {out / 'adapter'}, pipeline with it to {out / 'pipeline'}")
    return out / "adapter"


def _check_options(au_loss: float, max_timestep: int, au_estimator: Any, au_dropout: float, caption_dropout: float,
                   class_prompts: float) -> None:
    if au_loss < 0:
        raise ValueError(f"au_loss must be >= 0; got {au_loss}.")
    if au_loss > 0 and max_timestep <= 0:
        raise ValueError(f"au_loss_max_timestep must be > 0; got {max_timestep}.")
    if au_loss == 0 and au_estimator is not None:
        raise ValueError("au_estimator is only used by the AU-consistency term; pass au_loss > 0 with it (or drop it).")
    for name, p in (("au_dropout", au_dropout), ("caption_dropout", caption_dropout)):
        if not 0 <= p < 1:
            raise ValueError(f"{name} must be in [0, 1); got {p}.")
    if not 0 <= class_prompts <= 1:
        raise ValueError(f"class_prompts must be in [0, 1]; got {class_prompts}.")


def _au_term_estimator(data: list[Path], au_names: tuple[str, ...], au_loss: float, spec: str | Path | None) -> Any:
    """The AU-consistency term's estimator (None without the term), checked against the data: same AU order,
    intensities in [0, 1] (BCE targets)."""
    if au_loss <= 0:
        return None
    from ..annotate.au.distilled import DistilledAUEstimator
    from ..schema import AUSet

    estimator = DistilledAUEstimator.from_pretrained(spec, au_set=AUSet(tuple(au_names)))
    for folder in data:
        scale = read_header(folder).aus.scale
        if scale != "0-1":
            raise DatasetError(f"{folder}: AUs are on the scale {scale!r}; the AU-consistency term needs "
                               "\"0-1\" intensities (as `synfer prepare` writes them). Pass au_loss=0.")
    return estimator


def _estimator_record(estimator: Any) -> dict[str, Any] | None:
    """The AU term's estimator by name or resolved path and weights hash: a resume needs the same weights."""
    if estimator is None:
        return None
    info = estimator.describe()
    model = str(info.get("model"))
    return {"model": str(Path(model).resolve()) if Path(model).exists() else model,
            "model_sha256": info.get("model_sha256")}


class _AdapterFaces:
    """The faces ``train-adapter`` trains on: latents, caption ids (and class-level prompt ids), AUs, the fixed
    validation draw with its AUs, and the sample-grid prompts."""

    def __init__(self, pipe: Any, data: list[Path], split: str, val_split: str, limit: int | None,
                 class_prompts: float, seed: int, device: torch.device, text_cache: Path | None) -> None:
        cfg = pipe.vae.config
        self.size = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        kw = dict(labelled=False, input_size=self.size, need_captions=True, need_aus=True, limit=limit)
        self.train = train = load_split(data, split, **kw)
        if len(train) == 0:
            raise DatasetError(f"No captioned records in split {split!r} of {[str(p) for p in data]}.")
        val = load_split(data, val_split, **kw)
        val = val if len(val) else train
        self.latents = encode_latents(pipe.vae, train.images).cpu()
        train_alt, val_alt = (class_level_prompts(f) if class_prompts > 0 else f.captions for f in (train, val))
        self.embed = CaptionEmbedder(pipe.text_encoder, train.captions + val.captions + train_alt + val_alt, device,
                                     cache=text_cache)
        self.ids, self.alt_ids = self.embed.ids_of(train.captions), self.embed.ids_of(train_alt)
        val_ids = self.embed.ids_of(val.captions)
        if class_prompts > 0:  # a fixed share of the validation draw sees class-level prompts, as training does
            swap = torch.rand(len(val_ids), generator=torch.Generator().manual_seed(seed + 1)) < class_prompts
            val_ids = torch.where(swap, self.embed.ids_of(val_alt), val_ids)
        self.draw = ValDraw(encode_latents(pipe.vae, val.images).cpu(), val_ids, pipe.scheduler, seed)
        self.draw_aus, self.draw_has = val.aus[self.draw.keep], val.has_aus[self.draw.keep]
        rows = sample_prompts_from(val)
        self.prompts, self.prompt_aus = [val.captions[i] for i in rows], val.aus[rows]

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, ...]:
        t = self.train
        return self.latents[idx], self.ids[idx], t.aus[idx], t.has_aus[idx], self.alt_ids[idx]


class _AdapterRun:
    """``train-adapter``'s loss (denoising, plus the optional AU-consistency term) and its end of epoch."""

    def __init__(self, pipe: Any, au: AUAdapter, faces: _AdapterFaces, device: torch.device,
                 snr_gamma: float | None, caption_dropout: float, au_dropout: float, class_prompts: float,
                 au_loss: float, estimator: Any, max_timestep: int) -> None:
        from diffusers import DDPMScheduler

        from .au_consistency import AUConsistency

        self.pipe, self.au, self.faces, self.device = pipe, au, faces, device
        self.snr_gamma, self.caption_dropout, self.au_dropout = snr_gamma, caption_dropout, au_dropout
        self.class_prompts, self.au_loss = class_prompts, au_loss
        # pipe.scheduler is the sampler; its config carries the training noise schedule
        self.sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.consistency = None if estimator is None else AUConsistency(estimator.to(device), pipe.decode_latents,
                                                                         self.sched, max_timestep)
        self.au_term = {"sum": 0.0, "faces": 0}  # the AU term's running per-face mean this epoch

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        z, rows, vectors, has, alt = batch[0].to(self.device), batch[1], batch[2], batch[3], batch[4]
        if self.class_prompts > 0:  # drawn only when used, so runs without it keep their random stream
            rows = torch.where(batch_draw(torch.rand, len(rows)) < self.class_prompts, alt, rows)
        rows = torch.where(batch_draw(torch.rand, len(rows)) < self.caption_dropout, self.faces.embed.empty, rows)
        drop = (batch_draw(torch.rand, len(rows)) < self.au_dropout) | ~has.cpu()
        cond = self.au.condition(self.faces.embed(rows), vectors.to(self.device), drop.to(self.device))
        if self.consistency is None:
            return noise_loss(self.pipe.unet, self.sched, z, cond, self.snr_gamma)
        step = denoise_step(self.pipe.unet, self.sched, z, cond)
        term = self.consistency(step.noisy, step.pred, step.timesteps, vectors.to(self.device), ~drop)
        n = self.consistency.last_faces
        self.au_term.update(sum=self.au_term["sum"] + term.item() * n, faces=self.au_term["faces"] + n)
        return step.loss(self.sched, self.snr_gamma) + self.au_loss * term

    def val_condition(self, r: torch.Tensor) -> torch.Tensor:
        f = self.faces
        return self.au.condition(f.embed(f.draw.ids[r]), f.draw_aus[r].to(self.device), (~f.draw_has[r]).to(self.device))

    def end_epoch(self, trainer: Trainer, accel: Any, out: Path, epoch: int, grid: bool, seed: int,
                  sample_steps: int) -> dict[str, Any]:
        """Raw vs EMA adapter on the fixed draw; the better one exported (adapter and pipeline) and sampled."""
        scores = {}
        for which in ("raw", "ema") if trainer.ema is not None else ("raw",):
            with trainer.weights(which):
                scores[which] = self.faces.draw.loss(accel, self.pipe.unet, self.sched, self.val_condition)
        pick = min(scores, key=scores.get)
        with trainer.weights(pick):
            self.pipe.set_au_adapter(self.au)
            if grid:
                sample_grid(self.pipe, self.faces.prompts, out / "samples" / f"epoch_{epoch + 1:03d}.png", seed,
                            sample_steps, aus=self.faces.prompt_aus)
            atomic_save_dir(out / "adapter", self.au.save_pretrained)
            atomic_save_dir(out / "pipeline", self.pipe.save_pretrained)
        row = {"val_loss": scores[pick], **{f"val_loss_{k}": v for k, v in scores.items()}, "weights": pick}
        if self.consistency is not None:
            row["train_au_term"] = self.au_term["sum"] / max(1, self.au_term["faces"])
            self.au_term.update(sum=0.0, faces=0)
        return row


#: Below this spread an AU counts as constant (AU agreement's threshold): its std is floored here, so a nearly
#: always-zero AU is not blown up by standardisation.
MIN_AU_STD = VARYING_STD


def au_statistics(faces: Split) -> tuple[list[float], list[float]]:
    """Per-AU mean and std (floored at :data:`MIN_AU_STD`) of the faces that have AU values."""
    if faces.aus is None or not bool(faces.has_aus.any()):
        raise DatasetError("standardize_aus needs training faces with AU values; none have any.")
    rows = faces.aus[faces.has_aus].double()
    std = rows.std(0, unbiased=False).clamp_min(MIN_AU_STD)
    return [round(float(v), 6) for v in rows.mean(0)], [round(float(v), 6) for v in std]


def class_level_prompts(faces: Split) -> list[str]:
    """Per face, a class-level prompt for its label (its own caption where it has no expression).

    The prompt enricher's text without target AUs (so naming the expression's prototype AUs), seeded by the face's
    row: what ``generate`` and the benchmarks send when they give the AUs to the adapter alone. A soft label is
    worded as the captions word it ("mostly contemptuous, a little neutral"), so the plain class-level prompt
    stays the one of faces whose annotators agreed, as in the captions; a one-hot label gives the plain prompt.
    """
    out = []
    for i, (expression, caption) in enumerate(zip(faces.label_names(), faces.captions, strict=True)):
        soft = faces.soft_label(i)
        if expression is None:
            out.append(caption)
            continue
        label = soft if soft is not None and max(soft.values()) < 1.0 else expression
        try:
            out.append(enrich_prompt("", label, None, seed=i))
        except (ValueError, KeyError) as err:
            raise DatasetError(f"class_prompts needs expressions the prompt enricher knows; face {i} is labelled "
                               f"{expression!r} ({err}). Pass class_prompts=0 for this data.") from None
    return out
