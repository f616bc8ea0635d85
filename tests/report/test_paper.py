"""The paper beside ours (research/report/paper.py): the figures file, matching runs to paper rows, the
✓/✗ of directions, and the Markdown and plot that show them."""

from __future__ import annotations

from pathlib import Path

import pytest

from research.cli import main as cli
from research.config import ConfigError
from research.report import write_report
from research.report.collect import VariantResult
from research.report.paper import Comparison, PaperRow, compare, paper_table, read_paper
from research.report.plots import paper_figure
from research.report.stats import AGREE, DISAGREE, NO_VERDICT, WITHIN_NOISE
from research.report.write import MARKDOWN, PAPER

from .test_report import assert_png, write_run

ABLATION = {"variants": {"full": {}, "no_mixup": {"aug.mixup": 0.0}, "ema": {"train.ema": True}}}


def result(
    experiment: str, variant: str, top1: float | None, images_per_s: float | None = None, *, seed: int | None = None,
    inference_img_s: float | None = None,
) -> VariantResult:
    """A done run; its seed is ``seed``, else the one its grid name spells (``full,seed=1``), else 0."""
    if seed is None:
        seed = int(variant.rpartition("seed=")[2]) if "seed=" in variant else 0
    return VariantResult(
        experiment, variant, Path("runs") / experiment / variant, {}, variant.startswith("full"), "done", 4, 4,
        best_top1=top1, images_per_s=images_per_s, seed=seed, inference_img_s=inference_img_s,
    )


def by_row(comparisons: list[Comparison]) -> dict[str, Comparison]:
    return {f"{c.experiment}/{c.paper.variant or c.paper.experiment}": c for c in comparisons}


def test_the_shipped_figures_are_the_papers() -> None:
    rows = {(row.table, row.variant or row.experiment): row for row in read_paper()}
    assert rows["table3", "none"].delta == pytest.approx(79.8 - 81.2)
    assert rows["table3", "dist_head"].delta == pytest.approx(81.1 - 81.2)
    assert rows["table8", "no_mixup"].delta == pytest.approx(78.7 - 81.8)
    assert rows["table8", "no_repeated_aug"].delta == pytest.approx(76.5 - 81.8)
    assert rows["table8", "ema"].delta == pytest.approx(0.1)
    assert rows["table5", "deit_small_distilled_imagenet"].delta == pytest.approx(81.2 - 79.8)
    assert rows["table5", "deit_base_imagenet"].delta == pytest.approx(292 / 940)  # throughput: a ratio
    assert {row.table for row in read_paper()} == {"table3", "table5", "table8"}


def test_rows_match_variants_of_every_listed_experiment_and_average_seeds() -> None:
    results = [
        result("ablate_all", "full,seed=0", 30.0), result("ablate_all", "full,seed=1", 32.0),
        result("ablate_all", "no_mixup,seed=0", 27.0), result("ablate_all", "no_mixup,seed=1", 28.0),
        result("ablate_all", "no_randaugment,seed=0", 33.0),
        result("ablate_mixup", "full", 50.0), result("ablate_mixup", "no_mixup", 51.0),
        result("unrelated", "no_mixup", 10.0),
    ]
    comparisons = by_row(compare(results, read_paper()))
    assert set(comparisons) == {"ablate_all/no_mixup", "ablate_all/no_randaugment", "ablate_mixup/no_mixup"}
    mixup = comparisons["ablate_all/no_mixup"]
    assert (mixup.ours, mixup.reference, mixup.runs) == (27.5, 31.0, 2)
    # paired by seed: -3 and -4, whose 95% interval (t with 1 dof: 12.7 x 0.71 / 1.41 = 6.35) holds 0
    assert mixup.our_delta == pytest.approx(-3.5) and mixup.paired is not None and mixup.paired.n == 2
    assert mixup.paired.interval == pytest.approx((-3.5 - 6.353, -3.5 + 6.353), abs=1e-3)
    assert mixup.mark == WITHIN_NOISE  # the paper: -3.1, but two seeds this far apart do not resolve it
    randaugment = comparisons["ablate_all/no_randaugment"]
    assert randaugment.our_delta == pytest.approx(3.0)  # against the baseline of its one seed (30), not the mean
    assert randaugment.mark == NO_VERDICT
    assert comparisons["ablate_mixup/no_mixup"].our_delta == pytest.approx(1.0)
    assert comparisons["ablate_mixup/no_mixup"].mark == NO_VERDICT


