"""How a report says to finish a grid sweep with cells not run (interrupted, still running or never started): the
``ddimbench sweep`` command(s) that measure every one of them.

Rerunning a sweep's name with a grid skips the grid's measured cells, retries its failed ones and measures the rest
(``bench.sweep.runner``). When every cell not run is in the latest run's grid, rerunning that run's command finishes
the sweep. An earlier run may have asked for other cells (``sweep steps=10,20,50 eta=0,1 name=s`` stopped, then
``sweep steps=10 eta=0 name=s``); the cells not run are then covered by grids (spacing × sampler × S × η × seed
block, as ``bench.store.cell.grid`` builds them) that hold only cells the sweep already has, so none is added to it:
one grid when they fit one, else few: the runs' own grids, each cut to its cells not run, where that adds no cell
(they read as the commands typed), then splitting the cells left along one axis at a time; or that splitting alone,
where it takes fewer. Not always the fewest (finding those is a set cover problem). Each grid is offered as the
latest run's command with its grid keys (``bench.store.axes.AXES``) replaced; a password the store masked in it
(``bench.store.untrusted.safe_url``) is pointed out. The stored command is untrusted (anyone with access to the store
can write it): it is offered only as a ``ddimbench sweep`` command line (``sweep_argv``), re-quoted, else the grid
keys alone are given. Pure python, deterministic.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.store.axes import AXES
from bench.store.cell import MAX_GRID_CELLS, Cell, grid, grid_size
from bench.store.renames import OLD_SPACING
from bench.store.table_cells import NOT_RUN, spacing_order
from bench.store.untrusted import MASK, masked
from ddim.errors import printable
from ddim.names import SAMPLERS


@dataclass(frozen=True)
class Box:
    """One grid as ``ddimbench sweep`` takes it: a list per axis; ``T`` is the S of its ddpm cells (0: none)."""

    spacing: tuple[str, ...]
    sampler: tuple[str, ...]
    steps: tuple[int, ...]
    eta: tuple[float, ...]
    seeds: tuple[int, ...]
    T: int

    def size(self) -> int:
        """How many cells the grid has, counted without making them (``bench.store.cell.grid_size``)."""
        return grid_size(self.spacing, self.sampler, self.steps, self.eta, self.seeds)

    def keys(self) -> set[str]:
        """The keys of the grid's cells."""
        return {c.key for c in grid(self.spacing, self.sampler, self.steps, self.eta, self.seeds, self.T)}

    def tokens(self) -> list[str]:
        """The grid as the sweep's keys (``AXES``, whose names the fields have), in their order: ``steps=20,50
        eta=0,1 spacing=uniform sampler=ddim seeds=0`` (``eta`` only with ddim, which alone takes it; a grid of ddpm
        alone, which runs all T steps, gives ``steps=T``)."""
        out = []
        for name, axis in AXES.items():
            values = getattr(self, name) or ((self.T,) if name == "steps" else ())
            if name != "eta" or "ddim" in self.sampler:
                out.append(f"{name}={','.join(_number(v) if axis.kind is float else str(v) for v in values)}")
        return out


def _number(eta: float) -> str:
    """η as short as it reads back exactly: 0, 0.5, 1e-05."""
    short = f"{eta:g}"
    return short if float(short) == eta else repr(eta)


def _sampler_order(name: str) -> tuple:
    return (SAMPLERS.index(name), "") if name in SAMPLERS else (len(SAMPLERS), name)


def _order(c: Cell) -> tuple:
    return (spacing_order(c.spacing), _sampler_order(c.sampler), c.steps, -1.0 if c.eta is None else c.eta,
            c.seed_block)  # fmt: skip


def box_of(cells: Sequence[Cell]) -> Box:
    """The smallest grid that may hold ``cells``: each axis the values they take (ddpm's spacing first, since
    ``grid`` puts ddpm under the first spacing only). It holds them all unless they are not one grid's (ddpm
    under two spacings), and may hold more."""
    ddpm = [c for c in cells if c.sampler == "ddpm"]
    first = sorted({c.spacing for c in ddpm}, key=spacing_order)
    rest = sorted({c.spacing for c in cells} - set(first), key=spacing_order)
    etas = {f"{e:g}": e for e in sorted(c.eta for c in cells if c.sampler == "ddim" and c.eta is not None)}  # by key
    return Box(
        spacing=tuple(first + rest),
        sampler=tuple(sorted({c.sampler for c in cells}, key=_sampler_order)),
        steps=tuple(sorted({c.steps for c in cells if c.sampler != "ddpm"})),
        eta=tuple(etas.values()),
        seeds=tuple(sorted({c.seed_block for c in cells})),
        T=max((c.steps for c in ddpm), default=0),
    )


_SPLIT = ("seed_block", "spacing", "sampler", "eta", "steps")  # the axes tried in turn (ties: the first wins)


