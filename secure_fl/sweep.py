"""Parameter sweeps: run a grid of configurations, tabulate and plot the trade-offs.

``secure-fl sweep CONFIG --grid key=v1,v2 [--grid ...] [--out DIR] [--set k=v ...]``
runs the cartesian product of the grid values, one ``secure-fl run`` per point, each in
its own run directory ``DIR/<point name>`` (a deterministic name built from the grid
values, e.g. ``dp.target_epsilon=2__secagg.bits=16``). It then writes

* ``DIR/sweep.csv``: one row per point: the grid keys, final and best accuracy,
  epsilon, delta, mean upload bytes per client, virtual and wall time, protocol and DP
  mechanism, and the point's run directory;
* ``DIR/accuracy_vs_epsilon.png``, ``DIR/accuracy_vs_upload.png`` and
  ``DIR/accuracy_vs_virtual_time.png``. By default each combination of the grid axes
  that a plot does not put on its x axis is one line: a grid over ``dp.target_epsilon``
  and ``secagg.bits`` draws one accuracy-vs-epsilon line per bit-width and one
  accuracy-vs-upload line per target (``--series KEY`` fixes the grouping instead).
  Epsilon points carry their value; the virtual-time plot draws one curve per run and
  its legend names each.

Resumable: a point whose run directory holds ``summary.json`` is complete and skipped
on restart, so an interrupted sweep continues where it stopped when the same command is
run again. A point interrupted mid-run (a directory without ``summary.json``) is rerun
from scratch. A completed point whose recorded configuration hash differs from the one
the command now resolves to (the base configuration was edited) is refused with a
:class:`~secure_fl.errors.ConfigError` rather than silently mixed into the table.

Linked axes vary several keys together instead of crossing them:
``--grid protocol+dp.mechanism=plain/gaussian,secagg/discrete_gaussian`` gives two
values of the pair, not four combinations.

Every grid point is validated before anything runs: an unknown key or an invalid value
fails fast with the error naming the field.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from secure_fl.config import RunConfig, config_hash, load_config, parse_overrides
from secure_fl.errors import ConfigError, DataError, SecureFLError

__all__ = [
    "CSV_METRICS",
    "PLOT_FILES",
    "GridAxis",
    "SweepPoint",
    "SweepResult",
    "parse_grid",
    "plot_sweep",
    "plotted_axis",
    "point_name",
    "series_of",
    "sweep",
    "sweep_main",
]

#: Columns of ``sweep.csv`` after the grid keys.
CSV_METRICS = (
    "final_accuracy",
    "best_accuracy",
    "epsilon",
    "epsilon_released_model",
    "delta",
    "upload_bytes_per_client",
    "virtual_time_s",
    "wall_time_s",
    "protocol",
    "dp_mechanism",
    "status",
    "run_dir",
)

#: Plots written next to ``sweep.csv``.
PLOT_FILES = (
    "accuracy_vs_epsilon.png",
    "accuracy_vs_upload.png",
    "accuracy_vs_virtual_time.png",
)

CSV_NAME = "sweep.csv"
_MAX_NAME = 120

RunFn = Callable[..., Any]


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid key=v1,v2`` option: a dotted configuration key and its values.

    A linked axis has ``key = "a.b+c.d"`` and tuple values, one element per key.
    """

    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: its values (in grid order), validated configuration and directory."""

    values: tuple[tuple[str, Any], ...]
    config: RunConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in self.values)


@dataclass
class SweepResult:
    """What a sweep produced: one CSV row per point, the CSV path and the plots."""

    out_dir: Path
    rows: list[dict[str, Any]]
    csv_path: Path
    plots: list[Path]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- grid


def _split_values(text: str) -> list[str]:
    """Split ``v1,v2`` on top-level commas (commas inside [...] or quotes stay)."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_grid(items: Sequence[str]) -> list[GridAxis]:
    """Parse ``["dp.target_epsilon=1,4,16", "protocol=plain,secagg"]`` into axes.

    A key of several dotted names joined by ``+`` is a linked axis whose values are
    ``/``-separated tuples (``protocol+dp.mechanism=plain/none,secagg/skellam``).

    Values are read as TOML values (``16`` is an integer, ``0.5`` a float, ``true`` a
    boolean, ``[64,32]`` a list), bare words as strings. Only the form is checked here;
    :func:`sweep` validates every point against the schema.
    """
    axes: list[GridAxis] = []
    seen: set[str] = set()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {item!r} must have the form key=v1,v2,...")
        keys = key.split("+")
        for k in keys:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", k):
                raise ConfigError(f"malformed grid key {k!r}", field=k)
            if k in seen:
                raise ConfigError("the same key is given to --grid twice", field=k)
            seen.add(k)
        texts = _split_values(raw)
        if any(t == "" for t in texts):
            raise ConfigError(f"empty value in --grid {item!r}", field=key)
        if len(keys) == 1:
            values = tuple(_parse_one(t) for t in texts)
        else:
            linked = []
            for t in texts:
                parts = t.split("/")
                if len(parts) != len(keys) or any(not p.strip() for p in parts):
                    raise ConfigError(
                        f"linked axis value {t!r} must give {len(keys)} '/'-separated values",
                        field=key,
                    )
                linked.append(tuple(_parse_one(p.strip()) for p in parts))
            values = tuple(linked)
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise ConfigError(f"--grid {item!r} repeats a value", field=key)
        axes.append(GridAxis(key, values))
    return axes


