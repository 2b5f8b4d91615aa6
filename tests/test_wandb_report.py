"""bench.tracking.wandb_report: the sweep's W&B Report, defined offline (its blocks and panels name the keys the
sweep's runs log and the runs of the sweep's group), built into wandb-workspaces objects without the network, and
published as an update of the same Report (with fakes: publishing needs a server)."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.sweep import fake_sweep
from helpers.tracking import Warnings, fresh_fallback_state  # noqa: F401 (an autouse fixture)
from PIL import Image

from bench.cli import main
from bench.store.cell import Cell
from bench.store.record import CellRecord, Measurement, Scores
from bench.tracking import results, wandb_report
from bench.tracking.sweep_runs import track_cell, track_summary
from bench.tracking.wandb_run import read_offline_run

wr = pytest.importorskip("wandb_workspaces.reports.v2", reason="the `test` extra installs wandb-workspaces")
expr = pytest.importorskip("wandb_workspaces.expr")

TABLE_MD = "| η / sampler | S = 10 |\n|---|---:|\n| η = 0.0 | **1.00** |"
PROVENANCE_MD = "| field | value |\n|---|---|\n| checkpoint | runs/digits |"


def _definition(sweeps=("demo",), entity=None) -> dict:
    return wandb_report.report_definition(list(sweeps), project="proj", entity=entity, table_md=TABLE_MD,
                                          provenance_md=PROVENANCE_MD)  # fmt: skip


def _panels(definition: dict, runset: str) -> list[dict]:
    return [p for b in definition["blocks"] if b.get("runset") == runset for p in b["panels"]]


def _filters(text: str) -> dict:
    """A runset filter as {(section, name): (op, value)} (W&B's own parser)."""
    return {(f.key.section, f.key.name): (f.op, f.value) for f in expr.expr_to_filters(text).filters}


def test_definition_names_the_sweeps_runs_and_their_keys():
    d = _definition()
    assert d["kind"] == wandb_report.KIND and d["project"] == "proj" and d["entity"] is None
    assert json.loads(json.dumps(d)) == d  # plain data: saved as is
    markdown = [b["text"] for b in d["blocks"] if b["type"] == "markdown"]
    assert markdown == [TABLE_MD, PROVENANCE_MD]  # the paper-style table, then the provenance
    assert _filters(d["runsets"]["summary"]["filters"]) == {("run", "group"): ("=", "demo"),
                                                           ("run", "jobType"): ("=", "sweep-summary")}  # fmt: skip
    assert _filters(d["runsets"]["cells"]["filters"]) == {("run", "group"): ("=", "demo"),
                                                         ("run", "jobType"): ("=", "sweep-cell")}  # fmt: skip
    charts = [p for p in _panels(d, "summary") if p["type"] == "line_chart"]
    assert [(p["table_key"], p["x"], p["y"], p["stroke"]) for p in charts] == [
        ("fid_vs_steps_table", "steps", "fid", "series"),
        ("fid_vs_wall_time_table", "wall_s", "fid", "series"),
    ]
    assert [p for p in _panels(d, "summary") if p["type"] == "table"] == [{"type": "table", "key": "results"}]
    assert [p["keys"] for p in _panels(d, "cells")] == [["samples"]]
    # Several sweeps (a combined report): every sweep's group.
    two = _definition(("a", "b"))
    assert _filters(two["runsets"]["cells"]["filters"])[("run", "group")] == ("IN", ["a", "b"])
    # ... and the charts once per sweep: two sweeps' lines share their names (η=0 in each).
    for sweep in ("a", "b"):
        assert [p["type"] for p in _panels(two, f"summary:{sweep}")] == ["line_chart", "line_chart"]
        assert _filters(two["runsets"][f"summary:{sweep}"]["filters"])[("run", "group")] == ("=", sweep)
    assert [p["type"] for p in _panels(two, "summary")] == ["table"]
    assert two["title"] == "ddimbench: a + b"
    # A Pareto search's summary run has no FID-per-η lines: no chart panels point at them.
    search = wandb_report.report_definition(["p"], project="proj", entity=None, table_md="", provenance_md="",
                                            grid=False)  # fmt: skip
    assert [p["type"] for p in _panels(search, "summary")] == ["table"] and _panels(search, "cells")


def _grid(root: Path, rel: str) -> str:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), 90, np.uint8)).save(root / rel)
    return rel


