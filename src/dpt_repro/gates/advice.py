"""What to do when a pseudo-label or generated-image check fails: likely causes and concrete options.

One text serves two readers: `next_steps` fills it in with the run's values (the labels per class to try next,
the value of the `-S gates.<key>=...` override that would let this run through) for the failure message, and
`troubleshooting_markdown` fills it in with placeholders for docs/troubleshooting.md (`python -m
dpt_repro.gates.advice docs/troubleshooting.md` writes it; a test keeps it equal).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Advice:
    """`overrides`: (gates key, "min" or "max") pairs whose loosening lets the check pass, with the `risk` of
    doing so; none where no threshold can (a malformed table, a class that is missing altogether)."""

    title: str
    causes: tuple[str, ...]
    options: tuple[str, ...]
    overrides: tuple[tuple[str, str], ...] = ()
    risk: str = ""
    checks: tuple[str, ...] = ()  # `table.expectation[.column]` ids this advice answers


WEAK_STAGE1 = "stage 1 is too weak for this few labels and favours some classes (confirmation bias), typical at " \
              "1 label per class"
VIEWS = "a view that changes the class: flips on digits, text or anything with a left and a right " \
        "(docs/augmentations.md)"
MORE_LABELS = "more labels per class: `-S base.labels_per_class={lpc_more}`"
LONGER_STAGE1 = "a longer stage 1: `-S stage1.steps={stage1_steps_more}` (while plots/stage1/val_curve.csv still rises)"
OTHER_ALGORITHM = "another algorithm: `-S stage1.algorithm={algorithm_other}` (FreeMatch's class-wise thresholds " \
                  "resist a skew; FixMatch's fixed threshold is the simpler baseline)"
NO_FLIPS = "for data with a left and a right: `-S stage1.hflip=false -S stage3.hflip=false`"
ADVICE: dict[str, tuple[Advice, ...]] = {
    "pseudo_labels": (
        Advice("The pseudo-labels' class shares are far from the labelled set's prior (KL divergence)",
               (WEAK_STAGE1, VIEWS, "a labelled set whose class shares are not the data's (an imbalanced dataset)"),
               (MORE_LABELS, LONGER_STAGE1, OTHER_ALGORITHM, NO_FLIPS),
               (("pseudo_max_kl", "max"),),
               "stage 2 learns the skew: an over-represented class's images are drawn under other labels, stage 3 "
               "trains on them, and the DPT gain can turn negative",
               ("table.expect_column_kl_divergence_to_be_less_than",)),
        Advice("A class gets too small or too large a share of the pseudo-labels",
               (WEAK_STAGE1, VIEWS, "two classes the classifier cannot tell apart yet (one absorbs the other)"),
               (MORE_LABELS, LONGER_STAGE1, OTHER_ALGORITHM, NO_FLIPS),
               (("pseudo_min_share", "min"), ("pseudo_max_share", "max")),
               "a class with almost no pseudo-labels gives the generator almost no images of it: its generated "
               "images are another class's or noise",
               ("class_shares.expect_column_values_to_be_between",)),
        Advice("A class gets no pseudo-label at all",
               (WEAK_STAGE1, VIEWS),
               (MORE_LABELS, LONGER_STAGE1, OTHER_ALGORITHM, NO_FLIPS,
                "no threshold lets this through: the generator cannot learn a class it never sees"),
               checks=("table.expect_column_distinct_values_to_equal_set",)),
        Advice("The stage-1 classifier is unsure of its pseudo-labels (mean confidence)",
               ("stage 1 stopped early: too few steps, or the checkpoint selected early in a short run",
                WEAK_STAGE1),
               (LONGER_STAGE1, MORE_LABELS, OTHER_ALGORITHM),
               (("pseudo_min_mean_confidence", "min"),),
               "many pseudo-labels are guesses: the generator learns from mislabelled images",
               ("table.expect_column_mean_to_be_between.confidence",)),
        Advice("The stage-1 classifier disagrees with the labels it was given (labelled agreement)",
               ("stage 1 underfits: too few steps, or too strong a regularisation (stage1.weight_decay, lr)",
                VIEWS, "labels that do not match the images (check the dataset's label order)"),
               (LONGER_STAGE1, NO_FLIPS, OTHER_ALGORITHM),
               (("pseudo_min_labelled_agreement", "min"),),
               "a classifier that gets the labelled images wrong gets most unlabelled ones wrong too",
               ("-.labelled_agreement_at_least",)),
        Advice("The pseudo-label table is malformed",
               ("a damaged or hand-edited file, or a bug, not a weak model",),
               ("rerun `dpt-repro pseudo-label`; if the gate fails again, report metrics/gates/pseudo_labels.json "
                "in an issue", "no threshold lets this through"),
               checks=("table.expect_table_row_count_to_equal", "table.expect_column_values_to_not_be_null",
                       "table.expect_column_values_to_be_in_set", "table.expect_column_values_to_be_between",
                       "table.expect_column_values_to_be_unique")),
    ),
    "generated": (
        Advice("The stage-1 classifier does not see the generated images as their class (agreement)",
               ("stage 2 is too short: its samples are not yet images of their class (reports/<run>/samples.png)",
                "the pseudo-labels it learned from are wrong for some classes (see the pseudo_labels gate's "
                "Data Docs)",
                "guidance too weak to follow the class (sample.guidance_scale)",
                "stage 1 itself is weak: its test accuracy bounds this agreement"),
               ("a longer stage 2: `-S stage2.steps={stage2_steps_more}`",
                "stronger guidance: `-S sample.guidance_scale={guidance_more}`",
                "better pseudo-labels: " + MORE_LABELS, LONGER_STAGE1),
               (("generated_min_agreement", "min"),),
               "stage 3 trains on images that do not show their label: the DPT gain can turn into a loss",
               ("images.expect_column_mean_to_be_between.agrees",)),
        Advice("Generated images repeat (identical images)",
               ("a generator that collapsed to a few images", "a sampler that reused its seeds (a bug)"),
               ("a longer stage 2: `-S stage2.steps={stage2_steps_more}`", "rerun `dpt-repro sample`",
                "no threshold lets this through: stage 3 would weigh the repeated images"),
               checks=("images.expect_column_values_to_be_unique",)),
        Advice("Generated images are invalid (NaN, out of range, wrong dtype or shape)",
               ("stage 2 diverged (too high a learning rate, or bf16 overflow)",
                "a generator trained for another base.image_size or base.channels"),
               ("train in float32: `-S stage2.mixed_precision=no`", "a lower learning rate: `-S stage2.lr={lr_less}`",
                "no threshold lets this through"),
               checks=("images.expect_column_values_to_be_between", "-.generated_dtype_is_uint8",
                       "-.generated_image_shape")),
        Advice("Not K generated images of every class",
               ("`sample` ran with another sample.images_per_class, or its output was damaged",),
               ("rerun `dpt-repro sample`",),
               checks=("images.expect_table_row_count_to_equal", "images.expect_column_values_to_be_in_set",
                       "images.expect_column_distinct_values_to_equal_set",
                       "per_class.expect_column_values_to_be_between")),
    ),
}
OVERRIDE_NOTE = "`-S` works on `dvc exp run` (the pipeline from the changed stage on) and on any `dpt-repro` command."
LADDER = (1, 2, 5, 10, 25)  # labels per class: the paper's 1, 2, 5, then the usual SSL settings


def context(base: Any, stage1: Any, stage2: Any, sample: Any) -> dict[str, str]:
    """The values the options name, from the run's params sections."""
    more = next((n for n in LADDER if n > base.labels_per_class), 2 * base.labels_per_class)
    other = {"freematch": "fixmatch"}.get(stage1.algorithm, "freematch")
    return {"lpc_more": str(more), "stage1_steps_more": str(2 * stage1.steps), "algorithm_other": other,
            "stage2_steps_more": str(2 * stage2.steps), "guidance_more": f"{sample.guidance_scale + 1:g}",
            "lr_less": f"{stage2.lr / 3:.2g}"}