def _parse_one(text: str) -> Any:
    return parse_overrides([f"v={text}"])["v"]


def _expand(axes: Sequence[GridAxis], combo: Sequence[Any]) -> tuple[tuple[str, Any], ...]:
    """Grid values of one combination as (key, value) pairs, linked axes unpacked."""
    out: list[tuple[str, Any]] = []
    for axis, value in zip(axes, combo, strict=True):
        keys = axis.key.split("+")
        if len(keys) == 1:
            out.append((axis.key, value))
        else:
            out.extend(zip(keys, value, strict=True))
    return tuple(out)


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else f"{value:.1f}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_fmt_value(v) for v in value) + "]"
    return str(value)


def _toml_value(value: Any) -> str:
    """The override text of a grid value (strings quoted so that they stay strings)."""
    if isinstance(value, str):
        return json.dumps(value)
    return _fmt_value(value)


def point_name(values: Sequence[tuple[str, Any]]) -> str:
    """Deterministic directory name of a grid point, e.g. ``dp.clip=0.5__secagg.bits=16``.

    Characters outside ``[A-Za-z0-9._=,+-]`` become ``_``; names longer than 120
    characters are cut and suffixed with a hash of the full point so they stay unique.
    """
    if not values:
        return "base"
    raw = "__".join(f"{k}={_fmt_value(v)}" for k, v in values)
    name = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", raw)
    if len(name) > _MAX_NAME or name != raw:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 11]}-{digest}"
    return name


def _points(
    config_path: Path | None,
    axes: Sequence[GridAxis],
    overrides: Sequence[str],
    out_dir: Path,
) -> list[SweepPoint]:
    """Build and validate every grid point before anything runs."""
    from secure_fl.accounting import calibrate_config
    from secure_fl.runner import make_aggregator

    points: list[SweepPoint] = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        values = _expand(axes, combo)
        point_overrides = [*overrides, *(f"{k}={_toml_value(v)}" for k, v in values)]
        config = load_config(config_path, point_overrides)
        if config.dp.target_epsilon is not None and any(k == "dp.noise_multiplier" for k, _ in values):
            raise ConfigError(
                "the grid varies dp.noise_multiplier but dp.target_epsilon is set and "
                "recalibrates it, so every point would get the same noise; remove "
                "dp.target_epsilon from the configuration or grid over dp.target_epsilon",
                field="dp.noise_multiplier",
            )
        # Settings rejected only when the protocol is built (e.g. a mechanism that the
        # protocol cannot carry) must also fail now, not half-way through the grid.
        make_aggregator(calibrate_config(config), dim=64)
        points.append(SweepPoint(values, config, out_dir / point_name(values)))
    names = [p.run_dir.name for p in points]
    if len(set(names)) != len(names):
        raise ConfigError("two grid points map to the same run directory name; rename values")
    return points


# --------------------------------------------------------------------------- progress


