"""bench.sweep.overrides: key=value parsing, YAML sweep files, every malformed form -> one-line DDIMError."""

from __future__ import annotations

import pytest

from bench.store.cell import Cell
from bench.store.grids import spec_grid
from bench.sweep.overrides import KEYS, load_config, merge, parse_overrides, per_dataset
from bench.sweep.spec import Range, SweepSpec
from ddim import sampling
from ddim.errors import DDIMError


def test_lists_ranges_scalars_and_types():
    got = parse_overrides(["steps=10,20", "eta=0..1", "sampler=ddim,sigma_hat", "n=500", "inversion=yes"])
    assert got == {"steps": [10, 20], "eta": Range(0.0, 1.0), "sampler": ["ddim", "sigma_hat"], "n": 500,
                   "inversion": True}  # fmt: skip
    assert parse_overrides(["steps=10"]) == {"steps": [10]}  # a single value of an axis is a one-element list
    assert parse_overrides(["eta=0,0.5,1e-1"])["eta"] == [0.0, 0.5, 0.1]
    assert parse_overrides(["steps=5..100"])["steps"] == Range(5, 100)
    assert parse_overrides(["data-root=/x"]) == {"data_root": "/x"}  # dashes are accepted for underscores
    assert parse_overrides([]) == {}
    assert parse_overrides(["bf16=true"]) == {"bf16": True}
    assert parse_overrides(["batch=auto"]) == {"batch": "auto"} == parse_overrides(["batch=AUTO"])  # sized at run time


def test_sampler_list_is_read_at_runtime(monkeypatch):
    import ddim.names

    monkeypatch.setattr(ddim.names, "SAMPLERS", (*sampling.SAMPLERS, "newsolver"))
    assert parse_overrides(["sampler=newsolver"]) == {"sampler": ["newsolver"]}


@pytest.mark.parametrize(
    "token, words",
    [
        ("steps=", "no value"),
        ("steps=a", "not an integer"),
        ("steps=1.5", "not an integer"),
        ("=3", "no key"),
        ("steps", "not KEY=VALUE"),
        ("steps=0", "out of range"),
        ("n=0", "out of range"),
        ("n=-5", "out of range"),
        ("batch=0", "out of range"),
        ("batch=big", "not an integer; write e.g. batch=256 or batch=auto"),
        ("n=auto", "not an integer"),  # only batch takes auto
        ("eta=-1", "out of range"),
        ("eta=nan", "not a number"),
        ("eta=inf", "not a number"),
        ("eta=x", "not a number"),
        ("stpes=10", "did you mean 'steps'"),
        ("sampler=euler", "unknown sampler"),
        ("spacing=cosine", "unknown spacing"),
        ("extractor=clip", "unknown extractor"),
        ("metrics=fid,lpips", "unknown metrics"),
        ("n=1,2", "takes one value"),
        ("sampler=a..b", "unknown sampler"),  # no range syntax outside ranged keys
        ("n=1..5", "not an integer"),
        ("steps=10..5", "range is empty"),
        ("steps=1..5,7", "mixes a range and a list"),
        ("steps=10,,20", "empty value"),
        ("steps=10,10", "repeats a value"),
        ("eta=0.5,1,0.50", "eta repeats a value (0.5)"),
        ("spacing=quad,uniform,QUAD", "spacing repeats a value (quad)"),
        ("inversion=maybe", "true/false"),
        ("search=grid", "unknown search"),
    ],
)
def test_malformed_tokens_are_one_line_errors(token, words):
    with pytest.raises(DDIMError) as err:
        parse_overrides([token])
    msg = str(err.value)
    assert words in msg and "\n" not in msg and len(msg) < 300  # never the whole token echoed
    assert "; " in msg  # the problem, then the fix


def test_a_long_list_with_a_repeat_is_refused_without_echoing_it():
    with pytest.raises(DDIMError, match=r"^steps repeats a value \(7\); list each value once$"):
        parse_overrides([f"steps={','.join(['7'] * 100_000)}"])


def test_a_repeated_key_is_refused():
    with pytest.raises(DDIMError, match="given twice"):
        parse_overrides(["steps=10", "n=5", "steps=20"])


def test_every_key_has_a_valid_example():
    for name, key in KEYS.items():
        if key.kind in ("str", "int", "float", "bool") and key.example:
            k, _, v = key.example.partition("=")
            assert k == name
            parse_overrides([key.example])