DOCS_CONTEXT = {"lpc_more": "<the next of 1, 2, 5, 10, 25>", "stage1_steps_more": "<2 x stage1.steps>",
                "algorithm_other": "<fixmatch, or freematch>", "stage2_steps_more": "<2 x stage2.steps>",
                "guidance_more": "<sample.guidance_scale + 1>", "lr_less": "<stage2.lr / 3>"}


def check_id(check: dict) -> str:
    column = check.get("expected", {}).get("column")
    return f"{check['table']}.{check['expectation']}" + (f".{column}" if column else "")


def advice_for(gate: str, check: dict) -> Advice | None:
    ident = check_id(check)
    for advice in ADVICE.get(gate, ()):
        if ident in advice.checks or ident.rsplit(".", 1)[0] in advice.checks:
            return advice
    return None


def _loosened(value: float, bound: str) -> float:
    """A threshold at two significant digits that `value` passes: just above it for a maximum (the KL check is
    strict), at or just below it for a minimum."""
    if value <= 0:
        return 0.0
    quantum = 10.0 ** (math.floor(math.log10(value)) - 1)
    steps = math.floor(value / quantum + 1e-9) + (1 if bound == "max" else 0)
    return round(steps * quantum, 12)


def _observed_values(check: dict) -> list[float]:
    observed = check.get("observed")
    if isinstance(observed, (int, float)) and not isinstance(observed, bool):
        return [float(observed)]
    return [float(v) for v in check.get("unexpected", []) if isinstance(v, (int, float))]


