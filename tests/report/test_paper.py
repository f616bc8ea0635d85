"""The paper beside ours (research/report/paper.py): the figures file, matching runs to paper rows, the
✓/✗ of directions, and the Markdown and plot that show them."""

from __future__ import annotations

from pathlib import Path

import pytest

from research.cli import main as cli
from research.config import ConfigError
from research.report import write_report
from research.report.collect import VariantResult
from research.report.paper import AGREE, DISAGREE, Comparison, PaperRow, compare, paper_table, read_paper
from research.report.plots import paper_figure
from research.report.write import MARKDOWN, PAPER

from .test_report import assert_png, write_run

ABLATION = {"variants": {"full": {}, "no_mixup": {"aug.mixup": 0.0}, "ema": {"train.ema": True}}}


def result(experiment: str, variant: str, top1: float | None, images_per_s: float | None = None) -> VariantResult:
    return VariantResult(
        experiment, variant, Path("runs") / experiment / variant, {}, variant == "full", "done", 4, 4,
        best_top1=top1, images_per_s=images_per_s,
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
    assert mixup.our_delta == pytest.approx(-3.5) and mixup.mark == AGREE  # the paper: -3.1
    assert comparisons["ablate_all/no_randaugment"].mark == DISAGREE  # ours +2.0, the paper -2.2
    assert comparisons["ablate_mixup/no_mixup"].our_delta == pytest.approx(1.0)
    assert comparisons["ablate_mixup/no_mixup"].mark == DISAGREE


def test_whole_experiments_are_compared_for_table_5() -> None:
    results = [
        result("deit_small_imagenet", "", 70.0, images_per_s=900.0),
        result("deit_small_distilled_imagenet", "", 71.5, images_per_s=880.0),
        result("deit_base_imagenet", "", 69.0, images_per_s=310.0),
    ]
    comparisons = by_row(compare(results, read_paper()))
    assert set(comparisons) == {"deit_small_distilled_imagenet/deit_small_distilled_imagenet", "deit_base_imagenet/deit_base_imagenet"}
    distilled = comparisons["deit_small_distilled_imagenet/deit_small_distilled_imagenet"]
    assert distilled.our_delta == pytest.approx(1.5) and distilled.mark == AGREE
    throughput = comparisons["deit_base_imagenet/deit_base_imagenet"]
    assert throughput.our_delta == pytest.approx(310 / 900) and throughput.mark == AGREE  # both slower than DeiT-S


@pytest.mark.parametrize(
    ("paper", "ours", "mark"),
    [(-3.0, -0.5, AGREE), (-3.0, 0.5, DISAGREE), (0.1, 0.2, AGREE), (0.1, -0.2, DISAGREE), (-1.0, 0.0, DISAGREE), (0.0, 1.0, "-"), (-1.0, None, "-")],
)
def test_direction_marks(paper: float, ours: float | None, mark: str) -> None:
    row = PaperRow("t", "T", "row", 50.0 + paper, 50.0, "reference", "top1", ("e",), variant="v", reference_variant="full")
    comparison = Comparison(row, "e", None if ours is None else 10.0 + ours, 10.0)
    assert comparison.mark == mark


def test_paper_table_shows_both_deltas_and_the_mark() -> None:
    results = [result("ablate_mixup", "full", 50.0), result("ablate_mixup", "no_mixup", 47.25)]
    text = paper_table(compare(results, read_paper()))
    assert "| no mixup | ablate_mixup/no_mixup | 78.70 | -3.10 | 47.25 | -2.75 | ✓ |" in text


def test_a_variant_not_run_yet_shows_no_delta_and_no_mark() -> None:
    results = [result("ablate_mixup", "full", 50.0), result("ablate_mixup", "no_mixup", None)]
    (comparison,) = compare(results, read_paper())
    assert comparison.our_delta is None and comparison.mark == "-"
    assert "| no mixup | ablate_mixup/no_mixup | 78.70 | -3.10 | - | - | - |" in paper_table([comparison])


def test_plot_shows_the_marks_and_both_bars() -> None:
    results = [result("ablate_all", "full", 30.0), result("ablate_all", "no_mixup", 28.0), result("ablate_all", "no_cutmix", 31.0),
               result("ablate_all", "no_random_erasing", 30.5)]
    figure = paper_figure(compare(results, read_paper()))
    (ax,) = figure.axes
    texts = [text.get_text() for text in ax.texts]
    assert texts.count(AGREE) == 1 and texts.count(DISAGREE) == 2
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
    assert "| no mixup | ablate_mixup/no_mixup | 78.70 | -3.10 | 52.00 | +2.00 | ✗ |" in markdown
    assert "| with EMA of the weights | ablate_mixup/ema | 81.90 | +0.10 | - | - | - |" in markdown
    assert "Same direction in 0 of 1 rows with both deltas." in markdown
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
    assert "| mine | ablate_mixup/no_mixup | 12.00 | +2.00 | 49.00 | -1.00 | ✗ |" in (tmp_path / "mine" / MARKDOWN).read_text()
    assert "paper beside ours, My table" in capsys.readouterr().out
    mine.write_text("mine:\n  rows:\n    - {variant: no_mixup}\n")
    with pytest.raises(ConfigError, match="mine.yaml: mine: malformed entry"):
        read_paper(mine)