def test_the_keys_the_report_names_are_the_ones_the_runs_log(tmp_path):
    """Every key a panel names is logged by the sweep's summary or cell run (read back from the offline runs)."""
    cell = Cell("ddim", "uniform", 10, 0.0, 0)
    m = Measurement(nfe=10, n=20, seeds="0-19", scores=Scores(fid=3.0), wall_s=1.5, grid=_grid(tmp_path, "g.png"))
    spec = SimpleNamespace(name="demo", artifacts=str(tmp_path), n=20, dataset="digits", T=1000, checkpoint="ck",
                           search=None, to_dict=lambda: {"name": "demo"})  # fmt: skip
    display = SimpleNamespace(warn=Warnings())
    track_cell("offline", spec, cell, m, display)
    track_summary("offline", spec, [CellRecord(0, "COMPLETE", cell, m)], display)
    assert not display.warn
    runs = {r["run"]["job_type"]: r for r in map(read_offline_run, (tmp_path / "wandb").glob("offline-run-*"))}
    d = _definition()
    summary = runs["sweep-summary"]
    logged = set(summary["summary"]) | {c.table_key for c in results.CHARTS if c.key in summary["charts"]}
    for p in _panels(d, "summary"):
        assert (p["table_key"] if p["type"] == "line_chart" else p["key"]) in logged
        if p["type"] == "line_chart":
            fields = next(c["panel_config"]["fieldSettings"] for c in summary["charts"].values()
                          if p["table_key"] in json.dumps(c))  # fmt: skip
            assert fields == {"x": p["x"], "y": p["y"], "stroke": p["stroke"]}
    (media,) = _panels(d, "cells")
    assert set(media["keys"]) <= set(runs["sweep-cell"]["summary"])
    assert runs["sweep-cell"]["summary"]["samples"]["_type"] == "image-file"


