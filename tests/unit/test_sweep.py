"""``secure-fl sweep``: grid parsing, fail-fast validation, resume, CSV and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from secure_fl import run
from secure_fl.errors import ConfigError
from secure_fl.sweep import (
    CSV_METRICS,
    PLOT_FILES,
    GridAxis,
    parse_grid,
    point_name,
    sweep,
    sweep_main,
)

# Tiny runs: 3 clients, 2 aggregations of a plain Gaussian-DP FedAvg on digits.
BASE = ["rounds=2", "clients.num=3", "protocol=plain", "dp.mechanism=gaussian", "model.hidden=[16]"]
GRID = ["dp.target_epsilon=2.0,8.0", "train.lr=0.05,0.1"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class CountingRun:
    """Wraps :func:`secure_fl.run`; optionally simulates an interruption on call ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[Path] = []
        self.stop_at = stop_at

    def __call__(self, config: Any, *, out_dir: Path, **kwargs: Any) -> Any:
        self.calls.append(Path(out_dir))
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            # Interrupted mid-run: the directory exists with partial output, no summary.
            Path(out_dir).mkdir(parents=True)
            (Path(out_dir) / "metrics.jsonl").write_text('{"version": 1}\n')
            raise KeyboardInterrupt
        return run(config, out_dir=out_dir, **kwargs)


def test_parse_grid_reads_toml_values() -> None:
    axes = parse_grid(
        ["dp.target_epsilon=1,4.5", "protocol=plain,secagg", "model.hidden=[64,32],[8]", "dp.adaptive_clip=true,false"]
    )
    assert axes == [
        GridAxis("dp.target_epsilon", (1, 4.5)),
        GridAxis("protocol", ("plain", "secagg")),
        GridAxis("model.hidden", ([64, 32], [8])),
        GridAxis("dp.adaptive_clip", (True, False)),
    ]


def test_parse_grid_linked_axis() -> None:
    (axis,) = parse_grid(["protocol+dp.mechanism=plain/gaussian,secagg/skellam"])
    assert axis.key == "protocol+dp.mechanism"
    assert axis.values == (("plain", "gaussian"), ("secagg", "skellam"))


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ("rounds", None),
        ("rounds=", "rounds"),
        ("rounds=1,,2", "rounds"),
        ("rounds=1,1", "rounds"),
        ("bad key=1", "bad key"),
        ("protocol+dp.mechanism=plain", "protocol+dp.mechanism"),
    ],
)
def test_parse_grid_rejects_malformed(item: str, field: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        parse_grid([item])
    assert info.value.field == field


def test_parse_grid_rejects_repeated_key() -> None:
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["rounds=1,2", "rounds=3"])


def test_point_name_is_deterministic_and_safe() -> None:
    values = (("dp.target_epsilon", 2.0), ("secagg.bits", 16), ("data.dataset", "csv"))
    name = point_name(values)
    assert name == "dp.target_epsilon=2.0__secagg.bits=16__data.dataset=csv"
    assert point_name(values) == name
    odd = point_name((("data.label_column", "a b/c"),))
    assert "/" not in odd and " " not in odd
    long = point_name(tuple((f"k{i}", "x" * 30) for i in range(10)))
    assert len(long) <= 120
    assert long != point_name(tuple((f"k{i}", "x" * 30) for i in range(9)) + (("k9", "y" * 30),))


@pytest.mark.parametrize(
    ("grid", "field"),
    [
        (["dp.nope=1,2"], "dp.nope"),
        (["clients.num=3,0"], "clients.num"),
        (["protocol=plain,teleport"], "protocol"),
        (["dp.mechanism=gaussian,skellam"], "dp.mechanism"),  # skellam needs secagg
        (["dp.noise_multiplier=0.5,1.0"], "dp.noise_multiplier"),  # target_epsilon overrides it
    ],
)
def test_invalid_grid_fails_before_anything_runs(tmp_path: Path, grid: list[str], field: str) -> None:
    counter = CountingRun()
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError) as info:
        sweep(None, grid, out_dir=out, overrides=BASE, progress=False, run_fn=counter)
    assert info.value.field == field
    assert counter.calls == []
    assert not out.exists()


