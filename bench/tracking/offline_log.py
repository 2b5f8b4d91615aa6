"""Read a W&B offline run back: decode ``run-<id>.wandb`` (LevelDB-framed protobuf records).

Offline runs have no summary JSON in this wandb version, so tests and tools that need to know what
was logged read the binary log itself. Part of tracking: the record types come from wandb's own
protobuf definitions, which ``bench.tracking.wandb_run`` (the only wandb importer) passes in.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ddim.errors import DDIMError

_INTERNAL_KEYS = frozenset({"_step", "_runtime", "_timestamp", "_wandb"})

_BLOCK = 32 * 1024  # LevelDB log block size
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32 (IEEE, over type byte + data), length, type
_FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version 0
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(data: bytes, path: Path, pos: int = 7, strict: bool = True) -> Iterator[bytes]:
    """Reassemble the LevelDB-framed records of ``data`` starting at ``pos`` (block-aligned offsets).

    A truncated tail (a run still being written) ends the iteration. ``strict``: a bad checksum or
    a continuation chunk without its start raises; otherwise (reading from mid-file) it is skipped.
    """
    pending: list[bytes] | None = None
    while pos + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER.size:  # block trailer: zero padding
            pos += room
            continue
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        start = pos + _CHUNK_HEADER.size
        if start + length > len(data):
            return  # truncated tail
        chunk = data[start : start + length]
        if kind == 0 and length == 0 and crc == 0:  # zero-filled rest of a block
            pos += room
            continue
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc or kind not in range(1, 5):
            if strict:
                raise DDIMError(f"{path}: corrupt record at byte {pos} (bad checksum or type)")
            return
        pos = start + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = [chunk]
        elif pending is not None:  # _MIDDLE or _LAST
            pending.append(chunk)
            if kind == _LAST:
                yield b"".join(pending)
                pending = None
        elif strict:
            raise DDIMError(f"{path}: corrupt record at byte {pos} (continuation without start)")


def _check_header(data: bytes, path: Path) -> None:
    if len(data) < _FILE_HEADER.size:
        raise DDIMError(f"{path}: not a W&B run log (file too short)")
    ident, magic, version = _FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise DDIMError(f"{path}: not a W&B run log (bad header)")
    if version != 0:
        raise DDIMError(f"{path}: unsupported W&B log version {version}")


def log_has_exit(path: Path, pb: Any) -> bool:
    """Whether the run log already holds its exit record; reads only the last two blocks."""
    size = path.stat().st_size
    start = max(0, (size // _BLOCK - 1) * _BLOCK)
    with path.open("rb") as f:
        f.seek(start)
        data = f.read()
    record = pb.Record()
    for raw in _records(data, path, pos=_FILE_HEADER.size if start == 0 else 0, strict=False):
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "exit":
            return True
    return False


def _item_value(item: Any) -> Any:
    which = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if which == "none":
        return None
    if which == "json":
        return json.loads(item.json)
    if which is not None:
        return getattr(item, which)
    return json.loads(item.value_json) if item.value_json else None


def _item_path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _apply(target: dict, items: Iterable[Any], remove: Iterable[Any] = ()) -> None:
    for item in items:
        *parents, leaf = _item_path(item)
        node = target
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[leaf] = _item_value(item)
    for item in remove:
        *parents, leaf = _item_path(item)
        node = target
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)


def _public(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in _INTERNAL_KEYS}


def _find_log(run_dir: Path) -> Path:
    if run_dir.is_file():
        return run_dir
    logs = sorted(run_dir.glob("run-*.wandb"))
    if len(logs) != 1:
        found = "none" if not logs else f"{len(logs)}"
        raise DDIMError(f"{run_dir}: expected one run-*.wandb log, found {found}")
    return logs[0]


def decode_offline_run(run_dir: str | Path, pb: Any) -> dict:
    """Decode a run directory's ``run-<id>.wandb`` log (or that file itself).

    Returns ``{"run": {id, project, entity, name, group, job_type, tags, exit_code}, "config": {...},
    "history": [{"step": n, key: value, ...}, ...] (ordered by step), "summary": {...},
    "files": [paths relative to files/], "charts": {key: panel}, "artifacts": {"logged": [...], "used": [...]}}``
    (``charts``: the custom charts logged, e.g. by ``wandb.plot.line``, with their ``panel_config``; each artifact
    ``{name, type, digest, aliases, files: {entry name: reference URI or ""}}``, used: logged with "use after
    commit", or used by name). W&B's own bookkeeping keys (``_step``, ``_runtime``,
    ``_timestamp``, ``_wandb``) are dropped; media values are W&B's reference dicts (``path`` etc.).
    ``exit_code`` is None while the run is unfinished (its log then ends early, which is allowed).
    ``pb`` is wandb's ``wandb_internal_pb2`` module, handed in by ``bench.tracking.wandb_run`` (the only
    module that imports wandb).
    """
    path = _find_log(Path(run_dir))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DDIMError(f"{path}: cannot read ({exc.strerror})") from exc
    run_info: dict[str, Any] = {"exit_code": None}
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    rows: dict[int, dict[str, Any]] = {}
    files: dict[str, None] = {}
    artifacts: dict[str, list] = {"logged": [], "used": []}
    _check_header(data, path)
    for raw in _records(data, path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            run_info = dict(
                run_info,
                id=run.run_id,
                project=run.project,
                entity=run.entity,
                name=run.display_name,
                group=run.run_group,
                job_type=run.job_type,
                tags=list(run.tags),
            )
            _apply(config, run.config.update, run.config.remove)
        elif kind == "config":
            _apply(config, record.config.update, record.config.remove)
        elif kind == "summary":
            _apply(summary, record.summary.update, record.summary.remove)
        elif kind == "history":
            row: dict[str, Any] = {}
            _apply(row, record.history.item)
            step = int(row.get("_step", record.history.step.num))
            rows.setdefault(step, {}).update(_public(row))
        elif kind == "files":
            files.update(dict.fromkeys(f.path for f in record.files.files))
        elif kind == "artifact":
            art = record.artifact
            entries = {e.path: e.ref for e in art.manifest.contents}
            about = dict(name=art.name, type=art.type, digest=art.digest, aliases=list(art.aliases), files=entries)
            artifacts["used" if art.use_after_commit else "logged"].append(about)
        elif kind == "use_artifact":
            art = record.use_artifact
            artifacts["used"].append(dict(name=art.name, type=art.type, digest=None, aliases=[], files={}))
        elif kind == "exit":
            run_info["exit_code"] = record.exit.exit_code
    history = [{"step": step, **values} for step, values in sorted(rows.items())]
    return {
        "run": run_info,
        "config": _public(config),
        "history": history,
        "summary": _public(summary),
        "files": list(files),
        "charts": (config.get("_wandb") or {}).get("visualize") or {},
        "artifacts": artifacts,
    }
