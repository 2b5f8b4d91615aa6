"""`ddimbench report A B --out DIR`: Table 1 as the paper prints it, one column block per dataset, and
`--compare-paper` refused for a sweep of another dataset or extractor (or labelled as such with --force).

One real digits sweep on the tiny test checkpoint, and a CIFAR10 "sweep" written straight into a second
store (the trials a CIFAR10 sweep stores, with made-up FIDs): the report only reads stores, so how the
numbers were measured does not matter here, and no CIFAR10 model or Inception weights are needed.
Offline, CPU only.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import json
import re
from pathlib import Path

import optuna
import pytest
from helpers.cli import run
from helpers.sweep import CIFAR, STEPS, as_record, fake_sweep, spec_of

from bench.report import paper
from bench.report.multi import write_combined_report
from bench.store.cell import Cell
from bench.store.grids import Grids
from bench.store.record import CellRecord
from bench.sweep.runner import run_sweep
from bench.tracking.wandb_run import read_offline_run


@pytest.fixture(scope="module")
def stores(ckpt, cache, tmp_path_factory) -> Path:
    """``dg``: a real digits grid (η = 0, 1 and σ̂ at S = 10, 20); ``cf``: a CIFAR10 grid (η = 0, 0.5, σ̂,
    quad spacing, Inception features); ``cc``: CIFAR10 scored with the classifier."""
    work = tmp_path_factory.mktemp("multi")
    url = f"sqlite:///{work / 'sweeps.db'}"
    spec = spec_of(ckpt, cache, "steps=10,20", "eta=0,1", "sampler=ddim,sigma_hat", "n=20", "batch=10",
                   "metrics=fid,kid", "interpolation=false", f"artifacts={work / 'dg'}", name="dg")  # fmt: skip
    assert run_sweep(spec, storage=url, wandb="disabled", progress=False, heartbeat=1).complete == 6
    fake_sweep(url, "cf", "cifar10", "inception")
    fake_sweep(url, "cc", "cifar10", "classifier")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return work


def md_tables(text: str) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """{title: (header cells, {row label: cells})} of every table in a table.md."""
    out = {}
    for block in text.split("### ")[1:]:
        title, *lines = block.splitlines()
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
        out[title] = (rows[0], {r[0]: r[1:] for r in rows[2:]})
    return out


def test_combined_report_has_one_block_per_dataset(stores: Path, capsys) -> None:
    url, out = f"sqlite:///{stores / 'sweeps.db'}", stores / "t1"
    argv = ["report", "dg", "cf", "--storage", url, "--out", out, "--compare-paper", "cifar10", "--wandb", "disabled"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    tables = md_tables((out / "table.md").read_text(encoding="utf-8"))
    assert list(tables) == ["FID ↓ — digits / cifar10", "KID ×10³ ↓ — digits / cifar10"]  # one table per metric
    heads, rows = tables["FID ↓ — digits / cifar10"]
    blocks = ("digits", "cifar10", "paper (cifar10)")
    assert heads == ["η / sampler", *(f"{b} S = {s}" for b in blocks for s in STEPS)]
    assert list(rows) == ["η = 0.0", "η = 0.5", "η = 1.0", "σ̂"]  # the paper's row order, the union of both
    assert rows["η = 0.5"][:2] == ["—", "—"] and rows["η = 1.0"][2:4] == ["—", "—"]  # each sweep's own rows
    assert [c.strip("*") for c in rows["η = 0.0"][2:4]] == ["15.00", "8.00"]
    assert [c.strip("*") for c in rows["σ̂"][4:]] == [f"{paper.fid('cifar10', 'sigma_hat', None, s):.2f}" for s in STEPS]
    assert all(re.fullmatch(r"\**\d+\.\d\d\**", c) for c in rows["η = 0.0"][:2])  # digits measured
    kid_heads, kid_rows = tables["KID ×10³ ↓ — digits / cifar10"]
    assert len(kid_heads) == 1 + 4 and [c.strip("*") for c in kid_rows["η = 0.0"][2:]] == ["15.00", "8.00"]
    # The same blocks in LaTeX (spanning headers) and in the page.
    tex = (out / "table.tex").read_text(encoding="utf-8")
    assert tex.count(r"\begin{tabular}") == 2
    assert r"\multicolumn{2}{c}{digits} & \multicolumn{2}{c}{cifar10} & \multicolumn{2}{c}{paper (cifar10)}" in tex
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<th colspan="2">digits</th><th colspan="2">cifar10</th>' in page
    assert (out / "table_standalone.tex").read_text(encoding="utf-8").startswith("\\documentclass{article}")
    # Every cell of both sweeps in one CSV, named by sweep and dataset, KID ×10³.
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert sorted({(r["sweep"], r["dataset"]) for r in lines}) == [("cf", "cifar10"), ("dg", "digits")]
    assert len(lines) == 12 and "kid_mean" not in lines[0]
    assert {float(r["kid_mean_x1e3"]) for r in lines if r["sweep"] == "cf"} == {float(f) for v in CIFAR.values()
                                                                              for f in v}  # fmt: skip
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "## Provenance: dg" in readme and "## Provenance: cf" in readme


def test_compare_paper_refuses_another_dataset_or_extractor(stores: Path, capsys) -> None:
    url = f"sqlite:///{stores / 'sweeps.db'}"
    cases = [
        (["dg", "--compare-paper", "cifar10"], "is digits scored with classifier features"),
        (["cc", "--compare-paper", "cifar10"], "is cifar10 scored with classifier features"),
        (["dg", "cf", "--compare-paper", "celeba"], "is digits scored with classifier features"),
    ]
    for args, words in cases:
        out = stores / "refused"
        code, _, err = run(["report", *args, "--storage", url, "--out", out, "--wandb", "disabled"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err and "--force" in err, err
        assert not out.exists()  # refused before anything is written
    # --force shows them, labelled as another dataset's and not comparable.
    out = stores / "forced"
    argv = ["report", "dg", "--compare-paper", "cifar10", "--force", "--storage", url, "--out", out]
    code, _, err = run([*argv, "--wandb", "disabled"], capsys)
    assert code == 0, err
    heads, rows = md_tables((out / "table.md").read_text(encoding="utf-8"))["FID ↓ — uniform spacing"]
    assert heads[3:] == [f"paper (cifar10: another dataset, not comparable) S = {s}" for s in STEPS]
    assert [c.strip("*") for c in rows["η = 0.0"][2:]] == ["13.36", "6.84"]
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "not this sweep's digits scored with classifier features: not comparable" in table


def test_single_sweep_report_keeps_its_layout(stores: Path, capsys) -> None:
    url, out = f"sqlite:///{stores / 'sweeps.db'}", stores / "single"
    code, _, err = run(["report", "cf", "--storage", url, "--out", out, "--compare-paper", "cifar10",
                        "--wandb", "disabled"], capsys)  # fmt: skip
    assert code == 0, err
    tables = md_tables((out / "table.md").read_text(encoding="utf-8"))
    heads, rows = tables["FID ↓ — quad spacing"]
    assert heads == ["η / sampler", "S = 10", "S = 20", "paper (cifar10) S = 10", "paper (cifar10) S = 20"]
    assert rows["η = 0.0"][2] == "**13.36**"


def test_combined_report_refusals(tmp_path: Path, capsys) -> None:
    from bench.report.multi import write_combined_report
    from ddim.errors import DDIMError

    rec = as_record({"number": 0, "state": "COMPLETE", "sampler": "ddim", "eta": 0.0, "steps": 10,
                     "spacing": "uniform", "seed_block": 0, "fid": 5.0, "nfe": 10})  # fmt: skip
    grid, search = {"name": "g", "mode": "grid"}, {"name": "p", "mode": "pareto"}
    with pytest.raises(DDIMError, match="'p' is a Pareto search, not an η × S grid; report it alone"):
        write_combined_report([("g", [rec], grid), ("p", [rec], search)], tmp_path / "o")
    with pytest.raises(DDIMError, match="'g' is named twice"):
        write_combined_report([("g", [rec], grid), ("g", [rec], grid)], tmp_path / "o")
    assert not (tmp_path / "o").exists()
    code, _, err = run(["report", "g", "--compare-paper", "cifar10", "--compare-paper", "celeba"], capsys)
    assert code == 2 and "one sweep, 2 --compare-paper datasets" in err and len(err.strip().splitlines()) == 1


def test_a_combined_report_with_an_unfinished_search_is_refused_before_any_advice(tmp_path: Path, capsys) -> None:
    """``ddimbench report g p`` where p is a Pareto search with a trial still running: the refusal is the one line
    on stderr, no "incomplete" warning with grid keys for a search (which has no grid to finish) before it."""
    from helpers.sweep import create_study, fake_sweep

    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    fake_sweep(url, "g", "cifar10", "inception")
    meta = {"name": "p", "mode": "pareto", "command": "ddimbench sweep name=p --search pareto"}
    search = create_study("p", url, 0, {"mode": "pareto", "checkpoint_sha256": "c1fa", "n": 50, "T": 1000}, meta)
    cell, trial = Cell("ddim", "trailing", 7, 0.25, 0), search.ask()
    for key, value in {"cell": cell.key, **cell.fields()}.items():
        trial.set_user_attr(key, value)  # left running
    code, _, err = run(["report", "g", "p", "--storage", url, "--out", tmp_path / "o", "--wandb", "disabled"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: 'p' is a Pareto search, not an η × S grid; report it alone: ddimbench report p"
    ], err
    assert not (tmp_path / "o").exists()


def test_combined_report_keeps_its_wandb_run_out_of_the_report_folder(stores: Path, capsys, monkeypatch) -> None:
    """The offline W&B run of a combined report lands where the runs of its W&B group (the first sweep's) go, that
    sweep's artifacts folder (here artifacts=dg), not in --out."""
    monkeypatch.chdir(stores)
    url, out = f"sqlite:///{stores / 'sweeps.db'}", stores / "t-wandb"
    code, _, err = run(["report", "dg", "cf", "--storage", url, "--out", out, "--wandb", "offline"], capsys)
    assert code == 0, err
    assert (out / "table.md").is_file() and not (out / "wandb").exists()
    (run_dir,) = (stores / "dg" / "wandb").glob("offline-run-*")
    assert not (stores / "ddimbench-sweeps" / "reports").exists()
    logged = read_offline_run(run_dir)  # the same report run as a single sweep's (bench.tracking.report_run)
    assert (logged["run"]["group"], logged["run"]["job_type"], logged["run"]["name"]) == (
        "dg",
        "report",
        "dg+cf-report",
    )
    assert logged["config"] == {"sweeps": ["dg", "cf"]} and logged["summary"]["results"]["ncols"] > 1


# ------------------------------------------------------------------------------ an unfinished sweep among them
STOP = "interrupted (Ctrl-C or SIGTERM); rerun the sweep to measure this cell"


def _trial(number: int, eta: float, steps: int, stopped: bool = False) -> CellRecord:
    rec = as_record({"number": number, "state": "FAIL" if stopped else "COMPLETE", "sampler": "ddim", "eta": eta,
                     "steps": steps, "spacing": "uniform", "seed_block": 0, "fid": None if stopped else 5.0 + number,
                     "nfe": steps, "error": STOP if stopped else None})  # fmt: skip
    return dataclasses.replace(rec, interrupted=stopped)


@pytest.fixture
def unfinished(tmp_path: Path) -> Path:
    """The combined report of ``done`` (both cells of its grid measured) and ``half``, a grid of η ∈ {0, 1} × S ∈
    {10, 20} with one cell measured, one stopped by Ctrl-C and the η = 1 row never started."""
    grid = [Cell("ddim", "uniform", s, eta, 0) for eta in (0.0, 1.0) for s in STEPS]
    trials = {"done": [_trial(0, 0.0, 10), _trial(1, 0.0, 20)],
              "half": [_trial(0, 0.0, 10), _trial(1, 0.0, 20, stopped=True)]}  # fmt: skip
    sweeps = [(n, recs, {"name": n, "mode": "grid", "dataset": n, "command": f"ddimbench sweep name={n}"})
              for n, recs in trials.items()]  # fmt: skip
    write_combined_report(sweeps, tmp_path / "out", grids={"done": Grids.one(grid[:2]), "half": Grids.one(grid)})
    return tmp_path / "out"


def test_a_combined_report_shows_an_unfinished_sweeps_grid_and_says_first_that_it_is_incomplete(unfinished):
    """Every cell of each sweep's grid is in the table (not run: "—"), and the report opens, as a single sweep's
    does, with the note that the sweep is incomplete and how to finish it, then the trials a stop interrupted."""
    heads, rows = md_tables((unfinished / "table.md").read_text(encoding="utf-8"))["FID ↓ — done / half"]
    assert heads == ["η / sampler", *(f"{b} S = {s}" for b in ("done", "half") for s in STEPS)]
    assert rows["η = 1.0"] == ["—"] * 4  # a row of half's grid that no trial ran (nor any of done's)
    assert [c.strip("*") for c in rows["η = 0.0"]] == ["5.00", "6.00", "5.00", "—"]
    note = ("sweep 'half' is incomplete: 1 of 4 cells measured, 3 not run (interrupted, still running or never "
            "started; — in the tables); rerun the same command to finish it: ddimbench sweep name=half")  # fmt: skip
    stopped = f"half: trial #1 (uniform η = 0.0 S = 20 block 0): {STOP}"
    readme = (unfinished / "README.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", readme, re.MULTILINE)
    assert headings == ["Incomplete sweep", "Sweeps", "Results", "Provenance: done", "Provenance: half", "Files"]
    first = readme.split("\n## ")[1].splitlines()
    assert [line for line in first if line.startswith("- ")] == [f"- {note}", f"- {stopped}"]
    page = (unfinished / "index.html").read_text(encoding="utf-8")
    assert page.index("<h2>Incomplete sweep</h2>") < page.index(html.escape(note)) < page.index("<h2>Sweeps</h2>")
    manifest = json.loads((unfinished / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["incomplete"] == {"half": note} and manifest["warnings"] == []


def test_a_combined_report_of_two_interrupted_sweeps_names_both_under_one_plural_heading(tmp_path: Path) -> None:
    """Two sweeps stopped by Ctrl-C: the report opens with one section, "Incomplete sweeps", holding each sweep's
    note (naming it) followed by the trial its stop interrupted."""
    grid = [Cell("ddim", "uniform", s, 0.0, 0) for s in STEPS]
    trials = {"half": [_trial(0, 0.0, 10), _trial(1, 0.0, 20, stopped=True)],
              "part": [_trial(0, 0.0, 10, stopped=True), _trial(1, 0.0, 20)]}  # fmt: skip
    sweeps = [(n, recs, {"name": n, "mode": "grid", "dataset": n, "command": f"ddimbench sweep name={n}"})
              for n, recs in trials.items()]  # fmt: skip
    write_combined_report(sweeps, tmp_path / "out", grids={n: Grids.one(grid) for n in trials})
    readme = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", readme, re.MULTILINE)
    assert headings == ["Incomplete sweeps", "Sweeps", "Results", "Provenance: half", "Provenance: part", "Files"]
    lines = [line for line in readme.split("\n## ")[1].splitlines() if line.startswith("- ")]
    assert len(lines) == 4, lines
    assert lines[0].startswith("- sweep 'half' is incomplete: 1 of 2 cells measured") and "name=half" in lines[0]
    assert lines[1] == f"- half: trial #1 (uniform η = 0.0 S = 20 block 0): {STOP}"
    assert lines[2].startswith("- sweep 'part' is incomplete: 1 of 2 cells measured") and "name=part" in lines[2]
    assert lines[3] == f"- part: trial #0 (uniform η = 0.0 S = 10 block 0): {STOP}"
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert page.index("<h2>Incomplete sweeps</h2>") < page.index("<h2>Sweeps</h2>")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(manifest["incomplete"]) == ["half", "part"]


def test_a_combined_reports_manifest_hashes_every_file_but_itself(unfinished):
    manifest = json.loads((unfinished / "manifest.json").read_text(encoding="utf-8"))
    every = {p.relative_to(unfinished).as_posix() for p in unfinished.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == every - {"manifest.json"} and "index.html" in every
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((unfinished / name).read_bytes()).hexdigest() == digest, name
