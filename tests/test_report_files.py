"""bench.report.files: how a report folder is written — byte-identical reruns, no temp files left,
files of an earlier report removed only where that report wrote them, foreign folders refused, and a
report killed before its manifest rerun cleanly."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from helpers.report import DETERMINISTIC
from helpers.sweep import as_records

from bench.report.write import write_report
from ddim.errors import DDIMError


def test_two_runs_byte_identical(built, tmp_path):
    records, meta, root, extras, out, written = built
    again = write_report(as_records(records), meta, tmp_path / "synthetic", root=root, extras=extras)
    assert sorted(again) == sorted(written)
    for name in (*DETERMINISTIC, "index.html"):
        assert (tmp_path / "synthetic" / name).read_bytes() == (out / name).read_bytes(), name
    write_report(as_records(records), meta, out, root=root, extras=extras)  # rerun in place: no temp files left
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_the_readme_lists_the_sha256_of_the_text_files_only(built):
    """README.md's Files section hashes the report's text files (tables, CSV, inversion table), not its figures
    and sample grids: those are the manifest's."""
    _, _, _, _, out, written = built
    readme = (out / "README.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| (\S+) \| ([0-9a-f]{64}) \|$", readme.split("\n## Files\n")[1], re.MULTILINE))
    assert any(n.endswith(".png") for n in written)  # figures and grids were written before the list
    text = {"table.md", "table.tex", "table_standalone.tex", "results.csv", "inversion.md", "inversion.tex"}
    assert set(listed) == text
    for name, digest in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name


def test_rewrite_without_optional_inputs_removes_their_files(built, tmp_path):
    records, meta, root, extras, _, _ = built
    out = tmp_path / "again"
    write_report(as_records(records), meta, out, root=root, extras=extras)
    assert (out / "inversion.md").is_file() and (out / "interpolation.png").is_file()
    plain = [{**r, "strip": None} for r in records]  # no strips: no consistency figure
    written = write_report(as_records(plain), meta, out, root=root, extras={})
    for name in ("inversion.md", "inversion.tex", "interpolation.png", "consistency.png"):
        assert name not in written and not (out / name).exists(), name
    assert "inversion" not in (out / "README.md").read_text(encoding="utf-8").lower()
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(n for n in written if "/" not in n)


def test_report_deletes_only_what_its_previous_report_wrote(built, tmp_path):
    records, meta, root, extras, _, _ = built
    out = tmp_path / "user"
    mine = {"grids/notes.txt": b"x\n", "interpolation.png": b"keep\n", "consistency.png": b"mine\n",
            "notes.md": b"my notes\n"}  # fmt: skip

    def survived() -> dict[str, bytes | None]:
        return {name: (out / name).read_bytes() if (out / name).is_file() else None for name in mine}

    plain = [{**r, "strip": None} for r in records]  # no strips and no extras: no consistency/interpolation figure
    written = write_report(as_records(plain), meta, out, root=root, extras={})
    assert "interpolation.png" not in written and "consistency.png" not in written
    for name, data in mine.items():  # the user adds files of their own to the report's folder
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    write_report(as_records(plain), meta, out, root=root, extras={})
    assert survived() == mine  # nor does a rerun: the manifest names only the report's own files
    # A cell gone from the records: its grid (listed in the previous manifest) goes, the user's files stay.
    gone = next(r for r in plain if r["grid"])
    fewer = [r for r in plain if r is not gone]
    again = write_report(as_records(fewer), meta, out, root=root, extras={})
    (stale,) = {n for n in written if n.startswith("grids/")} - set(again)
    assert not (out / stale).exists() and survived() == mine
    assert sorted(f"grids/{p.name}" for p in (out / "grids").iterdir()) == sorted(
        [n for n in again if n.startswith("grids/")] + ["grids/notes.txt"]
    )
    # A manifest edited to name files a report never writes (or garbage) never makes the report delete them.
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest["images"] += ["notes.md", "../outside.txt", "grids/../notes.md", "grids/.."]
    manifest["files"]["notes.md"] = hashlib.sha256(mine["notes.md"]).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (tmp_path / "outside.txt").write_bytes(b"outside\n")
    write_report(as_records(fewer), meta, out, root=root, extras={})
    assert survived() == mine and (tmp_path / "outside.txt").is_file()
    (out / "manifest.json").write_text("{not json", encoding="utf-8")  # no longer a report's folder: refused
    with pytest.raises(DDIMError, match="no report wrote"):
        write_report(as_records(fewer), meta, out, root=root, extras={})
    assert survived() == mine
    # A report file replaced since (hash no longer the manifest's) is not the report's to delete either.
    other = tmp_path / "other"
    write_report(as_records(records), meta, other, root=root, extras=extras)
    (other / "inversion.md").write_text("edited by hand\n", encoding="utf-8")
    write_report(as_records(fewer), meta, other, root=root, extras={})
    assert (other / "inversion.md").read_text(encoding="utf-8") == "edited by hand\n"
    assert not (other / "inversion.tex").exists() and not (other / "interpolation.png").exists()


