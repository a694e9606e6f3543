"""The pseudo-label gate: stops the pipeline before diffusion training when stage 1 went wrong.

Great Expectations runs in an ephemeral, in-memory context (no project folder, no network, progress bars
off); it is imported here, lazily, so the CLI's `--help` stays fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpt_repro.config import GatesConfig


def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def pseudo_label_suite(num_rows: int, num_classes: int, prior: np.ndarray, gates: GatesConfig):
    """The expectations, each with the threshold it enforces (kept beside it for the summary)."""
    import great_expectations.expectations as gxe

    classes = list(range(num_classes))
    return [
        gxe.ExpectTableRowCountToEqual(value=num_rows),
        gxe.ExpectColumnValuesToNotBeNull(column="pseudo_label"),
        gxe.ExpectColumnValuesToBeInSet(column="pseudo_label", value_set=classes),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="pseudo_label", value_set=classes),
        gxe.ExpectColumnKLDivergenceToBeLessThan(
            column="pseudo_label", threshold=gates.pseudo_max_kl,
            partition_object={"values": classes, "weights": [float(w) for w in prior]}),
        gxe.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeUnique(column="index"),
    ]


def _describe(result) -> dict:
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "partition_object", "value_set")}
    r = result.result
    observed = r.get("observed_value")
    if observed is None and r.get("missing_count"):
        observed = f"{r['missing_count']} missing, e.g. {r.get('partial_missing_list', [])[:10]}"
    elif observed is None and "unexpected_count" in r:
        observed = f"{r['unexpected_count']} unexpected, e.g. {r.get('partial_unexpected_list', [])[:5]}"
    if isinstance(observed, np.generic):
        observed = observed.item()
    return {"expectation": cfg.type, "success": bool(result.success), "observed": observed, "kwargs": kwargs}


def validate_pseudo_labels(table: pd.DataFrame, num_classes: int, prior: np.ndarray, gates: GatesConfig,
                           labelled_index: np.ndarray, labelled_true: np.ndarray) -> dict:
    """Run the suite on the pseudo-label table; returns a JSON-able report with `success`."""
    import great_expectations as gx

    ctx = _context()
    batch = (ctx.data_sources.add_pandas("pseudo").add_dataframe_asset("table")
             .add_batch_definition_whole_dataframe("all"))
    suite = ctx.suites.add(gx.ExpectationSuite(name="pseudo_labels"))
    for expectation in pseudo_label_suite(len(table), num_classes, prior, gates):
        suite.add_expectation(expectation)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="pseudo_labels", data=batch, suite=suite))
    res = vd.run(batch_parameters={"dataframe": table})
    checks = [_describe(r) for r in res.results]

    by_index = table.set_index("index")["pseudo_label"]
    agreement = float((by_index.loc[labelled_index].to_numpy() == labelled_true).mean())
    checks.append({"expectation": "labelled_agreement_at_least", "success": agreement >= gates.pseudo_min_labelled_agreement,
                   "observed": agreement, "kwargs": {"min_value": gates.pseudo_min_labelled_agreement}})
    shares = np.bincount(table["pseudo_label"].to_numpy(), minlength=num_classes) / max(len(table), 1)
    return {"gate": "pseudo_labels", "success": all(c["success"] for c in checks), "checks": checks,
            "class_shares": shares.round(4).tolist(), "rows": int(len(table))}


def summary_lines(report: dict) -> list[str]:
    lines = []
    for c in report["checks"]:
        status = "ok  " if c["success"] else "FAIL"
        lines.append(f"{status} {c['expectation']}: observed {c['observed']!r}, expected {c['kwargs']}")
    return lines
