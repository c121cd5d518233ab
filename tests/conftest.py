"""Shared test helpers: the real-data location and small fixture builders (no network, tiny files)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pytest_configure(config: pytest.Config) -> None:
    """Test workers (pytest-xdist, ``-n auto``) share the cores: one torch thread each, so two workers on two cores
    do not oversubscribe them (measured: 2 workers x 2 threads took twice as long as one process)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)

#: ../shared/data beside the checkout (SYNFER_SHARED_DATA overrides); tests that need it skip when it is absent.
SHARED_DATA = Path(os.environ.get("SYNFER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FERPLUS_DIR = SHARED_DATA / "ferplus"

needs_ferplus = pytest.mark.skipif(not (FERPLUS_DIR / "FER2013Train" / "label.csv").is_file(),
                                   reason=f"real FER+ folder not found at {FERPLUS_DIR}")


def gray_face(seed: int, size: int = 48) -> Image.Image:
    """A small random gray image (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")


def write_ferplus_fixture(root: Path, rows_per_split: dict[str, list[list[int]]]) -> Path:
    """Write a FER+-layout folder: for each split folder, ``label.csv`` rows of 10 vote counts and PNGs.

    Args:
        root: where to create it.
        rows_per_split: ``{"FER2013Train": [[votes x10], ...], ...}``.
    """
    n = 0
    for folder, rows in rows_per_split.items():
        d = root / folder
        d.mkdir(parents=True)
        lines = []
        for votes in rows:
            name = f"fer{n:07d}.png"
            gray_face(n).save(d / name)
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
            n += 1
        (d / "label.csv").write_text("\n".join(lines) + "\n")
    return root


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under root: to check a source is left untouched."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


PATTERN_CLASSES = ("neutral", "happiness", "surprise")


def pattern_face(label: int, rng: np.random.Generator, size: int = 16) -> Image.Image:
    """An easy synthetic 'expression': class 0 bright top half, 1 bright bottom half, 2 bright left half."""
    a = rng.normal(70, 20, (size, size))
    h = size // 2
    if label == 0:
        a[:h] += 120
    elif label == 1:
        a[h:] += 120
    else:
        a[:, :h] += 120
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L")


def write_pattern_dataset(path: Path, per_class: dict[str, int] | None = None, size: int = 16, seed: int = 0,
                          expressions: tuple[str, ...] = PATTERN_CLASSES) -> Path:
    """A small labelled dataset folder of :func:`pattern_face` images (train / val / test)."""
    from synfer.core.dataset import DatasetWriter, Record

    per_class = per_class or {"train": 40, "val": 12, "test": 12}
    rng = np.random.default_rng(seed)
    with DatasetWriter(path, expressions) as w:
        for split, n in per_class.items():
            for c, name in enumerate(PATTERN_CLASSES):
                for i in range(n):
                    probs = [0.0] * len(expressions)
                    probs[expressions.index(name)] = 1.0
                    w.add(Record(id=f"{split}-{name}-{i:03d}", split=split, source="pattern", expression=name,
                                 label_probs=probs), pattern_face(c, rng, size))
    return path


def tiny_clip_encoder(folder: Path, hidden: int = 32):
    """A random 2-layer CLIP text model (seeded) and a character-level CLIP tokenizer written to ``folder``, wrapped
    as synfer's CLIPTextEncoderWrapper: the full-scale text encoder, tiny and offline."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from synfer.models.text_encoders import CLIPTextEncoderWrapper, character_clip_tokenizer

    tokenizer = character_clip_tokenizer(folder)
    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    return CLIPTextEncoderWrapper(CLIPTextModel(config), tokenizer)


def tiny_sdxl_parts(folder: Path):
    """An SDXL-shaped UNet (8x8 latents, ``text_time`` added conditioning, cross-attention in the lower block and the
    middle, 2 transformer layers each) and an SDXLTextEncoder of two random CLIP models (16 + 24 wide, a 16-wide
    projected pooled embedding), character tokenizers written to ``folder`` (seeded): SDXL's conditioning, tiny."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from synfer.models.text_encoders import SDXLTextEncoder, character_clip_tokenizer

    tokenizer = character_clip_tokenizer(folder)
    torch.manual_seed(0)
    configs = [CLIPTextConfig(hidden_size=h, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                              pad_token_id=1, projection_dim=16) for h in (16, 24)]
    encoder = SDXLTextEncoder(CLIPTextModel(configs[0]), CLIPTextModelWithProjection(configs[1]), tokenizer, tokenizer)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                                cross_attention_dim=40, attention_head_dim=8, norm_num_groups=8,
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8).eval()
    return unet, encoder


@contextmanager
def stopped_after_saves(monkeypatch: pytest.MonkeyPatch, saves: int = 1) -> Iterator[None]:
    """The training run inside stops right after its ``saves``-th saved state, as a killed job would (every trainer
    saves through ``synfer.core.training.save_state`` once per epoch)."""
    import synfer.core.training as training

    real, calls = training.save_state, {"n": 0}

    def stop(path: Path, state: dict) -> Path:
        real(path, state)
        calls["n"] += 1
        if calls["n"] == saves:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(training, "save_state", stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(training, "save_state", real)


def tiny_vae_unet():
    """A 1-channel 16 px VAE (4x8x8 latents) and an 8x8-latent UNet with cross-attention width 32 (seeded)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16).eval()
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8).eval()
    return vae, unet


