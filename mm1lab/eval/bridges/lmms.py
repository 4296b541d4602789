"""lmms-eval model plugin: `--model mm1lab` (chat prompts, fine-tuned checkpoints) and `--model mm1lab_pretrained`
(plain prompts, pre-trained checkpoints), registered through the `lmms_eval.models` entry point.

    lmms-eval --model mm1lab --model_args pretrained=runs/tiny-sft --tasks mme --batch_size 8
    lmms-eval --model mm1lab_pretrained --model_args pretrained=runs/tiny \\
        --include_path mm1lab/eval/bridges/tasks --tasks mm1lab_samples --limit 8

Two model names rather than a `prompt=` argument because lmms-eval tasks pick their prompt text by model name
(`lmms_eval_specific_kwargs`): the local tasks in `tasks/` ask `mm1lab_pretrained` "Question: ... Answer:" as in
pre-training and `mm1lab` the SFT question. Requests are lmms-eval's "simple" ones:
(context, generation kwargs or continuation, doc_to_visual, doc_id, task, split); a context without `<image>`
markers gets its images first, one with markers keeps them where they are. lmms-eval has no image few-shot, so MM1's
k-shot protocol stays in `mm1lab eval` (docs/harnesses.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms

from mm1lab.data.tokenizer import IMAGE
from mm1lab.eval.bridges.core import BridgeModel

DEFAULT_NEW_TOKENS = 32   # when a task sets no max_new_tokens (lmms-eval's own models default to 1024)
MODEL_IDS = {"mm1lab": "MM1Chat", "mm1lab_pretrained": "MM1Pretrained"}   # lmms-eval name -> class in this module


def lmms_models():
    """The `lmms_eval.models` entry point: one manifest per model name in `MODEL_IDS`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, simple_class_path=f"{__name__}.{cls}") for name, cls in MODEL_IDS.items()]


class MM1Lmms(lmms):
    """An mm1lab checkpoint as an lmms-eval model (use `MM1Chat` or `MM1Pretrained`).

    Args (lmms-eval's `--model_args`, plus its `--batch_size` and `--device`):
        pretrained: a run, checkpoint, exported or notebook run folder (`mm1lab.load_model`).
        dtype: "float32", "bfloat16" or "float16" (default: the checkpoint's).
        max_new_tokens: used when a task sets none.
    """

    prompt = "chat"

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 1,
                 dtype: str | None = None, max_new_tokens: int | str = DEFAULT_NEW_TOKENS,
                 max_batch_size: int | None = None, **unknown):
        super().__init__()
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown --model_args {', '.join(sorted(unknown))}; known: "
                            "pretrained, dtype, max_new_tokens (plus --batch_size and --device)")
        if str(batch_size).startswith("auto"):
            raise ValueError("mm1lab models take a fixed --batch_size (an integer), not 'auto'")
        if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        self.bridge = BridgeModel(pretrained, prompt=self.prompt, device=device or "cpu",
                                  dtype=getattr(torch, dtype) if dtype else None, batch_size=int(batch_size))
        self.max_new_tokens = int(max_new_tokens)

    @property
    def device(self) -> torch.device:
        """Where the model runs (lmms-eval reads it in multi-process runs)."""
        return self.bridge.device

    def _prompt(self, context: str, request: Instance) -> tuple[str, list]:
        """(rendered prompt, images) of one request: the doc's visuals interleaved or put before the context."""
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in _flatten(visuals or []) if v is not None]
        if any(isinstance(v, str) for v in visuals):
            raise ValueError(f"{task} doc {doc_id}: doc_to_visual returned a path or video; mm1lab models read "
                             "images (PIL or arrays) only")
        if IMAGE in context:
            return self.bridge.render_marked(context, visuals)
        return self.bridge.render([*visuals, context])

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy (or sampled, with a temperature) continuations, cut at the request's `until` strings."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):   # one generate() call per set of generation kwargs
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            if int(kwargs.pop("num_beams", 1) or 1) != 1:
                raise ValueError("mm1lab models decode greedily or by sampling; num_beams > 1 is not supported")
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0)   # 0: greedy, as lmms-eval's models do
            if kwargs.pop("do_sample", False) and temperature == 0.0:
                temperature = 1.0
            top_p = float(kwargs.pop("top_p", None) or 1.0)
            budget = int(kwargs.pop("max_new_tokens", None) or self.max_new_tokens)
            if kwargs:
                warnings.warn(f"{requests[indices[0]].task_name}: generation kwargs {sorted(kwargs)} have no meaning "
                              "for mm1lab models and are ignored", stacklevel=2)
            prompts = [self._prompt(requests[i].args[0], requests[i]) for i in indices]
            texts = self.bridge.generate(prompts, until=until, max_new_tokens=budget, temperature=temperature,
                                         top_p=top_p)
            for i, text in zip(indices, texts):
                out[i] = text
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """(score, is_greedy) per request, each in a `GenerationResult`; the score's sign follows what lmms-eval
        0.7.3 does with it.

        `loglikelihood` tasks pass the continuation as `doc_to_target` and read the score as a log-probability
        (perplexity = exp(-mean)): we return the summed log-probability of the continuation. `multiple_choice`
        tasks pass the choice as a string and pick `np.argmin` over the choices (lmms_eval/api/task.py, written
        for its LLaVA models, which return the mean token loss): we return the summed negative log-probability,
        so the most likely choice wins there too.

        The pair travels as a `GenerationResult`'s `text`: the evaluator passes every response through
        `unwrap_generation_output` (lmms_eval/api/instance.py), which turns a bare (float, bool) tuple into its
        string and breaks every loglikelihood and multiple_choice task, but hands a `GenerationResult`'s text on
        unchanged.
        """
        scored, signs = [], []
        for request in requests:
            if len(request.args) != 6:
                raise ValueError(f"{request.task_name}: a loglikelihood request without visuals ({request.args!r}), "
                                 "as acc_mutual_info sends; mm1lab models do not support that metric")
            context, target, _, doc_id, task, split = request.args
            choice = isinstance(target, str)
            continuation = target if choice else target(self.task_dict[task][split][doc_id])
            if isinstance(continuation, list):   # loglikelihood tasks may give several targets; lmms-eval uses one
                continuation = continuation[0]
            scored.append((*self._prompt(context, request), str(continuation)))
            signs.append(-1.0 if choice else 1.0)
        return [GenerationResult(text=(sign * logp, greedy))
                for sign, (logp, greedy) in zip(signs, self.bridge.loglikelihood(scored))]

    def generate_until_multi_round(self, requests) -> list[str]:
        """Not supported: multi-round tasks re-prompt with earlier answers, which mm1lab's bridge does not track."""
        raise NotImplementedError("mm1lab's lmms-eval models answer single-round requests (generate_until and "
                                  "loglikelihood); generate_until_multi_round tasks are not supported")


class MM1Chat(MM1Lmms):
    """`--model mm1lab`: chat prompts (`<|user|> ... <|assistant|>`), for fine-tuned (SFT) checkpoints."""

    prompt = "chat"


class MM1Pretrained(MM1Lmms):
    """`--model mm1lab_pretrained`: plain interleaved prompts (`<bos><image>...`), for pre-trained checkpoints."""

    prompt = "plain"


def _flatten(visuals: Sequence) -> list:
    """doc_to_visual may nest lists (one per image group); the model takes them in reading order."""
    out = []
    for v in visuals:
        out += _flatten(v) if isinstance(v, (list, tuple)) else [v]
    return out
