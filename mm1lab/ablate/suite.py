"""Run a lesson: every arm x seed as a papermill run of `02_pretrain`, resumable, then scores, verdict and figure.

A lesson's runs live in one folder, `<out>/ablate-<lesson>-<scale>/`, named by arm and seed:

    runs/<arm>-seed<k>/        an ordinary run folder (executed notebook, metrics.json, status.json)
    lesson.json                the lesson's scores per arm and seed, the verdict and its effects
    lesson.md, lesson.png      the table and the figure `mm1lab ablate` and notebook 06 publish

Running the lesson again skips every run whose status.json says "ok", so a killed suite continues where it
stopped and nothing finished is redone. Lessons share arms (MM1's 45:45:10 mix is an arm of four of them), so a run
whose parameters and seed equal a finished run of another lesson at the same scale is copied from it, not redone:
the same code on the same thread count gives bit-identical results (docs/ablations.md). It is marked `reused.json`.
The stage-0 parts come from stage0/ and are shared by every arm; an encoder
the lesson needs but stage0/ does not ship is trained once, into the lesson folder, before the first run.
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mm1lab.ablate.lessons import LESSONS, ROOT, SCALES, STAGE0, lesson_arms
from mm1lab.ablate.verdict import Scores, Verdict, interval, judge

NOTEBOOK = ROOT / "notebooks" / "02_pretrain.ipynb"


def run_folder(lesson_dir: Path, arm: str, seed: int) -> Path:
    from mm1lab.runner import slug

    return lesson_dir / "runs" / f"{slug(arm)}-seed{seed}"


def finished(folder: Path) -> bool:
    """A run that completed (status ok and its metrics written)."""
    status = folder / "status.json"
    return status.exists() and json.loads(status.read_text()).get("status") == "ok" and \
        (folder / "metrics.json").exists()


@cache
def notebook_defaults() -> dict[str, Any]:
    """The values `02_pretrain`'s parameters cell assigns (the literals among them)."""
    import nbformat

    from mm1lab.runner import parameters_cell

    nb = nbformat.read(NOTEBOOK, as_version=4)
    defaults = {}
    for node in ast.parse(nb.cells[parameters_cell(nb)].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                defaults[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return defaults


def effective(params: dict[str, Any]) -> dict[str, Any]:
    """`params` as the notebook reads them: its defaults filled in, and the preset's token count and resolution
    where the parameter says "the preset's" (None). Two arms that differ only in naming a default are one run."""
    from mm1lab.config import MM1Config

    params = {**notebook_defaults(), **params}
    try:
        cfg = MM1Config.preset(params.get("PRESET"))
    except (KeyError, ValueError, TypeError):
        return params
    if params.get("IMAGE_TOKENS") is None and params.get("CONNECTOR") == cfg.connector.kind:
        params["IMAGE_TOKENS"] = cfg.connector.num_tokens
    if params.get("RESOLUTION") is None:
        params["RESOLUTION"] = cfg.vision.image_size
    return params


def run_key(params: dict[str, Any]) -> str:
    """What makes two runs the same run: every parameter as the notebook reads it (`effective`), with the mixture
    as shares (1:1:0 is 50:50:0)."""
    params = effective(params)
    mixture = params.get("MIXTURE")
    if isinstance(mixture, dict) and sum(mixture.values()) > 0:
        params["MIXTURE"] = {k: round(v / sum(mixture.values()), 12) for k, v in mixture.items() if v}
    return json.dumps(params, sort_keys=True, default=str)


def lesson_folder(out: str | Path, lesson: str, scale: str, smoke: bool) -> Path:
    return Path(out) / f"ablate-{lesson}-{scale}{'-smoke' if smoke else ''}"


def identical_run(lesson_dir: Path, params: dict[str, Any], scale: str, smoke: bool) -> Path | None:
    """A finished run of another lesson at the same scale with exactly these parameters (seed and SMOKE included)."""
    key = run_key(params)
    for other in sorted(lesson_dir.parent.glob(lesson_folder("", "*", scale, smoke).name)):   # ablate-*-cpu
        if other == lesson_dir:
            continue
        for folder in sorted((other / "runs").glob("*")):
            if finished(folder) and not (folder / "reused.json").exists() and (folder / "parameters.yaml").exists() \
                    and run_key(yaml.safe_load((folder / "parameters.yaml").read_text())) == key:
                return folder
    return None


def ensure_parts(arms: dict[str, dict[str, Any]], lesson_dir: Path, *, smoke: bool, progress) -> None:
    """Train (once) any stage-0 encoder an arm names that stage0/ does not hold, and point the arms at it."""
    from mm1lab.stage0.presets import STAGE0_PRESETS
    from mm1lab.stage0.table1 import encoder_folder

    for params in arms.values():
        path = Path(params.get("VISION_INIT") or "")
        if path.parent == STAGE0 and not (path / "config.json").exists():
            if path.name not in STAGE0_PRESETS:
                raise FileNotFoundError(f"{path} is missing and is no stage-0 preset; run `mm1lab stage0 ship`")
            progress(f"training stage-0 encoder {path.name} once for every arm that needs it")
            # The shipped 64-px encoders' recipe (800 steps of 128 pairs), so a size arm sees the same data.
            # Absolute: each run's notebook executes in its own folder.
            params["VISION_INIT"] = str(encoder_folder(path.name, shipped=STAGE0, out=lesson_dir / "encoders",
                                                       steps=800, batch_size=128, smoke=smoke).resolve())


def default_jobs(scale: str) -> int:
    """How many runs at once: at the cpu scale one per core, up to 8 (each run on one thread: the tiny model's ops are
    too small for a second thread to pay, so two one-thread runs side by side finish sooner than two two-thread runs
    one after the other); at the gpu scale one, on the one device."""
    return min(os.cpu_count() or 1, 8) if scale == "cpu" else 1


def run_lesson(lesson: str, *, scale: str = "cpu", seeds: int = 3, out: str | Path = "papermill_runs",
               smoke: bool = False, parts: dict[str, str] | None = None, kernel: str | None = None,
               jobs: int | None = None, progress=print) -> dict[str, Any]:
    """Run (or finish) every arm x seed of `lesson` and return the lesson's result (also written to lesson.json).

    `jobs` runs execute at once (default: `default_jobs`), each in its own process and kernel with
    cores // jobs threads, unless OMP_NUM_THREADS is set. A run's thread count is recorded in its status.json:
    results are bit-identical between equal code and thread counts, and equal only to rounding across them."""
    if lesson not in LESSONS:
        raise ValueError(f"unknown lesson {lesson!r}; choose one of {', '.join(LESSONS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    jobs = default_jobs(scale) if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    lesson_dir = lesson_folder(out, lesson, scale, smoke)
    arms = lesson_arms(lesson, scale, parts=parts)
    ensure_parts(arms, lesson_dir, smoke=smoke, progress=progress)
    start, total = time.perf_counter(), len(arms) * seeds
    todo = []
    for done, (arm, seed) in enumerate(((a, s) for a in arms for s in range(seeds)), start=1):
        folder = run_folder(lesson_dir, arm, seed)
        if finished(folder):
            progress(f"[{done}/{total}] {lesson}: {arm} seed {seed}: done before, kept")
            continue
        shutil.rmtree(folder, ignore_errors=True)   # a killed run's partial folder is redone from scratch
        same = identical_run(lesson_dir, {**arms[arm], "SEED": seed, "SMOKE": smoke}, scale, smoke)
        if same is not None:
            shutil.copytree(same, folder)
            (folder / "reused.json").write_text(json.dumps({"from": str(same.resolve())}) + "\n")
            progress(f"[{done}/{total}] {lesson}: {arm} seed {seed}: identical to {same.parent.parent.name}/"
                     f"{same.name}, reused")
            continue
        todo.append(dict(params={**arms[arm], "SEED": seed}, folder=folder, lesson_dir=lesson_dir, smoke=smoke,
                         kernel=kernel, label=f"{lesson} [{done}/{total}] {arm} seed {seed}",
                         index=dict(lesson=lesson, arm=arm, seed=seed)))
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
    for job, (status, seconds) in _execute(todo, jobs, threads):
        progress(f"{job['label']}: {status} in {seconds:.0f} s ({time.perf_counter() - start:.0f} s so far)")
    return summarise(lesson, lesson_dir, arms, seeds)


def _execute(todo: list[dict[str, Any]], jobs: int, threads: str):
    """Run each job of `todo` through `_run_one`, `jobs` at a time; yield (job, (status, seconds)) as each ends."""
    if jobs == 1 or len(todo) <= 1:
        for job in todo:
            yield job, _run_one(job, threads)
        return
    # Processes, not threads: papermill routes a run's output through one process-wide logger, and each worker's
    # kernel inherits its thread count from the worker's environment. "spawn" also works inside a Jupyter kernel.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_one, job, threads): job for job in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _run_one(job: dict[str, Any], threads: str) -> tuple[str, float]:
    """One arm x seed as a papermill run of 02_pretrain, its kernel on `threads` threads; (status, seconds)."""
    from mm1lab.runner import DEFAULT_KERNEL, kernel_environ, run_notebook

    t0 = time.perf_counter()
    with kernel_environ(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads):   # read by the kernel's torch
        result = run_notebook(NOTEBOOK, job["params"], out_root=job["lesson_dir"], smoke=job["smoke"],
                              folder=job["folder"], kernel=job["kernel"] or DEFAULT_KERNEL, live=job["label"],
                              extra_index={**job["index"], "threads": int(threads)})
    status = Path(job["folder"]) / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "threads": int(threads)}, indent=2) + "\n")
    return result.status, time.perf_counter() - t0


