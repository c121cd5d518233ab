"""synfer's models and exports with the clients users already have, used as their own documentation says.

diffusers: ``DiffusionPipeline.from_pretrained`` on a synfer folder, ``save_pretrained`` copies that generate the same
faces, Stable Diffusion's call arguments and ``dtype``. Hugging Face ``datasets``, torchvision and ``webdataset`` on the
three exports: splits, class indices in the folder's order, AU columns with their kind and mask. timm: synfer's
classifiers by bundled name or folder, with their data config; no config reaches for remote weights.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import EXPORT_EXPR as EXPR
from conftest import make_pipe
from conftest import write_export_dataset as make_dataset
from synfer.core.dataset import DatasetFolder
from synfer.generator.pipeline import SynferPipeline
from synfer.schema import AUSet

PROMPTS = ["a happy face", "a sad face"]
AUS = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
pytestmark = pytest.mark.usefixtures("hub_offline")


def sample(pipe: SynferPipeline, seed: int = 0, **kw) -> torch.Tensor:
    kw = {"num_inference_steps": 2, "output_type": "pt", **kw}
    return pipe(generator=torch.Generator().manual_seed(seed), **kw).images


# -- diffusers ----------------------------------------------------------------------------------------------------
def test_diffusion_pipeline_loads_a_synfer_folder(pipe_dir: Path) -> None:
    """In new processes, `import synfer` before and after diffusers: DiffusionPipeline.from_pretrained gives a
    SynferPipeline drawing the same faces as SynferPipeline.from_pretrained (the two processes run side by side)."""
    imports = ["import synfer", "from diffusers import DiffusionPipeline"]
    body = f"""
import torch
from synfer.generator.pipeline import SynferPipeline
a = DiffusionPipeline.from_pretrained({str(pipe_dir)!r})
b = SynferPipeline.from_pretrained({str(pipe_dir)!r})
out = [p("a happy face", aus=[0.9, 0.1], generator=torch.Generator().manual_seed(0), output_type="pt").images
       for p in (a, b)]
