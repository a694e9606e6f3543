import sys
from pathlib import Path

import pytest

from dpt_repro import report


def row(lpc, seed, gain, **variant):
    base = {k: v for k, v in report.VARIANT.items()}
    base.update(variant)
    return {"experiment": f"exp-{lpc}-{seed}", "rev": "abc1234", "data": "d41d8cd9", "hardware": "x86_64 CPU",
            "lpc": lpc, "seed": seed, **base, "top1_stage1": 0.6, "top1_stage3": 0.6 + gain, "dpt_gain": gain,
            "fid": 30.0 + seed, "pseudo_label_accuracy": 0.7, "generated_agreement": 0.9 + seed / 100,
            "kid": 0.01, "sfid": 20.0 + seed, "inception_score": None, "precision": 0.6, "recall": 0.5 + seed / 10,
            "class_fid": 40.0, "near_copy_share": 0.1}


def test_dvc_columns_are_found_with_or_without_their_file_prefix():
    assert report.column({"metrics/eval.json:top1_stage3": 0.7}, "top1_stage3") == 0.7
    assert report.column({"base.seed": 2}, "base.seed") == 2
    assert report.column({}, "fid") is None
    shown = {"metrics/stage2.json:precision": "bf16", "metrics/eval.json:precision": 0.61}
    assert report.eval_column(shown, "precision") == 0.61 and report.eval_column({"recall": 0.4}, "recall") == 0.4


def test_dvc_placeholders_are_not_numbers_and_integral_params_are_ints():
    assert [report.number(v) for v in ("!", "-", None, True)] == [None, None, None, None]
    assert report.number(1.0) == 1 and isinstance(report.number(1.0), int)
    assert report.number(0.6424) == 0.6424 and report.number(5) == 5


def test_seeds_form_one_group_and_the_gain_is_tested_against_zero():
    rows = [row(1, s, g) for s, g in enumerate((0.020, 0.030, 0.025))]
    rows += [row(2, s, g) for s, g in enumerate((0.02, -0.03, 0.01))]
    rows += [row(5, 0, 0.01, **{"stage2.labels": "oracle"})]
    groups = report.group_rows(rows)
    assert [len(v) for v in groups.values()] == [3, 3, 1]
    assert report.significance([0.020, 0.030, 0.025]).startswith("yes (p = 0.0")
    assert report.significance([0.02, -0.03, 0.01]).startswith("no (p = ")
    assert report.significance([0.01]) == "n/a (1 seed)"
    text = report.markdown(rows, groups, [], "dpt-repro report")
    assert "| 2.50 ± 0.50 |" in text  # the lpc-1 gain in points, mean ± std
    # FID, KID, sFID, IS (absent), precision, recall, class FID, near-copies, pseudo-label accuracy, agreement
    assert ("| 31.00 ± 1.00 | 0.0100 ± 0.0000 | 21.00 ± 1.00 | – | 0.600 ± 0.000 | 0.600 ± 0.100 | 40.00 ± 0.00 | "
            "10.0 ± 0.0 | 70.0 ± 0.0 | 91.0 ± 1.0 |") in text
    assert "| oracle |" in text and "## The paper" in text and text.count("| exp-") == 7


def test_a_repository_without_finished_experiments_is_a_clear_error(tmp_path):
    import subprocess

    def run(*cmd):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)

    run("git", "init", "-q")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "empty")
    run(str(Path(sys.executable).parent / "dvc"), "init", "-q")  # the venv's dvc, activated or not
    with pytest.raises(report.UserError, match="no finished experiments"):
        report.collect(repo=str(tmp_path))


def test_the_claims_section_compares_the_gain_with_retraining_alone_and_the_generators_fids():
    rows = [row(1, s, g) for s, g in enumerate((0.020, 0.030, 0.025))]
    rows += [row(1, s, 0.005, **{"stage3.generated_share": 0.0}) for s in range(3)]
    rows += [row(5, s, 0.01) for s in range(3)]  # FIDs 30, 31, 32: mean 31
    rows += [dict(row(5, 0, 0.0, **{"stage2.labels": "oracle"}), fid=27.0),
             dict(row(5, 0, 0.0, **{"stage2.labels": "labelled"}), fid=80.0),
             dict(row(1, 0, 0.02, **{"sample.images_per_class": 400}), fid=50.0)]  # an ablation: not the main row
    text = "\n".join(report.claims(report.group_rows(rows)))
    assert "Claim 1, 1 label(s) per class: DPT gain 2.50 ± 0.50 points over 3 seed(s); significant at 5 %: yes" in text
    assert "retraining without generated images: 0.50 ± 0.00 points (3 seed(s)); so the generated images " \
           "themselves (stage 3 with minus without, same seed): 2.00 ± 0.50 points, significant at 5 %: yes" in text
    assert "Claim 2, 5 label(s) per class: FID of the pseudo-label generator 31.00 (seeds 0, 1, 2); oracle 27.00 " \
           "(seed 0; ratio 1.15: within 20 %); labelled-only 80.00 (seed 0; pseudo-label generator better)." in text
    assert "Claim 2, 1 label(s) per class: FID of the pseudo-label generator 31.00 (seeds 0, 1, 2); oracle" in text