def test_building_the_report_touches_no_network(monkeypatch):
    import wandb

    def no_network(*a, **k):
        raise AssertionError("the network was used")

    monkeypatch.setattr(wandb, "Api", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    report = wandb_report.build_report(_definition(), wr, "team")
    assert (report.entity, report.project, report.title) == ("team", "proj", "ddimbench: demo")
    kinds = [type(b).__name__ for b in report.blocks]
    assert kinds == ["H1", "MarkdownBlock", "H2", "PanelGrid", "H2", "PanelGrid", "H2", "PanelGrid", "H2",
                     "MarkdownBlock"]  # fmt: skip
    charts, table, media = (b for b in report.blocks if isinstance(b, wr.PanelGrid))
    assert all(rs.entity == "team" and rs.project == "proj" for g in (charts, table, media) for rs in g.runsets)
    assert "sweep-summary" in charts.runsets[0].filters and "sweep-cell" in media.runsets[0].filters
    assert [(p.chart_name, p.query, p.chart_fields["x"]) for p in charts.panels] == [
        ("wandb/line/v0", {"summaryTable": {"tableKey": c.table_key}}, c.x) for c in results.CHARTS
    ]
    assert table.panels[0].table_name == "results" and media.panels[0].media_keys == ["samples"]
    assert report.blocks[1].text == TABLE_MD and report.blocks[-1].text == PROVENANCE_MD


def test_record_report_offline_saves_the_definition_and_publishes_nothing(tmp_path, monkeypatch):
    (tmp_path / "table.md").write_text(TABLE_MD, encoding="utf-8")
    monkeypatch.setenv("WANDB_PROJECT", "x")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    monkeypatch.setattr(wandb_report, "publish", lambda *a: pytest.fail("published offline"))
    warnings = Warnings()
    wandb_report.record_report("disabled", tmp_path, ["demo"], PROVENANCE_MD, warnings)
    assert not (tmp_path / wandb_report.DEFINITION_FILE).exists()
    wandb_report.record_report("offline", tmp_path, ["demo"], PROVENANCE_MD, warnings)
    saved = json.loads((tmp_path / wandb_report.DEFINITION_FILE).read_text(encoding="utf-8"))
    assert saved == {**_definition(), "project": "x", "entity": "team"} and not warnings
    assert wandb_report.report_target("flag", None) == ("flag", "team")  # --wandb-project wins over the env
    # A rerun keeps what the last publication recorded of the same Report (so the next publish updates it).
    published = {"entity": "team", "id": "R1", "url": "https://wandb.test/R1"}
    (tmp_path / wandb_report.DEFINITION_FILE).write_text(json.dumps({**saved, "published": published}))
    wandb_report.record_report("offline", tmp_path, ["demo"], PROVENANCE_MD, warnings)
    assert json.loads((tmp_path / wandb_report.DEFINITION_FILE).read_text())["published"] == published
    # A file of that name that is not ours is never overwritten: one warning.
    (tmp_path / wandb_report.DEFINITION_FILE).write_text('{"mine": 1}')
    wandb_report.record_report("offline", tmp_path, ["demo"], PROVENANCE_MD, warnings)
    assert (tmp_path / wandb_report.DEFINITION_FILE).read_text() == '{"mine": 1}'
    assert len(warnings) == 1 and "not a ddimbench W&B Report definition" in warnings[0]


class FakeApi:
    default_entity = "me"

    def __init__(self, existing=()):
        self.existing = list(existing)

    def reports(self, path):
        assert path == "me/proj"
        return self.existing


@pytest.fixture
def saved(monkeypatch) -> list:
    """Fakes for the server: ``Report.save`` records (id, title, block kinds) and sets an id as W&B would."""
    calls: list = []

    def save(self, draft=False, clone=False):
        calls.append((self.id, self.title, [type(b).__name__ for b in self.blocks]))
        self.id = self.id or "NEW"
        return self

    monkeypatch.setattr(wr.Report, "save", save)
    monkeypatch.setattr(wr.Report, "url", property(lambda self: f"https://wandb.test/{self.entity}/{self.id}"))
    return calls


def test_publish_creates_then_updates_the_same_report(tmp_path, monkeypatch, saved):
    import wandb

    wandb_report.save_definition(tmp_path, _definition(), Warnings())
    api = FakeApi()
    monkeypatch.setattr(wandb, "Api", lambda: api)
    warnings = Warnings()
    assert wandb_report.publish(tmp_path, warnings) == "https://wandb.test/me/NEW" and not warnings
    assert saved[-1][0] == "" and saved[-1][1] == "ddimbench: demo" and "PanelGrid" in saved[-1][2]  # created
    on_disk = json.loads((tmp_path / wandb_report.DEFINITION_FILE).read_text())
    assert on_disk["published"] == {"entity": "me", "id": "NEW", "url": "https://wandb.test/me/NEW"}
    # Rebuilt and published again: the same Report is updated, not a new one added.
    wandb_report.save_definition(tmp_path, _definition(), warnings)
    wandb_report.publish(tmp_path, warnings)
    assert saved[-1][0] == "NEW"
    # Without a record of it (another machine's folder): the project's Report of the same title is updated.
    (tmp_path / wandb_report.DEFINITION_FILE).unlink()
    wandb_report.save_definition(tmp_path, _definition(), warnings)
    api.existing = [SimpleNamespace(display_name="ddimbench: other", id="O"),
                    SimpleNamespace(display_name="ddimbench: demo", id="R7")]  # fmt: skip
    wandb_report.publish(tmp_path, warnings)
    assert saved[-1][0] == "R7" and not warnings
    # A project without Reports yet (W&B's query fails): a new Report, which creates the project.
    (tmp_path / wandb_report.DEFINITION_FILE).unlink()
    wandb_report.save_definition(tmp_path, _definition(), warnings)
    api.reports = lambda path: (_ for _ in ()).throw(ValueError("Could not find project me/proj"))
    assert wandb_report.publish(tmp_path, warnings) == "https://wandb.test/me/NEW"
    assert saved[-1][0] == "" and not warnings


def test_publish_failures_are_one_warning(tmp_path, monkeypatch, saved):
    import wandb

    wandb_report.save_definition(tmp_path, _definition(), Warnings())
    before = (tmp_path / wandb_report.DEFINITION_FILE).read_text()
    monkeypatch.setattr(wandb, "Api", lambda: (_ for _ in ()).throw(RuntimeError("no server")))
    warnings = Warnings()
    assert wandb_report.publish(tmp_path, warnings) is None and not saved
    assert len(warnings) == 1 and "publishing the Report failed (RuntimeError: no server)" in warnings[0]
    # Without the extra: one line saying how to install it; the definition stays as it was.
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports.v2", None)
    assert wandb_report.publish(tmp_path, warnings) is None
    assert len(warnings) == 2 and "pip install" in warnings[1] and "wandb-workspaces" in warnings[1]
    assert (tmp_path / wandb_report.DEFINITION_FILE).read_text() == before


def test_report_command_offline_writes_the_definition(tmp_path, monkeypatch, capsys):
    """`ddimbench report NAME --wandb offline`: the report folder holds the Report's definition, with the
    report's own table and provenance, for the project the runs go to."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_PROJECT", "x")
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    fake_sweep(url, "cf", "cifar10", "inception")
    assert main(["report", "cf", "--storage", url, "--wandb", "offline"]) == 0, capsys.readouterr().err
    folder = tmp_path / "reports" / "cf"
    d = json.loads((folder / wandb_report.DEFINITION_FILE).read_text(encoding="utf-8"))
    assert d["project"] == "x" and d["title"] == "ddimbench: cf" and "published" not in d
    texts = [b["text"] for b in d["blocks"] if b["type"] == "markdown"]
    assert texts[0] == (folder / "table.md").read_text(encoding="utf-8")
    assert "| checkpoint_sha256 | c1fa |" in texts[1] and "| dataset | cifar10 |" in texts[1]
    assert "Group') == 'cf'" in d["runsets"]["summary"]["filters"]


def _published_report(tmp_path, monkeypatch, capsys) -> tuple[str, Path, dict]:
    """A report of a fake cifar10 sweep written with W&B offline, its definition then marked as published:
    (store URL, the definition file, what the publication recorded)."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    fake_sweep(url, "cf", "cifar10", "inception")
    path = tmp_path / "reports" / "cf" / wandb_report.DEFINITION_FILE
    assert main(["report", "cf", "--storage", url, "--wandb", "offline"]) == 0, capsys.readouterr().err
    published = {"entity": "team", "id": "R1", "url": "https://wandb.test/R1"}
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), "published": published}))
    return url, path, published


