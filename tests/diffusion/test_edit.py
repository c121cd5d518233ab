"""Layout initialisation (DDIM inversion + partial schedules) and ``synfer edit`` on tiny pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL import Image

from conftest import make_pipe
from synfer.core.dataset import DatasetFolder, DatasetWriter, Record
from synfer.core.options import SamplerOptions
from synfer.generator.layout import encode_images, invert, read_faces, to_pipeline_images
from synfer.schema import AUSet
from synfer.synthesize.edit import edit


def faces(n: int = 2, size: int = 16) -> torch.Tensor:
    """Smooth gray 'faces' (B, 1, size, size) in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.stack([(0.5 + 0.4 * torch.cos(3 * xx + k) * torch.sin(2 * yy - k))[None] for k in range(n)])


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_inversion_lands_where_sampling_enters(parts: dict, scheduler: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With a noise prediction that does not depend on the latents (here 0), DDIM inversion and sampling are exact
    inverses, so any misalignment of levels or steps between ``invert`` and ``strength`` shows as an error. (The
    bundled model's round trip on real weights is tested in test_bundled_generator.py.)"""
    pipe = make_pipe(parts)
    if scheduler == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    forward = pipe.unet.forward
    calls = []

    def zero_noise(sample, t, encoder_hidden_states=None, return_dict=True, **kw):
        calls.append(int(t))
        out = forward(sample, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        return (out * 0,)

    monkeypatch.setattr(pipe.unet, "forward", zero_noise)
    x = faces()
    z0 = encode_images(pipe, x)
    for steps, strength in ((10, 0.5), (10, 1.0), (7, 0.3)):
        calls.clear()
        zt = invert(pipe, x, steps, strength)
        kept = round(steps * strength)
        assert len(calls) == kept  # only the steps that sampling will run
        back = pipe(["", ""], latents=zt, strength=strength, num_inference_steps=steps, guidance_scale_text=1.0,
                    output_type="latent").images
        assert torch.allclose(back, z0, atol=1e-4, rtol=1e-3), (steps, strength, (back - z0).abs().max())


def test_strength_runs_the_tail_of_the_schedule(parts: dict) -> None:
    pipe = make_pipe(parts)
    seen: list[int] = []

    def spy(p, i, t, kw):
        seen.append(i)
        return {}

    z = invert(pipe, faces(), 10, 0.3)
    pipe(["a", "b"], latents=z, strength=0.3, num_inference_steps=10, callback_on_step_end=spy, output_type="pt")
    assert seen == [7, 8, 9]  # callbacks see indices into the full schedule (guidance windows stay put)
    with pytest.raises(ValueError, match="invert"):
        pipe(["a"], strength=0.5, num_inference_steps=4)
    with pytest.raises(ValueError, match="strength must be in"):
        pipe(["a"], latents=z[:1], strength=0.0, num_inference_steps=4)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="variance-preserving"):
        invert(pipe, faces(), 10, 0.5)


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    files = tmp_path / "faces"
    files.mkdir()
    for k, name in enumerate(["alice smith.png", "bob.jpg"]):
        Image.fromarray((faces(2, 32)[k, 0].numpy() * 255).astype(np.uint8)).save(files / name)
    (files / "notes.txt").write_text("not an image")
    with DatasetWriter(tmp_path / "ds", ("neutral", "happiness"), aus=AUSet(("AU01", "AU12"))) as w:
        for i in range(3):
            w.add(Record(id=f"r{i}", split="test" if i else "train", source="t", expression="neutral"),
                  Image.fromarray((faces(3)[i, 0].numpy() * 255).astype(np.uint8)))
    return files, tmp_path / "ds"


def test_edit_writes_a_dataset_of_edits(pipe_dir: Path, tmp_path: Path) -> None:
    files, ds = write_inputs(tmp_path)
    assert [n for n, _ in read_faces([files])] == ["alice smith", "bob"]
    assert [n for n, _ in read_faces([ds], split="test")] == ["r1", "r2"]
    out = edit([files, ds], tmp_path / "out", expression="happy", aus={"AU01": 0.25}, strength=0.5, pipeline=str(pipe_dir), split="test", au_base="prototype", sampling=SamplerOptions(num_inference_steps=4))
    folder = DatasetFolder(out)
    recs = list(folder.records())
    assert [r.id for r in recs] == ["edit-alice_smith", "edit-bob", "edit-r1", "edit-r2"]
    assert {r.expression for r in recs} == {"happiness"} and all("happy" in r.caption for r in recs)
    assert all(r.aus[0] == 0.25 and r.aus[1] > 0.5 for r in recs)  # AU01 set, AU12 from happiness's prototype
    meta = json.loads(folder.column("meta")[0])
    assert meta["source"] == "alice smith" and meta["strength"] == 0.5 and meta["num_inference_steps"] == 4
    assert folder.load_image(recs[0].image).size == (16, 16)
    assert Image.open(out / "preview.png").size == (4 * 17 + 1, 2 * 17 + 1)  # sources above edits
    # low strength stays closer to the source than high strength
    src = to_pipeline_images(make_pipe_from(pipe_dir), [im for _, im in read_faces([files])])
    dist = {}
    for s in (0.25, 1.0):
        o = edit([files], tmp_path / f"s{s}", expression="happy", strength=s, pipeline=str(pipe_dir), preview=False, sampling=SamplerOptions(num_inference_steps=8))
        f = DatasetFolder(o)
        got = torch.stack([torch.from_numpy(np.asarray(f.load_image(r.image), dtype=np.float32) / 255)[None]
                           for r in f.records()])
        dist[s] = (got - src).abs().mean().item()
    assert dist[0.25] < dist[1.0], dist


def make_pipe_from(folder: Path):
    from synfer.generator.pipeline import load_pipeline

    return load_pipeline(folder)


def test_edit_refuses_unclear_requests(pipe_dir: Path, tmp_path: Path) -> None:
    files, _ = write_inputs(tmp_path)
    with pytest.raises(ValueError, match="--expression"):
        edit([files], tmp_path / "o1", pipeline=str(pipe_dir))
    with pytest.raises(ValueError, match="AU 'AU99'"):
        edit([files], tmp_path / "o2", aus={"AU99": 1.0}, pipeline=str(pipe_dir))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        edit([files], tmp_path / "o3", aus={"AU12": 2.0}, pipeline=str(pipe_dir))
    with pytest.raises(ValueError, match="not an image"):
        edit([files / "notes.txt"], tmp_path / "o4", expression="happy", pipeline=str(pipe_dir))
    with pytest.raises(ValueError, match="strength"):
        edit([files], tmp_path / "o5", expression="happy", strength=1.5, pipeline=str(pipe_dir))

