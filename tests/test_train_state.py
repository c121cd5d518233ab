import random

import numpy as np
import pytest
import torch

from synfer.core.train_state import load_state, rng_state, save_state, set_rng_state


def test_optimizer_model_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    for _ in range(3):
        loss = model(torch.randn(5, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    save_state(tmp_path / "state", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "step": 3, "best": (0.5, "e2")})
    state = load_state(tmp_path / "state")
    assert state["step"] == 3 and state["best"] == (0.5, "e2")
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v)
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    model2.load_state_dict(state["model"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=0.01, total_steps=10)
    opt2.load_state_dict(state["optimizer"])  # build optimizer and scheduler first, then load both
    sched2.load_state_dict(state["scheduler"])
    x = torch.randn(5, 4)
    for m, o, s in ((model, opt, sched), (model2, opt2, sched2)):  # the next step is identical
        loss = m(x).square().mean()
        o.zero_grad()
        loss.backward()
        o.step()
        s.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_rng_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_state(tmp_path / "s", {"rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_state(tmp_path / "s")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_replace_and_recover(tmp_path):
    save_state(tmp_path / "s", {"step": 1})
    save_state(tmp_path / "s", {"step": 2})
    assert load_state(tmp_path / "s")["step"] == 2
    (tmp_path / "s").rename(tmp_path / ".old-s")  # as if killed between the renames
    assert load_state(tmp_path / "s")["step"] == 2
    with pytest.raises(FileNotFoundError, match="state.json"):
        load_state(tmp_path / "none")
    with pytest.raises(TypeError, match="cannot store"):
        save_state(tmp_path / "x", {"f": object()})


def test_large_states_are_written_in_shards_without_copies(tmp_path, monkeypatch):
    """A state larger than SHARD_BYTES goes to several files (safetensors copies one file's tensors to write it);
    tensors that share memory or are not contiguous are copied, and everything reads back exactly."""
    import synfer.core.train_state as ts

    monkeypatch.setattr(ts, "SHARD_BYTES", 1000)
    base = torch.arange(600, dtype=torch.float32)
    state = {"a": base, "view": base[:10], "t": torch.randn(20, 30).t(), "b": torch.ones(100), "empty": torch.zeros(0)}
    ts.save_state(tmp_path / "state", state)
    files = sorted((tmp_path / "state").glob("tensors-*.safetensors"))
    assert len(files) >= 3
    back = ts.load_state(tmp_path / "state")
    assert all(torch.equal(back[k], v) for k, v in state.items())
