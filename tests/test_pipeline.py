"""End to end: the smoke profile through `dvc repro` in a temporary copy of the repository."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import KEY, copy_checkout, ok, sh

STAGES = ["prepare", "gate_prepared", "split", "gate_split", "stage1", "pseudo_label", "gate_pseudo_labels", "stage2",
          "sample", "fid_reference", "gate_generated", "gate_mix", "stage3", "evaluate"]
HEADLINE = ("top1_stage1", "top1_stage3", "dpt_gain", "fid", "kid", "pseudo_label_accuracy")


def dvc_outputs(repo: Path) -> list[Path]:
    """The outputs `dvc.lock` records that DVC caches (data, models, gate reports; not metrics and plots)."""
    import yaml

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return sorted({repo / out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])
                   if out["path"].startswith(("data/", "models/", "reports/gates/"))})


def tracked_bytes(repo: Path) -> dict[str, str]:
    """SHA-256 of every file under the cached DVC outputs."""
    files = []
    for out in dvc_outputs(repo):
        files += [out] if out.is_file() else [f for f in out.rglob("*") if f.is_file()]
    return {str(f.relative_to(repo)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)}


def store(repo: Path):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    return client, client.get_experiment_by_name("dpt-repro").experiment_id


@pytest.fixture(scope="module")
def mlflow_server(mlflow_servers):
    """A real `mlflow server` on loopback for the tests that log to one."""
    return mlflow_servers()


def test_every_stage_ran_and_a_second_repro_runs_nothing(smoke_repo):
    repo, out = smoke_repo
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    again = sh(["dvc", "repro"], repo)
    assert again.returncode == 0 and "Running stage" not in again.stdout
    status = sh(["dvc", "status"], repo)
    assert "up to date" in status.stdout


def test_metrics_are_computed(smoke_repo):
    repo, _ = smoke_repo
    m = json.loads((repo / "metrics" / "eval.json").read_text())
    for key in HEADLINE:
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert 0 <= m["top1_stage1"] <= 1 and 0 <= m["pseudo_label_accuracy"] <= 1
    assert m["dpt_gain"] == pytest.approx(m["top1_stage3"] - m["top1_stage1"])
    assert m["fid"] > 0
    assert m["fid_protocol"]["n_generated"] == 80 and m["fid_protocol"]["n_reference"] == 100
    for key in ("sfid", "precision", "recall", "class_fid", "near_copy_share"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and 0 <= m["near_copy_share"] <= 1
    assert m["sfid"] > 0 and m["class_fid"] > m["fid"]  # 8 images per class: a larger small-sample bias
    assert m["inception_score"] is None and "softmax" in m["inception_score_protocol"]["absent"]
    assert m["precision_recall_protocol"]["k"] == 3 and m["precision_recall_protocol"]["n_generated"] == 80
    assert m["class_fid_protocol"]["n_generated_per_class"] == [8, 8]
    per_class = json.loads((repo / "plots" / "class_fid.json").read_text())
    assert len(per_class) == 10 and per_class[0]["class"] == "T-shirt/top" and per_class[0]["n_generated"] == 8
    assert np.mean([r["class_fid"] for r in per_class]) == pytest.approx(m["class_fid"])
    assert m["near_copy_protocol"]["labelled_images"] == 10
    for name in ("prepared", "split", "pseudo_labels", "generated", "mix"):
        gate = json.loads((repo / "metrics" / "gates" / f"{name}.json").read_text())
        assert gate["success"], name
        assert (repo / "reports" / "gates" / name / "index.html").is_file()
    manifest = json.loads((repo / "data" / "generated" / "lpc1-seed0" / "manifest.json").read_text())
    assert manifest["count"] == 80 and (repo / "reports" / "lpc1-seed0" / "samples.png").is_file()
    import torch

    from dpt_repro.diffusion.train import precision

    training = json.loads((repo / "models" / "stage2" / KEY / "training.json").read_text())
    assert training["precision"] == manifest["precision"] == precision(torch.device("cpu"), "bf16")


def test_mlflow_holds_one_pipeline_run_with_a_child_per_stage(smoke_repo, tmp_path):
    import mlflow

    repo, _ = smoke_repo
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dpt-repro")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(parents) == 1
    assert sorted(r.data.tags["stage"] for r in children) == sorted(STAGES)
    by_stage = {r.data.tags["stage"]: r for r in children}
    ev = by_stage["evaluate"].data
    assert json.loads((repo / "metrics" / "eval.json").read_text())["fid"] == pytest.approx(ev.metrics["fid"])
    assert by_stage["stage1"].data.params["stage1.algorithm"] == "freematch"
    assert "val_acc" in by_stage["stage1"].data.metrics
    history = client.get_metric_history(by_stage["stage2"].info.run_id, "loss")
    assert len(history) > 5
    training = json.loads((repo / "models" / "stage2" / KEY / "training.json").read_text())
    assert by_stage["stage2"].data.tags["stage2.precision"] == training["precision"]
    assert all(r.data.tags["labels_per_class"] == "1" for r in children)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    # The pipeline run is the row to compare: headline metrics, identifying params, its real span, its links.
    (parent_id,) = parents
    parent = client.get_run(parent_id)
    assert parent.info.run_name == f"workspace {KEY}" and parent.info.status == "FINISHED"
    eval_json = json.loads((repo / "metrics" / "eval.json").read_text())
    floats = {k: v for k, v in eval_json.items() if isinstance(v, float)}
    assert set(HEADLINE) <= set(floats)
    assert parent.data.metrics == pytest.approx(floats)
    assert parent.data.params["stage1.algorithm"] == "freematch" and parent.data.params["base.profile"] == "smoke"
    assert parent.data.params["sample.images_per_class"] == "8" and parent.data.params["dvc.exp_name"] == "workspace"
    assert parent.info.start_time <= min(r.info.start_time for r in children)
    assert parent.info.end_time >= max(r.info.end_time for r in children)
    assert parent.data.tags["git.commit"] == ok(sh(["git", "rev-parse", "HEAD"], repo)).strip()
    seen = client.download_artifacts(by_stage["evaluate"].info.run_id, "lineage/dvc.lock", str(tmp_path))
    assert parent.data.tags["dvc.lock_md5"] == hashlib.md5(Path(seen).read_bytes()).hexdigest()  # as evaluate saw it
    assert "report.md" in parent.data.tags["report.row"]

    # The generator's champion: lowest FID of the final EMA weights against train images (no test image).
    champion = client.get_model_version_by_alias("dpt-generator", "champion")
    fid_rows = (repo / "plots" / "stage2" / "fid_curve.csv").read_text().splitlines()
    assert float(champion.tags["fid_train"]) == pytest.approx(float(fid_rows[-1].split(",")[1]), abs=1e-5)
    assert champion.run_id == by_stage["stage2"].info.run_id


def test_a_stage_runs_alone_for_another_labels_per_class(smoke_repo):
    repo, _ = smoke_repo
    for stage in ("split", "stage1"):
        result = sh(["dpt-repro", stage, "--labels-per-class", "2"], repo)
        assert result.returncode == 0, result.stderr[-2000:]
    assert (repo / "models" / "stage1" / "lpc2-seed0" / "model.safetensors").is_file()
    assert (repo / "models" / "stage1" / "lpc1-seed0" / "model.safetensors").is_file()


def test_lineage_datasets_are_dvc_hashes_and_models_load_back_and_predict(smoke_repo):
    import mlflow
    import numpy as np
    import torch
    import yaml

    from dpt_repro.data.shards import load_split
    from dpt_repro.ssl.train import predict_proba
    from dpt_repro.stages.classifier import load_classifier

    repo, _ = smoke_repo
    client, exp = store(repo)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])}
    stage3 = client.search_runs([exp], "tags.stage = 'stage3'")[0]
    digests = {i.dataset.name: i.dataset.digest for i in stage3.inputs.dataset_inputs}
    assert digests == {"prepared": md5["data/prepared/fashion-mnist"], "split": md5[f"data/splits/{KEY}/split.json"],
                       "generated": md5[f"data/generated/{KEY}"]}
    assert stage3.data.tags["dvc.exp_name"] == "workspace"
    assert stage3.data.tags["git.commit"] == ok(sh(["git", "rev-parse", "HEAD"], repo)).strip()
    assert {a.path for a in client.list_artifacts(stage3.info.run_id, "lineage")} == {"lineage/params.yaml",
                                                                                     "lineage/dvc.lock"}

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("dpt-classifier", "champion")
    assert champion.run_id == stage3.info.run_id
    # the stage's best validation accuracy (metrics/stage3.json); the run's `val_acc` is its latest logged point
    best = json.loads((repo / "metrics" / "stage3.json").read_text())["val_acc"]
    assert float(champion.tags["val_acc"]) == pytest.approx(best, abs=1e-6)
    test_x, _ = load_split(repo / "data" / "prepared" / "fashion-mnist", "test")
    pred = mlflow.pyfunc.load_model("models:/dpt-classifier@champion").predict(test_x[:64])
    model, _ = load_classifier(repo / "models" / "stage3" / KEY, "stage3")
    direct = predict_proba(model, test_x[:64], 64, torch.device("cpu")).argmax(1)
    assert pred.dtype == np.int64 and np.array_equal(pred, direct)

    generators = [m for m in mlflow.search_logged_models(experiment_ids=[exp], output_format="list")
                  if m.name == "generator"]
    images = mlflow.pyfunc.load_model(generators[0].model_uri).predict(np.array([3, 3], np.int64))
    shard = np.load(repo / "data" / "generated" / KEY / "shard-000.npz")
    assert np.array_equal(images, shard["images"][shard["labels"] == 3][:2])


def test_dvc_plots_render_curves_fid_against_steps_and_the_confusion_matrix(smoke_repo):
    repo, _ = smoke_repo
    ok(sh(["dvc", "plots", "show", "-o", "plots_html"], repo))
    html = (repo / "plots_html" / "index.html").read_text()
    for name in ("fid_curve.csv", "stage3_test_predictions.csv", "stage1/train_curve.csv", "confusion_stage3.png",
                 "class_fid.json"):
        assert name in html, name
    fid_rows = (repo / "plots" / "stage2" / "fid_curve.csv").read_text().splitlines()
    assert fid_rows[0] == "step,fid" and [r.split(",")[0] for r in fid_rows[1:]] == ["15", "30"]


def test_two_queued_experiments_run_at_once_and_both_log_completely(smoke_repo, mlflow_server, tmp_path):
    """`dvc exp run --queue` + `dvc queue start -j 2`: both finish, `dvc exp show` has their metrics, and one
    real MLflow server holds a complete pipeline run for each, consistent with its metrics: a search over the
    pipeline (parent) runs alone gives the two rows to compare."""
    import mlflow

    repo, _ = smoke_repo
    ok(sh(["git", "add", "-A"], repo))
    ok(sh(["git", "commit", "-q", "-m", "smoke baseline"], repo))
    before = tracked_bytes(repo)
    names = {}
    for lpc in (1, 2):
        out = ok(sh(["dvc", "exp", "run", "--queue", "-S", f"base.labels_per_class={lpc}", "-S", "base.seed=1"], repo))
        names[f"lpc{lpc}-seed1"] = re.search(r"Queued experiment '([^']+)'", out).group(1)
    uri, _, _ = mlflow_server
    ok(sh(["dvc", "queue", "start", "-j", "2"], repo, {"MLFLOW_TRACKING_URI": uri}))  # the workers inherit it
    deadline = time.time() + 1200
    while True:
        status = ok(sh(["dvc", "queue", "status"], repo))
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.time() < deadline, status
        time.sleep(5)
    logs = {name: sh(["dvc", "queue", "logs", name], repo).stdout[-3000:] for name in names.values()}
    assert status.count("Success") == 2, status + "\n".join(logs.values())

    shown = json.loads(ok(sh(["dvc", "exp", "show", "--json"], repo)))
    exps = {e["name"]: e for rev in shown for e in (rev.get("experiments") or [])}
    table = ok(sh(["dvc", "exp", "show", "--md", "--only-changed"], repo))
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("dpt-repro")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs
    exp = experiment.experiment_id
    pipelines = client.search_runs([exp], "tags.`mlflow.parentRunId` IS NULL")
    assert sorted(r.data.params["dvc.exp_name"] for r in pipelines) == sorted(names.values())
    for row in pipelines:
        name = row.data.params["dvc.exp_name"]
        key = next(k for k, n in names.items() if n == name)
        metrics = exps[name]["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]
        assert row.info.run_name == f"{name} {key}" and row.info.status == "FINISHED"
        assert row.data.metrics == pytest.approx({k: v for k, v in metrics.items() if isinstance(v, float)})
        assert set(HEADLINE) <= set(row.data.metrics)
        assert (row.data.params["base.labels_per_class"], row.data.params["base.seed"]) == (key[3], "1")
        assert name in row.data.tags["report.row"]
    generators = client.search_model_versions("name='dpt-generator'")
    best = min(generators, key=lambda v: float(v.tags["fid_train"]))
    assert len(generators) == 2
    assert client.get_model_version_by_alias("dpt-generator", "champion").version == best.version
    for key, name in names.items():
        assert name in table
        metrics = exps[name]["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]
        runs = client.search_runs([exp], f"tags.`dvc.exp_name` = '{name}'", max_results=100)
        children = {r.data.tags["stage"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
        assert {r.data.tags["run_key"] for r in runs} == {key}
        assert len({r.data.tags["mlflow.parentRunId"] for r in children.values()}) == 1
        assert set(STAGES) - {"prepare", "gate_prepared", "fid_reference"} <= set(children), sorted(children)
        assert all(r.info.status == "FINISHED" for r in children.values())
        parent = client.get_run(children["evaluate"].data.tags["mlflow.parentRunId"])
        assert parent.info.start_time <= min(r.info.start_time for r in children.values())
        assert parent.info.end_time >= max(r.info.end_time for r in children.values())
        assert children["evaluate"].data.metrics["top1_stage3"] == pytest.approx(metrics["top1_stage3"])
        assert children["evaluate"].data.metrics["fid"] == pytest.approx(metrics["fid"])
    assert tracked_bytes(repo) == before  # the workspace's own outputs are untouched

    # dpt-repro report gathers the same experiments, each with its metrics, into a table and pictures.
    ok(sh(["dpt-repro", "report", "--out", str(tmp_path)], repo))
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["experiment"]: r for r in report["rows"]}
    text = (tmp_path / "report.md").read_text()
    for key, name in names.items():
        metrics = exps[name]["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]
        assert rows[name]["top1_stage3"] == pytest.approx(metrics["top1_stage3"])
        assert (rows[name]["lpc"], rows[name]["seed"], rows[name]["base.profile"]) == (int(key[3]), 1, "smoke")
        assert f"| {name} |" in text and rows[name]["hardware"].endswith("threads")
        assert 0.0 <= rows[name]["generated_agreement"] <= 1.0  # the generated gate's check, read from git
    assert "## The paper" in text and "gain significant at 5 %?" in text
    for picture in ("top1.png", "fid.png"):
        assert (tmp_path / "report" / picture).read_bytes()[:4] == b"\x89PNG"


DATA_PARALLEL = ("stage1", "pseudo_label", "stage2", "sample", "fid_reference", "stage3", "evaluate")


def _generated(repo: Path) -> dict[str, np.ndarray]:
    folder = repo / "data" / "generated" / KEY
    shards = [np.load(f) for f in sorted(folder.glob("shard-*.npz"))]
    return {k: np.concatenate([s[k] for s in shards]) for k in ("images", "labels", "index", "seeds")}


def test_two_gloo_processes_through_torchrun_match_one_process(smoke_repo, tmp_path):
    """launcher.nproc_per_node=2: each data-parallel stage runs as two gloo ranks under torchrun. Rank 0 alone
    writes and logs; the run matches the single-process smoke run where it must (split, sample plan, counts)
    and is within noise elsewhere; on the same model, two ranks pseudo-label, sample and extract FID features
    as one process does."""
    import yaml

    single, _ = smoke_repo
    repo = copy_checkout(tmp_path / "ddp")
    params = yaml.safe_load((single / "params.yaml").read_text())
    params["launcher"]["nproc_per_node"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ok(sh(["git", "init", "-q"], repo))
    result = sh(["dvc", "repro"], repo, timeout=1200)
    ok(result)
    assert (result.stdout + result.stderr).count("launching 2 processes per node") == len(DATA_PARALLEL)

    # Rank 0 alone wrote: one timing line and one MLflow child run per stage, each output once.
    timings = [json.loads(line)["stage"] for line in (repo / ".dpt" / "timings.jsonl").read_text().splitlines()]
    assert len(timings) == len(STAGES) == len(set(timings)), timings
    client, exp = store(repo)
    children = [r for r in client.search_runs([exp], max_results=100) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["stage"] for r in children) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in children)

    # The same experiment as one process: same split and sample plan, metrics within the noise of smoke runs.
    assert (repo / "data/splits" / KEY / "split.json").read_bytes() == (single / "data/splits" / KEY / "split.json").read_bytes()
    two, one = _generated(repo), _generated(single)
    for key in ("labels", "index", "seeds"):
        assert np.array_equal(two[key], one[key]), key
    assert two["images"].shape == one["images"].shape
    m2, m1 = (json.loads((r / "metrics" / "eval.json").read_text()) for r in (repo, single))
    for key in ("top1_stage1", "pseudo_label_accuracy"):
        assert abs(m2[key] - m1[key]) < 0.2, (key, m2[key], m1[key])
    assert m2["fid_protocol"]["n_generated"] == m1["fid_protocol"]["n_generated"]

    # Same inputs, one process vs two ranks: pseudo-labels, samples and FID reference agree.
    ranks2 = {"pseudo": pd.read_parquet(repo / "data/pseudo_labels" / KEY / "pseudo_labels.parquet"),
              "images": two["images"], "ref": np.load(repo / "data/fid_ref/fashion-mnist-train.npz")}
    for stage in ("pseudo-label", "sample", "fid-reference"):
        ok(sh(["dpt-repro", stage, "-S", "launcher.nproc_per_node=1"], repo))
    pd.testing.assert_frame_equal(pd.read_parquet(repo / "data/pseudo_labels" / KEY / "pseudo_labels.parquet"),
                                  ranks2["pseudo"], check_exact=False, atol=1e-5)
    diff = np.abs(_generated(repo)["images"].astype(int) - ranks2["images"].astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.01, (diff.max(), diff.mean())
    ref = np.load(repo / "data/fid_ref/fashion-mnist-train.npz")
    assert np.allclose(ref["mu"], ranks2["ref"]["mu"], atol=1e-4) and np.array_equal(ref["indices"], ranks2["ref"]["indices"])

    # A rerun of one stage updates the pipeline run's metrics (the launcher is hardware: the same pipeline run).
    ok(sh(["dpt-repro", "evaluate", "-S", "launcher.nproc_per_node=1"], repo))
    (parent,) = client.search_runs([exp], "tags.`mlflow.parentRunId` IS NULL")
    assert len(client.get_metric_history(parent.info.run_id, "top1_stage3")) == 2
    rerun = json.loads((repo / "metrics" / "eval.json").read_text())
    assert parent.data.metrics["fid"] == pytest.approx(rerun["fid"]) and parent.info.status == "FINISHED"


def _push_delete_pull(repo: Path, remote: str, env_extra=None) -> None:
    before = tracked_bytes(repo)
    ok(sh(["dvc", "push", "-r", remote], repo, env_extra))
    shutil.rmtree(repo / ".dvc" / "cache")
    for out in dvc_outputs(repo):
        (shutil.rmtree if out.is_dir() else os.remove)(out)
    assert tracked_bytes(repo) == {}
    ok(sh(["dvc", "pull", "-r", remote], repo, env_extra))
    assert tracked_bytes(repo) == before
    status = ok(sh(["dvc", "status"], repo))  # metrics/plots may show the lpc2 run of an earlier test; data may not
    assert not any(str(out.relative_to(repo)) in status for out in dvc_outputs(repo)), status


def test_the_default_local_remote_restores_everything_byte_for_byte(smoke_repo, tmp_path):
    repo, _ = smoke_repo
    remote = ok(sh(["dvc", "remote", "default"], repo)).strip()
    assert remote == "local"
    ok(sh(["dvc", "remote", "modify", "--local", "local", "url", str(tmp_path / "storage")], repo))
    _push_delete_pull(repo, "local")
    assert any((tmp_path / "storage").rglob("*.dir"))


def test_an_s3_remote_on_a_local_moto_server_restores_everything(smoke_repo):
    import boto3
    from moto.server import ThreadedMotoServer

    repo, _ = smoke_repo
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="dpt-dvc")
        ok(sh(["dvc", "remote", "add", "--local", "s3", "s3://dpt-dvc/store"], repo))
        ok(sh(["dvc", "remote", "modify", "--local", "s3", "endpointurl", endpoint], repo))
        _push_delete_pull(repo, "s3", creds)
        keys = s3.list_objects_v2(Bucket="dpt-dvc", Prefix="store/")
        assert keys["KeyCount"] > 10
    finally:
        server.stop()


def test_the_probe_protocol_fits_a_head_on_the_frozen_stage1_network_and_evaluates(smoke_repo):
    """Stage 3's ImageNet protocol (run last but one: it replaces the workspace's stage-3 model)."""
    import torch
    from safetensors.torch import load_file

    from dpt_repro.ssl.probe import L2_GRID

    repo, _ = smoke_repo
    ok(sh(["dpt-repro", "stage3", "-S", "stage3.protocol=probe"], repo))
    ok(sh(["dpt-repro", "evaluate", "-S", "stage3.protocol=probe"], repo))
    metrics = json.loads((repo / "metrics" / "stage3.json").read_text())
    assert metrics["probe_l2"] in L2_GRID and 0 < metrics["val_acc"] <= 1
    assert json.loads((repo / "models" / "stage3" / KEY / "config.json").read_text())["protocol"] == "probe"
    assert json.loads((repo / "metrics" / "eval.json").read_text())["top1_stage3"] > 0.2  # chance is 0.1
    s1 = load_file(repo / "models" / "stage1" / KEY / "model.safetensors")
    s3 = load_file(repo / "models" / "stage3" / KEY / "model.safetensors")
    assert all(torch.equal(s1[k], s3[k]) for k in s1 if not k.startswith("head."))  # the encoder stayed frozen
    assert not torch.equal(s1["head.weight"], s3["head.weight"])
    assert metrics["generated_share_of_labelled"] > 0.5

    # The baseline without generated images: the head is fitted on the labelled images alone.
    ok(sh(["dpt-repro", "stage3", "-S", "stage3.protocol=probe", "-S", "stage3.generated_share=0"], repo))
    assert json.loads((repo / "metrics" / "stage3.json").read_text())["generated_share_of_labelled"] == 0.0
    without = load_file(repo / "models" / "stage3" / KEY / "model.safetensors")
    assert not torch.equal(without["head.weight"], s3["head.weight"])


def test_a_failing_gate_stops_the_pipeline_before_the_expensive_stage(smoke_repo, mlflow_server):
    import mlflow

    repo, _ = smoke_repo
    uri, _, _ = mlflow_server
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("pseudo_max_kl: 5.0", "pseudo_max_kl: 1.0e-09"))
        result = sh(["dvc", "repro"], repo, {"MLFLOW_TRACKING_URI": uri}, timeout=600)
    finally:
        params.write_text(original)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dpt-repro").experiment_id
    gate = client.search_runs([exp], "tags.stage = 'gate_pseudo_labels' and tags.`dvc.exp_name` = 'workspace'")[0]
    assert gate.info.status == "FAILED"
    parent = client.get_run(gate.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED" and parent.data.params["dvc.exp_name"] == "workspace"
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Running stage 'gate_pseudo_labels'" in out and "Running stage 'stage2'" not in out
    assert "gate pseudo_labels failed" in out and "FAIL table: expect_column_kl_divergence_to_be_less_than" in out
    assert "'threshold': 1e-09" in out
    assert not (repo / "metrics" / "gates" / "pseudo_labels.passed").exists()
