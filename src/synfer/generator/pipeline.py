"""SynferPipeline: text- and AU-conditioned latent diffusion sampling, one code path for both scales.

(One file past 400 lines on purpose: a diffusers pipeline is one class, its steps methods of it.)

Components: ``vae`` (AutoencoderKL), ``unet`` (the denoiser: :mod:`synfer.models.denoiser`), ``text_encoder`` (a
:class:`~synfer.models.text_encoders.TextEncoder`: MiniLM + projection for the mini model, CLIP for SD checkpoints),
``scheduler`` (DDIM by default; DPM-Solver++ and any diffusers scheduler work) and ``au_adapter``
(:class:`~synfer.models.au_adapter.AUAdapter` or None). Every size comes from the components' configs, so the mini
model and a Stable Diffusion checkpoint run the same code.

Guidance on text and AUs (classifier-free guidance with two conditions, SynFER §2)::

    eps = e_u + w_t * (e_t - e_u) + w_a * (e_ta - e_t)
        = (1 - w_t) * e_u + (w_t - w_a) * e_t + w_a * e_ta

with e_u = eps("" prompt, null AU tokens), e_t = eps(prompt, null AU tokens), e_ta = eps(prompt, AU tokens).
A row whose weight is 0 is not computed: w_a = 0 (or no AUs) is standard text CFG on two rows, w_a = w_t is
standard CFG between "" and prompt+AUs on two rows (the bundled model's default: each row is one UNet evaluation,
so two rows cost two thirds of three), w_t = 1 drops the unconditional row, w_t = w_a = 1 samples the fully
conditional row alone (a distilled few-step student samples this way). ``guidance_interval`` limits the guidance
rows to a window of the steps (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval"); outside it
only the fully conditional row is computed.

Precision (``precision``, :mod:`synfer.core.runtime`): the text encoder, the UNet and the VAE decoder run under autocast
(bf16 on CPUs with native bf16 and on GPUs by default); the guidance combination, the scheduler's step and the
latents stay fp32. :meth:`SynferPipeline.compile_denoiser` compiles the UNet once per process.

Saved by ``save_pretrained`` as diffusers does (``model_index.json`` + one folder per component, safetensors only);
``from_pretrained`` reads it back, and :meth:`SynferPipeline.from_stable_diffusion` reads a diffusers SD checkpoint.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..core.assets import resolve
from ..core.runtime import autocast, resolve_precision

# Imported here, not only for the type hints: DiffusionPipeline.from_pretrained resolves these custom components'
# classes from sys.modules (model_index.json names their modules), so they must be imported before loading.
from ..models.au_adapter import AUAdapter
from ..models.denoiser import denoise, family_key, family_of, is_sdxl, load_denoiser, sdxl_pooled_width
from ..models.text_encoders import CLIPTextEncoderWrapper, SDXLTextEncoder, TextEncoder
from .au_targets import AU_TARGETS_FILE

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
#: Guidance rows in batch order: "" prompt + null AU tokens, prompt + null AU tokens, prompt + AU tokens.
ROWS = ("uncond", "text", "text_au")
#: Files beside the components that travel with a pipeline folder (``save_pretrained`` copies them).
EXTRA_FILES = (AU_TARGETS_FILE, "README.md")


@dataclass
class SynferPipelineOutput(BaseOutput):
    """``images``: a list of PIL images ("L" for 1-channel VAEs), (B, H, W, C) float numpy in [0, 1], a (B, C, H, W)
    tensor in [0, 1], or the final latents (B, C, h, w) for ``output_type="latent"``."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


def guidance_weights(guidance_scale_text: float, guidance_scale_au: float, use_aus: bool) -> dict[str, float]:
    """Weight of each guidance row (see the module docstring), leaving out rows of weight 0. They always sum to 1."""
    w_t, w_a = float(guidance_scale_text), float(guidance_scale_au) if use_aus else 0.0
    weights = {"uncond": 1.0 - w_t, "text": w_t - w_a, "text_au": w_a}
    return {row: w for row, w in weights.items() if w != 0.0}


