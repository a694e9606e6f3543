import statistics
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


def test_a_claim_holds_when_its_interval_lies_above_zero_and_otherwise_says_how_many_seeds_would_decide():
    from scipy import stats

    held = report.decide([2.0, 3.0, 2.5])
    mean, half = 2.5, float(stats.t.ppf(0.975, 2)) * 0.5 / 3 ** 0.5
    assert held == {"n": 3, "mean": mean, "lo": pytest.approx(mean - half), "hi": pytest.approx(mean + half),
                    "verdict": "holds"}
    assert report.decide([-2.0, -3.0, -2.5])["verdict"] == "does not hold (the opposite holds)"
    # a one-sample t-test at 5 % with 80 % power needs n = 10 at effect size 1 and n = 34 at 0.5 (G*Power's values)
    assert report.seeds_needed(1.0, 1.0) == 10 and report.seeds_needed(-1.0, 2.0) == 34
    assert report.seeds_needed(0.0, 1.0) is None and report.seeds_needed(0.001, 1.0) is None  # beyond MAX_SEEDS
    assert report.decide([0.5, 1.5])["verdict"] == ("undecided at 2 seeds; about "
                                                    f"{report.seeds_needed(1.0, statistics.stdev([0.5, 1.5]))} "
                                                    "would decide it (80 % power at the measured mean and spread)")
    assert report.decide([1.0, -1.0])["verdict"].endswith(f"no number up to {report.MAX_SEEDS} would decide at the "
                                                         "measured mean")
    assert report.decide([0.4])["verdict"] == "undecided: one seed is an anecdote"


def claim_rows():
    rows = [row(1, s, g) for s, g in enumerate((0.020, 0.030, 0.025))]
    rows += [row(1, s, 0.005, **{"stage3.generated_share": 0.0}) for s in range(3)]
    rows += [row(1, s, g, **{"stage3.protocol": "probe"}) for s, g in enumerate((0.01, -0.02, 0.005))]
    rows += [row(5, s, 0.01) for s in range(3)]  # FIDs 30, 31, 32; recall 0.5, 0.6, 0.7
    rows += [dict(row(5, s, 0.0, **{"stage2.labels": "oracle"}), fid=27.0 + s) for s in range(3)]
    rows += [dict(row(5, s, 0.0, **{"stage2.labels": "labelled"}), fid=20.0 + s, recall=0.2) for s in range(2)]
    rows += [dict(row(1, 0, 0.02, **{"sample.images_per_class": 400}), fid=50.0)]  # an ablation: not the main row
    return rows


def test_the_claims_are_decided_per_protocol_and_labels_per_class_from_same_seed_differences():
    found = {(d["protocol"], d["lpc"], d["claim"].split(":")[0].split(" (")[0]): d
             for d in report.decisions(report.group_rows(claim_rows()))}
    gain = found[("retrain", 1, "DPT gain")]
    assert (gain["n"], gain["mean"], gain["verdict"]) == (3, pytest.approx(2.5), "holds")
    own = found[("retrain", 1, "the generated images' own effect")]  # 2.5 - 0.5 per seed: 1.5, 2.5, 2.0
    assert (own["n"], own["mean"], own["verdict"]) == (3, pytest.approx(2.0), "holds")
    probe = found[("probe", 1, "DPT gain")]
    assert probe["n"] == 3 and probe["verdict"].startswith("undecided at 3 seeds; about ")
    assert ("probe", 1, "the generated images' own effect") not in found  # no probe run without generated images
    fid = found[("any", 5, "pseudo-label generator's FID below labelled-only's")]
    assert (fid["n"], fid["mean"], fid["verdict"]) == (2, pytest.approx(-10.0), "does not hold (the opposite holds)")
    recall = found[("any", 5, "pseudo-label generator's recall above labelled-only's")]
    assert recall["n"] == 2 and recall["mean"] == pytest.approx(0.35)
    oracle = found[("any", 5, "pseudo-label generator's FID within 20 % of the oracle's")]
    assert oracle["n"] == 3 and oracle["mean"] == pytest.approx(1.2 * 28.0 - 31.0) and oracle["verdict"] == "holds"
    text = "\n".join(report.claims(report.group_rows(claim_rows())))
    assert "| default | DPT gain: stage 3 minus stage 1 (points) | retrain | 1 | 3 | 2.50 | [" in text


def test_claim_2_compares_the_generators_on_every_generation_metric():
    rows = [row(5, s, 0.01) for s in range(3)]
    rows += [dict(row(5, 0, 0.0, **{"stage2.labels": "oracle"}), fid=27.0, recall=0.7),
             dict(row(5, 0, 0.0, **{"stage2.labels": "labelled"}), fid=20.0, recall=0.2, near_copy_share=0.53,
                  inception_score=3.5)]
    text = "\n".join(report.claims(report.group_rows(rows)))
    table = text.split("### Claim 2's generators, profile `default`, 5 label(s) per class")[1]
    assert "| generator | seeds | FID | KID | sFID | IS | precision | recall | class FID | near-copies % |" in table
    assert "| pseudo-label | 0, 1, 2 | 31.00 ± 1.00 | 0.0100 ± 0.0000 | 21.00 ± 1.00 | – | 0.600 ± 0.000 | " \
           "0.600 ± 0.100 | 40.00 ± 0.00 | 10.0 ± 0.0 |" in table
    assert "| oracle | 0 | 27.00 | 0.0100 | 20.00 | – | 0.600 | 0.700 | 40.00 | 10.0 |" in table
    assert "| labelled-only | 0 | 20.00 | 0.0100 | 20.00 | 3.50 | 0.600 | 0.200 | 40.00 | 53.0 |" in table


def test_the_summary_gives_each_dpt_setting_its_interval_and_verdict():
    table = report.summary(claim_rows())
    assert "| default | retrain | 1 | 3 | 60.0 ± 0.0 | 62.5 ± 0.5 | 2.50 [" in table and "| holds | 31.00" in table
    assert "| default | probe | 1 | 3 |" in table and table.count("\n") == 2 + 3  # header, rule, 3 settings


def test_the_forest_plot_draws_each_decided_claim_1_row(tmp_path):
    found = report.decisions(report.group_rows(claim_rows()))
    assert report.forest(found, tmp_path) == ["forest.png"]
    assert (tmp_path / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.forest([d for d in found if d["protocol"] == "any"], tmp_path / "none") == []


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
