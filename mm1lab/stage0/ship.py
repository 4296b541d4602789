"""`mm1lab stage0 ship`: train the stage-0 models the CPU presets start from, export them, score them, write them
into the repository's `stage0/` folder. It is the only writer of that folder.

    stage0/
        clip-tiny/  clip-tiny-128/      CLIP encoders at 64 and 128 px (transformers CLIPModel folders)
        aim-tiny/   aim-tiny-128/       AIM trunks at 64 and 128 px (SiglipVisionModel folders)
        clip-small/                     the larger CLIP encoder of the encoder lesson, vision tower only
                                        (a CLIPVisionModel folder)
        clip-tiny-ocr/                  clip-tiny continued on sign captions (CoCa, anchored): it reads a little;
                                        vision tower only. `mm1lab demo --long` starts from it
        lm-tiny/                        the tiny preset's LM, pre-trained on text (LlamaForCausalLM folder)
        README.md                       what each is, its scores beside chance, and how long it took

Each model is trained by `mm1lab train` on its config in `configs/` (runs go to `runs/stage0/<name>/`, so an
interrupted `ship` resumes), exported (`mm1lab.stage0.export`), then scored on held-out scenes: CLIP zero-shot
attributes and retrieval, every encoder's linear probes, the LM's TextCore cloze. The scores are recorded in each
folder's `mm1lab_stage0.json`; a test reloads the shipped folders and reproduces the zero-shot scores.
`ship --score-only` scores the shipped folders again without training (`rescore`), for when the scoring changes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
ZERO_SHOT_N = 128          # the fixed small set the recorded zero-shot scores are computed on (a test redoes it)
# Probes train on 2,048 scenes: with 4,096 features per scene that is short of data, so the probe also measures how
# readily an encoder's features give the attribute up. They are tested on 1,024 (a standard error near 0.01; 256 gave
# 0.02-0.03, too wide to tell the shipped encoders apart: docs/stage0.md, "The calibration floor, like for like").
PROBE_TRAIN, PROBE_TEST = 2048, 1024
# The sign can stand anywhere along its row, so its word is read by an attention-pooling probe (position-invariant);
# the other attributes are about places and counts, read in place by a linear probe over every patch.
PROBE_KIND = {"text": "attention"}
ATTRIBUTES = ("color", "count", "shape", "position", "text")


@dataclass(frozen=True)
class Shipped:
    """One shipped model: its kind (clip / aim / lm), training config, and overrides of it. `vision_only`: ship a
    CLIP's vision tower alone (no zero-shot scores then: they need the text tower). `starts_from`: another shipped
    model this one continues (`init_from`). `phases`: the config is trained this many times in a row, each phase
    continuing the one before, so that an anchored run (`anchor_weight`) is anchored where its phase starts."""

    kind: str
    config: str
    overrides: tuple[str, ...] = field(default_factory=tuple)
    vision_only: bool = False
    starts_from: str | None = None
    phases: int = 1


SHIPPED: dict[str, Shipped] = {
    "lm-tiny": Shipped("lm", "stage0-lm-tiny.yaml"),
    "clip-tiny": Shipped("clip", "stage0-clip-tiny.yaml"),
    "aim-tiny": Shipped("aim", "stage0-aim-tiny.yaml"),
    # At 128 px a step costs 2-4x a 64-px step (4x the patches), and all five models must train in about an hour
    # and a half on 2 cores, so the 128-px encoders take 250 steps: less compute than the 64-px encoders' 800 and
    # under a third of their image-text pairs. docs/stage0.md says so beside every 64-vs-128 comparison.
    "clip-tiny-128": Shipped("clip", "stage0-clip-tiny.yaml", ("model=clip-tiny-128", "steps=250")),
    "aim-tiny-128": Shipped("aim", "stage0-aim-tiny.yaml", ("model=aim-tiny-128", "steps=250")),
    # The encoder lesson's larger size (width 96, depth 8), with the 64-px encoders' recipe. Its vision tower alone:
    # with its text tower it would take stage0/ past 20 MB. Shipped so that the lesson need not train it (31 min).
    "clip-small": Shipped("clip", "stage0-clip-tiny.yaml", ("model=clip-small",), vision_only=True),
    # clip-tiny taught to read the signs: CoCa on sign captions, anchored to its features (docs/stage0.md, "Feature
    # anchoring"), two phases of 800 steps. `mm1lab demo --long` starts from it. Its vision tower alone (0.9 MB).
    "clip-tiny-ocr": Shipped("clip", "stage0-clip-tiny-ocr.yaml",
                             ("model={preset: clip-tiny, caption_weight: 2.0, anchor_weight: 1.0}",),
                             vision_only=True, starts_from="clip-tiny", phases=2),
}
SMOKE_OVERRIDES = ("steps=2", "batch_size=8", "data.seq_len=128", "optim.warmup_steps=1", "track.progress=false")


def score(kind: str, folder: Path, *, smoke: bool = False, attributes: tuple[str, ...] = ATTRIBUTES) -> dict[str, Any]:
    """Held-out scores of an encoder or LM folder, each with its chance level (see `mm1lab.stage0.evaluate`)."""
    from mm1lab.data.tokenizer import load_tokenizer
    from mm1lab.stage0 import evaluate as E

    n, n_train, n_test = (8, 32, 16) if smoke else (ZERO_SHOT_N, PROBE_TRAIN, PROBE_TEST)
    out: dict[str, Any] = {}
    if kind == "lm":
        return dict(text=lm_cloze(folder, n=16 if smoke else 256))
    if kind == "clip" and has_text_tower(folder):
        from mm1lab.stage0.export import load_clip

        clip, tok = load_clip(folder), load_tokenizer()
        out["zero_shot"] = {a: E.zero_shot(clip, tok, a, n=n) for a in attributes}
        out["retrieval"] = E.retrieval(clip, tok, n=n)
        out["shape_swap"] = E.shape_swap(clip, tok, n=n)
        encoder = clip.vision
    else:
        from mm1lab.pretrained import load_hf_vision

        encoder = load_hf_vision(folder)
    out["probe"] = {a: E.linear_probe(encoder, a, n_train=n_train, n_test=n_test, steps=20 if smoke else 300,
                                      kind=PROBE_KIND.get(a, "linear")) for a in attributes}
    return out


def has_text_tower(folder: Path) -> bool:
    """A whole CLIPModel folder (zero-shot and retrieval can be scored), not a vision tower alone."""
    return json.loads((Path(folder) / "config.json").read_text()).get("model_type") == "clip"


def lm_cloze(folder: Path, *, n: int) -> dict[str, float]:
    """The TextCore analogue (log-likelihood ranking of 4 choices) for an LM folder, beside chance."""
    from mm1lab.config import MM1Config
    from mm1lab.data.tokenizer import as_mm1_tokenizer
    from mm1lab.eval.harness import evaluate
    from mm1lab.model import MM1Model
    from mm1lab.pretrained import load_hf_lm

    loaded = load_hf_lm(folder)
    model = MM1Model(MM1Config.preset("tiny", lm=loaded.cfg))
    model.lm.load_state_dict(loaded.lm.state_dict())
    report = evaluate(model.eval(), as_mm1_tokenizer(loaded.tokenizer), "shapeworld-pretrain", shots=(0,),
                      tasks=("text",), n=n)
    entry = report["tasks"]["text@0shot"]
    return dict(score=entry["score"], interval=entry["interval"], uniform=entry["baseline"], n=entry["n"])


def ship(names: list[str] | None = None, *, out: str | Path = ROOT / "stage0", runs: str | Path = "runs/stage0",
         smoke: bool = False, progress=print) -> dict[str, Any]:
    """Train, export and score each shipped model (`SHIPPED`, or `names`) into `out`; returns what was recorded."""
    from mm1lab.train import train

    out, runs = Path(out), Path(runs)
    names = names or list(SHIPPED)
    unknown = sorted(set(names) - set(SHIPPED))
    if unknown:
        raise ValueError(f"unknown stage-0 model(s) {unknown}; choose from {', '.join(SHIPPED)}")
    recorded = {}
    for name in names:
        spec = SHIPPED[name]
        start_from = out / spec.starts_from if spec.starts_from else None
        if start_from is not None and not (start_from / "mm1lab_stage0.json").exists():
            raise FileNotFoundError(f"stage0 {name} continues {spec.starts_from}, and {start_from} holds no shipped "
                                    f"model: ship it first (`mm1lab stage0 ship --only {spec.starts_from},{name}`)")
        steps, resumed_at, start = 0, 0, time.perf_counter()
        for phase in range(1, spec.phases + 1):
            run = runs / name if spec.phases == 1 else runs / name / f"phase_{phase}"
            overrides = [*spec.overrides, f"out_dir={run}", *([f"init_from={start_from}"] if start_from else []),
                         *(SMOKE_OVERRIDES if smoke else ())]
            progress(f"stage0 {name}: training ({CONFIGS / spec.config} {' '.join(overrides)})")
            resumed_at += _checkpoint_step(run)
            result = train(CONFIGS / spec.config, overrides=overrides)
            if result.status != "finished":
                raise RuntimeError(f"stage0 {name}: training was {result.status} at step {result.step}; run again "
                                   "to resume")
            steps, start_from = steps + result.step, run        # the next phase continues this one
        seconds = time.perf_counter() - start
        info = dict(name=name, kind=spec.kind, config=spec.config, overrides=list(spec.overrides),
                    steps=steps, train_seconds=round(seconds, 1), final_loss=result.metrics.get("loss"),
                    smoke=smoke, **({"phases": spec.phases} if spec.phases > 1 else {}))
        if resumed_at:     # an interrupted ship resumed: the time covers only the steps trained in this call
            info["resumed_at_step"] = resumed_at
        folder = export(spec.kind, result.model, out / name, info, vision_only=spec.vision_only)
        recorded[name] = score_and_record(folder, info, smoke=smoke, progress=progress)
    if not smoke or out != ROOT / "stage0":
        (out / "README.md").write_text(readme({**read_recorded(out), **recorded}))
    return recorded


def rescore(names: list[str] | None = None, *, out: str | Path = ROOT / "stage0", smoke: bool = False,
            progress=print) -> dict[str, Any]:
    """Score the shipped folders under `out` again, without training: their weights and training record stay, their
    scores, score time and `rescored` date are replaced, and README.md is rewritten. `ship` itself cannot do this: it
    would resume each finished run and record that call's seconds as the model's training time."""
    out = Path(out)
    names = names or list(SHIPPED)
    recorded = read_recorded(out)
    missing = [name for name in names if name not in recorded]
    if missing:
        raise FileNotFoundError(f"no shipped {', '.join(missing)} under {out} (each needs <name>/mm1lab_stage0.json): "
                                f"train {'it' if len(missing) == 1 else 'them'} first with `mm1lab stage0 ship --only "
                                f"{','.join(missing)}`")
    for name in names:
        progress(f"stage0 {name}: scoring {out / name} again (weights and training record kept)")
        recorded[name]["rescored"] = time.strftime("%Y-%m-%d")
        score_and_record(out / name, recorded[name], smoke=smoke, progress=progress)
    if not smoke or out != ROOT / "stage0":
        (out / "README.md").write_text(readme(recorded))
    return {name: recorded[name] for name in names}


def _checkpoint_step(run: Path) -> int:
    """The step of the run's newest complete checkpoint (0 when there is none: the run starts fresh)."""
    from mm1lab.folders import find_checkpoint

    found = find_checkpoint(run) if run.exists() else None
    return int(found.name.rsplit("_", 1)[-1]) if found is not None and found.name.startswith("step_") else 0