@pytest.mark.parametrize(
    ("variant_top1", "mark"),
    [
        ([27.0, 28.5, 29.0], AGREE),  # -3, -3.5, -3: the interval excludes 0 on the paper's side
        ([33.0, 34.0, 35.5], DISAGREE),  # +3, +2, +3.5: it excludes 0 on the other side
        ([27.0, 34.0, 30.0], WITHIN_NOISE),  # -3, +2, -2: it holds 0
    ],
)
def test_the_verdict_reads_the_paired_interval(variant_top1: list[float], mark: str) -> None:
    baseline_top1 = [30.0, 32.0, 32.0]
    results = [result("ablate_mixup", "full", top1, seed=seed) for seed, top1 in enumerate(baseline_top1)]
    results += [result("ablate_mixup", "no_mixup", top1, seed=seed) for seed, top1 in enumerate(variant_top1)]
    results.append(result("ablate_mixup", "no_mixup", 99.0, seed=7))  # a seed the baseline lacks: not paired
    (comparison,) = compare(results, read_paper())
    differences = [v - b for v, b in zip(variant_top1, baseline_top1)]
    assert comparison.paired is not None and comparison.paired.n == 3
    assert comparison.our_delta == pytest.approx(sum(differences) / 3)
    assert comparison.mark == mark
    assert comparison.runs == 4  # ours is the mean of every run of the variant


def test_whole_experiments_are_compared_for_table_5() -> None:
    results = [
        # training rates (images_per_s) that would say DeiT-B is faster; the inference rates say slower
        result("deit_small_imagenet", "", 70.0, images_per_s=300.0, inference_img_s=900.0),
        result("deit_small_distilled_imagenet", "", 71.5, images_per_s=880.0),
        result("deit_base_imagenet", "", 69.0, images_per_s=310.0, inference_img_s=310.0),
    ]
    comparisons = by_row(compare(results, read_paper()))
    assert set(comparisons) == {"deit_small_distilled_imagenet/deit_small_distilled_imagenet", "deit_base_imagenet/deit_base_imagenet"}
    distilled = comparisons["deit_small_distilled_imagenet/deit_small_distilled_imagenet"]
    assert distilled.our_delta == pytest.approx(1.5) and distilled.mark == AGREE
    throughput = comparisons["deit_base_imagenet/deit_base_imagenet"]
    assert throughput.our_delta == pytest.approx(310 / 900) and throughput.mark == AGREE  # both slower than DeiT-S
    assert "inference" in throughput.paper.row  # labelled: inference beside inference


@pytest.mark.parametrize(
    ("paper", "ours", "mark"),
    [(-3.0, -0.5, AGREE), (-3.0, 0.5, DISAGREE), (0.1, 0.2, AGREE), (0.1, -0.2, DISAGREE), (-1.0, 0.0, DISAGREE), (0.0, 1.0, "-"), (-1.0, None, "-")],
)
def test_direction_marks(paper: float, ours: float | None, mark: str) -> None:
    row = PaperRow("t", "T", "row", 50.0 + paper, 50.0, "reference", "top1", ("e",), variant="v", reference_variant="full")
    comparison = Comparison(row, "e", None if ours is None else 10.0 + ours, 10.0)
    assert comparison.mark == mark


def test_paper_table_shows_both_deltas_and_the_mark() -> None:
    results = [result("ablate_mixup", "full", top1, seed=seed) for seed, top1 in enumerate([50.0, 51.0, 52.0])]
    results += [result("ablate_mixup", "no_mixup", top1, seed=seed) for seed, top1 in enumerate([47.25, 48.0, 49.5])]
    text = paper_table(compare(results, read_paper()))
    # differences -2.75, -3, -2.5: mean -2.75, 95% half-width t(2) 4.303 x 0.25 / sqrt(3) = 0.62
    expected = "| no mixup | ablate_mixup/no_mixup (mean of 3) | 78.70 | -3.10 | 48.25 | -2.75 [-3.37, -2.13] | 3 | ✓ |"
    assert expected in text


