"""bench.sweep.evaluate: common random numbers. A cell's samples depend only on their seeds (not on the batch
size), every cell of a sweep starts from the same x_T, and seed block b uses the next n seeds.

A tiny checkpoint (2 training steps of the digits preset) keeps every cell well under a second; the
numbers are meaningless, the harness is what is tested. Offline, CPU only.
"""

from __future__ import annotations

import torch
from helpers.sweep import spec_of

from bench.console import Display
from bench.store.cell import Cell
from bench.sweep.evaluate import Evaluator
from ddim import sampling


# --------------------------------------------------------------------------- common random numbers
def test_same_cell_same_samples_same_fid_any_batch(ckpt, cache, work):
    spec = spec_of(ckpt, cache, "steps=3", "eta=1", "n=20", "batch=8")
    other = spec_of(ckpt, cache, "steps=3", "eta=1", "n=20", "batch=20")
    cell = Cell("ddim", "uniform", 3, 1.0, 0)
    a, b = Evaluator(spec, "x"), Evaluator(other, "x")
    (u1, _), (u2, _) = a.generate(cell), b.generate(cell)
    assert torch.equal(u1, u2)  # a sample depends only on its seed, not on the batch size
    r1, r2 = a.evaluate(cell, Display(False)), b.evaluate(cell, Display(False))
    for k in ("fid", "isc_mean", "kid_mean"):  # the same samples: the same scores, exactly
        assert getattr(r1.scores, k) is not None and getattr(r1.scores, k) == getattr(r2.scores, k), k
    assert r1.seeds == r2.seeds == "0-19" and r1.nfe == r2.nfe == 3
    # Seed block 1 uses the next n seeds (seed_base + 1·n + i): block 0 of a sweep starting n seeds later.
    block1 = a.generate(Cell("ddim", "uniform", 3, 1.0, 1))[0]
    shifted = Evaluator(spec_of(ckpt, cache, "steps=3", "eta=1", "n=20", "batch=8", "seed_base=20"), "x")
    assert torch.equal(block1, shifted.generate(cell)[0]) and not torch.equal(block1, u1)


def test_batch_auto_is_sized_on_the_worker_and_changes_no_sample(ckpt, cache, work, monkeypatch):
    from ddim.memory import SAMPLING_CPU_BATCH

    cell = Cell("ddim", "uniform", 3, 1.0, 0)
    auto = Evaluator(spec_of(ckpt, cache, "steps=3", "eta=1", "n=300", "batch=auto"), "x")
    assert auto.spec.batch == "auto" and auto.batch == SAMPLING_CPU_BATCH  # the CPU's batch; a GPU's is measured
    small = Evaluator(spec_of(ckpt, cache, "steps=3", "eta=1", "n=20", "batch=auto"), "x")
    assert small.batch == 20  # never more than a cell's n
    import ddim.memory

    asked = []
    real = ddim.memory.sampling_batch
    monkeypatch.setattr(ddim.memory, "sampling_batch", lambda *a, **kw: asked.append(kw) or real(*a, **kw))
    Evaluator(spec_of(ckpt, cache, "steps=3", "n=300", "batch=auto"), "x", share=2)  # two workers on one device
    assert asked == [{"fraction": 0.25}]  # each takes its half of the half of free memory
    fixed = Evaluator(spec_of(ckpt, cache, "steps=3", "eta=1", "n=20", "batch=7"), "x")
    assert torch.equal(small.generate(cell)[0], fixed.generate(cell)[0])


def test_every_cell_of_a_sweep_starts_from_the_same_noise(ckpt, cache, work, monkeypatch):
    spec = spec_of(ckpt, cache, "steps=2,3", "eta=0", "sampler=ddim,sigma_hat", "n=20", "batch=8", "seed_base=5")
    ev, real, starts = Evaluator(spec, "x"), sampling.sample, []

    def recording(model, x, *args, **kwargs):
        starts.append(x.clone())
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(sampling, "sample", recording)
    cells = [c for c in spec.cells() if (c.sampler, c.steps) in {("ddim", 2), ("sigma_hat", 3)}]
    assert [(c.sampler, c.eta, c.steps) for c in cells] == [("ddim", 0.0, 2), ("sigma_hat", None, 3)]
    x_T = []
    for c in cells:
        starts.clear()
        ev.generate(c)
        assert [len(x) for x in starts] == [8, 8, 4]  # one call per batch
        x_T.append(torch.cat(starts))
    assert torch.equal(x_T[0], x_T[1])  # common random numbers: sample i starts from the same x_T in every cell
    # ... drawn from its own generator seeded seed_base + i (block 0).
    want = torch.stack([torch.randn(ev.shape, generator=torch.Generator().manual_seed(5 + i)) for i in range(20)])
    assert torch.equal(x_T[0], want)


def test_the_next_batch_is_drawn_before_this_one_is_read_back(ckpt, cache, work, monkeypatch):
    """On a GPU the host draws batch k+1's x_T while the card finishes batch k (reading k back waits for it)."""
    import bench.sweep.evaluate as evaluate

    events, initial, to_uint8 = [], sampling.SeededNoise.initial, evaluate.to_uint8
    monkeypatch.setattr(sampling.SeededNoise, "initial", lambda self: events.append("draw") or initial(self))
    monkeypatch.setattr(evaluate, "to_uint8", lambda x: events.append("read") or to_uint8(x))
    ev = Evaluator(spec_of(ckpt, cache, "steps=2", "eta=0", "n=20", "batch=8"), "x")
    ev.generate(Cell("ddim", "uniform", 2, 0.0, 0))
    assert events == ["draw", "draw", "read", "draw", "read", "read"]