def test_yaml_config_same_keys_cli_wins(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("steps: [10, 20]\neta: [0, 0.5]\nn: 100\nsampler: ddim\ninversion: true\n")
    values = load_config(cfg)
    assert values == {"steps": [10, 20], "eta": [0.0, 0.5], "n": 100, "sampler": ["ddim"], "inversion": True}
    merged = merge(values, parse_overrides(["n=7", "eta=1"]))
    assert merged["n"] == 7 and merged["eta"] == [1.0] and merged["steps"] == [10, 20]


def test_yaml_per_dataset_spacing(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("spacing:\n  cifar10: quad\n  default: [uniform]\n")
    sched = load_config(cfg)["spacing"]
    assert per_dataset(sched, "cifar10") == ["quad"] and per_dataset(sched, "celeba") == ["uniform"]
    assert per_dataset(["trailing"], "cifar10") == ["trailing"]
    cfg.write_text("spacing:\n  cifar10: quad\n")
    with pytest.raises(DDIMError, match="no entry for dataset 'digits'"):
        per_dataset(load_config(cfg)["spacing"], "digits")


def test_the_old_key_schedule_still_works_with_one_warning(tmp_path, capsys):
    assert parse_overrides(["schedule=uniform,quad", "n=3"]) == {"spacing": ["uniform", "quad"], "n": 3}
    assert (
        capsys.readouterr().err
        == "warning: the sweep key 'schedule' is deprecated; write spacing= (or spacing: in a sweep file) instead\n"
    )
    cfg = tmp_path / "s.yaml"
    cfg.write_text("schedule:\n  cifar10: quad\n  default: [uniform]\n")
    assert load_config(cfg) == {"spacing": {"cifar10": ["quad"], "default": ["uniform"]}}
    assert capsys.readouterr().err.count("warning: the sweep key 'schedule' is deprecated") == 1
    with pytest.raises(DDIMError, match="spacing is given twice"):
        parse_overrides(["spacing=quad", "schedule=uniform"])


@pytest.mark.parametrize(
    "text, words",
    [
        ("stepz: [10]\n", "unknown key 'stepz'"),
        ("steps: [10, a]\n", "not an integer"),
        ("steps: 0\n", "out of range"),
        ("n:\n", "has no value"),
        ("steps: [[1, 2]]\n", "flat list"),
        ("n: {a: 1}\n", "cannot be a mapping"),
        ("- steps\n", "must be a mapping"),
        ("steps: [10\n", "not valid YAML"),
    ],
)
def test_bad_yaml_is_one_line_naming_the_file(tmp_path, text, words):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(DDIMError) as err:
        load_config(cfg)
    assert words in str(err.value) and str(cfg) in str(err.value) and "\n" not in str(err.value)


def test_a_missing_config_file_is_refused(tmp_path):
    with pytest.raises(DDIMError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def _spec(**kw) -> SweepSpec:
    base = dict(name="t", checkpoint="c.pt", dataset="digits", T=1000)
    return SweepSpec(**{**base, **kw})


def test_cells_no_pointless_duplicates():
    spec = _spec(steps=(10, 20), eta=(0.0, 0.5, 1.0), sampler=("ddim", "sigma_hat", "ddpm"),
                 spacing=("uniform", "quad"), seeds=(0, 1))  # fmt: skip
    cells = spec.cells()
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys))
    ddim = [c for c in cells if c.sampler == "ddim"]
    sigma = [c for c in cells if c.sampler == "sigma_hat"]
    ddpm = [c for c in cells if c.sampler == "ddpm"]
    assert len(ddim) == 2 * 3 * 2 * 2  # S × η × spacing × seed block
    assert len(sigma) == 2 * 2 * 2 and all(c.eta is None for c in sigma)  # η does not apply
    assert len(ddpm) == 2 and all(c.steps == 1000 and c.spacing == "uniform" and c.eta is None for c in ddpm)


def test_the_stored_spec_gives_the_same_grid():
    """A report rebuilds the grid from the spec a run stored (``spec_grid``): the run's own cells; a search has none,
    a spec of another shape (an edited store) is a one-line DDIMError."""
    spec = _spec(steps=(10, 20), eta=(0.0, 1.0), sampler=("ddim", "sigma_hat", "ddpm"), spacing=("uniform", "quad"),
                 seeds=(0, 2))  # fmt: skip
    stored = spec.to_dict()
    assert spec_grid(stored) == spec.cells() and len(spec.cells()) == 2 * 2 * 2 * 2 + 2 * 2 * 2 + 2
    assert spec_grid(_spec(steps=Range(5, 100), search="pareto").to_dict()) is None
    for bad in ({**stored, "steps": "10,20"}, {**stored, "seeds": [0.5]}, {**stored, "eta": [True]},
                {**stored, "T": None}, {**stored, "eta": [0.1234567, 0.1234568]}, ["not", "a", "spec"]):  # fmt: skip
        with pytest.raises(DDIMError):
            spec_grid(bad)


def test_a_stored_search_over_lists_has_no_grid():
    """A Pareto search may be given lists of S and η, not ranges; the spec it stores then has the axes a grid has,
    and still no grid: its trials are the sampler's picks, no cell of theirs is left to finish."""
    axes = dict(steps=(10, 20), eta=(0.0, 1.0), sampler=("ddim", "sigma_hat"))
    assert spec_grid(_spec(**axes).to_dict()) == _spec(**axes).cells()  # the same lists make a grid
    assert spec_grid(_spec(**axes, search="pareto").to_dict()) is None


def test_cell_key_and_slug():
    c = Cell("ddim", "quad", 10, 0.5, 1)
    assert c.key == "sampler=ddim spacing=quad steps=10 eta=0.5 seed_block=1"
    assert c.slug == "quad_ddim_eta0.5_S10_b1"
    assert Cell("sigma_hat", "uniform", 10, None, 0).key.endswith("eta=- seed_block=0")


def test_grid_refuses_ranges():
    with pytest.raises(DDIMError, match="ranges"):
        _spec(steps=Range(5, 100)).cells()


def test_seed_blocks_are_disjoint():
    spec = _spec(n=100, seed_base=7)
    assert spec.seed_range(0) == (7, 106) and spec.seed_range(2) == (207, 306)


def test_to_dict_is_json_able():
    import json

    d = _spec(steps=Range(5, 100), eta=Range(0.0, 1.0), search="pareto").to_dict()
    assert json.loads(json.dumps(d))["steps"] == "5..100"


def test_paths_with_dot_dot_are_plain_values():
    got = parse_overrides(["checkpoint=../runs/digits", "data_root=/a/../b", "cache_dir=..", "artifacts=x/../y"])
    assert got["checkpoint"] == "../runs/digits" and got["data_root"] == "/a/../b" and got["cache_dir"] == ".."