def test_a_variant_not_run_yet_shows_no_delta_and_no_mark() -> None:
    results = [result("ablate_mixup", "full", 50.0), result("ablate_mixup", "no_mixup", None)]
    (comparison,) = compare(results, read_paper())
    assert comparison.our_delta is None and comparison.mark == "-"
    assert "| no mixup | ablate_mixup/no_mixup | 78.70 | -3.10 | - | - | 0 | - |" in paper_table([comparison])


def test_plot_shows_the_marks_and_both_bars() -> None:
    results = [result("ablate_all", "full", 30.0), result("ablate_all", "no_mixup", 28.0), result("ablate_all", "no_cutmix", 31.0),
               result("ablate_all", "no_random_erasing", 30.5)]
    figure = paper_figure(compare(results, read_paper()))
    (ax,) = figure.axes
    texts = [text.get_text() for text in ax.texts]
    assert texts.count(NO_VERDICT) == 3  # one seed each: no verdict
    assert " -77.5 " in texts and " +0.50 " in texts  # the paper's failed run is labelled, though cut at the edge
    assert ax.get_xlim()[0] > -77.5
    assert [label.get_text().split("\n")[1] for label in ax.get_yticklabels()] == [
        "ablate_all/no_mixup", "ablate_all/no_cutmix", "ablate_all/no_random_erasing"]
    assert sorted(len(container) for container in ax.containers) == [3, 3]  # a paper bar and ours per row


def test_report_holds_the_paper_section_and_plot(experiment, tmp_path: Path) -> None:
    path = experiment("ablate_mixup", train={"epochs": 2}, ablation=ABLATION)
    write_run(tmp_path / "runs" / "ablate_mixup" / "full", [40.0, 50.0], epochs=2, status="done")
    write_run(tmp_path / "runs" / "ablate_mixup" / "no_mixup", [41.0, 52.0], epochs=2, status="done")
    out = write_report([path], tmp_path / "report", False, echo=False)
    markdown = (out / MARKDOWN).read_text()
    assert "## The paper beside ours" in markdown and "### Table 8: ablation" in markdown
    assert "| no mixup | ablate_mixup/no_mixup | 78.70 | -3.10 | 52.00 | +2.00 | 1 | n = 1 |" in markdown
    assert "| with EMA of the weights | ablate_mixup/ema | 81.90 | +0.10 | - | - | 0 | - |" in markdown
    assert "Verdicts: n = 1: 1." in markdown
    assert f"![the paper's deltas beside ours]({PAPER})" in markdown
    assert_png(out / PAPER)


def test_no_paper_and_another_paper_file(experiment, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = experiment("ablate_mixup", train={"epochs": 2}, ablation=ABLATION)
    write_run(tmp_path / "runs" / "ablate_mixup" / "full", [50.0], epochs=2)
    write_run(tmp_path / "runs" / "ablate_mixup" / "no_mixup", [49.0], epochs=2)
    assert cli(["report", str(path), "--out", str(tmp_path / "none"), "--no-paper"]) == 0
    assert "paper beside ours" not in (tmp_path / "none" / MARKDOWN).read_text()
    assert not (tmp_path / "none" / PAPER).exists()
    mine = tmp_path / "mine.yaml"
    mine.write_text("mine:\n  title: My table\n  experiments: [ablate_mixup]\n  reference: {variant: full, value: 10, row: base}\n"
                    "  rows:\n    - {variant: no_mixup, value: 12, row: mine}\n")
    assert cli(["report", str(path), "--out", str(tmp_path / "mine"), "--paper", str(mine)]) == 0
    assert "| mine | ablate_mixup/no_mixup | 12.00 | +2.00 | 49.00 | -1.00 | 1 | n = 1 |" in (tmp_path / "mine" / MARKDOWN).read_text()
    assert "paper beside ours, My table" in capsys.readouterr().out
    mine.write_text("mine:\n  rows:\n    - {variant: no_mixup}\n")
    with pytest.raises(ConfigError, match="mine.yaml: mine: malformed entry"):
        read_paper(mine)
