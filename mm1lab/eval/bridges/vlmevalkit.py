"""VLMEvalKit model class for mm1lab checkpoints: `generate_inner` over interleaved image/text messages.

VLMEvalKit (github.com/open-compass/VLMEvalKit, not on PyPI) builds a model from `vlmeval.config.supported_VLM`,
a dict of name -> constructor; add one for your checkpoint before its `run.py` runs (docs/harnesses.md):

    from functools import partial
    from vlmeval.config import supported_VLM
    from mm1lab.eval.bridges.vlmevalkit import MM1VLM
    supported_VLM["mm1lab-sft"] = partial(MM1VLM, model_path="runs/tiny-sft", prompt="chat")

With `vlmeval` importable, `MM1VLM` subclasses `vlmeval.vlm.base.BaseModel`; without it, it stands alone with the
same interface (`generate`, `generate_inner`, `use_custom_prompt`, `build_prompt`), so mm1lab's tests run it
offline. A message is a list of dict(type='image' | 'text', value=...), in reading order; image values are file
paths (VLMEvalKit writes images to disk) or PIL images. VLMEvalKit builds each dataset's prompt itself
(`use_custom_prompt` is False); it has no image few-shot, so MM1's k-shot protocol stays in `mm1lab eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mm1lab.eval.bridges.core import BridgeModel

DEFAULT_NEW_TOKENS = 32   # VLMEvalKit datasets ask short questions; captions may want more (max_new_tokens=)


class StandAloneBase:
    """What `MM1VLM` uses of `vlmeval.vlm.base.BaseModel`, for when VLMEvalKit is not installed."""

    def __init__(self):
        self.dump_image_func = None

    def generate(self, message, dataset: str | None = None) -> str:
        """VLMEvalKit's entry point: a message as a string, a dict, or a list of strings (paths or text) or dicts."""
        if isinstance(message, str):
            message = [dict(type="text", value=message)]
        elif isinstance(message, dict):
            message = [message]
        elif all(isinstance(m, str) for m in message):
            message = [dict(type="image" if Path(m).suffix.lower() in IMAGE_SUFFIXES and Path(m).is_file()
                            else "text", value=m) for m in message]
        return self.generate_inner(message, dataset)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

try:   # VLMEvalKit is optional: subclass its BaseModel when it is there
    from vlmeval.vlm.base import BaseModel as _Base
except ImportError:
    _Base = StandAloneBase


class MM1VLM(_Base):
    """An mm1lab checkpoint as a VLMEvalKit model.

    Args:
        model_path: a run, checkpoint, exported or notebook run folder (`mm1lab.load_model`).
        prompt: "chat" (fine-tuned checkpoints, `<|user|> ... <|assistant|>`) or "plain" (pre-trained ones,
            `<bos><image>...`, the answer ends at a line break).
        max_new_tokens: the longest answer; greedy decoding, so results are deterministic.
        device: where the model runs; one message is answered at a time.
    """

    INTERLEAVE = True
    allowed_types = ["text", "image"]

    def __init__(self, model_path: str | Path, *, prompt: str = "chat", max_new_tokens: int = DEFAULT_NEW_TOKENS,
                 device: str = "cpu", **unknown: Any):
        if unknown:
            raise TypeError(f"MM1VLM: unknown arguments {', '.join(sorted(unknown))}; known: model_path, prompt, "
                            "max_new_tokens, device")
        super().__init__()
        self.bridge = BridgeModel(model_path, prompt=prompt, device=device)
        self.max_new_tokens = max_new_tokens

    def use_custom_prompt(self, dataset: str) -> bool:
        """VLMEvalKit's own prompt for every dataset (mm1lab's templates wrap it: chat turn or plain text)."""
        return False

    def build_prompt(self, line, dataset: str):
        """Never called: `use_custom_prompt` is False for every dataset."""
        raise NotImplementedError("MM1VLM uses VLMEvalKit's dataset prompts (use_custom_prompt is False)")

    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        """The answer to one interleaved message: images become `<image>` placeholders where they stand."""
        parts = []
        for i, item in enumerate(message):
            kind, value = item.get("type"), item.get("value")
            if kind == "text":
                parts.append(str(value))
            elif kind == "image":
                parts.append(Path(value) if isinstance(value, (str, Path)) else value)
            else:
                raise ValueError(f"message item {i}: type {kind!r}; mm1lab models read 'text' and 'image' items"
                                 + (f" (dataset {dataset})" if dataset else ""))
        fmt = self.bridge.format
        return self.bridge.generate([self.bridge.render(parts)], until=fmt.until,
                                    max_new_tokens=self.max_new_tokens)[0].strip()