class _PointProgress:
    """Progress across grid points: a tqdm bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, *, enabled: bool, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._enabled = enabled
        self._total = total
        self._done = 0
        self._start = time.perf_counter()
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="sweep", unit="point", dynamic_ncols=True)
        elif enabled:
            print(f"sweep: {total} points", file=self._stream, flush=True)

    def step(self, label: str, status: str, accuracy: float | None) -> None:
        self._done += 1
        if not self._enabled:
            return
        acc = "" if accuracy is None else f" acc={accuracy:.4f}"
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{status}{acc}", refresh=True)
        else:
            elapsed = time.perf_counter() - self._start
            print(
                f"[{self._done}/{self._total}] {status:<7} {label}{acc} elapsed={elapsed:.1f}s",
                file=self._stream,
                flush=True,
            )

    def start(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(f"sweep {label}"[:60])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------- running


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is unreadable ({err}); delete the point's directory to rerun it") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object; delete the point's directory to rerun it")
    return data


def _expected_hash(config: RunConfig) -> str:
    from secure_fl.accounting import calibrate_config

    return config_hash(calibrate_config(config))


def _row(point: SweepPoint, summary: Mapping[str, Any], status: str) -> dict[str, Any]:
    row: dict[str, Any] = {k: _fmt_value(v) for k, v in point.values}
    row.update(
        {
            "final_accuracy": summary.get("final_accuracy"),
            "best_accuracy": summary.get("best_accuracy"),
            "epsilon": summary.get("epsilon"),
            "epsilon_released_model": summary.get("epsilon_released_model"),
            "delta": summary.get("delta"),
            "upload_bytes_per_client": summary.get("upload_bytes_per_client_mean"),
            "virtual_time_s": summary.get("virtual_time_s"),
            "wall_time_s": summary.get("wall_time_s"),
            "protocol": summary.get("protocol", point.config.protocol),
            "dp_mechanism": point.config.dp.mechanism,
            "status": status,
            "run_dir": point.run_dir.name,
        }
    )
    return row


def _write_csv(path: Path, keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        # A grid key named like a result column (``protocol``) appears once.
        writer = csv.DictWriter(fh, fieldnames=[*keys, *(c for c in CSV_METRICS if c not in keys)])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    tmp.replace(path)


def sweep(
    config_path: str | Path | None,
    grid: Sequence[GridAxis] | Sequence[str],
    *,
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    series: Sequence[str] = (),
    progress: bool = True,
    run_fn: RunFn | None = None,
) -> SweepResult:
    """Run (or resume) the grid and write ``sweep.csv`` and the plots into ``out_dir``.

    ``grid`` is a list of :class:`GridAxis` or of ``"key=v1,v2"`` strings; ``overrides``
    are ``key=value`` settings applied to every point before the grid values.
    ``series`` names grid keys whose values make the lines of the plots (default: one
    line per combination of the grid axes a plot does not put on its x axis). ``run_fn`` replaces :func:`secure_fl.run`
    (same signature; tests use it to count runs).
    """
    axes: list[GridAxis] = []
    texts: list[str] = []
    for item in grid:
        if isinstance(item, GridAxis):
            axes.append(item)
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise ConfigError("grid must be a list of GridAxis or of 'key=v1,v2' strings")
    if texts and axes:
        raise ConfigError("give the grid either as GridAxis objects or as strings, not both")
    if texts:
        axes = parse_grid(texts)
    grid_keys = [k for a in axes for k in a.key.split("+")]
    unknown_series = [s for s in series if s not in grid_keys]
    if unknown_series:
        raise ConfigError(
            f"--series must name grid keys ({', '.join(grid_keys) or 'none given'})",
            field=unknown_series[0],
        )
    path = Path(config_path) if config_path is not None else None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory")
    points = _points(path, axes, overrides, out)

    # Check every completed point before running anything, so a changed base config is
    # reported at once rather than after hours of new runs.
    done: dict[str, dict[str, Any]] = {}
    for point in points:
        summary = _read_summary(point.run_dir)
        if summary is None:
            continue
        recorded = summary.get("config_sha256")
        if recorded is not None and recorded != _expected_hash(point.config):
            raise ConfigError(
                f"{point.run_dir} holds a finished run of a different configuration than this "
                f"sweep now resolves to for {point.label}; use another --out or delete that directory"
            )
        done[point.run_dir.name] = summary

    if run_fn is None:
        from secure_fl.runner import run as default_run

        run_fn = default_run
    out.mkdir(parents=True, exist_ok=True)
    result = SweepResult(out, [], out / CSV_NAME, [])
    bar = _PointProgress(len(points), enabled=progress)
    try:
        for point in points:
            name = point.run_dir.name
            summary = done.get(name)
            if summary is not None:
                result.skipped.append(name)
                status = "skipped"
            else:
                if point.run_dir.exists():
                    # Interrupted mid-run: no summary, so nothing in it is trustworthy.
                    shutil.rmtree(point.run_dir)
                bar.start(point.label)
                outcome = run_fn(point.config, out_dir=point.run_dir, write=True, progress=False)
                summary = dict(outcome.summary)
                result.ran.append(name)
                status = "ran"
            result.rows.append(_row(point, summary, status))
            bar.step(point.label, status, summary.get("final_accuracy"))
            # Rewritten after every point: an interrupted sweep still leaves a table.
            _write_csv(result.csv_path, grid_keys, result.rows)
    finally:
        bar.close()
    result.plots = plot_sweep(points, result.rows, out, series=series, axes=axes)
    return result


# --------------------------------------------------------------------------- plots


AxisKeys = tuple[str, ...]


def _axis_keys(axes: Sequence[GridAxis], points: Sequence[SweepPoint]) -> list[AxisKeys]:
    """The grid axes as key tuples (a linked axis ``a+b`` is one axis of two keys)."""
    if axes:
        return [tuple(a.key.split("+")) for a in axes]
    return [(k,) for k, _ in points[0].values] if points else []


def _axis_value(point: SweepPoint, axis: AxisKeys) -> str:
    lookup = dict(point.values)
    return ", ".join(f"{k}={_fmt_value(lookup[k])}" for k in axis if k in lookup)


def _varying(axis_keys: Sequence[AxisKeys], points: Sequence[SweepPoint]) -> list[AxisKeys]:
    return [a for a in axis_keys if len({_axis_value(p, a) for p in points}) > 1]


def plotted_axis(
    points: Sequence[SweepPoint], rows: Sequence[Mapping[str, Any]], xkey: str, axis_keys: Sequence[AxisKeys]
) -> AxisKeys | None:
    """The grid axis a plot's x quantity follows (e.g. ``dp.target_epsilon`` for
    epsilon, ``secagg.bits`` for upload bytes).

    For each varying axis, hold every other axis fixed and measure how far
    ``row[xkey]`` moves along it (the mean range over those groups); the axis that moves
    x the most is the plotted one, so a bit-width that shifts the calibrated epsilon by
    0.01 does not take the place of the target epsilon. With x constant, the first
    varying axis.
    """
    varying = _varying(axis_keys, points)
    best: AxisKeys | None = varying[0] if varying else None
    best_score = 0.0
    for axis in varying:
        seen: dict[tuple[str, ...], list[float]] = {}
        for point, row in zip(points, rows, strict=False):
            if not _is_number(row.get(xkey)):
                continue
            others = tuple(_axis_value(point, b) for b in varying if b != axis)
            seen.setdefault(others, []).append(float(row[xkey]))
        ranges = [max(xs) - min(xs) for xs in seen.values() if len(xs) > 1]
        score = sum(ranges) / len(ranges) if ranges else 0.0
        if score > best_score:
            best, best_score = axis, score
    return best


def series_of(
    points: Sequence[SweepPoint],
    rows: Sequence[Mapping[str, Any]],
    xkey: str,
    *,
    axis_keys: Sequence[AxisKeys],
    series: Sequence[str] = (),
) -> dict[str, list[tuple[SweepPoint, Mapping[str, Any]]]]:
    """The lines of one plot: label -> its (point, row) pairs.

    ``series`` (grid keys) fixes the grouping. By default each combination of the
    grid axes other than the plotted one (:func:`plotted_axis`) is one line, so a grid
    over ``dp.target_epsilon`` and ``secagg.bits`` draws one epsilon curve per
    bit-width and one upload curve per target. With nothing else varying, the one line
    is named by protocol and DP mechanism.
    """
    if series:
        def label(point: SweepPoint, row: Mapping[str, Any]) -> str:
            return _axis_value(point, tuple(series))
    else:
        plotted = plotted_axis(points, rows, xkey, axis_keys)
        rest = [a for a in _varying(axis_keys, points) if a != plotted]

        def label(point: SweepPoint, row: Mapping[str, Any]) -> str:
            if rest:
                return "; ".join(_axis_value(point, a) for a in rest)
            mech = row["dp_mechanism"]
            return f"{row['protocol']}" + ("" if mech == "none" else f" / {mech}")

    groups: dict[str, list[tuple[SweepPoint, Mapping[str, Any]]]] = {}
    for point, row in zip(points, rows, strict=False):
        groups.setdefault(label(point, row), []).append((point, row))
    return groups


def _legend_title(points: Sequence[SweepPoint], rows: Sequence[Mapping[str, Any]], xkey: str,
                  axis_keys: Sequence[AxisKeys], series: Sequence[str]) -> str:
    if series:
        return ", ".join(series)
    plotted = plotted_axis(points, rows, xkey, axis_keys)
    rest = [k for a in _varying(axis_keys, points) if a != plotted for k in a]
    return ", ".join(rest) if rest else "protocol / mechanism"


def _curve(run_dir: Path) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return xs, ys
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        m = json.loads(line)
        if m.get("virtual_time_s") is not None and m.get("test_accuracy") is not None:
            xs.append(float(m["virtual_time_s"]))
            ys.append(float(m["test_accuracy"]))
    return xs, ys


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _label_points(ax: Any, labels: Sequence[tuple[float, float, str, Any]]) -> None:
    """Write each point's label beside it; a label that would overlap one already
    placed moves down (in axes fractions) and keeps a thin leader line to its point."""
    ax.set_xlim(ax.get_xlim())  # freeze the autoscaled limits: positions are fractions of them
    ax.set_ylim(ax.get_ylim())
    to_axes = ax.transData + ax.transAxes.inverted()
    placed: list[tuple[float, float]] = []
    for x, y, text, color in labels:
        fx, fy = (float(v) for v in to_axes.transform((x, y)))
        tx = fx + 0.015 if fx < 0.86 else fx - 0.11
        ty = fy + 0.02
        while any(abs(tx - px) < 0.1 and abs(ty - py) < 0.04 for px, py in placed) and ty > -0.5:
            ty -= 0.045
        moved = abs(ty - (fy + 0.02)) > 1e-9
        placed.append((tx, ty))
        ax.annotate(
            text, (x, y), xytext=(tx, ty), textcoords="axes fraction", fontsize="x-small", color=color,
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": color} if moved else None,
        )


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_sweep(
    points: Sequence[SweepPoint],
    rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    series: Sequence[str] = (),
    axes: Sequence[GridAxis] = (),
) -> list[Path]:
    """Write the three trade-off plots; returns their paths.

    * accuracy vs epsilon: final accuracy at each point's epsilon, one line per series
      (:func:`series_of`), each point labelled with its epsilon; points without DP
      (epsilon undefined) are drawn as a dashed horizontal line;
    * accuracy vs upload bytes per client (mean over aggregations), one line per series;
    * accuracy vs virtual time: the test-accuracy curve of every run (from its
      ``metrics.jsonl``); the colour is the run's epsilon-plot series, line style and
      marker tell the runs of one series apart, and the legend names every run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis_keys = _axis_keys(axes, points)
    colors = plt.get_cmap("tab10")
    paths: list[Path] = []

    def scatter_plot(xkey: str, xlabel: str, fname: str, title: str) -> dict[str, Any]:
        groups = series_of(points, rows, xkey, axis_keys=axis_keys, series=series)
        color_of = {label: colors(i % 10) for i, label in enumerate(groups)}
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        xs_all: list[float] = []
        point_labels: list[tuple[float, float, str, Any]] = []
        for label, members in groups.items():
            pts = sorted(
                (float(r[xkey]), float(r["final_accuracy"]))
                for _, r in members
                if _is_number(r[xkey]) and _is_number(r["final_accuracy"])
            )
            if pts:
                xs_all += [p[0] for p in pts]
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], marker="o",
                    color=color_of[label], label=label,
                )
                if xkey == "epsilon":
                    point_labels += [(x, y, f"ε={x:.3g}", color_of[label]) for x, y in pts]
            if xkey == "epsilon":
                no_dp = [float(r["final_accuracy"]) for _, r in members if r["epsilon"] is None]
                if no_dp:
                    ax.axhline(
                        max(no_dp), color=color_of[label], linestyle="--",
                        label=f"{label} (no DP)",
                    )
        positive = [x for x in xs_all if x > 0]
        if positive and len(positive) == len(xs_all) and max(positive) / min(positive) >= 20:
            ax.set_xscale("log")
        ax.margins(x=0.1, y=0.1)
        _label_points(ax, point_labels)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final test accuracy")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if groups:
            title_text = _legend_title(points, rows, xkey, axis_keys, series)
            ax.legend(title=title_text, fontsize="small", title_fontsize="small")
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        paths.append(out_dir / fname)
        return color_of

    eps_colors = scatter_plot(
        "epsilon", "epsilon (client level, against the server)", PLOT_FILES[0],
        "Accuracy against privacy",
    )
    scatter_plot(
        "upload_bytes_per_client", "upload bytes per client per aggregation", PLOT_FILES[1],
        "Accuracy against communication",
    )

    groups = series_of(points, rows, "epsilon", axis_keys=axis_keys, series=series)
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    drawn = 0
    for i, (label, members) in enumerate(groups.items()):
        for j, (point, row) in enumerate(members):
            xs, ys = _curve(point.run_dir)
            if not xs:
                continue
            mech = row["dp_mechanism"]
            text = point.label or (f"{row['protocol']}" + ("" if mech == "none" else f" / {mech}"))
            ax.plot(
                xs, ys, color=eps_colors.get(label, colors(i % 10)), alpha=0.9, linewidth=1.4,
                linestyle=_LINESTYLES[j % len(_LINESTYLES)],
                marker=_MARKERS[(j // len(_LINESTYLES)) % len(_MARKERS)],
                markersize=3.5, markevery=max(1, len(xs) // 8), label=text,
            )
            drawn += 1
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against virtual time (one curve per run)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(
            title="run (grid point)", fontsize="x-small", title_fontsize="x-small",
            loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
            ncol=1 if drawn <= 16 else 2,
        )
    fig.tight_layout()
    fig.savefig(out_dir / PLOT_FILES[2], dpi=110)
    plt.close(fig)
    paths.append(out_dir / PLOT_FILES[2])
    return paths


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="secure-fl sweep",
        description="Run a grid of configurations (resumable) and write sweep.csv and "
        "trade-off plots (accuracy vs epsilon, upload bytes and virtual time).",
    )
    p.add_argument("config", nargs="?", type=Path, help="base TOML configuration (default: embedded)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a grid axis, e.g. --grid dp.target_epsilon=1,4,16 (repeatable; the cartesian "
        "product is run)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key for every point, e.g. --set rounds=10 (repeatable)",
    )
    p.add_argument("--out", type=Path, default=None, help="sweep directory (default runs/sweep-<timestamp>)")
    p.add_argument(
        "--series",
        action="append",
        default=[],
        metavar="KEY",
        help="grid key whose values make the plot lines (repeatable; default: one line per "
        "combination of the grid axes not on the plot's x axis)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _iter_rows(rows: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    for r in rows:
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.3g}"
        yield f"  {r['run_dir']}: acc {r['final_accuracy']:.4f}  eps {eps}  upload {r['upload_bytes_per_client']:.0f} B"


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """``secure-fl sweep``: exit 0 on success, 2 on invalid configuration or usage,
    1 when a run fails for a reason the library names, 130 when interrupted."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    if not args.grid:
        print("secure-fl sweep: give at least one --grid KEY=V1,V2", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")
    try:
        result = sweep(
            args.config, args.grid, out_dir=out, overrides=args.overrides,
            series=args.series, progress=not args.quiet,
        )
    except ConfigError as err:
        print(f"secure-fl: configuration error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"secure-fl: data error: {err}", file=sys.stderr)
        return 2
    except SecureFLError as err:
        print(f"secure-fl: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"secure-fl: sweep interrupted; run the same command again to resume ({out})",
            file=sys.stderr,
        )
        return 130
    if not args.quiet:
        for line in _iter_rows(result.rows):
            print(line)
    print(
        f"sweep: {len(result.ran)} ran, {len(result.skipped)} skipped -> {result.csv_path} "
        f"and {', '.join(p.name for p in result.plots)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(sweep_main())