def test_sweep_resumes_after_interruption_and_writes_csv_and_pngs(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    first = CountingRun(stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        sweep(None, GRID, out_dir=out, overrides=BASE, progress=False, run_fn=first)
    assert len(first.calls) == 3
    done = first.calls[:2]
    assert all((p / "summary.json").is_file() for p in done)
    assert not (first.calls[2] / "summary.json").exists()
    mtimes = {p: (p / "summary.json").stat().st_mtime_ns for p in done}
    # The table is written after every point, so the interrupted sweep already has one.
    with (out / "sweep.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2

    second = CountingRun()
    result = sweep(None, GRID, out_dir=out, overrides=BASE, progress=False, run_fn=second)
    # Only the interrupted point and the one never started ran again.
    assert second.calls == [first.calls[2], out / point_name((("dp.target_epsilon", 8.0), ("train.lr", 0.1)))]
    assert result.skipped == [p.name for p in done]
    assert {p: (p / "summary.json").stat().st_mtime_ns for p in done} == mtimes

    with (out / "sweep.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["dp.target_epsilon", "train.lr", *CSV_METRICS]
        rows = list(reader)
    assert [(r["dp.target_epsilon"], r["train.lr"]) for r in rows] == [
        ("2.0", "0.05"), ("2.0", "0.1"), ("8.0", "0.05"), ("8.0", "0.1"),
    ]
    assert [r["status"] for r in rows] == ["skipped", "skipped", "ran", "ran"]
    for row in rows:
        summary = json.loads((out / row["run_dir"] / "summary.json").read_text())
        assert float(row["final_accuracy"]) == pytest.approx(summary["final_accuracy"])
        assert float(row["epsilon"]) == pytest.approx(summary["epsilon"])
        assert float(row["delta"]) == pytest.approx(summary["delta"])
        assert float(row["upload_bytes_per_client"]) == pytest.approx(summary["upload_bytes_per_client_mean"])
        assert float(row["virtual_time_s"]) == pytest.approx(summary["virtual_time_s"])
        assert row["protocol"] == "plain" and row["dp_mechanism"] == "gaussian"
    # Calibrated to the target: the reported epsilon is at most the target, and close.
    for row in rows:
        target = float(row["dp.target_epsilon"])
        assert 0.8 * target < float(row["epsilon"]) <= target * 1.001

    for name in PLOT_FILES:
        png = out / name
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        image = mpimg.imread(png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        assert image.std() > 0.01  # not a blank canvas

    # A third call runs nothing.
    third = CountingRun()
    sweep(None, GRID, out_dir=out, overrides=BASE, progress=False, run_fn=third)
    assert third.calls == []


def test_changed_base_config_is_refused_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    sweep(None, ["train.lr=0.1"], out_dir=out, overrides=BASE, progress=False)
    with pytest.raises(ConfigError, match="different configuration"):
        sweep(None, ["train.lr=0.1"], out_dir=out, overrides=[*BASE, "rounds=3"], progress=False)


def test_sweep_main_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--quiet", *(f"--set={s}" for s in BASE)]
    assert sweep_main(["--grid", "dp.target_epsilon=4.0", *args]) == 0
    assert "1 ran, 0 skipped" in capsys.readouterr().out
    assert sweep_main(["--grid", "dp.target_epsilon=4.0", *args]) == 0
    assert "0 ran, 1 skipped" in capsys.readouterr().out
    assert sweep_main(["--grid", "dp.bogus=1", *args]) == 2
    assert "dp.bogus" in capsys.readouterr().err
    assert sweep_main(args) == 2  # no --grid
    assert sweep_main(["--grid", "train.lr=0.1", "--series", "rounds", *args]) == 2


# --------------------------------------------------------------------- plots (issue 16, section 6)


class ScriptedRun:
    """Writes the summary and metrics a run would, without training: epsilon follows
    dp.target_epsilon, upload bytes follow secagg.bits, accuracy rises with both."""

    def __call__(self, config: Any, *, out_dir: Path, **kwargs: Any) -> Any:
        out = Path(out_dir)
        out.mkdir(parents=True)
        eps, bits = float(config.dp.target_epsilon), int(config.secagg.bits)
        acc = 0.5 + 0.03 * eps + 0.005 * bits
        summary = {
            "final_accuracy": acc, "best_accuracy": acc, "epsilon": eps, "epsilon_released_model": eps,
            "delta": 1e-5, "upload_bytes_per_client_mean": bits * 1000.0, "virtual_time_s": 10.0,
            "wall_time_s": 1.0, "protocol": config.protocol,
        }
        (out / "summary.json").write_text(json.dumps(summary))
        with (out / "metrics.jsonl").open("w") as fh:
            for v in range(1, 6):
                fh.write(json.dumps({"version": v, "virtual_time_s": 2.0 * v, "test_accuracy": acc * v / 5}) + "\n")

        class Result:
            pass

        result = Result()
        result.summary = summary  # type: ignore[attr-defined]
        return result


def _sweep_figures(tmp_path: Path, grid: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from matplotlib.figure import Figure

    figures: dict[str, Any] = {}
    original = Figure.savefig

    def keep(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> Any:
        figures[Path(fname).name] = self
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    base = ["rounds=2", "clients.num=4", "protocol=secagg", "dp.mechanism=discrete_gaussian"]
    sweep(None, grid, out_dir=tmp_path / "sweep", overrides=base, progress=False, run_fn=ScriptedRun())
    return figures


def _lines(fig: Any) -> dict[str, list[tuple[float, float]]]:
    ax = fig.axes[0]
    return {
        line.get_label(): list(zip(line.get_xdata(), line.get_ydata(), strict=True))
        for line in ax.get_lines()
    }


BITS_BY_EPS = ["secagg.bits=16,20,24", "dp.target_epsilon=2.0,8.0"]


def test_default_series_are_the_axes_not_on_the_x_axis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _sweep_figures(tmp_path, BITS_BY_EPS, monkeypatch)
    eps_lines = _lines(figures["accuracy_vs_epsilon.png"])
    # One accuracy-vs-epsilon line per bit-width (not one zig-zag over all six points).
    assert sorted(eps_lines) == ["secagg.bits=16", "secagg.bits=20", "secagg.bits=24"]
    assert all([x for x, _ in pts] == [2.0, 8.0] for pts in eps_lines.values())
    upload_lines = _lines(figures["accuracy_vs_upload.png"])
    assert sorted(upload_lines) == ["dp.target_epsilon=2.0", "dp.target_epsilon=8.0"]
    assert all([x for x, _ in pts] == [16000.0, 20000.0, 24000.0] for pts in upload_lines.values())
    legend = figures["accuracy_vs_epsilon.png"].axes[0].get_legend()
    assert legend.get_title().get_text() == "secagg.bits"


def test_epsilon_points_are_labelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _sweep_figures(tmp_path, BITS_BY_EPS, monkeypatch)
    texts = [t.get_text() for t in figures["accuracy_vs_epsilon.png"].axes[0].texts]
    assert sorted(texts) == ["ε=2"] * 3 + ["ε=8"] * 3


def test_virtual_time_legend_tells_every_curve_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = ["secagg.bits=16,20,24", "dp.target_epsilon=1.0,2.0,4.0,8.0"]  # 12 runs
    figures = _sweep_figures(tmp_path, grid, monkeypatch)
    ax = figures["accuracy_vs_virtual_time.png"].axes[0]
    lines = ax.get_lines()
    assert len(lines) == 12
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 12 and len(set(labels)) == 12
    assert "secagg.bits=16, dp.target_epsilon=1.0" in labels
    styles = {(str(line.get_color()), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(styles) == 12  # no two curves drawn alike
