"""Pictures of the real tools for the docs: the MLflow UI over a finished smoke pipeline, and `dvc plots`.

    python tools/screenshots.py workspace DIR    # a git copy of HEAD, smoke profile, two DVC experiments
    python tools/screenshots.py shoot DIR        # the pictures, into docs/assets/screenshots/

`shoot` starts a real `mlflow server` on 127.0.0.1 over DIR's `mlflow.db`, opens the UI in headless Chromium
(Debian's `chromium`, driven by playwright) and saves: the runs table with a pipeline run's stage children, the
two pipeline runs compared side by side, and the `dpt-classifier` model with its `champion`; then the
`dvc plots diff` page of the two experiments. Each picture is taken only once the page shows the data it is
about (the run names, the metric, the alias); otherwise the script names what did not appear and exits 1.
`dvc plots` pages load vega from a CDN: the script serves those exact files (`npm pack` of the versions that the
page names) to the browser instead, so nothing is fetched at run time but the npm packages, once.

No finished pipeline in DIR, no Chromium or a busy port: one line naming which, exit 2, before anything starts.
The server is stopped (its whole process group) whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "assets" / "screenshots"
# The second experiment changes the guidance scale, so DVC reruns only sampling and what follows. Not 2 labels per
# class: the smoke profile's barely trained stage 1 then left a class without pseudo-labels and its gate failed.
EXPERIMENTS = (("smoke-lpc1", []), ("smoke-lpc1-w3", ["-S", "sample.guidance_scale=3.0"]))
CHROMIUM_BLOCKED = {5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6697, 10080}  # its unsafe ports above 5000
IDENTITY = {"GIT_AUTHOR_NAME": "dpt-repro screenshots", "GIT_AUTHOR_EMAIL": "screens@dpt-repro.invalid",
            "GIT_COMMITTER_NAME": "dpt-repro screenshots", "GIT_COMMITTER_EMAIL": "screens@dpt-repro.invalid"}


class Refused(Exception):
    """A missing precondition: one line, exit 2."""


def run(args: list[str], cwd: Path, **kw) -> str:
    env = {**os.environ, **IDENTITY, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the workspace's own store
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(args)}` failed in {cwd}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def make_workspace(ws: Path) -> None:
    """HEAD's files in a new git repository, the smoke profile committed, then the two experiments."""
    ws = ws.resolve()
    if ws.exists() and any(ws.iterdir()):
        raise Refused(f"{ws} exists and is not empty: remove it or name another folder")
    ws.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(ws)], input=archive, check=True)
    run(["git", "init", "-q"], ws)
    run(["dpt-repro", "profile", "smoke"], ws)
    run(["git", "add", "-A"], ws)
    run(["git", "commit", "-q", "-m", "smoke profile"], ws)
    for name, sets in EXPERIMENTS:
        print(f"dvc exp run -n {name} {' '.join(sets)}", flush=True)
        run(["dvc", "exp", "run", "-n", name, *sets], ws, timeout=1800)