def test_a_report_without_wandb_leaves_no_earlier_definition(tmp_path, monkeypatch, capsys):
    """`ddimbench report NAME --wandb disabled` after a report with W&B: the folder holds no wandb_report.json
    (the earlier report's table would pass for this one's W&B Report); with W&B on, a rerun keeps the Report id
    the last publication recorded, so the next one updates that Report. A file of that name not ours stays."""
    url, path, published = _published_report(tmp_path, monkeypatch, capsys)
    assert main(["report", "cf", "--storage", url, "--wandb", "offline"]) == 0, capsys.readouterr().err
    assert json.loads(path.read_text(encoding="utf-8"))["published"] == published
    assert main(["report", "cf", "--storage", url, "--wandb", "disabled"]) == 0, capsys.readouterr().err
    assert not path.exists() and (path.parent / "table.md").is_file()
    path.write_text('{"mine": 1}')
    assert main(["report", "cf", "--storage", url, "--wandb", "disabled"]) == 0, capsys.readouterr().err
    assert path.read_text() == '{"mine": 1}'


@pytest.mark.parametrize("failure", ["raises", "falls back"])
def test_a_report_whose_wandb_fails_keeps_the_earlier_definition(tmp_path, monkeypatch, capsys, failure):
    """W&B failing (not disabled) before the definition is saved: the earlier wandb_report.json stays, with the id
    of the Report it published (so the next publication updates that Report), and one warning says it is the
    earlier report's. Failing: make_tracker raising, or falling back to no tracking (NullTracker)."""
    from bench.tracking import wandb_run
    from bench.tracking.tracker import NullTracker

    url, path, published = _published_report(tmp_path, monkeypatch, capsys)
    before = path.read_text(encoding="utf-8")
    capsys.readouterr()

    def make_tracker(*args, **kwargs):
        if failure == "raises":
            raise RuntimeError("W&B is down")
        return NullTracker()

    monkeypatch.setattr(wandb_run, "make_tracker", make_tracker)
    assert main(["report", "cf", "--storage", url, "--wandb", "offline"]) == 0
    err = capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == before and (path.parent / "table.md").is_file()
    assert err.count("is still an earlier report's") == 1 and "Traceback" not in err, err


def test_publish_prints_the_servers_url_without_terminal_escapes(tmp_path, monkeypatch, saved, capsys):
    import wandb

    wandb_report.save_definition(tmp_path, _definition(), Warnings())
    monkeypatch.setattr(wandb, "Api", lambda: FakeApi())
    monkeypatch.setattr(wr.Report, "url", property(lambda self: "https://wandb.test/\x1b[2J/R"))
    wandb_report.publish(tmp_path, Warnings())
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[2J" in err, err