print(type(a).__name__, torch.equal(*out))
"""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    procs = {first: subprocess.Popen([sys.executable, "-c", "\n".join([*order, body])], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
             for first, order in (("synfer", imports), ("diffusers", imports[::-1]))}
    for first, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (first, err[-2000:])
        assert out.split()[-2:] == ["SynferPipeline", "True"], first


def test_save_pretrained_copy_generates_the_same_faces(tmp_path: Path) -> None:
    """The bundled generator loaded and saved elsewhere keeps its AU targets and model card, and `generate` with
    its defaults writes byte-identical faces from the copy."""
    from synfer import load_pipeline, resolve
    from synfer.core.dataset import DatasetFolder
    from synfer.synthesize.generate import generate

    source = resolve("generator", "bundled")
    load_pipeline(source).save_pretrained(tmp_path / "copy")
    for name in ("au_targets.json", "README.md"):
        assert (tmp_path / "copy" / name).read_bytes() == (source / name).read_bytes()
    runs = {}
    for name, pipe in (("original", source), ("copy", tmp_path / "copy")):
        generate(tmp_path / f"faces-{name}", pipeline=str(pipe), per_class=1, expressions=["happiness", "sadness"], seed=3)
        folder = DatasetFolder(tmp_path / f"faces-{name}")
        runs[name] = [(r.aus, (folder.path / r.image).read_bytes()) for r in folder.records()]
    assert runs["copy"] == runs["original"] and len(runs["copy"]) == 2


def test_auto_au_targets_without_the_file_say_so(pipe_dir: Path) -> None:
    from synfer.generator.au_targets import expression_au_targets

    with pytest.warns(UserWarning, match="has no au_targets.json.*prototypes"):
        expression_au_targets(["happiness"], ("AU01", "AU12"), "auto", pipe_dir)


def test_stable_diffusion_call_arguments(parts: dict) -> None:
    pipe = make_pipe(parts)
    base = sample(pipe, prompt=PROMPTS, aus=AUS, guidance_scale_text=3.0)
    assert torch.equal(sample(pipe, prompt=PROMPTS, aus=AUS, guidance_scale=3.0), base)
    with pytest.raises(ValueError, match="give one of them"):
        sample(pipe, prompt=PROMPTS, guidance_scale=3.0, guidance_scale_text=4.0)
    # num_images_per_prompt: each prompt's images consecutive, as if the prompts had been repeated
    twice = sample(pipe, prompt=PROMPTS, aus=AUS, num_images_per_prompt=2)
    repeated = sample(pipe, prompt=[p for p in PROMPTS for _ in range(2)], aus=AUS.repeat_interleave(2, 0))
    assert twice.shape[0] == 4 and torch.equal(twice, repeated)
    # prompt_embeds / negative_prompt_embeds stand in for the text (fp32: encoded here as in the call)
    embeds, negative = pipe.encode_prompt(PROMPTS, torch.device("cpu"), ["blurry", "dark"])
    with_text = sample(pipe, prompt=PROMPTS, aus=AUS, negative_prompt=["blurry", "dark"], precision="fp32")
    assert torch.equal(sample(pipe, prompt_embeds=embeds, negative_prompt_embeds=negative, aus=AUS,
                              precision="fp32"), with_text)
    assert torch.equal(sample(pipe, prompt_embeds=embeds, aus=AUS, precision="fp32"),
                       sample(pipe, prompt=PROMPTS, aus=AUS, precision="fp32"))
    with pytest.raises(ValueError, match="exactly one"):
        sample(pipe, prompt=PROMPTS, prompt_embeds=embeds)
    with pytest.raises(ValueError, match=r"\(B, L, 32\)"):
        sample(pipe, prompt_embeds=embeds[..., :8])
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        sample(pipe, prompt=PROMPTS, num_images_per_prompt=0)


def test_from_stable_diffusion_takes_dtype(parts: dict, tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    for name in ("vae", "unet", "scheduler"):
        parts[name].save_pretrained(sd / name)
    parts["text_encoder"].text_model.save_pretrained(sd / "text_encoder")
    parts["text_encoder"].tokenizer.save_pretrained(sd / "tokenizer")
    pipe = SynferPipeline.from_stable_diffusion(sd, dtype=torch.bfloat16)
    assert {pipe.unet.dtype, pipe.vae.dtype, next(pipe.text_encoder.parameters()).dtype} == {torch.bfloat16}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' own notice that torch_dtype is the older name
        assert SynferPipeline.from_stable_diffusion(sd, torch_dtype=torch.bfloat16).unet.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not both"):
        SynferPipeline.from_stable_diffusion(sd, dtype=torch.bfloat16, torch_dtype=torch.float32)


# -- exports ------------------------------------------------------------------------------------------------------
@pytest.fixture()
def src(tmp_path: Path) -> Path:
    """3 splits x 3 classes (neutral, happiness, surprise) with AUs, one unlabelled train face."""
    return make_dataset(tmp_path / "src", aus=AUSet.from_names(["AU01", "AU12"]))


def truth(src: Path) -> dict[str, tuple[int, str]]:
    """id -> (class index in the folder's order, split) of every labelled face."""
    f = DatasetFolder(src)
    return {r.id: (f.header.expressions.index(r.expression), r.split) for r in f.records() if r.expression}


def check_hf(ds, src: Path) -> None:
    """A DatasetDict from an export: HF split names, `label` a ClassLabel in the folder's order, AU kind + mask."""
    import datasets

    want = truth(src)
    assert sorted(ds) == ["test", "train", "validation"]
    for split, part in ds.items():
        label = part.features["label"]
        assert isinstance(label, datasets.ClassLabel) and label.names == list(EXPR)
        rows = part.remove_columns([c for c in part.column_names if c in ("image",)]).to_list()
        assert {r["split"] for r in rows} == {"val" if split == "validation" else split}
        for r in rows:
            if r["id"] in want:
                assert r["label"] == want[r["id"]][0] and label.int2str(r["label"]) == r["label_name"]
            else:
                assert r["label"] == -1 and r["has_aus"] is False and r["AU01"] is None
        assert {r["aus_kind"] for r in rows if r["has_aus"]} == {"measured"}
    assert sum(len(p) for p in ds.values()) == len(DatasetFolder(src))
    torch_rows = ds["train"].with_format("torch")[:]
    assert torch_rows["has_aus"].dtype == torch.bool and torch.isnan(torch_rows["AU01"][~torch_rows["has_aus"]]).all()


def test_datasets_and_torchvision_read_the_imagefolder_export(src: Path, tmp_path: Path) -> None:
    import datasets
    import torchvision

    from synfer.core.export import export_imagefolder

    out = export_imagefolder(src, tmp_path / "hf")
    cache = str(tmp_path / "cache")
    for ds in (datasets.load_dataset(str(out), cache_dir=cache),
               datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=cache)):
        check_hf(ds, src)
        assert ds["train"][0]["image"].size == (6, 6)
    want = truth(src)
    for split in ("train", "validation", "test"):
        tv = torchvision.datasets.ImageFolder(str(out / split))
        assert tv.classes[:3] == ["00_neutral", "01_happiness", "02_surprise"]
        for path, target in tv.samples:
            rid = Path(path).stem
            assert target == want[rid][0] if rid in want else tv.classes[target] == "unlabelled"