def guided_steps(num_inference_steps: int, interval: tuple[float, float] | None) -> set[int]:
    """Step indices i (of the full schedule) whose guidance rows are computed: those with start <= i / steps < end
    (every step without an interval)."""
    if interval is None:
        return set(range(num_inference_steps))
    lo, hi = (float(v) for v in interval)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance_interval must be (start, end) fractions with 0 <= start <= end <= 1; got "
                         f"{tuple(interval)}.")
    return {i for i in range(num_inference_steps) if lo <= i / num_inference_steps < hi}


class SynferPipeline(DiffusionPipeline):
    """Text (+ AU) to face images. See the module docstring for the guidance rule; ``__call__`` for the steps."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["au_adapter"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "au_tokens"]

    def __init__(self, vae: AutoencoderKL, unet: torch.nn.Module, text_encoder: TextEncoder,
                 scheduler: SchedulerMixin, au_adapter: AUAdapter | None = None,
                 default_num_inference_steps: int = 25, default_guidance_scale_text: float = 5.0,
                 default_guidance_scale_au: float = 2.0, default_au_adapter_scale: float = 1.0) -> None:
        super().__init__()
        self.register_modules(vae=vae, unet=unet, text_encoder=text_encoder, scheduler=scheduler,
                              au_adapter=au_adapter)
        # The sampler settings a model was validated at travel with it (model_index.json): the bundled mini model
        # is fast and good at fewer steps than a Stable Diffusion checkpoint.
        self.register_to_config(default_num_inference_steps=int(default_num_inference_steps),
                                default_guidance_scale_text=float(default_guidance_scale_text),
                                default_guidance_scale_au=float(default_guidance_scale_au),
                                default_au_adapter_scale=float(default_au_adapter_scale))
        self.check_components()
        self.active_precision = "fp32"  # the resolved precision of the running (or last) call, for callbacks

    def generation_defaults(self) -> dict[str, float]:
        """The settings ``__call__`` uses for arguments left at None (saved with the pipeline)."""
        return {"num_inference_steps": self.config.default_num_inference_steps,
                "guidance_scale_text": self.config.default_guidance_scale_text,
                "guidance_scale_au": self.config.default_guidance_scale_au,
                "au_adapter_scale": self.config.get("default_au_adapter_scale", 1.0)}

    def set_generation_defaults(self, num_inference_steps: int | None = None, guidance_scale_text: float | None = None,
                                guidance_scale_au: float | None = None, au_adapter_scale: float | None = None) -> None:
        """Change the defaults saved with the pipeline (None keeps a value)."""
        current = self.generation_defaults()
        self.register_to_config(
            default_num_inference_steps=int(num_inference_steps or current["num_inference_steps"]),
            default_guidance_scale_text=float(current["guidance_scale_text"] if guidance_scale_text is None
                                              else guidance_scale_text),
            default_guidance_scale_au=float(current["guidance_scale_au"] if guidance_scale_au is None
                                            else guidance_scale_au),
            default_au_adapter_scale=float(current["au_adapter_scale"] if au_adapter_scale is None
                                           else au_adapter_scale))

    # -- components -----------------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (2 ** (VAE blocks - 1))."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def check_components(self) -> None:
        """Refuse components that cannot work together, saying which config values disagree."""
        latent, unet = self.vae.config.latent_channels, self.unet.config
        if unet.in_channels != latent or unet.out_channels != latent:
            raise ValueError(f"The UNet maps {unet.in_channels} -> {unet.out_channels} channels but the VAE's latents "
                             f"have {latent}; build the UNet with in_channels = out_channels = {latent}.")
        d, family = self.text_encoder.output_dim, family_of(self.unet)
        want = family.text_width(self.unet)
        if want != d:
            raise ValueError(f"The text encoder gives {d}-wide tokens but the {family_key(family)} denoiser takes "
                             f"{want}-wide ones; "
                             f"build the text encoder for it (MiniLMTextEncoder(cross_attention_dim={want})) or use "
                             "the checkpoint's own.")
        pooled = getattr(self.text_encoder, "pooled_width", None)  # SDXL's encoder packs a pooled token
        wants = sdxl_pooled_width(self.unet) if is_sdxl(self.unet) else None
        if pooled != wants:
            raise ValueError(f"The denoiser takes a pooled text embedding of width {wants} (None: none) but the "
                             f"{type(self.text_encoder).__name__} gives {pooled}; an SDXL UNet needs an "
                             "SDXLTextEncoder of its pooled width, and an SDXLTextEncoder an SDXL UNet.")
        if self.au_adapter is not None and self.au_adapter.config.cross_attention_dim != d:
            raise ValueError(f"The AU adapter makes {self.au_adapter.config.cross_attention_dim}-wide tokens but the "
                             f"text tokens are {d}-wide; build it with AUAdapter.for_unet(pipe.unet, au_names).")

    def set_au_adapter(self, au_adapter: AUAdapter | None) -> None:
        """Attach (or, with None, detach) an AU adapter; it is installed on the UNet only while sampling."""
        self.register_modules(au_adapter=au_adapter)
        self.check_components()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> SynferPipeline:
        """Load a folder written by ``save_pretrained`` (diffusers' loader), safetensors only: every component
        gets ``use_safetensors=True``, so no pickled weights are ever read."""
        if kwargs.get("use_safetensors", True) is not True:
            raise ValueError("SynferPipeline loads safetensors only; drop use_safetensors=False.")
        kwargs["use_safetensors"] = True
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_stable_diffusion(cls, checkpoint: str | Path, au_adapter: AUAdapter | None = None,
                              scheduler: SchedulerMixin | None = None, dtype: torch.dtype | None = None,
                              torch_dtype: torch.dtype | None = None, **hub_kwargs: Any) -> SynferPipeline:
        """A diffusers SD 1.x/2.x or SDXL checkpoint (folder or hub id; vae/, unet/, text_encoder/, tokenizer/,
        scheduler/, and for SDXL text_encoder_2/, tokenizer_2/), safetensors only, its weights in ``dtype``
        (``torch_dtype``: the older name diffusers still accepts). An SDXL UNet (``addition_embed_type:
        text_time``) gets both text encoders (:class:`~synfer.models.text_encoders.SDXLTextEncoder`). The
        scheduler defaults to DDIM with the checkpoint's noise schedule."""
        if dtype is not None and torch_dtype is not None:
            raise ValueError("pass dtype or torch_dtype (its older name), not both.")
        dtype = dtype if dtype is not None else torch_dtype
        index = Path(checkpoint) / "model_index.json"
        if index.is_file() and json.loads(index.read_text()).get("requires_aesthetics_score"):
            raise ValueError(f"{checkpoint} is an SDXL refiner (aesthetic-score time ids, one text encoder): it "
                             "refines images, it does not make faces from text; load an SDXL base checkpoint.")
        kw = {"dtype": dtype, **hub_kwargs}
        vae = AutoencoderKL.from_pretrained(str(checkpoint), subfolder="vae", use_safetensors=True, **kw)
        unet = load_denoiser(str(checkpoint), "unet", **kw)
        encoder_class = SDXLTextEncoder if is_sdxl(unet) else CLIPTextEncoderWrapper
        text_encoder = encoder_class.from_stable_diffusion(checkpoint, dtype, **hub_kwargs)
        if scheduler is None:
            scheduler = DDIMScheduler.from_pretrained(str(checkpoint), subfolder="scheduler", **hub_kwargs)
        return cls(vae=vae, unet=unet, text_encoder=text_encoder, scheduler=scheduler, au_adapter=au_adapter)

    def source_folder(self) -> Path | None:
        """The local folder this pipeline was loaded from (diffusers records it as ``_name_or_path``), else None."""
        name = self.config.get("_name_or_path")
        return Path(name) if name and Path(name).is_dir() else None

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained`` (safetensors only), plus the files beside the components that change
        what ``generate`` does or say what the model is (:data:`EXTRA_FILES`: the AU targets ``auto`` samples at,
        the model card), copied from the folder it was loaded from."""
        if kwargs.get("safe_serialization", True) is not True:
            raise ValueError("SynferPipeline saves safetensors only; drop safe_serialization=False.")
        source = self.source_folder()
        # read first: saving over the folder it was loaded from must not lose them
        extras = {n: (source / n).read_bytes() for n in EXTRA_FILES if source and (source / n).is_file()}
        super().save_pretrained(save_directory, **{**kwargs, "safe_serialization": True})
        for name, data in extras.items():
            (Path(save_directory) / name).write_bytes(data)

    # -- steps ----------------------------------------------------------------------------------------------------
    def check_prompts(self, prompt: str | Sequence[str] | None, negative_prompt: str | Sequence[str] | None,
                      prompt_embeds: torch.Tensor | None, negative_prompt_embeds: torch.Tensor | None
                      ) -> tuple[list[str] | None, list[str] | None, int]:
        """Validate the text inputs: prompts (or their embeddings, (B, L, D) as the text encoder makes them) and
        negative prompts (or embeddings of the same shape); returns both as lists (None where embeddings stand in)
        and the batch size B."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("give prompt or prompt_embeds, exactly one of them.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("give negative_prompt or negative_prompt_embeds, not both.")
        prompts = None
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompt must be a string or a non-empty list of strings; got {prompt!r}.")
        width = (self.text_encoder.max_length, self.text_encoder.output_dim)
        for name, emb in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if emb is not None and (emb.ndim != 3 or emb.shape[2] != width[1] or emb.shape[0] < 1):
                raise ValueError(f"{name} must be (B, L, {width[1]}) as this text encoder makes them; got "
                                 f"{tuple(emb.shape)}.")
        batch = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        if negative_prompt_embeds is not None and negative_prompt_embeds.shape[:2] != (
                batch, prompt_embeds.shape[1] if prompt_embeds is not None else width[0]):
            raise ValueError(f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must match the prompt "
                             f"embeddings' batch and length.")
        negatives = None
        if negative_prompt is not None:
            negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) != batch or not all(isinstance(n, str) for n in negatives):
                raise ValueError(f"negative_prompt must be a string or a list of {batch} strings (one per "
                                 f"prompt); got {negative_prompt!r}.")
        return prompts, negatives, batch

    def check_inputs(self, batch: int, aus: torch.Tensor | None, height: int | None,
                     width: int | None, num_inference_steps: int, guidance_scale_text: float,
                     guidance_scale_au: float, output_type: str, callback_tensor_inputs: Sequence[str],
                     num_images_per_prompt: int = 1) -> torch.Tensor | None:
        """Validate the call's other arguments for ``batch`` prompts; returns ``aus`` as (batch *
        num_images_per_prompt, A) float (one row is broadcast, each prompt's row repeated for its images)."""
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1; got {num_images_per_prompt!r}.")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1; got {num_inference_steps}.")
        if not (np.isfinite(guidance_scale_text) and np.isfinite(guidance_scale_au)):
            raise ValueError("guidance scales must be finite numbers.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}; got {output_type!r}.")
        unknown = [k for k in callback_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} unknown; choose from "
                             f"{self._callback_tensor_inputs}.")
        f = self.vae_scale_factor
        for name, size in (("height", height), ("width", width)):
            if size is not None and (size < f or size % f):
                raise ValueError(f"{name}={size} must be a positive multiple of the VAE's scale factor {f}.")
        if aus is None:
            return None
        if self.au_adapter is None:
            raise ValueError("aus were given but this pipeline has no AU adapter; attach one with "
                             "pipe.set_au_adapter(AUAdapter.from_pretrained(folder)) or pass aus=None.")
        names = list(self.au_adapter.au_names)
        aus = torch.as_tensor(aus, dtype=torch.float32)
        rows = aus.reshape(1, -1) if aus.ndim == 1 else aus
        if rows.ndim != 2 or rows.shape[1] != len(names):
            raise ValueError(f"aus must be ({batch}, {len(names)}) or ({len(names)},): one value per AU of the "
                             f"adapter, in the order {names}; got shape {tuple(aus.shape)}.")
        if rows.shape[0] == 1:
            rows = rows.expand(batch, -1)
        if rows.shape[0] != batch:
            raise ValueError(f"{rows.shape[0]} AU rows for {batch} prompts; give one row per prompt or one "
                             "row for all.")
        return rows.repeat_interleave(num_images_per_prompt, dim=0)

    def encode_prompt(self, prompts: list[str] | None, device: torch.device,
                      negative_prompts: list[str] | None = None, prompt_embeds: torch.Tensor | None = None,
                      negative_prompt_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and negative-prompt embeddings, each (B, L, D) in the UNet's dtype; the negative row is the ""
        embedding (what the model saw with its captions dropped) unless ``negative_prompts`` are given. Embeddings
        passed in (``prompt_embeds`` instead of ``prompts``, as diffusers' pipelines take them) are used as they
        are."""
        dtype = self.unet.dtype
        if prompt_embeds is None:
            prompt_embeds = self.text_encoder.encode(prompts, device)
        batch = prompt_embeds.shape[0]
        if negative_prompt_embeds is not None:
            negative = negative_prompt_embeds
        elif negative_prompts is None:
            negative = self.text_encoder.empty_embedding(batch, device)
        else:
            negative = self.text_encoder.encode(negative_prompts, device)
        return prompt_embeds.to(device, dtype), negative.to(device, dtype)

    def encode_aus(self, aus: torch.Tensor | None, batch_size: int,
                   device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(AU tokens, null tokens), each (B, N, D), or (None, None) without an adapter. Encoded once per call;
        the text embeddings may change between steps, so rows are concatenated every step."""
        if self.au_adapter is None:
            return None, None
        dtype = self.unet.dtype
        null = self.au_adapter.encode(None, batch_size=batch_size).to(device, dtype)
        tokens = None if aus is None else self.au_adapter.encode(aus.to(device)).to(dtype)
        return tokens, null

    def prepare_latents(self, batch_size: int, height: int | None, width: int | None, dtype: torch.dtype,
                        device: torch.device, generator: torch.Generator | list[torch.Generator] | None,
                        latents: torch.Tensor | None, scale: bool = True) -> torch.Tensor:
        """Initial noise (B, C, h, w) scaled by the scheduler's ``init_noise_sigma``; ``latents`` (e.g. a DDIM
        inversion of a real face, for layout initialisation) replace the noise (``scale=False``: taken as they
        are, already at the first step's noise level). Default size: the UNet's."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        h = h if height is None else height // self.vae_scale_factor
        w = w if width is None else width // self.vae_scale_factor
        shape = (batch_size, self.unet.config.in_channels, h, w)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (batch, UNet channels, height / {self.vae_scale_factor}"
                             f", width / {self.vae_scale_factor}); got {tuple(latents.shape)}.")
        return latents.to(device, dtype) * (self.scheduler.init_noise_sigma if scale else 1.0)

    def first_step(self, num_inference_steps: int, strength: float, latents: torch.Tensor | None) -> int:
        """Index of the first scheduler step that runs for ``strength`` (0 for the full schedule)."""
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1]; got {strength}.")
        start = num_inference_steps - max(1, int(round(num_inference_steps * strength)))
        if start and latents is None:
            raise ValueError(f"strength={strength} starts part-way through the schedule and needs the latents of a "
                             "face to start from: pass latents=synfer.generator.layout.invert(pipe, images, ...).")
        if start and float(self.scheduler.init_noise_sigma) != 1.0:
            raise ValueError(f"strength < 1 needs a variance-preserving scheduler (DDIM, DPM-Solver, UniPC); "
                             f"{type(self.scheduler).__name__} scales its latents by {self.scheduler.init_noise_sigma}.")
        return start

    def build_condition(self, rows: Sequence[str], prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor,
                        au_tokens: torch.Tensor | None, null_tokens: torch.Tensor | None) -> torch.Tensor:
        """``encoder_hidden_states`` for the guidance rows, stacked along the batch: (len(rows) * B, L [+ N], D).
        With an adapter each row is text then AU tokens (null tokens except in the "text_au" row)."""
        parts = []
        for row in rows:
            text = negative_prompt_embeds if row == "uncond" else prompt_embeds
            if null_tokens is not None:
                text = torch.cat([text, au_tokens if row == "text_au" else null_tokens], dim=1)
            parts.append(text)
        return torch.cat(parts, dim=0)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, C_img, H, W) in [0, 1], undoing the VAE's latent scaling."""
        config = self.vae.config
        latents = latents.to(self.vae.dtype) / config.scaling_factor
        if config.get("shift_factor") is not None:
            latents = latents + config.shift_factor
        if self.active_precision == "fp16" and config.get("force_upcast", False):
            # SDXL's VAE overflows in fp16 (its config says so): decode outside fp16 autocast, in fp32
            dtype = self.vae.dtype
            with torch.autocast(latents.device.type, enabled=False):
                image = self.vae.to(torch.float32).decode(latents.float(), return_dict=False)[0]
            self.vae.to(dtype)
        else:
            image = self.vae.decode(latents, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @staticmethod
    def postprocess(images: torch.Tensor, output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """(B, C, H, W) in [0, 1] -> "pt" as is, "np" (B, H, W, C) float32, "pil" a list ("L" gray, "RGB")."""
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        if output_type == "np":
            return array
        if array.shape[-1] not in (1, 3):
            raise ValueError(f"Cannot make PIL images from {array.shape[-1]} channels; use output_type='np' or 'pt'.")
        pixels = (array * 255).round().astype(np.uint8)
        return [PIL.Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]

    def _step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None) -> dict[str, Any]:
        """Pass the generator to schedulers whose step draws noise (DDPM, SDE solvers), and only to those."""
        accepts = "generator" in inspect.signature(self.scheduler.step).parameters
        return {"generator": generator} if accepts else {}

    def conditional_row(self, au_tokens: torch.Tensor | None) -> str:
        """The row holding every condition given: "text_au" with AU tokens, else "text"."""
        return "text_au" if au_tokens is not None else "text"

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, plan: Sequence[tuple[str, float]],
                      condition: torch.Tensor, precision: str) -> torch.Tensor:
        """The guided noise prediction (B, C, h, w) at timestep ``t``: one UNet call over the plan's rows stacked
        along the batch (``condition`` from :meth:`build_condition`), combined by their weights in the latents'
        dtype (fp32 under mixed precision: only the UNet runs in the low precision)."""
        model_input = self.scheduler.scale_model_input(torch.cat([latents] * len(plan)), t)
        with autocast(latents.device, precision):
            noise = denoise(self.unet, model_input, t, condition)
        eps = None
        for (_, w), part in zip(plan, noise.to(latents.dtype).chunk(len(plan)), strict=True):
            eps = w * part if eps is None else eps + w * part
        return eps

    def compile_denoiser(self, mode: str = "max-autotune-no-cudagraphs") -> None:
        """Compile the UNet with ``torch.compile`` (once per process; the first call at each new batch shape pays
        the compilation, about a minute for the bundled model on a 2-core CPU). The AU adapter, if any, stays
        installed from now on, so its processors are part of the compiled graph."""
        if self.au_adapter is not None and not self.au_adapter.installed_on(self.unet):
            self.au_adapter.install(self.unet)
        self.unet.forward = torch.compile(self.unet.forward, mode=mode, dynamic=False)

    # -- the recipe -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, aus: torch.Tensor | None = None,
                 num_inference_steps: int | None = None, guidance_scale_text: float | None = None,
                 guidance_scale_au: float | None = None, guidance_scale: float | None = None,
                 num_images_per_prompt: int = 1, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 negative_prompt: str | list[str] | None = None,
                 latents: torch.Tensor | None = None, strength: float = 1.0, output_type: str = "pil",
                 height: int | None = None,
                 width: int | None = None,
                 callback_on_step_end: Callable[..., dict[str, Any] | None] | PipelineCallback
                 | MultiPipelineCallbacks | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
                 guidance_interval: tuple[float, float] | None = None,
                 precision: str = "auto",
                 au_adapter_scale: float | None = None,
                 return_dict: bool = True) -> SynferPipelineOutput | tuple:
        """Generate one image per prompt.

        Args:
            prompt: one prompt or B prompts (or None with ``prompt_embeds``).
            aus: AU intensities in [0, 1], (B, A) or (A,) for every prompt, in ``au_adapter.au_names`` order;
                None samples without AU guidance (the adapter, if any, sees its null tokens).
            num_inference_steps: scheduler steps (None: the pipeline's saved default, see
                :meth:`generation_defaults`; 25 unless the model says otherwise).
            guidance_scale_text, guidance_scale_au: w_t and w_a of the module docstring's rule (None: the saved
                defaults, 5.0 and 2.0 unless the model says otherwise).
            guidance_scale: Stable Diffusion's name for the text scale w_t (give one of the two); the AU scale keeps
                its default unless given.
            num_images_per_prompt: images per prompt (each prompt's images are consecutive, as in diffusers).
            prompt_embeds, negative_prompt_embeds: (B, L, D) text embeddings instead of ``prompt`` /
                ``negative_prompt`` (the text encoder's L and D).
            generator: seeds the initial noise (and stochastic schedulers); one per prompt for per-row seeds.
            negative_prompt: text for the unconditional row of classifier-free guidance, one for all prompts or
                one per prompt (None: the "" embedding); guidance then also pushes away from it.
            latents: (B, C, h, w) starting latents instead of noise; with ``strength`` < 1 they are a real face's
                latents noised (or DDIM-inverted, :func:`synfer.generator.layout.invert`) to the first step kept.
            strength: share of the schedule that runs (layout initialisation, SDEdit-style editing): the first
                ``num_inference_steps - round(num_inference_steps * strength)`` steps are skipped and ``latents``
                (required below 1) enter at the next one. 1 = the full schedule from noise.
            output_type: "pil", "np", "pt" (images in [0, 1]) or "latent".
            height, width: image size in pixels (multiples of the VAE scale factor); default the UNet's size.
            callback_on_step_end: ``fn(pipe, step_index, timestep, kwargs) -> dict`` after each scheduler step,
                ``kwargs`` holding the tensors named in ``callback_on_step_end_tensor_inputs``; returned
                ``latents`` / ``prompt_embeds`` / ``negative_prompt_embeds`` / ``au_tokens`` replace the current
                ones for the following steps (semantic guidance edits ``prompt_embeds`` this way). It runs with the
                AU adapter installed, under ``torch.no_grad()`` (use ``torch.enable_grad()`` inside for gradients);
                ``pipe.active_precision`` is this call's resolved precision.
            guidance_interval: (start, end) fractions of the steps where the guidance rows are computed (step i
                when start <= i / steps < end); the other steps evaluate only the fully conditional row. None:
                every step.
            precision: ``auto`` (bf16 where the device computes it natively, see :mod:`synfer.core.runtime`),
                ``fp32``, ``bf16`` or ``fp16`` (CUDA): autocast for the text encoder, UNet and VAE decoder.
            au_adapter_scale: the AU adapter's attention scale in every layer for this call (IP-Adapter's scale;
                1 as trained; None: the saved default). Above 1 the AU tokens weigh more against the text, which
                two guidance rows cannot do through ``guidance_scale_au``.
            return_dict: a :class:`SynferPipelineOutput`, else a tuple ``(images,)``.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if guidance_scale is not None and guidance_scale_text is not None and guidance_scale != guidance_scale_text:
            raise ValueError(f"guidance_scale ({guidance_scale}) is the text scale guidance_scale_text "
                             f"({guidance_scale_text}); give one of them.")
        guidance_scale_text = guidance_scale if guidance_scale is not None else guidance_scale_text
        defaults = self.generation_defaults()
        num_inference_steps = defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps
        guidance_scale_text = defaults["guidance_scale_text"] if guidance_scale_text is None else guidance_scale_text
        guidance_scale_au = defaults["guidance_scale_au"] if guidance_scale_au is None else guidance_scale_au
        au_adapter_scale = defaults["au_adapter_scale"] if au_adapter_scale is None else au_adapter_scale
        # 1. Check inputs.
        prompts, negatives, batch = self.check_prompts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        aus = self.check_inputs(batch, aus, height, width, num_inference_steps, guidance_scale_text,
                                guidance_scale_au, output_type, callback_on_step_end_tensor_inputs,
                                num_images_per_prompt)
        guided = guided_steps(num_inference_steps, guidance_interval)
        start = self.first_step(num_inference_steps, strength, latents)
        device, batch = self._execution_device, batch * num_images_per_prompt
        precision = self.active_precision = resolve_precision(precision, device)

        # 2. Encode the prompts and the "" (or negative) prompt: classifier-free guidance's unconditional row.
        with autocast(device, precision):
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompts, device, negatives, prompt_embeds,
                                                                       negative_prompt_embeds)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)

        # 3. AU tokens (null tokens stand in for "no AU condition" in the other rows).
        au_tokens, null_tokens = self.encode_aus(aus, batch, device)
        weights = guidance_weights(guidance_scale_text, guidance_scale_au, use_aus=au_tokens is not None)
        # the rows of a guided step, and of a step outside the guidance interval (the fully conditional row alone)
        plans = {True: list(weights.items()), False: [(self.conditional_row(au_tokens), 1.0)]}

        # 4. Initial latents (a partly noised real face's enter as they are: they already sit at step ``start``).
        latents = self.prepare_latents(batch, height, width, self.unet.dtype, device, generator, latents,
                                       scale=start == 0)

        # 5. Denoise, combining the rows' noise predictions by the guidance rule.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if start and hasattr(self.scheduler, "set_begin_index"):  # multistep solvers count steps from here
            self.scheduler.set_begin_index(start)
        timesteps = self.scheduler.timesteps[start:]
        step_kwargs = self._step_kwargs(generator)
        adapter = self.au_adapter
        installed = adapter is None or adapter.installed_on(self.unet)  # e.g. left installed by a trainer
        adapter_context = nullcontext() if installed else adapter.applied_to(self.unet)
        scale_context = nullcontext() if adapter is None else adapter.scaled(au_adapter_scale)

        def conditions() -> dict[bool, torch.Tensor]:
            return {g: self.build_condition([r for r, _ in plan], prompt_embeds, negative_prompt_embeds, au_tokens,
                                            null_tokens) for g, plan in plans.items()}

        with adapter_context, scale_context, self.progress_bar(total=len(timesteps)) as progress:
            condition = conditions()
            for i, t in enumerate(timesteps, start=start):  # i indexes the full schedule (callbacks' windows)
                g = i in guided
                eps = self.predict_noise(latents, t, plans[g], condition[g], precision)
                latents = self.scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    current = {"latents": latents, "prompt_embeds": prompt_embeds,
                               "negative_prompt_embeds": negative_prompt_embeds, "au_tokens": au_tokens}
                    updates = callback_on_step_end(self, i, t,
                                                   {k: current[k] for k in callback_on_step_end_tensor_inputs}) or {}
                    latents = updates.get("latents", latents)
                    prompt_embeds = updates.get("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = updates.get("negative_prompt_embeds", negative_prompt_embeds)
                    au_tokens = updates.get("au_tokens", au_tokens)
                    if updates.keys() - {"latents"}:  # the conditions changed: rebuild the stacked rows
                        condition = conditions()
                progress.update()

        # 6. Decode with the VAE; 7. postprocess.
        if output_type == "latent":
            images = latents
        else:
            with autocast(device, precision):
                images = self.postprocess(self.decode_latents(latents), output_type)
        self.maybe_free_model_hooks()
        return SynferPipelineOutput(images=images) if return_dict else (images,)


# DiffusionPipeline.from_pretrained looks a folder's ``_class_name`` up on the diffusers module (see synfer/__init__).
if getattr(diffusers, "SynferPipeline", None) is not SynferPipeline:
    diffusers.SynferPipeline = SynferPipeline


def load_pipeline(path_or_name: str | Path | None = None, **kwargs: Any) -> SynferPipeline:
    """A SynferPipeline from a folder, a bundled name, or None / "bundled" (the default bundled mini model; see
    :func:`synfer.core.assets.resolve`). Stable Diffusion checkpoints go through
    :meth:`SynferPipeline.from_stable_diffusion`."""
    return SynferPipeline.from_pretrained(resolve("generator", path_or_name), **kwargs)


def load_generator(pipeline: str | Path | None, device: str | torch.device = "cpu") -> tuple[SynferPipeline, Path]:
    """The pipeline (progress bar off) on ``device`` (``auto``: CUDA when present) and its folder, where
    ``au_targets.json`` may lie."""
    from ..core.runtime import resolve_device

    folder = resolve("generator", pipeline)
    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(str(device))), folder
