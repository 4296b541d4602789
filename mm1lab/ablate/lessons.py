"""MM1's six ablation lessons as runnable sweeps: the paper's claim, the arms, what is measured, and how the verdict
is taken. Each arm is a set of `02_pretrain` parameters; every arm of a lesson shares the rest of the recipe
(`base`), the stage-0 parts it starts from, and the evaluation (`EVAL_*`).

Scales: "cpu" fits a lesson in about 30 minutes on 2 cores (tiny preset from the shipped stage-0 parts, a few
hundred steps); "gpu" is the same lesson at the ablation-base shape (ViT-L/14 at 336 px, a 1.2B LM) with more steps,
from public checkpoints given on the command line (`--vision`, `--lm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STAGE0 = ROOT / "stage0"
CAPTION_AND_VQA = ["caption", "vqa", "color", "count", "shape", "position"]   # what MM1's average is taken over


@dataclass(frozen=True)
class Lesson:
    """One ablation lesson. `arms`: name -> 02_pretrain parameters; `rule`: how the verdict is taken from the
    arms' seeds (a function in `mm1lab.ablate.verdict.RULES`, which also names the effects it reads)."""

    name: str
    claim: str
    paper: str
    arms: dict[str, dict[str, Any]]
    rule: str
    metrics: tuple[str, ...] = ("0shot", "4shot", "8shot")
    base: dict[str, Any] = field(default_factory=dict)
    gpu_only: tuple[str, ...] = ()   # arms left out at the cpu scale, to fit its 30-minute budget


def _data_base(**over: Any) -> dict[str, Any]:
    """MM1's 45:45:10 mixture with 7% synthetic captions, with some of it changed."""
    return {"MIXTURE": {"caption": 45, "interleaved": 45, "text": 10}, "DENSE_SHARE": 0.07, **over}


LESSONS: dict[str, Lesson] = {
    "encoder": Lesson(
        name="encoder",
        claim="Image resolution has the highest impact, followed by model size and training data composition.",
        paper="Table 1: CLIP ViT-L 224 -> 336 px: 0-shot 36.9 -> 39.9, 8-shot 62.2 -> 66.0 (resolution, +3); "
              "ViT-L -> ViT-H at 336 px: +0.6 / +0.3 (size); AIM-600M vs CLIP ViT-L at 224 px: 36.6 vs 36.9 0-shot.",
        arms={"clip-64": dict(VISION_INIT="clip-tiny"), "clip-128": dict(VISION_INIT="clip-tiny-128", RESOLUTION=128),
              "clip-small-64": dict(VISION_INIT="clip-small"), "aim-64": dict(VISION_INIT="aim-tiny")},
        rule="largest_first"),
    "connector": Lesson(
        name="connector",
        claim="Number of visual tokens and image resolution matters most, while the type of VL connector has little "
              "effect.",
        paper="Fig. 4: at 336 px / 144 tokens avgpool, attention pooling and C-Abstractor lie within about a point; "
              "64 -> 144 tokens and 224 -> 336 px each move the average more than the connector type.",
        arms={"avgpool": dict(CONNECTOR="avgpool"), "attnpool": dict(CONNECTOR="attnpool"),
              "c-abstractor": dict(CONNECTOR="c-abstractor"), "d-abstractor": dict(CONNECTOR="d-abstractor"),
              "tokens-4": dict(CONNECTOR="c-abstractor", IMAGE_TOKENS=4),
              "tokens-64": dict(CONNECTOR="c-abstractor", IMAGE_TOKENS=64),
              "res-128": dict(CONNECTOR="c-abstractor", VISION_INIT="clip-tiny-128", RESOLUTION=128)},
        # D-Abstractor runs at the gpu scale only: 7 arms x 3 seeds would not fit 30 minutes on 2 cores.
        rule="tokens_and_resolution_over_type", base=dict(IMAGE_TOKENS=16), gpu_only=("d-abstractor",)),
    "data-captions": Lesson(
        name="data-captions",
        claim="Interleaved data is instrumental for few-shot and text-only performance; captioning data lifts "
              "zero-shot.",
        paper="Fig. 5a: 0-shot average 25.8 -> 39.3 as captions go from 0 to 100% of the image data; 8-shot drops "
              "from ~61 to ~45 when interleaved data falls below half.",
        arms={"captions-0": _data_base(MIXTURE={"caption": 0, "interleaved": 90, "text": 10}),
              "captions-50": _data_base(MIXTURE={"caption": 45, "interleaved": 45, "text": 10}),
              "captions-100": _data_base(MIXTURE={"caption": 90, "interleaved": 0, "text": 10})},
        rule="caption_zero_interleaved_few", metrics=("0shot", "4shot", "8shot", "text")),
    "data-text": Lesson(
        name="data-text",
        claim="Text-only data helps few-shot and text-only performance.",
        paper="Fig. 5b: adding text-only data to interleaved (or caption) data raises few-shot and TextCore.",
        arms={"text-0": _data_base(MIXTURE={"caption": 50, "interleaved": 50, "text": 0}),
              "text-10": _data_base(MIXTURE={"caption": 45, "interleaved": 45, "text": 10}),
              "text-30": _data_base(MIXTURE={"caption": 35, "interleaved": 35, "text": 30})},
        rule="text_helps_few_and_text", metrics=("0shot", "4shot", "8shot", "text")),
    "data-mixture": Lesson(
        name="data-mixture",
        claim="A careful mixture of image and text data gives the best multimodal results and keeps text performance; "
              "5:5:1 caption:interleaved:text is best.",
        paper="Fig. 5c: among 1:1:0, 5:5:1, 1:1:1 and caption/interleaved-heavy mixes, 5:5:1 gives the best "
              "multimodal average with TextCore close to the text-heaviest mix.",
        arms={"5:5:1": _data_base(MIXTURE={"caption": 5, "interleaved": 5, "text": 1}),
              "1:1:0": _data_base(MIXTURE={"caption": 1, "interleaved": 1, "text": 0}),
              "1:1:1": _data_base(MIXTURE={"caption": 1, "interleaved": 1, "text": 1}),
              "10:1:1": _data_base(MIXTURE={"caption": 10, "interleaved": 1, "text": 1}),
              "1:10:1": _data_base(MIXTURE={"caption": 1, "interleaved": 10, "text": 1})},
        rule="mixture_best", metrics=("0shot", "4shot", "8shot", "text")),
    "data-synthetic": Lesson(
        name="data-synthetic",
        claim="Synthetic captions (VeCap, about 7% of the captions) help few-shot performance.",
        paper="Fig. 5d: with VeCap-300M, +2.4 (4-shot) to +4 (8-shot) points.",
        arms={"dense-0": _data_base(DENSE_SHARE=0.0), "dense-7": _data_base(DENSE_SHARE=0.07)},
        rule="positive_few"),
}