def collect(lesson_dir: Path, arms: dict[str, Any], seeds: int) -> tuple[Scores, list[str]]:
    """Per arm and metric, one value per seed from the runs' metrics.json; and the runs that are missing."""
    scores: Scores = {}
    missing = []
    for arm in arms:
        scores[arm] = {}
        for seed in range(seeds):
            folder = run_folder(lesson_dir, arm, seed)
            if not finished(folder):
                missing.append(f"{arm} seed {seed}")
                continue
            m = json.loads((folder / "metrics.json").read_text())
            values = dict(m.get("average", {}))
            for metric, task in (("text", "text@0shot"), ("caption0", "caption@0shot")):
                score = m.get("scores", {}).get(task)
                if score is not None:
                    values[metric] = score["score"] * 100
            for key, value in values.items():
                scores[arm].setdefault(key, []).append(value)
    return scores, missing


def summarise(lesson: str, lesson_dir: Path, arms: dict[str, Any], seeds: int) -> dict[str, Any]:
    """Scores, intervals, the verdict and the figure of a lesson's finished runs (lesson.json, .md, .png)."""
    spec = LESSONS[lesson]
    scores, missing = collect(lesson_dir, arms, seeds)
    if missing:
        verdict = Verdict("incomplete", [], f"runs missing or failed: {', '.join(missing)}")
    else:
        verdict = judge(spec.rule, scores)
    table = {arm: {m: interval(v) for m, v in metrics.items()} for arm, metrics in scores.items() if metrics}
    result = dict(lesson=lesson, claim=spec.claim, paper=spec.paper, seeds=seeds, arms=list(arms),
                  scores=scores, intervals=table, verdict=verdict.verdict, reason=verdict.reason,
                  effects=[dict(name=e.name, mean=e.mean, low=e.low, high=e.high, values=e.values)
                           for e in verdict.effects],
                  seconds=sum(_duration(run_folder(lesson_dir, a, s)) for a in arms for s in range(seeds)),
                  wall_seconds=_wall([run_folder(lesson_dir, a, s) for a in arms for s in range(seeds)]))
    lesson_dir.mkdir(parents=True, exist_ok=True)
    (lesson_dir / "lesson.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    from mm1lab.ablate.report import lesson_markdown, plot_lesson

    (lesson_dir / "lesson.md").write_text(lesson_markdown(result))
    if table:
        plot_lesson(result).savefig(lesson_dir / "lesson.png", dpi=110, bbox_inches="tight")
    return result


def _wall(folders: list[Path]) -> float:
    """Seconds from the start of the lesson's first run to the end of its last (runs side by side count once; a
    lesson killed and resumed later counts the pause too)."""
    import datetime as dt

    spans = [json.loads((f / "status.json").read_text()) for f in folders
             if (f / "status.json").exists() and not (f / "reused.json").exists()]
    if not spans:
        return 0.0
    first = min(dt.datetime.fromisoformat(s["started"]) for s in spans)
    last = max(dt.datetime.fromisoformat(s["finished"]) for s in spans)
    return round((last - first).total_seconds(), 1)


def _duration(folder: Path) -> float:
    """Seconds this lesson spent on a run (a reused run cost nothing here)."""
    status = folder / "status.json"
    if (folder / "reused.json").exists():
        return 0.0
    return json.loads(status.read_text()).get("duration_s", 0.0) if status.exists() else 0.0