def export(kind: str, model, folder: Path, info: dict, *, vision_only: bool = False) -> Path:
    """Write one trained model into `folder` in its public format (a CLIP's vision tower alone if `vision_only`)."""
    from mm1lab.data.tokenizer import load_tokenizer
    from mm1lab.stage0.export import export_aim, export_clip, export_clip_vision, export_lm

    if kind == "clip":
        return (export_clip_vision if vision_only else export_clip)(model, folder, info=info)
    if kind == "aim":
        return export_aim(model, folder, info=info)
    return export_lm(model.lm, load_tokenizer(), folder, info=info)


def score_and_record(folder: Path, info: dict[str, Any], *, smoke: bool, progress=print) -> dict[str, Any]:
    """Score `folder` into `info` (its scores and score time) and write the record; returns `info`."""
    start = time.perf_counter()
    info["scores"] = score(info["kind"], folder, smoke=smoke)
    info["score_seconds"] = round(time.perf_counter() - start, 1)
    write_record(folder, info)
    progress(f"stage0 {info['name']}: {json.dumps(info['scores'])[:300]}")
    return info


def write_record(folder: Path, info: dict[str, Any]) -> None:
    """`folder/mm1lab_stage0.json`, replaced in one step: an interrupted write leaves the old record, not half a
    new one."""
    tmp = folder / "mm1lab_stage0.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, folder / "mm1lab_stage0.json")