# The recipe every arm of every lesson shares, per scale (02_pretrain parameters). Stage-0 part names in VISION_INIT
# / LM_INIT are folders of the shipped stage0/ (cpu) or the paths given to `mm1lab ablate --vision/--lm` (gpu).
SCALES: dict[str, dict[str, Any]] = {
    "cpu": dict(PRESET="tiny", RESOLUTION=64, VISION_INIT="clip-tiny", LM_INIT="lm-tiny", STEPS=250, BATCH_SIZE=16,
                SEQ_LEN=256, EVAL_N=40, EVAL_TASKS=CAPTION_AND_VQA + ["text"], EVAL_SHOTS=[0, 4, 8],
                QUESTION_MIX={"color": 0.2, "count": 0.25, "shape": 0.2, "position": 0.2, "pope": 0.15}),
    "gpu": dict(PRESET="ablation-base", RESOLUTION=336, IMAGE_TOKENS=144, STEPS=5000, BATCH_SIZE=256, SEQ_LEN=1024,
                EVAL_N=500, EVAL_TASKS=CAPTION_AND_VQA + ["text"], EVAL_SHOTS=[0, 4, 8], DEVICE="cuda",
                PRECISION="bf16"),
}


def lesson_arms(lesson: str, scale: str, *, parts: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """arm name -> the full 02_pretrain parameters of that arm at `scale` (seed not set). Stage-0 names resolve to
    folders: `parts` (name -> folder) first, then the shipped stage0/."""
    spec, recipe = LESSONS[lesson], SCALES[scale]
    arms = {}
    for name, params in spec.arms.items():
        if scale == "cpu" and name in spec.gpu_only:
            continue
        merged = {**recipe, **spec.base, **params}
        for key in ("VISION_INIT", "LM_INIT"):
            value = merged.get(key)
            if value and not Path(value).is_absolute():
                merged[key] = str((parts or {}).get(value) or STAGE0 / value)
        arms[name] = merged
    return arms