@pytest.mark.parametrize("foreign", ["README.md", "results.csv", "manifest.json", "grids/x.png"])
def test_report_refuses_a_folder_with_files_no_report_wrote(built, tmp_path, foreign):
    """``--out .`` in a project must not replace its README.md (issue 14): refused, nothing written."""
    records, meta, root, extras, _, _ = built
    out = tmp_path / "project"
    (out / foreign).parent.mkdir(parents=True)
    (out / foreign).write_text("the project's own\n", encoding="utf-8")
    (out / "setup.py").write_text("pass\n", encoding="utf-8")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(DDIMError, match=f"no report wrote \\({re.escape(foreign.split('/')[0])}"):
        write_report(as_records(records), meta, out, root=root, extras=extras)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / foreign).read_text(encoding="utf-8") == "the project's own\n"
    # Unrelated files of other names are no obstacle; once the report's, the folder takes reruns.
    (out / foreign).unlink()
    write_report(as_records(records), meta, out, root=root, extras=extras)
    write_report(as_records(records), meta, out, root=root, extras=extras)
    assert (out / "setup.py").read_text(encoding="utf-8") == "pass\n"


@pytest.mark.parametrize("where", [".", ".."])
def test_report_refuses_the_working_directory_it_would_swap_away(built, tmp_path, monkeypatch, where):
    records, meta, root, extras, _, _ = built
    (tmp_path / "project" / "src").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project" / "src")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(DDIMError, match="is the working directory, holds it or is a mount point"):
        write_report(as_records(records), meta, where, root=root, extras=extras)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_report_killed_before_its_manifest_can_be_rerun(built, tmp_path, monkeypatch):
    """A report is written into a temporary folder beside --out and swapped in when complete: one killed half-way
    leaves no folder and no temporary folder behind, and a rerun into the same folder is not refused."""
    import bench.report.write as report

    records, meta, root, extras, _, _ = built
    out = tmp_path / "out"
    real = report.build_tables
    monkeypatch.setattr(report, "build_tables", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        write_report(as_records(records), meta, out, root=root, extras=extras)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written, nothing temporary
    monkeypatch.setattr(report, "build_tables", real)
    write_report(as_records(records), meta, out, root=root, extras=extras)
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["cells"]


def test_a_failed_report_leaves_the_previous_one_byte_for_byte(built, tmp_path):
    records, meta, root, extras, _, _ = built
    out = tmp_path / "out"
    write_report(as_records(records), meta, out, root=root, extras=extras)
    (out / "notes.md").write_bytes(b"mine\n")
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    missing = [{**r, "strip": None} for r in records] + [{**records[-1], "number": 999, "grid": "cells/gone.png"}]
    with pytest.raises(DDIMError, match="not found"):  # fails after the tables and most grids are written
        write_report(as_records(missing), meta, out, root=root, extras={})
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_report_killed_between_the_two_renames_is_recovered_by_the_next(built, tmp_path, monkeypatch):
    import os

    import bench.report.files as files

    records, meta, root, extras, _, _ = built
    out = tmp_path / "out"
    write_report(as_records(records), meta, out, root=root, extras=extras)
    (out / "notes.md").write_bytes(b"mine\n")
    renames, rename = [], os.rename

    def rename_then_die(src, dst):
        renames.append(dst)
        if len(renames) >= 2:  # killed (SIGKILL: no handler runs) after moving the previous report aside
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_report(as_records(records), meta, out, root=root, extras={})
    monkeypatch.undo()
    assert not out.exists() and [p.name.split("-")[0] for p in tmp_path.iterdir()] == [".out.previous"]
    written = write_report(as_records(records), meta, out, root=root, extras={})  # puts the previous one back first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "notes.md").read_bytes() == b"mine\n"
    assert "inversion.md" not in written and not (out / "inversion.md").exists()


def test_an_unwritable_out_is_one_line_naming_the_folder_given(built, tmp_path, monkeypatch):
    """Under a file, where no folder can be made (/proc) or on a full disk: one line naming the --out the user gave
    (never the temporary folder beside it), the reason and the fix, and nothing left behind."""
    import errno

    import bench.report.files as files

    records, meta, root, extras, _, _ = built
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file, not a folder")

    def refusal(out) -> str:
        with pytest.raises(DDIMError) as info:
            write_report(as_records(records), meta, out, root=root, extras=extras)
        return str(info.value)

    assert (
        refusal("afile/x")
        == "cannot write the report folder afile/x (afile is a file, not a folder); choose another --out"
    )
    if Path("/proc/self").is_dir():
        assert (
            refusal("/proc/x")
            == "cannot write the report folder /proc/x (no folder can be created in /proc); choose another --out"
        )

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(files, "write_file", full)
    assert (
        refusal("rep")
        == "cannot write the report folder rep (No space left on device); free space or choose another --out"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