def read_recorded(out: Path) -> dict[str, Any]:
    """What `ship` recorded in every folder under `out`."""
    found = {}
    for path in sorted(Path(out).glob("*/mm1lab_stage0.json")):
        info = json.loads(path.read_text())
        found[info["name"]] = info
    return found


def readme(recorded: dict[str, Any]) -> str:
    """stage0/README.md: the shipped models, their scores beside chance, and their training time."""
    lines = ["# stage0/", "", "MM1's stage 0 for the CPU presets: pre-trained encoders and LM that `make demo` starts "
             "from.", "Written only by `mm1lab stage0 ship` (see `mm1lab/stage0/ship.py`); do not edit.", "",
             "| model | kind | steps | train s | scores (chance) |", "| --- | --- | ---: | ---: | --- |"]
    total = 0.0
    for name, info in recorded.items():
        total += info["train_seconds"] + info.get("score_seconds", 0)
        seconds = f"{info['train_seconds']:.0f}"
        if info.get("resumed_at_step"):
            seconds += f" (steps {info['resumed_at_step']}-{info['steps']} only: resumed)"
        rescored = f" (scored again {info['rescored']})" if info.get("rescored") else ""
        lines.append(f"| `{name}` | {info['kind']} | {info['steps']} | {seconds} | "
                     f"{_brief(info['scores'])}{rescored} |")
    lines += ["", f"Total, training and scoring: {total / 60:.1f} min on the machine that ran `ship` (steps before a "
              "resume not counted; scoring as last run).", "",
              f"Probes train on {PROBE_TRAIN:,} held-out scenes and are tested on {PROBE_TEST:,}; zero-shot and "
              f"retrieval use {ZERO_SHOT_N}.", ""]
    return "\n".join(lines)


def _brief(scores: dict[str, Any]) -> str:
    parts = []
    for group, entries in scores.items():
        if "score" in entries:
            parts.append(f"{group} {entries['score']:.2f} ({entries.get('uniform', 0):.2f})")
            continue
        for attr, s in entries.items():
            parts.append(f"{group}/{attr} {s['score']:.2f} ({max(s.get('majority', 0), s.get('uniform', 0)):.2f})")
    return "; ".join(parts)