def test_datasets_reads_the_parquet_export(src: Path, tmp_path: Path) -> None:
    import datasets

    from synfer.core.export import export_parquet

    export_parquet(src, tmp_path / "pq", rows_per_file=4)
    cache = str(tmp_path / "cache")
    for ds in (datasets.load_dataset(str(tmp_path / "pq"), cache_dir=cache),
               datasets.load_dataset("parquet", data_dir=str(tmp_path / "pq"), cache_dir=cache)):
        check_hf(ds, src)
        assert ds["validation"][0]["image"].size == (6, 6)


def test_webdataset_reads_the_shards(src: Path, tmp_path: Path) -> None:
    import webdataset as wds

    from synfer.core.export import export_webdataset

    shards = export_webdataset(src, tmp_path / "wds", shard_size=5)
    want, f = truth(src), DatasetFolder(src)
    captions = {r.id: r.caption or "" for r in f.records()}
    pipeline = wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("pil").to_tuple(
        "png", "cls", "txt", "json")
    seen = 0
    for image, cls, txt, meta in pipeline:
        assert image.size == (6, 6) and txt == captions[meta["id"]]
        assert cls == (want[meta["id"]][0] if meta["id"] in want else -1)
        seen += 1
    assert seen == len(f)


# -- timm ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["bundled name", "local-dir folder"])
def test_timm_builds_synfer_classifiers(where: str, tmp_path: Path) -> None:
    """timm.create_model on a bundled name and on a classifier folder gives the same logits as synfer's loader;
    resolve_data_config reads the folder's input size, channels and mean/std; timm's classifier accessors work."""
    import timm
    from timm.data import resolve_data_config

    from synfer.models.classifiers import ExpressionClassifier

    ours = ExpressionClassifier.from_pretrained("ferplus-vgg13s-judge")
    if where == "bundled name":
        name = "ferplus-vgg13s-judge"
    else:
        ours.save_pretrained(tmp_path / "clf")
        name = f"local-dir:{tmp_path / 'clf'}"
    model = timm.create_model(name, pretrained=True).eval()
    x = torch.rand(3, 1, 48, 48)
    assert torch.allclose(model(ours.preprocess(x)), ours(x), atol=1e-6)
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in resolve_data_config(model=model).items()}
    assert data == {"input_size": (1, 48, 48), "interpolation": "bilinear",
                                                "mean": (0.5,), "std": (0.25,), "crop_pct": 1.0,
                                                "crop_mode": "center"}
    assert model.pretrained_cfg["label_names"] == ours.label_names and model.num_classes == 8
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(torch.rand(1, 1, 48, 48)).shape == (1, 3)


def test_timm_lists_synfer_architectures() -> None:
    import timm

    assert {"fer_resnet_s", "fer_vgg13", "ferplus-resnet-s"} <= set(timm.list_models("fer*"))
    assert timm.create_model("fer_resnet_xs", num_classes=5, in_chans=3)(torch.rand(2, 3, 48, 48)).shape == (2, 5)


def test_classifier_configs_never_reach_for_remote_weights(tmp_path: Path) -> None:
    """A hub-style architecture or a weight-source argument in a classifier's config.json is refused on load."""
    import json

    from synfer.models.classifiers import ExpressionClassifier

    ExpressionClassifier.from_pretrained("ferplus-resnet-s").save_pretrained(tmp_path / "clf")
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    for change, message in (({"architecture": "hf-hub:timm/resnet18.a1_in1k"}, "refers to a hub"),
                            ({"model_kwargs": {"timm_pretrained": True}}, "download or unpickle"),
                            ({"model_kwargs": {"pretrained_cfg_overlay": {"file": "x.pth"}}}, "download or unpickle")):
        (tmp_path / "clf" / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            ExpressionClassifier.from_pretrained(tmp_path / "clf")
