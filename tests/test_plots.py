"""Figures that do not mislead, checked on the figure objects: colour scales, shared axes, labels."""

import numpy as np
import pytest
import torch

from actexp import jobs
from actexp.errors import UserError
from actexp.report import plots
from actexp.store.io import write_matrix_csv
from helpers import compose_cfg


def _sim(off):
    """A 3x3 similarity matrix with these three off-diagonal values."""
    sim = np.eye(3)
    for (i, j), v in zip(((0, 1), (0, 2), (1, 2)), off):
        sim[i, j] = sim[j, i] = v
    return sim


def test_a_scale_that_spans_zero_is_symmetric_about_zero_with_ticks_on_both_halves():
    sim = _sim([-0.09, 0.5, 0.91])
    scale = plots.color_scale([sim])
    assert (scale.vmin, scale.vmax, scale.center) == pytest.approx((-0.91, 0.91, 0.0))
    fig = plots.heatmap_figure([sim], ["a", "b", "c"], ["t"], scale)
    image, bar = fig.axes[0].images[0], fig.axes[1]
    norm = image.norm
    assert 0.5 - norm(-0.09) == pytest.approx(norm(0.09) - 0.5)  # equal distance from 0, equal colour distance
    ticks = [t for t in bar.get_yticks() if scale.vmin <= t <= scale.vmax]
    assert min(ticks) < 0 < max(ticks)
    assert "white at 0, symmetric" in bar.get_ylabel()


def test_raw_and_centred_panels_share_one_colour_scale_and_one_bar():
    raw, centred = _sim([0.8, 0.9, 0.95]), _sim([-0.3, 0.1, 0.6])
    scale = plots.color_scale([raw, centred])
    assert (scale.vmin, scale.vmax, scale.center) == pytest.approx((-0.95, 0.95, 0.0))  # over both matrices
    fig = plots.heatmap_figure([raw, centred], ["a", "b", "c"], ["raw", "centred"], scale, "t")
    *panels, bar = fig.axes
    assert [ax.get_title() for ax in panels] == ["raw", "centred"] and bar.get_ylabel().startswith("cosine similarity")
    norms = [ax.images[0].norm for ax in panels]
    assert all((n.vmin, n.vmax) == pytest.approx((-0.95, 0.95)) for n in norms)
    assert norms[0](0.6) == norms[1](0.6)  # the same cosine, the same colour, in either panel


def test_an_all_positive_scale_is_centred_on_its_midpoint_and_says_so():
    scale = plots.color_scale([_sim([0.3, 0.6, 0.9])])
    assert (scale.vmin, scale.vmax, scale.center) == pytest.approx((0.3, 0.9, 0.6))
    assert "midpoint 0.60" in scale.rule
    scale = plots.color_scale([_sim([0.3, 0.6, 0.9])], center=0.8)  # asked for: widened to stay symmetric
    assert (scale.vmin, scale.vmax) == pytest.approx((0.3, 1.3)) and "plot.center" in scale.rule


def test_norm_panels_share_their_axis():
    rng = np.random.default_rng(0)
    fig = plots.norms_figure([rng.normal(size=(4, 8)) * 3, rng.normal(size=(4, 8))], ["raw", "centered"], list("abcd"))
    raw, centred = fig.axes
    assert raw.get_xlim() == centred.get_xlim() and raw.get_xlim()[1] > 3 * np.sqrt(8)


def test_a_projection_names_its_variance_and_numbers_its_points():
    rng = np.random.default_rng(0)
    coords = [rng.normal(size=(5, 2)), rng.normal(size=(5, 2))]
    names = [f"a long sample name number {i}" for i in range(5)]
    fig = plots.projection_figure(coords, ["raw", "centered"], names, None, "t", [[0.234, 0.1], [0.5, 0.2]])
    raw = fig.axes[0]
    assert raw.get_xlabel() == "PC 1 (23 % of the variance)" and raw.get_ylabel() == "PC 2 (10 % of the variance)"
    assert [t.get_text() for t in raw.texts] == ["1", "2", "3", "4", "5"]  # numbers at the points, not names
    key = "\n".join(t.get_text() for t in fig.texts)
    assert all(f"{i + 1}  {n}" in key for i, n in enumerate(names))


@pytest.mark.parametrize("job", ["plot", "pipeline"])
def test_an_upside_down_colour_scale_is_refused_before_anything_runs(job):
    for low, high in (("1", "0"), ("0.5", "0.5")):
        with pytest.raises(UserError, match=rf"^plot.vmin={low} is not below plot.vmax={high}: "):
            jobs.check(job, compose_cfg(f"job={job}", f"plot.vmin={low}", f"plot.vmax={high}"))
    jobs.check(job, compose_cfg(f"job={job}", "plot.vmin=-1", "plot.vmax=1"))


def test_a_bound_the_cosines_leave_on_the_wrong_side_is_one_line(tmp_path):
    """plot.vmin alone above every cosine (or vmax alone below) would paint every cell one colour."""
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3]])  # [3, 2]: off-diagonal cosines 0.936 to 0.994
    write_matrix_csv(tmp_path / "v.csv", x, ["a", "b", "c"])
    base = ["job=plot", f"plot.csv={tmp_path / 'v.csv'}", "pooling=short", "logger=none"]
    with pytest.raises(UserError, match=r"^plot.vmin=0.995 is not below the highest cosine of these heatmaps \(0.994\)"):
        jobs.run("plot", compose_cfg(*base, "plot.vmin=0.995"), tmp_path / "a")
    with pytest.raises(UserError, match=r"^plot.vmax=0.9 is not above the lowest cosine of these heatmaps \(0.936\)"):
        jobs.run("plot", compose_cfg(*base, "plot.vmax=0.9"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    jobs.run("plot", compose_cfg(*base, "plot.vmin=0.9"), tmp_path / "c")
    assert (tmp_path / "c" / "similarity_short_all.png").is_file()