def cover(todo: Iterable[Cell], allowed: set[str], runs: Iterable[Sequence[Cell]] = ()) -> list[Box]:
    """Grids that hold every cell of ``todo`` and no cell outside ``allowed`` (keys): ``box_of(todo)`` when it
    does, else few (not always the fewest). Each of ``runs`` (the grids the sweep's runs asked for) cut to its cells
    of ``todo`` (their ``box_of``) is a candidate where it adds no cell: the one holding most of the cells left is
    taken, then the next, and the cells none holds are split by the values of one axis, then within each part
    again (in each part, the axis whose split needs fewest grids). That, or the splitting of all of ``todo`` where
    it takes fewer grids. A cell that no grid holds (an edited store: ``bench.store.study`` leaves such trials out)
    gets the grid nearest to it, ``box_of`` its own, never an error."""
    memo: dict[frozenset[str], list[Box]] = {}
    most = min(len(allowed), MAX_GRID_CELLS)  # a larger grid adds cells (or is one the sweep refuses): never built

    def fits(box: Box, ident: frozenset[str]) -> bool:
        return box.size() <= most and ident <= box.keys() <= allowed

    def best(part: tuple[Cell, ...]) -> list[Box]:
        ident = frozenset(c.key for c in part)
        if ident not in memo:
            box = box_of(part)
            if fits(box, ident):
                memo[ident] = [box]
            else:
                tries = []
                for axis in _SPLIT:
                    groups: dict[object, list[Cell]] = {}
                    for c in part:
                        groups.setdefault(getattr(c, axis), []).append(c)
                    if len(groups) > 1:
                        tries.append([b for g in groups.values() for b in best(tuple(g))])
                # Two distinct cells differ on some axis; a single cell fits its own grid unless no grid has it.
                memo[ident] = min(tries, key=len) if tries else [box]
        return memo[ident]

    cells = sorted({c.key: c for c in todo}.values(), key=_order)
    split = best(tuple(cells))
    if len(split) < 2:
        return split
    wanted = {c.key for c in cells}
    candidates = []  # (a run's grid cut to its cells not run, the cells not run it holds)
    for run in runs:
        mine = [c for c in run if c.key in wanted]
        box = box_of(mine) if mine else None
        if box is not None and fits(box, frozenset(c.key for c in mine)):
            candidates.append((box, box.keys() & wanted))
    chosen, left = [], set(wanted)
    while candidates and left:
        box, holds = max(candidates, key=lambda candidate: len(candidate[1] & left))  # ties: the first run's
        if not holds & left:
            break
        chosen.append(box)
        left -= holds
    mixed = chosen + (best(tuple(c for c in cells if c.key in left)) if left else [])
    return mixed if len(mixed) <= len(split) else split


def sweep_argv(command: str | None) -> list[str] | None:
    """The words of ``command``, read back from a store, when it is a ``ddimbench sweep`` command line as
    ``bench.store.untrusted.command_line`` stores it (``ddimbench``, then ``sweep``) with no character ``printable``
    would escape in any word; else None. The store is untrusted and the report offers its command for a shell:
    another program (``curl ... | sh``) is never offered, and an ESC or a newline, even quoted, would reach the
    terminal that shows the advice or start a line of its own. ``shlex.join`` of the words is what is offered."""
    try:
        argv = shlex.split(command) if command else []
    except ValueError:  # not a shell line (an unbalanced quote)
        return None
    return argv if argv[:2] == ["ddimbench", "sweep"] and all(printable(a) == a for a in argv) else None


def with_grid(command: str, box: Box) -> str | None:
    """``command`` (a stored ``ddimbench sweep`` command line) with its grid keys replaced by ``box``'s (a sweep file's
    axes are overridden by them), or None when it is no ``sweep_argv`` (an edited store)."""
    argv = sweep_argv(command)
    if argv is None:
        return None

    def axis(token: str) -> bool:
        key, eq, _ = token.partition("=")
        key = key.strip()  # as ``bench.sweep.overrides.parse_overrides`` reads it
        return bool(eq) and (key in AXES or key == OLD_SPACING)  # an option (--storage=...) is no key

    return shlex.join([*(a for a in argv if not axis(a)), *box.tokens()])


def finish(states: Iterable[tuple[Cell, str]], latest: Sequence[Cell], command: str | None,
           runs: Iterable[Sequence[Cell]] = ()) -> str:  # fmt: skip
    """How to finish a sweep with cells not run: ``states`` are its cells and how they stand
    (``bench.store.table_cells.cell_states``), ``latest`` the grid of its latest run, ``command`` that run's command
    (None when the store has none), ``runs`` the grids of all its runs (``cover`` tries them first). A command that
    is no ``sweep_argv`` is not offered: the advice gives the grid keys for the sweep's own command instead."""
    argv = sweep_argv(command)
    command = shlex.join(argv) if argv else None
    advice = _advice(list(states), latest, command, runs)
    if command and masked(command):  # the store keeps commands with their passwords masked (safe_url)
        advice += f" (its --storage password reads {MASK}: write yours in its place)"
    return advice


def _advice(states: list[tuple[Cell, str]], latest: Sequence[Cell], command: str | None,
            runs: Iterable[Sequence[Cell]]) -> str:  # fmt: skip
    todo = [c for c, s in states if s == NOT_RUN]
    if {c.key for c in todo} <= {c.key for c in latest}:
        same = f"the same command to finish it: {command}" if command else "the same `ddimbench sweep` command"
        return f"rerun {same}"
    boxes = cover(todo, {c.key for c, _ in states}, runs)
    lines = [with_grid(command, b) for b in boxes] if command else []
    why = "to finish it,"  # a store that kept no grid of its latest run is not said to hold others
    if latest:
        why = f"the latest run's command does not cover them all (an earlier run asked for other cells); {why}"
    if lines and all(lines):
        what = "this command" if len(lines) == 1 else f"these {len(lines)} commands"
        return f"{why} run {what} (measured cells are skipped): {'; '.join(map(str, lines))}"
    grids = "; ".join(" ".join(b.tokens()) for b in boxes)
    each = "with" if len(boxes) == 1 else f"{len(boxes)} times, once with each of"
    return f"{why} rerun the sweep's `ddimbench sweep` command {each}: {grids}"
