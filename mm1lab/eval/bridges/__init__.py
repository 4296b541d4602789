"""Bridges from mm1lab checkpoints to outside evaluation harnesses (docs/harnesses.md).

- `lmms`: an lmms-eval model plugin, `--model mm1lab` / `mm1lab_pretrained`, registered through the
  `lmms_eval.models` entry point; `tasks/` holds local lmms-eval tasks on the committed COCO / VQAv2 samples
  (`--include_path mm1lab/eval/bridges/tasks`).
- `vlmevalkit`: a VLMEvalKit model class (`generate_inner` over interleaved image/text messages).
- `core`: what both share: prompts from interleaved parts, generation until stop strings, continuation scores.

Neither harness has image few-shot prompts, so MM1's k-shot protocol stays in `mm1lab eval`.
"""
