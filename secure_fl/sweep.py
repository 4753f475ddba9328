"""Parameter sweeps: run a grid of configurations, tabulate and plot the trade-offs.

``secure-fl sweep CONFIG --grid key=v1,v2 [--grid ...] [--out DIR] [--set k=v ...]``
runs the cartesian product of the grid values, one ``secure-fl run`` per point, each in
its own run directory ``DIR/<point name>`` (a deterministic name built from the grid
values, e.g. ``dp.target_epsilon=2__secagg.bits=16``). It then writes

* ``DIR/sweep.csv``: one row per point: the grid keys, final and best accuracy,
  epsilon, delta, mean upload bytes per client, virtual and wall time, protocol and DP
  mechanism, and the point's run directory;
* ``DIR/accuracy_vs_epsilon.png``, ``DIR/accuracy_vs_upload.png`` and
  ``DIR/accuracy_vs_virtual_time.png``: one line per series (by default the protocol
  and DP mechanism; ``--series KEY`` groups by grid keys instead, e.g. one line per
  ``secagg.bits``).

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
    "point_name",
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
    line per protocol and DP mechanism). ``run_fn`` replaces :func:`secure_fl.run`
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
    result.plots = plot_sweep(points, result.rows, out, series=series)
    return result


# --------------------------------------------------------------------------- plots


def _series_label(point: SweepPoint, row: Mapping[str, Any], series: Sequence[str]) -> str:
    if series:
        lookup = dict(point.values)
        return ", ".join(f"{k}={_fmt_value(lookup[k])}" for k in series)
    mech = row["dp_mechanism"]
    return f"{row['protocol']}" + ("" if mech == "none" else f" / {mech}")


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


def _group(
    points: Sequence[SweepPoint], rows: Sequence[Mapping[str, Any]], series: Sequence[str]
) -> dict[str, list[tuple[SweepPoint, Mapping[str, Any]]]]:
    groups: dict[str, list[tuple[SweepPoint, Mapping[str, Any]]]] = {}
    for point, row in zip(points, rows, strict=False):
        groups.setdefault(_series_label(point, row, series), []).append((point, row))
    return groups


def plot_sweep(
    points: Sequence[SweepPoint],
    rows: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    series: Sequence[str] = (),
) -> list[Path]:
    """Write the three trade-off plots; returns their paths.

    * accuracy vs epsilon: final accuracy at each point's epsilon, a line per series;
      points without DP (epsilon undefined) are drawn as a dashed horizontal line;
    * accuracy vs upload bytes per client (mean over aggregations);
    * accuracy vs virtual time: the test-accuracy curve of every run (from its
      ``metrics.jsonl``), coloured by series.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(points, rows, series)
    colors = plt.get_cmap("tab10")
    color_of = {label: colors(i % 10) for i, label in enumerate(groups)}
    legend_title = ", ".join(series) if series else "protocol / mechanism"
    paths: list[Path] = []

    def scatter_plot(xkey: str, xlabel: str, fname: str, title: str) -> None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs_all: list[float] = []
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
                no_dp = [float(r["final_accuracy"]) for _, r in members if r["epsilon"] is None]
                if no_dp:
                    ax.axhline(
                        max(no_dp), color=color_of[label], linestyle="--",
                        label=f"{label} (no DP)",
                    )
        positive = [x for x in xs_all if x > 0]
        if positive and len(positive) == len(xs_all) and max(positive) / min(positive) >= 20:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final test accuracy")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if groups:
            ax.legend(title=legend_title, fontsize="small", title_fontsize="small")
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        paths.append(out_dir / fname)

    scatter_plot(
        "epsilon", "epsilon (client level, against the server)", PLOT_FILES[0],
        "Accuracy against privacy",
    )
    scatter_plot(
        "upload_bytes_per_client", "upload bytes per client per aggregation", PLOT_FILES[1],
        "Accuracy against communication",
    )

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled: set[str] = set()
    few = len(points) <= 8
    styles = ("-", "--", ":", "-.")
    for label, members in groups.items():
        for i, (point, _) in enumerate(members):
            xs, ys = _curve(point.run_dir)
            if not xs:
                continue
            text = point.label if few and point.values else label
            show = few or label not in labelled
            labelled.add(label)
            # Runs of one series share a colour; line styles tell them apart.
            ax.plot(
                xs, ys, color=color_of[label], alpha=0.85, linewidth=1.4,
                linestyle=styles[i % len(styles)] if few else "-",
                label=text if show else None,
            )
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against virtual time")
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize="x-small", loc="best")
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
        help="grid key whose values make the plot lines (repeatable; default: protocol / mechanism)",
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