def finished(ws: Path) -> None:
    missing = [p for p in ("mlflow.db", "metrics/eval.json", "dvc.lock") if not (ws / p).is_file()]
    if missing:
        raise Refused(f"no finished pipeline in {ws} (missing {', '.join(missing)}): run "
                      f"`python tools/screenshots.py workspace {ws}` (or `make screenshots`) first")
    shown = run(["dvc", "exp", "list", "--name-only"], ws).split()
    absent = [name for name, _ in EXPERIMENTS if name not in shown]
    if absent:
        raise Refused(f"{ws} lacks the experiment(s) {', '.join(absent)}: make the workspace with "
                      f"`python tools/screenshots.py workspace DIR`")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_server(ws: Path, port: int, log: Path) -> subprocess.Popen:
    mlflow = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow if mlflow.exists() else "mlflow"), "server", "--backend-store-uri",
           f"sqlite:///{(ws / 'mlflow.db').resolve()}", "--artifacts-destination", str((ws / "mlartifacts").resolve()),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow server exited with {proc.returncode}; its log: {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_server(proc, port)
    raise SystemExit(f"mlflow server did not answer on 127.0.0.1:{port} within 90 s; its log: {log}")


def stop_server(proc: subprocess.Popen, port: int) -> None:
    """SIGTERM to the server's process group (gunicorn/uvicorn workers included), SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    deadline = time.monotonic() + 10
    while not port_free(port) and time.monotonic() < deadline:
        time.sleep(0.2)


CDN = re.compile(r'<script src="(https://cdn\.jsdelivr\.net/npm/((?:@[\w.-]+/)?[\w.-]+)@([\w.-]+))"></script>')


def cdn_scripts(html: str, cache: Path) -> dict[str, bytes]:
    """URL -> the file jsDelivr would serve for each `<script src=cdn.jsdelivr.net/npm/NAME@VERSION>` of a page,
    from `npm pack NAME@VERSION` (the npm registry; packed once into `cache`)."""
    cache.mkdir(parents=True, exist_ok=True)
    served = {}
    for url, name, version in CDN.findall(html):
        tgz = cache / f"{name.replace('@', '').replace('/', '-')}-{version}.tgz"
        if not tgz.is_file():
            if shutil.which("npm") is None:
                raise Refused(f"the dvc plots page loads {name}@{version}; npm is needed once to fetch it "
                              "(apt-get install -y npm)")
            run(["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache)], cache, timeout=300)
        with tarfile.open(tgz) as tar:
            meta = json.load(tar.extractfile("package/package.json"))
            entry = meta.get("jsdelivr") or meta.get("unpkg") or meta.get("browser") or meta["main"]
            served[url] = tar.extractfile(f"package/{entry.lstrip('./')}").read()
    return served


def pipeline_runs(uri: str) -> tuple[str, list]:
    """The experiment's id and its pipeline runs (the rows without a parent), one per experiment we made."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("dpt-repro")
    if experiment is None:
        raise SystemExit("the workspace's MLflow store has no experiment 'dpt-repro'")
    runs = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` IS NULL",
                              order_by=["attributes.start_time ASC"])
    mine = [r for r in runs if r.data.tags.get("dvc.exp_name") in dict(EXPERIMENTS)]
    if len(mine) < 2:
        raise SystemExit(f"expected the pipeline runs of {', '.join(dict(EXPERIMENTS))}, found "
                         f"{[r.info.run_name for r in runs]}")
    return experiment.experiment_id, mine[-2:]


def showing(page, texts: list[str], what: str, timeout_s: float = 90) -> None:
    """Wait until every text is visible on the page: the picture shows the data, not a spinner or an error."""
    for text in texts:
        try:
            page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=timeout_s * 1000)
        except Exception:  # playwright's TimeoutError: name what is missing
            raise SystemExit(f"{what}: '{text}' did not appear within {timeout_s:.0f} s; not saved") from None
    close = page.get_by_role("button", name="Close")  # MLflow's assistant panel, when it is open
    if close.count() and close.first.is_visible():
        close.first.click()
    page.wait_for_timeout(1500)  # let charts and fonts settle after the data arrived


def shoot(ws: Path, out: Path, port: int, chromium: str, js_cache: Path) -> int:
    ws, out = ws.resolve(), out.resolve()  # commands run inside ws: relative paths would point elsewhere
    if not Path(chromium).is_file():
        raise Refused(f"no Chromium at {chromium}: apt-get install -y chromium (or pass --chromium PATH)")
    if port in CHROMIUM_BLOCKED:
        raise Refused(f"port {port} is one Chromium refuses to open (ERR_UNSAFE_PORT): pass another --port")
    if not port_free(port):
        raise Refused(f"port {port} on 127.0.0.1 is busy: pass --port N")
    finished(ws)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise Refused("playwright is not installed: pip install -c constraints.txt -e '.[screenshots]'") from None
    out.mkdir(parents=True, exist_ok=True)
    plots = ws / "dvc_plots_screens"
    run(["dvc", "plots", "diff", *dict(EXPERIMENTS), "-o", str(plots)], ws)
    scripts = cdn_scripts((plots / "index.html").read_text(), js_cache)
    proc = start_server(ws, port, ws / "mlflow-server-screens.log")
    try:
        base = f"http://127.0.0.1:{port}"
        eid, (first, second) = pipeline_runs(base)
        names = [r.info.run_name for r in (first, second)]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 900}, device_scale_factor=1)
            page.route("https://cdn.jsdelivr.net/**", lambda route: route.fulfill(
                status=200 if route.request.url in scripts else 404, content_type="application/javascript",
                body=scripts.get(route.request.url, b"")))

            ml = "workflowType=machine_learning"  # the UI's "Model training" side, not GenAI
            page.goto(f"{base}/#/experiments/{eid}/runs?{ml}")
            showing(page, names, "runs table")
            page.locator("button[data-component-id*=runnamecellrenderer]").first.click()  # the newest run's stages
            showing(page, ["stage1", "evaluate"], "runs table, expanded")
            page.screenshot(path=out / "mlflow-pipeline-run.png")

            page.set_viewport_size({"width": 1500, "height": 1400})  # the page scrolls inside: a taller window
            page.goto(f"{base}/#/compare-runs?runs={json.dumps([first.info.run_id, second.info.run_id])}"
                      f"&experiments={json.dumps([eid])}&{ml}")
            showing(page, [*names, "top1_stage3", "dpt_gain"], "comparison")
            page.get_by_text("Visualizations").first.click()  # folded: the side-by-side tables come first
            page.get_by_text("Show diff only").first.click()  # the params that tell the two runs apart
            differs = EXPERIMENTS[1][1][1].split("=")[0]  # the key the second experiment sets
            showing(page, [differs, "top1_stage3"], "comparison, folded")
            page.screenshot(path=out / "mlflow-compare.png")
            page.set_viewport_size({"width": 1500, "height": 900})

            page.goto(f"{base}/#/models/dpt-classifier?{ml}")
            showing(page, ["dpt-classifier", "champion", "Version"], "model registry")
            page.screenshot(path=out / "mlflow-registry.png")

            page.set_viewport_size({"width": 1500, "height": 1200})  # the first plots of a long page
            page.goto((plots / "index.html").resolve().as_uri())
            charts = page.locator(".vega-embed canvas, .vega-embed svg.marks")
            try:  # vega draws on canvases: wait until every plot of the page has one
                page.wait_for_function("document.querySelectorAll('.vega-embed').length >= 3 && "
                                       "document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks')"
                                       ".length >= document.querySelectorAll('.vega-embed').length",
                                       timeout=60000)
            except Exception:
                raise SystemExit(f"dvc plots: {charts.count()} charts drawn after 60 s; not saved") from None
            page.wait_for_timeout(1500)
            page.screenshot(path=out / "dvc-plots.png")
            browser.close()
    finally:
        stop_server(proc, port)
        shutil.rmtree(plots, ignore_errors=True)
    for name in ("mlflow-pipeline-run", "mlflow-compare", "mlflow-registry", "dvc-plots"):
        print(f"wrote {out / name}.png")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("workspace", help="make DIR: smoke profile, two experiments").add_argument("dir", type=Path)
    shoot_p = sub.add_parser("shoot", help="the pictures, from DIR's finished pipeline")
    shoot_p.add_argument("dir", type=Path)
    shoot_p.add_argument("--out", type=Path, default=OUT)
    shoot_p.add_argument("--port", type=int, default=5057)
    shoot_p.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    shoot_p.add_argument("--js-cache", type=Path, default=ROOT / ".dpt" / "screenshots-js")
    args = ap.parse_args()
    try:
        if args.command == "workspace":
            make_workspace(args.dir)
            return 0
        return shoot(args.dir, args.out, args.port, args.chromium, args.js_cache)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