def test_claim_2_compares_the_generators_on_every_generation_metric():
    rows = [row(5, s, 0.01) for s in range(3)]
    rows += [dict(row(5, 0, 0.0, **{"stage2.labels": "oracle"}), fid=27.0, recall=0.7),
             dict(row(5, 0, 0.0, **{"stage2.labels": "labelled"}), fid=20.0, recall=0.2, near_copy_share=0.53,
                  inception_score=3.5)]
    text = "\n".join(report.claims(report.group_rows(rows)))
    table = text.split("Claim 2, 5 label(s) per class")[1]
    assert "| generator | seeds | FID | KID | sFID | IS | precision | recall | class FID | near-copies % |" in table
    assert "| pseudo-label | 0, 1, 2 | 31.00 ± 1.00 | 0.0100 ± 0.0000 | 21.00 ± 1.00 | – | 0.600 ± 0.000 | " \
           "0.600 ± 0.100 | 40.00 ± 0.00 | 10.0 ± 0.0 |" in table
    assert "| oracle | 0 | 27.00 | 0.0100 | 20.00 | – | 0.600 | 0.700 | 40.00 | 10.0 |" in table
    assert "| labelled-only | 0 | 20.00 | 0.0100 | 20.00 | 3.50 | 0.600 | 0.200 | 40.00 | 53.0 |" in table


def test_ablations_compare_each_value_on_the_seeds_every_value_ran():
    main = [dict(row(1, s, g, **{"sample.images_per_class": 50, "sample.guidance_scale": 1.5}), fid=40.0 + s)
            for s, g in enumerate((0.01, 0.05, 0.03))]
    ablate = [dict(row(1, 0, 0.02, **{"sample.images_per_class": k, "sample.guidance_scale": 1.5}), fid=f)
              for k, f in ((10, 90.0), (200, 35.0))]
    ablate += [dict(row(1, 0, 0.04, **{"sample.images_per_class": 50, "sample.guidance_scale": 3.0}), fid=45.0)]
    other_lpc = [row(2, 0, 0.1, **{"sample.images_per_class": 10, "sample.guidance_scale": 1.5})]
    text = "\n".join(report.ablations(main + ablate + other_lpc))
    k_table = text.split("### `sample.images_per_class`")[1].split("###")[0]
    assert "guidance_scale 1.5, seed(s) 0" in k_table
    assert "| 10 | 62.0 | 2.00 | 90.00 |" in k_table and "| 50 | 61.0 | 1.00 | 40.00 |" in k_table  # seed 0 only
    assert "| 200 | 62.0 | 2.00 | 35.00 |" in k_table
    w_table = text.split("### `sample.guidance_scale`")[1]
    assert "images_per_class 50, seed(s) 0" in w_table
    assert "| 1.5 | 61.0 | 1.00 | 40.00 |" in w_table and "| 3.0 | 64.0 | 4.00 | 45.00 |" in w_table
    assert report.ablations(main) == []  # nothing varied


def test_the_plots_leave_ablations_to_their_tables_and_draw_stage_1_once():
    knobs = {"sample.images_per_class": 50, "sample.guidance_scale": 1.5}
    rows = [row(lpc, s, 0.02, **knobs) for lpc in (1, 2) for s in range(3)]
    rows += [row(1, s, 0.0, **knobs, **{"stage3.generated_share": 0.0}) for s in range(3)]
    rows += [row(5, 0, 0.07, **knobs, **{"stage2.labels": "oracle"})]
    rows += [row(1, 0, 0.02, **{**knobs, "sample.images_per_class": 200})]
    series = report.plot_series(report.group_rows(rows))
    assert sorted(series) == [
        ("fid", "oracle generator (all true labels) · retrain · default"),
        ("fid", "pseudo-label generator · retrain · default"),
        ("top1_stage1", "stage 1 · retrain · default"),
        ("top1_stage3", "stage 3, no generated images · retrain · default"),
        ("top1_stage3", "stage 3, oracle generator (all true labels) · retrain · default"),
        ("top1_stage3", "stage 3, pseudo-label generator · retrain · default")]
    fid = series[("fid", "pseudo-label generator · retrain · default")]
    assert fid == {"x": [1, 2], "y": [31.0, 31.0], "e": [1.0, 1.0], "n": [3, 3]}
