"""dpt-repro report: the experiments of this repository, from `dvc exp show`, as one Markdown report.

Every experiment (and the commit it starts from) with an `evaluate` result is one row: its params, metrics,
git revision, data version (DVC hash of the prepared data) and hardware. Rows that differ only in `base.seed`
form a group, reported as mean ± standard deviation, with a one-sample t-test of the DPT gain against zero.
The paper's full-scale numbers stand beside ours, marked as such. Writes `reports/report.md`, `report.json`
and PNG plots under `reports/report/`.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
import subprocess
from pathlib import Path

from dpt_repro.errors import UserError
from dpt_repro.io import atomic_path, read_json, write_json

# (what, labels per class, value): ImageNet-256 with U-ViT-Huge and MSN ViT-L/7, as the paper reports them.
PAPER = [
    ("ImageNet top-1, DPT (MSN baseline)", 1, "59.0 (+2.8)"), ("ImageNet top-1, DPT (MSN baseline)", 2, "69.5 (+3.0)"),
    ("ImageNet top-1, DPT (MSN baseline)", 5, "74.4 (+2.0)"),
    ("ImageNet-256 FID-50K, pseudo-label generator", 1, "3.08"),
    ("ImageNet-256 FID-50K, pseudo-label generator", 2, "2.52"),
]
VARIANT = {"base.profile": "default", "stage2.labels": "pseudo", "stage3.protocol": "retrain",
           "stage3.generated_share": -1.0, "sample.images_per_class": None, "sample.guidance_scale": None}
# The generation metrics beside FID (evaluate's eval.json): (key, column title, scale, digits).
GENERATION = (("kid", "KID", 1.0, 4), ("sfid", "sFID", 1.0, 2), ("inception_score", "IS", 1.0, 2),
              ("precision", "precision", 1.0, 3), ("recall", "recall", 1.0, 3), ("class_fid", "class FID", 1.0, 2),
              ("near_copy_share", "near-copies %", 100.0, 1))
METRICS = ("top1_stage1", "top1_stage3", "dpt_gain", "fid", "pseudo_label_accuracy", *(g[0] for g in GENERATION))
VARIANT_KEYS = list(VARIANT)
ABLATED = ("sample.images_per_class", "sample.guidance_scale")  # varied one at a time at 1 label per class
ALPHA = 0.05  # significance level of the t-test
CONFIDENCE = 0.95  # of the intervals the claims are decided by
MAX_SEEDS = 1000  # beyond this, "no practical number of seeds would decide"
POWER = 0.8  # of the t-test, for the number of seeds an undecided claim would need
LABEL_COUNTS = (1, 2, 5)
GENERATORS = {"pseudo": "pseudo-label generator", "oracle": "oracle generator (all true labels)",
              "labelled": "labelled-only generator"}


def column(row: dict, key: str):
    """A value of a `dvc exp show` row, whether or not DVC prefixed its column with the file name."""
    if key in row:
        return row[key]
    return next((v for k, v in row.items() if k.endswith(":" + key)), None)


def eval_column(row: dict, key: str):
    """A metric of evaluate's `metrics/eval.json`, before any other file's column of that name (`precision` is also
    a field of other stages' outputs)."""
    prefixed = f"metrics/eval.json:{key}"
    return row[prefixed] if prefixed in row else column(row, key)


def number(value):
    """A value of `dvc exp show` as a number, or None for its marks of a missing ('!') or inapplicable ('-') value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if isinstance(value, float) and value.is_integer() else value  # JSON gives lpc 1 as 1.0


def collect(repo: str = ".", num: int = 1) -> list[dict]:
    import dvc.api

    rows = []
    for row in dvc.api.exp_show(repo=repo, num=num):
        if row.get("typ") == "workspace" or number(column(row, "top1_stage3")) is None:
            continue  # no evaluate result (a commit without metrics shows '!')
        if row.get("State") not in (None, "Success"):
            continue
        out = {"experiment": row.get("Experiment") or "(commit)", "rev": str(row.get("rev", ""))[:7],
               "lpc": number(column(row, "base.labels_per_class")), "seed": number(column(row, "base.seed")),
               "hardware": column(row, "hardware") or "not recorded",
               "data": str(column(row, "data/prepared/fashion-mnist") or column(row, "base.dataset"))[:8]}
        for key, default in VARIANT.items():
            value = column(row, key)
            out[key] = default if value is None else value if number(value) is None else number(value)
        out.update({m: number(eval_column(row, m)) for m in METRICS})
        out["generated_agreement"] = generated_agreement(str(row.get("rev", "")), repo)
        rows.append(out)
    if not rows:
        raise UserError("no finished experiments with evaluate results; run `dvc exp run` or `make sweep` first")
    return rows


def read_rows(path: Path) -> list[dict]:
    rows = read_json(path, "report rows (an earlier dpt-repro report's report.json)", ["rows"])["rows"]
    missing = sorted({k for r in rows for k in ("lpc", "seed", *VARIANT, *METRICS[:5]) if k not in r})
    if not isinstance(rows, list) or not rows or missing:
        raise UserError(f"{path}: no report rows" + (f" (rows lack {', '.join(missing)})" if missing else ""))
    return [{**{m: None for m in METRICS}, **r} for r in rows]


def generated_agreement(rev: str, repo: str = ".") -> float | None:
    """How often the stage-1 classifier predicts the class an image was generated for (the generated gate's check,
    kept in git with the experiment). Near 1, the generated images teach stage 3 what stage 1 already believed."""
    shown = subprocess.run(["git", "-C", repo, "show", f"{rev}:metrics/gates/generated.json"], capture_output=True,
                           text=True)
    if shown.returncode != 0:
        return None
    checks = json.loads(shown.stdout).get("checks", [])
    return next((c["observed"] for c in checks if c.get("expected", {}).get("column") == "agrees"), None)


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def significance(gains: list[float]) -> str:
    """Two-sided one-sample t-test of the gains against 0 (seeds are the samples)."""
    if len(gains) < 2:
        return f"n/a ({len(gains)} seed)"
    if statistics.stdev(gains) == 0:
        return "n/a (no spread)"
    from scipy import stats

    p = float(stats.ttest_1samp(gains, 0.0).pvalue)
    return f"{'yes' if p < ALPHA else 'no'} (p = {p:.3f}, {len(gains)} seeds)"


def group_rows(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (str(r["base.profile"]), r["lpc"] or 0, r["seed"] or 0)):
        key = (*(r[k] for k in VARIANT), r["lpc"])
        groups.setdefault(key, []).append(r)
    return groups


def plot_series(groups: dict[tuple, list[dict]]) -> dict[tuple[str, str], dict[str, list]]:
    """(metric, curve label) -> x (labels per class), y (mean over seeds), e (std), n (seeds) for the plots.
    Groups of an ablated K or guidance scale are left to the ablation tables; stage 1 does not depend on the
    generator, so it is drawn once (from the DPT runs), and a stage 3 without generated images has no FID of its
    own."""
    series: dict[tuple[str, str], dict[str, list]] = {}
    knobs = [VARIANT_KEYS.index(k) for k in ABLATED]
    common = {k: statistics.mode(key[k] for key in groups) for k in knobs}
    for key, members in groups.items():
        if any(key[k] != common[k] for k in knobs):
            continue
        v = dict(zip(VARIANT_KEYS, key[:-1]))
        dpt = v["stage2.labels"] == "pseudo" and v["stage3.generated_share"] == -1.0
        generator = ("no generated images" if v["stage3.generated_share"] == 0.0
                     else GENERATORS.get(v["stage2.labels"], f"{v['stage2.labels']} generator"))
        if v["stage3.generated_share"] not in (-1.0, 0.0):
            generator += f", generated share {v['stage3.generated_share']:g}"
        suffix = f" · {v['stage3.protocol']} · {v['base.profile']}"
        curves = [("top1_stage3", f"stage 3, {generator}{suffix}")]
        if dpt:
            curves.append(("top1_stage1", f"stage 1{suffix}"))
        if v["stage3.generated_share"] != 0.0:
            curves.append(("fid", f"{generator}{suffix}"))
        for metric, label in curves:
            values = [m[metric] for m in members if m[metric] is not None]
            if values:
                s = series.setdefault((metric, label), {"x": [], "y": [], "e": [], "n": []})
                s["n"].append(len(values))
                s["x"].append(key[-1])
                s["y"].append(statistics.mean(values))
                s["e"].append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return series


def plot(groups: dict[tuple, list[dict]], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    series = plot_series(groups)
    ticks = sorted({x for s in series.values() for x in s["x"]})
    for name, metrics, ylabel in (("top1.png", ("top1_stage1", "top1_stage3"), "test top-1"),
                                  ("fid.png", ("fid",), "FID")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (metric, label), s in sorted(series.items()):
            if metric not in metrics:
                continue
            seeds = "/".join(str(n) for n in sorted(set(s["n"])))
            label = f"{label} · {seeds} seed{'s' if seeds != '1' else ''}"
            if metric == "fid" and label.startswith("oracle") and len(s["y"]) == 1:  # no labels per class to vary
                ax.axhline(s["y"][0], linestyle="--", color="grey", label=label)
            else:
                ax.errorbar(s["x"], s["y"], yerr=s["e"], marker="o", capsize=3, label=label,
                            fillstyle="full" if min(s["n"]) > 1 else "none")
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labels per class")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
        fig.tight_layout()
        with atomic_path(folder / name) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        written.append(name)
    return written


def forest(found: list[dict], folder: Path) -> list[str]:
    """One picture of claim 1: each setting's DPT gain and generated-images effect with its 95 % interval."""
    rows = [d for d in found if d["protocol"] != "any" and d["lo"] is not None]
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    for y, d in enumerate(reversed(rows)):
        own = d["claim"].startswith("the generated")
        ax.errorbar(d["mean"], y, xerr=[[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]], fmt="s" if own else "o",
                    color="tab:orange" if own else "tab:blue", capsize=3)
    ax.set_yticks(range(len(rows)), [f"{d['profile']} · {d['protocol']} · {d['lpc']} lpc · "
                                     f"{'with minus without' if d['claim'].startswith('the generated') else 'DPT gain'}"
                                     f" · {d['n']} seeds" for d in reversed(rows)], fontsize=7)
    ax.axvline(0, color="grey", linestyle="--")
    ax.set_xlabel(f"test top-1 difference, points (mean, {CONFIDENCE * 100:.0f} % t-interval over seeds)")
    fig.tight_layout()
    with atomic_path(folder / "forest.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return ["forest.png"]


def summary(rows: list[dict]) -> str:
    """The results summary the README shows (docs_gen), from the report's rows: each setting of the DPT runs
    (pseudo-label generator, all generated images) with the DPT gain's interval and verdict."""
    groups = group_rows(rows)
    found = {(d["profile"], d["protocol"], d["lpc"]): d for d in decisions(groups)
             if d["claim"].startswith("DPT gain")}
    lines = ["| profile | protocol | labels/class | seeds | stage-1 top-1 % | stage-3 top-1 % | DPT gain, points "
             f"({CONFIDENCE * 100:.0f} % CI) | verdict | FID |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (profile, protocol, lpc), d in sorted(found.items()):
        members = _find(groups, profile, lpc, **{"stage2.labels": "pseudo", "stage3.protocol": protocol,
                                                 "stage3.generated_share": -1.0})
        ci = f"{d['mean']:.2f}" + ("" if d["lo"] is None else f" [{d['lo']:.2f}, {d['hi']:.2f}]")
        lines.append(f"| {profile} | {protocol} | {lpc} | {d['n']} | "
                     f"{mean_std([m['top1_stage1'] for m in members], 100)} | "
                     f"{mean_std([m['top1_stage3'] for m in members], 100)} | {ci} | {d['verdict']} | "
                     f"{mean_std([m['fid'] for m in members], 1, 2)} |")
    return "\n".join(lines) + "\n"


def sample_grids(groups: dict[tuple, list[dict]], folder: Path) -> list[str]:
    """The per-class sample grid of each group's first row, read from its git revision (a git-tracked output)."""
    written = []
    for key, members in groups.items():
        first = members[0]
        path = f"reports/lpc{first['lpc']}-seed{first['seed']}/samples.png"
        name = f"samples-{first['experiment']}.png".replace("/", "_")
        shown = subprocess.run(["git", "show", f"{first['rev']}:{path}"], capture_output=True)
        if shown.returncode == 0 and shown.stdout:
            with atomic_path(folder / name) as tmp:
                tmp.write_bytes(shown.stdout)
        if (folder / name).is_file():  # just written, or kept from an earlier report (a rebuild from its rows)
            written.append(name)
    return written


def _find(groups: dict[tuple, list[dict]], profile: str, lpc: int | None, **variant) -> list[dict]:
    """The largest group of `profile` (at `lpc`, or any) whose variant has the given values: the sweep's
    3-seed group wins over a 1-seed ablation of the same setting."""
    found = [members for key, members in groups.items()
             if key[0] == profile and (lpc is None or key[-1] == lpc)
             and all(dict(zip(VARIANT, key[:-1]))[k] == v for k, v in variant.items())]
    return max(found, key=len, default=[])


def _mean(members: list[dict], metric: str) -> float | None:
    values = [m[metric] for m in members if m[metric] is not None]
    return statistics.mean(values) if values else None


def _seeds(members: list[dict]) -> str:
    return f"seed{'s' if len(members) > 1 else ''} {', '.join(str(m['seed']) for m in members)}"


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval over seeds (the seeds are the samples; n >= 2)."""
    from scipy import stats

    n, mean = len(values), statistics.mean(values)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def seeds_needed(mean: float, sd: float, limit: int = MAX_SEEDS) -> int | None:
    """The fewest seeds at which a two-sided t-test at 5 % would detect a true difference of `mean` with spread
    `sd` with 80 % power (noncentral t); None beyond `limit` or for a zero mean. An estimate: the measured mean
    and spread are themselves noisy."""
    from scipy import stats

    if mean == 0 or sd == 0:
        return None if mean == 0 else 2
    for n in range(2, limit + 1):
        crit = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1))
        effect = abs(mean) / sd * math.sqrt(n)
        if float(stats.nct.sf(crit, n - 1, effect) + stats.nct.cdf(-crit, n - 1, effect)) >= POWER:
            return n
    return None


def decide(differences: list[float]) -> dict:
    """The verdict on "the difference is positive" from per-seed differences: holds when the 95 % interval lies
    above 0, does not hold when it lies below, undecided otherwise (with the seeds that would decide)."""
    n = len(differences)
    if n < 2:
        return {"n": n, "mean": differences[0] if differences else None, "lo": None, "hi": None,
                "verdict": "undecided: one seed is an anecdote" if n else "not measured"}
    mean, lo, hi = t_interval(differences)
    if lo > 0:
        verdict = "holds"
    elif hi < 0:
        verdict = "does not hold (the opposite holds)"
    else:
        needed = seeds_needed(mean, statistics.stdev(differences))
        verdict = (f"undecided at {n} seeds; about {needed} would decide it ({POWER * 100:.0f} % power at the measured mean "
                   "and spread)" if needed else
                   f"undecided at {n} seeds; no number up to {MAX_SEEDS} would decide at the measured mean")
    return {"n": n, "mean": mean, "lo": lo, "hi": hi, "verdict": verdict}


def _paired(a: list[dict], b: list[dict], value) -> list[float]:
    """value(x, y) for the runs of `a` and `b` with the same seed, in seed order."""
    by_seed = {m["seed"]: m for m in b}
    return [value(m, by_seed[m["seed"]]) for m in sorted(a, key=lambda m: m["seed"]) if m["seed"] in by_seed
            and value(m, by_seed[m["seed"]]) is not None]


def _diff(metric: str, scale: float = 1.0):
    def value(x: dict, y: dict) -> float | None:
        if x.get(metric) is None or y.get(metric) is None:
            return None
        return scale * (x[metric] - y[metric])
    return value


def _protocols(groups: dict[tuple, list[dict]], profile: str) -> list[str]:
    return sorted({str(dict(zip(VARIANT, key[:-1]))["stage3.protocol"]) for key in groups if key[0] == profile})


def decisions(groups: dict[tuple, list[dict]]) -> list[dict]:
    """Each claim and setting with its per-seed differences decided: the paper's claim 1 (the DPT gain, and the
    generated images' own effect, stage 3 with minus without at the same seed) per protocol and labels per class;
    claim 2 (the pseudo-label generator against the labelled-only and oracle generators, same seed) per labels
    per class. A difference is oriented so that positive supports the claim."""
    found = []
    for profile in sorted({str(key[0]) for key in groups}):
        for protocol in _protocols(groups, profile):
            for lpc in LABEL_COUNTS:
                fixed = {"stage2.labels": "pseudo", "stage3.protocol": protocol}
                main = _find(groups, profile, lpc, **fixed, **{"stage3.generated_share": -1.0})
                if not main:
                    continue
                alone = _find(groups, profile, lpc, **fixed, **{"stage3.generated_share": 0.0})
                rows = [("DPT gain: stage 3 minus stage 1 (points)",
                         [100 * m["dpt_gain"] for m in main if m["dpt_gain"] is not None])]
                if alone:
                    rows.append(("the generated images' own effect: stage 3 with minus without (points)",
                                 _paired(main, alone, _diff("top1_stage3", 100))))
                found += [{"profile": profile, "protocol": protocol, "lpc": lpc, "claim": claim, **decide(diffs)}
                          for claim, diffs in rows]
        oracle = _find(groups, profile, None, **{"stage2.labels": "oracle"})
        for lpc in LABEL_COUNTS:
            pseudo = _find(groups, profile, lpc, **{"stage2.labels": "pseudo", "stage3.generated_share": -1.0})
            labelled = _find(groups, profile, lpc, **{"stage2.labels": "labelled"})
            rows = []
            if pseudo and labelled:
                rows += [("pseudo-label generator's FID below labelled-only's (labelled minus pseudo)",
                          _paired(labelled, pseudo, _diff("fid"))),
                         ("pseudo-label generator's recall above labelled-only's (pseudo minus labelled)",
                          _paired(pseudo, labelled, _diff("recall")))]
            if pseudo and oracle:
                rows.append(("pseudo-label generator's FID within 20 % of the oracle's (1.2 x oracle minus pseudo)",
                             _paired(oracle, pseudo, lambda o, p: None if None in (o["fid"], p["fid"])
                                     else 1.2 * o["fid"] - p["fid"])))
            found += [{"profile": profile, "protocol": "any", "lpc": lpc, "claim": claim, **decide(diffs)}
                      for claim, diffs in rows if diffs]
    return found


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def decision_table(found: list[dict]) -> list[str]:
    lines = ["| profile | claim | protocol | labels/class | seeds | mean | 95 % CI | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d in found:
        ci = "–" if d["lo"] is None else f"[{d['lo']:.2f}, {d['hi']:.2f}]"
        lines.append(f"| {d['profile']} | {d['claim']} | {d['protocol']} | {d['lpc']} | {d['n']} | "
                     f"{_fmt(d['mean'])} | {ci} | {d['verdict']} |")
    return lines


def claims(groups: dict[tuple, list[dict]]) -> list[str]:
    """The paper's two claims decided (mean, 95 % t-interval over seeds of the per-seed difference, verdict),
    then claim 2's three generators side by side on every generation metric: a copier of the labelled images can
    win on FID and lose recall, and class FID shows whether each class looks like its class."""
    found = decisions(groups)
    lines = ["Each row is one claim in one setting: the per-seed difference that supports it when positive, its "
             f"mean and {CONFIDENCE * 100:.0f} % t-interval over seeds, and the verdict: *holds* when the interval lies "
             "above 0, *does not hold* when it lies below, *undecided* otherwise, with the number of seeds a t-test "
             f"would need for {POWER * 100:.0f} % power if the mean and spread were as measured. Differences pair runs of "
             "the same seed.", ""]
    lines += decision_table(found) if found else ["No setting has the runs a claim needs."]
    lines.append("")
    for profile in sorted({str(key[0]) for key in groups}):
        oracle = _find(groups, profile, None, **{"stage2.labels": "oracle"})
        for lpc in (5, 1):
            table = generator_table({
                "pseudo-label": _find(groups, profile, lpc, **{"stage2.labels": "pseudo", "stage3.protocol":
                                                               "retrain", "stage3.generated_share": -1.0}),
                "oracle": oracle, "labelled-only": _find(groups, profile, lpc, **{"stage2.labels": "labelled"})})
            if table:
                lines += [f"### Claim 2's generators, profile `{profile}`, {lpc} label(s) per class", *table]
    return lines


def generation_cells(members: list[dict]) -> str:
    """The generation metrics beside FID, mean ± std over `members`, as Markdown table cells."""
    return " | ".join(mean_std([m.get(key) for m in members], scale, digits) for key, _, scale, digits in GENERATION)


def generator_table(runs: dict[str, list[dict]]) -> list[str]:
    """Claim 2's generators side by side on every generation metric: a copier of the labelled images can win on
    FID and lose recall, and class FID shows whether each class looks like its class."""
    rows = [(name, members) for name, members in runs.items() if members]
    if len(rows) < 2:
        return []
    head = ["generator", "seeds", "FID", *(title for _, title, _, _ in GENERATION)]
    return ["", "| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * len(head)) + " |",
            *(f"| {name} | {', '.join(str(m['seed']) for m in members)} | "
              f"{mean_std([m['fid'] for m in members], 1, 2)} | {generation_cells(members)} |"
              for name, members in rows), ""]


def ablations(rows: list[dict]) -> list[str]:
    """K and the guidance scale at 1 label per class, one varied at a time with the other at the value most runs
    share (the profile's), each value on the seeds that every value ran: a one-seed ablation is compared with the
    same seed of the sweep, not with its three-seed mean."""
    lines = []
    for profile in sorted({str(r["base.profile"]) for r in rows}):
        runs = [r for r in rows if str(r["base.profile"]) == profile and r["lpc"] == 1
                and r["stage2.labels"] == "pseudo" and r["stage3.protocol"] == "retrain"
                and r["stage3.generated_share"] == -1.0]
        for knob in ABLATED:
            other = next(k for k in ABLATED if k != knob)
            fixed = statistics.mode(r[other] for r in runs) if runs else None
            by_value: dict = {}
            for r in runs:
                if r[other] == fixed:
                    by_value.setdefault(r[knob], {})[r["seed"]] = r
            seeds = sorted(set.intersection(*(set(v) for v in by_value.values()))) if by_value else []
            if len(by_value) < 2 or not seeds:
                continue
            lines += [f"### `{knob}`, profile `{profile}`, 1 label per class, {other.split('.')[-1]} {fixed}, "
                      f"seed(s) {', '.join(map(str, seeds))}", "",
                      "| value | stage-3 top-1 % | DPT gain (points) | FID |", "| --- | --- | --- | --- |"]
            for value in sorted(by_value):
                members = [by_value[value][s] for s in seeds]
                lines.append(f"| {value} | {mean_std([m['top1_stage3'] for m in members], 100)} | "
                             f"{mean_std([m['dpt_gain'] for m in members], 100, 2)} | "
                             f"{mean_std([m['fid'] for m in members], 1, 2)} |")
            if knob == "sample.images_per_class":
                lines += ["", "FID here is of all K x classes generated images: its small-sample bias differs "
                              "with K, so compare it across the guidance scales, not across K."]
            lines.append("")
    return lines


def markdown(rows: list[dict], groups: dict[tuple, list[dict]], pictures: list[str], command: str) -> str:
    header = [k.split(".")[-1] for k in VARIANT]
    lines = ["# DPT reproduction report", "",
             f"Generated {datetime.date.today().isoformat()} by `{command}` from `dvc exp show`. Our rows are "
             "Fashion-MNIST runs of this package; the paper's are full-scale ImageNet runs, for the shape of the "
             "effects only. `dvc exp apply EXPERIMENT` restores a row's params and outputs, and `dvc repro --force` "
             "then reruns it; `git rev` is the experiment's commit (code and params), `data` the DVC hash of the "
             "prepared data.", "",
             "## Groups (mean ± std over seeds)", "",
             "| " + " | ".join(header) + " | labels/class | seeds | stage-1 top-1 % | stage-3 top-1 % | DPT gain "
             "(points) | gain significant at 5 %? | FID | " + " | ".join(g[1] for g in GENERATION) +
             " | pseudo-label acc % | stage 1 agrees with generated % | hardware |",
             "| " + " | ".join(["---"] * (len(header) + 10 + len(GENERATION))) + " |"]
    for key, members in groups.items():
        gains = [m["dpt_gain"] for m in members if m["dpt_gain"] is not None]
        lines.append("| " + " | ".join(str(v) for v in key[:-1]) + f" | {key[-1]} | {len(members)} | "
                     f"{mean_std([m['top1_stage1'] for m in members], 100)} | "
                     f"{mean_std([m['top1_stage3'] for m in members], 100)} | {mean_std(gains, 100, 2)} | "
                     f"{significance(gains)} | {mean_std([m['fid'] for m in members], 1, 2)} | "
                     f"{generation_cells(members)} | {mean_std([m['pseudo_label_accuracy'] for m in members], 100)} | "
                     f"{mean_std([m['generated_agreement'] for m in members], 100)} | "
                     f"{', '.join(sorted({str(m['hardware']) for m in members}))} |")
    lines += ["", "## The claims, decided", ""] + claims(groups)
    found = ablations(rows)
    if found:
        lines += ["## Ablations", ""] + found
    lines += ["## The paper (full scale, ImageNet; not comparable numbers)", "",
              "| result | labels/class | value |", "| --- | --- | --- |"]
    lines += [f"| {what} | {lpc} | {value} |" for what, lpc, value in PAPER]
    lines += ["", "## Every experiment", "",
              "| experiment | git rev | data | " + " | ".join(header) + " | labels/class | seed | top-1 stage 1 | "
              "top-1 stage 3 | FID |", "| " + " | ".join(["---"] * (len(header) + 8)) + " |"]
    for r in rows:
        fid = "–" if r["fid"] is None else f"{r['fid']:.2f}"
        lines.append(f"| {r['experiment']} | {r['rev']} | {r['data']} | " + " | ".join(str(r[k]) for k in VARIANT)
                     + f" | {r['lpc']} | {r['seed']} | {100 * r['top1_stage1']:.2f} | {100 * r['top1_stage3']:.2f} "
                     f"| {fid} |")
    if pictures:
        lines += ["", "## Pictures", ""] + [f"![{p}](report/{p})" for p in pictures]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, num: int, command: str, rows_file: Path | None = None) -> Path:
    """report.md, report.json and the pictures. With `rows_file` (an earlier report.json) the rows come from it
    instead of `dvc exp show`, so a report can be rebuilt by newer code on a machine without the experiments."""
    rows = read_rows(rows_file) if rows_file is not None else collect(num=num)
    groups = group_rows(rows)
    folder = out_dir / "report"
    pictures = forest(decisions(groups), folder) + plot(groups, folder) + sample_grids(groups, folder)
    text = markdown(rows, groups, pictures, command)
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(text)
    write_json(out_dir / "report.json", {"rows": rows, "command": command,
                                         "groups": [{"key": list(k), "rows": len(v)} for k, v in groups.items()]})
    return out_dir / "report.md"