def override_values(advice: Advice, check: dict) -> list[tuple[str, float]]:
    """For each override of `advice` that this check's observed values break, the loosest value they need."""
    values, expected, out = _observed_values(check), check.get("expected", {}), []
    for key, bound in advice.overrides:
        limit = expected.get("min_value" if bound == "min" else "max_value", expected.get("threshold"))
        beyond = [v for v in values if math.isfinite(v) and (limit is None or (v < limit if bound == "min" else v >= limit))]
        if beyond:
            out.append((key, _loosened(min(beyond) if bound == "min" else max(beyond), bound)))
    return out


def _placeholders(advice: Advice) -> list[str]:
    """The overrides without values: for the docs, and where the observed value is not a number."""
    return [f"`-S gates.{key}=<a value the observed {bound}imum passes>`" for key, bound in advice.overrides]


def _section(advice: Advice, values: dict[str, str], lines: list[str], overrides: list[str], bullet: str,
             indent: str) -> None:
    lines.append(f"{indent}Likely causes:")
    lines += [f"{indent}{bullet}{cause}" for cause in advice.causes]
    lines.append(f"{indent}Options:")
    lines += [f"{indent}{bullet}{option.format(**values)}" for option in advice.options]
    if advice.overrides:
        lines.append(f"{indent}{bullet}let the run through: {' '.join(overrides)}; the risk: {advice.risk}")


def next_steps(gate: str, report: dict, values: dict[str, str], docs: Path) -> list[str]:
    """The lines to print after a failed gate's FAIL lines: each failed check's advice once, then the Data Docs."""
    lines, seen = ["What to do next:"], set()
    for check in report["checks"]:
        advice = None if check["success"] else advice_for(gate, check)
        if advice is None or advice.title in seen:
            continue
        seen.add(advice.title)
        lines.append(f"* {advice.title}: observed {check['observed']!r}, expected {check['expected']}")
        overrides = [f"`-S gates.{key}={value:g}`" for key, value in override_values(advice, check)]
        _section(advice, values, lines, overrides or _placeholders(advice), "  - ", "  ")
    lines.append(OVERRIDE_NOTE)
    lines.append(f"Data Docs: {docs.resolve().as_uri()}/index.html")
    return lines


def troubleshooting_markdown() -> str:
    """docs/troubleshooting.md: every gate's advice, in the words the failure messages use."""
    lines = ["# Troubleshooting a failed gate", "",
             "<!-- generated by `python -m dpt_repro.gates.advice docs/troubleshooting.md` from "
             "src/dpt_repro/gates/advice.py: edit that file, not this one -->", "",
             "A failed gate stops `dvc repro` before the stage that would learn from bad data, and prints its "
             "failed checks, then the advice below with this run's values filled in (the labels per class to try "
             "next, the exact override), and the link to the gate's Great Expectations Data Docs "
             "(`reports/gates/<gate>/index.html`). The thresholds are the `gates` section of params.yaml.", "",
             OVERRIDE_NOTE, ""]
    for gate, title in (("pseudo_labels", "Pseudo-labels (`gate_pseudo_labels`, before stage 2)"),
                        ("generated", "Generated images (`gate_generated`, before stage 3)")):
        lines += [f"## {title}", ""]
        for advice in ADVICE[gate]:
            lines += [f"### {advice.title}", "", "Checks: " + ", ".join(f"`{c}`" for c in advice.checks), ""]
            _section(advice, DOCS_CONTEXT, lines, _placeholders(advice), "- ", "")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(troubleshooting_markdown())