@pytest.fixture()
def parts(tmp_path: Path) -> dict:
    """The parts of a tiny SynferPipeline: VAE, UNet, tiny CLIP text encoder, DDIM, a 2-AU adapter (AU01, AU12)."""
    import torch
    from diffusers import DDIMScheduler

    from synfer.models.au_adapter import AUAdapter

    vae, unet = tiny_vae_unet()
    torch.manual_seed(1)
    return {"vae": vae, "unet": unet, "text_encoder": tiny_clip_encoder(tmp_path / "tok"),
            "scheduler": DDIMScheduler(), "au_adapter": AUAdapter.for_unet(unet, ["AU01", "AU12"], hidden_dim=16)}


def make_pipe(parts: dict, adapter: bool = True, **overrides):
    """A SynferPipeline from ``parts`` (without its AU adapter if ``adapter`` is False), progress bars off."""
    from synfer.generator.pipeline import SynferPipeline

    pipe = SynferPipeline(**{**parts, "au_adapter": parts["au_adapter"] if adapter else None, **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def pipe_dir(parts: dict, tmp_path: Path) -> Path:
    """The tiny pipeline saved to a folder, sampling 2 steps by default."""
    pipe = make_pipe(parts)
    pipe.set_generation_defaults(num_inference_steps=2)
    pipe.save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


EXPORT_EXPR = ("neutral", "happiness", "surprise")
EXPORT_PLAN = {"train": 4, "val": 2, "test": 1}


def write_export_dataset(path: Path, aus=None) -> Path:
    """3 splits x 3 classes, ids with dots (``train.happiness.0``), one unlabelled train record (the exports' and
    their readers' fixture; ``aus``: an AUSet of two AUs, or None)."""
    from synfer.core.dataset import DatasetWriter, Record
    from synfer.core.provenance import provenance_entry

    with DatasetWriter(path, EXPORT_EXPR, aus=aus, flush_every=4, licence="FER test licence") as w:
        w.add_provenance(provenance_entry("import-test", {}))
        k = 0
        for split, n in EXPORT_PLAN.items():
            for c, expr in enumerate(EXPORT_EXPR):
                for i in range(n):
                    probs = [0.1, 0.1, 0.1]
                    probs[c] = 0.8
                    w.add(Record(f"{split}.{expr}.{i}", split, f"test:{k}", expr, probs,
                                 aus=[0.25 * c, 0.5] if aus else None,
                                 caption=f"a {expr} face" if i else None, meta={"k": k} if i else {}),
                          Image.fromarray(np.full((6, 6), k * 11 % 256, np.uint8)))
                    k += 1
        w.add(Record("train-unlabelled", "train", "test:x"), Image.new("L", (6, 6)))
    return path


@pytest.fixture()
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hugging Face hub access in this test (as at run time): loaders must find everything locally."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N -m synfer ARGS`` on CPU processes (gloo) on a free port; fails the test on a
    non-zero exit, with the end of its output."""
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                          "--master_port", port, "-m", "synfer", *args], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run
