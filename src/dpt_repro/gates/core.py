"""Running a gate: a Great Expectations suite on a DataFrame, plus checks GX has no expectation for.

GX runs in an ephemeral, in-memory context (no project folder, no network, progress bars off) and is imported
lazily so the CLI's `--help` stays fast. A run returns a JSON-able report; when `docs_dir` is given, GX's Data
Docs HTML for the validation is written there too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class Check:
    """A check made outside GX (on arrays, files or joins), reported in the same shape as an expectation."""

    name: str
    success: bool
    observed: Any
    expected: dict


@dataclass
class Table:
    """One DataFrame and the expectations that must hold on it."""

    name: str
    frame: pd.DataFrame
    expectations: list = field(default_factory=list)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _describe(result, table: str) -> dict:
    cfg = result.expectation_config
    kwargs = {k: _jsonable(v) for k, v in cfg.kwargs.items()
              if k not in ("batch_id", "partition_object", "value_set")}
    r = result.result
    observed = r.get("observed_value")
    if observed is None and r.get("missing_count"):
        observed = f"{r['missing_count']} missing, e.g. {_jsonable(r.get('partial_missing_list', [])[:10])}"
    elif observed is None and "unexpected_count" in r:
        observed = f"{r['unexpected_count']} unexpected, e.g. {_jsonable(r.get('partial_unexpected_list', [])[:5])}"
    elif isinstance(observed, dict):
        observed = {k: _jsonable(v) for k, v in observed.items()}
    entry = {"table": table, "expectation": cfg.type, "success": bool(result.success),
             "observed": _jsonable(observed), "expected": kwargs}
    if not result.success and r.get("partial_unexpected_list"):
        entry["unexpected"] = _jsonable(r["partial_unexpected_list"][:20])  # the values an override must admit
    return entry


def run_gate(gate: str, tables: list[Table], checks: list[Check], docs_dir: Path | None = None,
             extra: dict | None = None) -> dict:
    """Validate every table with its expectations; returns {gate, success, checks, ...extra}."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        ctx.add_data_docs_site(site_name="gate", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        actions = [UpdateDataDocsAction(name="docs", site_names=["gate"])]
    source = ctx.data_sources.add_pandas(gate)
    results: list[dict] = []
    for table in tables:
        batch = source.add_dataframe_asset(table.name).add_batch_definition_whole_dataframe("all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{gate}.{table.name}"))
        for expectation in table.expectations:
            suite.add_expectation(expectation)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{gate}.{table.name}", data=batch,
                                                                    suite=suite))
        checkpoint = ctx.checkpoints.add(gx.Checkpoint(name=f"{gate}.{table.name}", validation_definitions=[vd],
                                                       actions=actions))
        outcome = checkpoint.run(batch_parameters={"dataframe": table.frame})
        for run in outcome.run_results.values():
            results += [_describe(r, table.name) for r in run.results]
    results += [{"table": "-", "expectation": c.name, "success": bool(c.success), "observed": _jsonable(c.observed),
                 "expected": c.expected} for c in checks]
    return {"gate": gate, "success": all(r["success"] for r in results), "checks": results, **(extra or {})}


def summary_lines(report: dict) -> list[str]:
    """One line per check: status, expectation, observed value and what was expected."""
    lines = []
    for c in report["checks"]:
        status = "ok  " if c["success"] else "FAIL"
        lines.append(f"{status} {c['table']}: {c['expectation']}: observed {c['observed']!r}, expected {c['expected']}")
    return lines


def pixel_stats(images: np.ndarray, batch: int = 4096) -> pd.DataFrame:
    """Per-image min, max, NaN count and content hash, streamed in batches."""
    import hashlib

    rows: dict[str, list] = {"pixel_min": [], "pixel_max": [], "nan_count": [], "digest": []}
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        flat = x.reshape(len(x), -1)
        is_float = np.issubdtype(flat.dtype, np.floating)
        nan = np.isnan(flat).sum(1) if is_float else np.zeros(len(x), np.int64)
        rows["pixel_min"] += np.nanmin(flat, axis=1).astype(float).tolist() if len(x) else []
        rows["pixel_max"] += np.nanmax(flat, axis=1).astype(float).tolist() if len(x) else []
        rows["nan_count"] += nan.tolist()
        rows["digest"] += [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in flat]
    return pd.DataFrame(rows)
