"""The training loop: one `train(cfg)` for notebooks, the CLI and papermill, single process or under torchrun.

What is trained and on which loss is the run's objective (`mm1lab.train.objectives`): MM1 itself (`vlm`, also
text-only LM pre-training) or a stage-0 encoder (`clip`, `aim`). A step draws one global batch (`batch_size`
samples over all ranks), runs it as micro-batches, and makes one AdamW update. The loss is weighted over the
*global* batch: each micro-batch's mean loss is scaled by its share of the global loss units (tokens for the LM).
With unpacked rows (`pack: false`) the gradient is then the same for any split into ranks and micro-batches, so a
torchrun run reproduces the single-process one. Packed rows let documents attend to each other and MoE auxiliary
losses are averaged per micro-batch, so there the split matters: a run reproduces the single-process one at the
same `micro_batch_size` only (docs/distributed.md).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm1lab.folders import CHECKPOINTS, find_checkpoint
from mm1lab.load import load_model
from mm1lab.lora import apply_lora, base_param_count, restore_lora, split_state
from mm1lab.train import distributed as D
from mm1lab.train.checkpoint import (
    fault_point,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mm1lab.train.config import TrainConfig, parse_model
from mm1lab.train.data import GlobalBatches
from mm1lab.train.muon import MuonWithAdamW, split_for_muon
from mm1lab.train.objectives import OBJECTIVES
from mm1lab.train.schedule import (
    WarmupCosine,
    default_warmup,
    mm1_peak_lr,
    mm1_weight_decay,
    param_groups,
    part_of,
)
from mm1lab.train.tracking import Tracker


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite); the message names the last good checkpoint."""


@dataclass
class TrainResult:
    """What `train` returns: where things are, how far it got, the last logged metrics and the trained model."""

    run_dir: Path
    checkpoint: Path | None
    step: int
    status: str                      # "finished" or "interrupted" (Ctrl-C: checkpointed, then stopped)
    metrics: dict[str, Any] = field(default_factory=dict)
    peak_lr: float = 0.0
    model: nn.Module | None = None


def train(cfg: TrainConfig | dict | str | Path, *, overrides: list[str] | None = None, source: Any = None,
          collate: Callable | None = None, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train (or resume) the run described by `cfg`: a TrainConfig, a dict, or a YAML path with `overrides`.

    source/collate: bring your own sample stream (with state_dict/load_state_dict) and collate function
    instead of `cfg.data`. on_log: called with every logged record (e.g. to plot live in a notebook).
    """
    if isinstance(cfg, (str, Path)):
        cfg = TrainConfig.load(cfg, overrides)
    elif isinstance(cfg, dict):
        cfg = TrainConfig.from_dict(cfg)
    return Trainer(cfg, source=source, collate=collate, on_log=on_log).run()


class Trainer:
    """Builds model, optimizer, schedule, data and tracking for `cfg` (resuming if a checkpoint exists)."""

    def __init__(self, cfg: TrainConfig, *, source: Any = None, collate: Callable | None = None,
                 on_log: Callable[[dict], None] | None = None):
        self.cfg, self.on_log = cfg, on_log
        self.info = D.init_distributed(cfg.device)
        self.dev = self.info.device
        self.ckpt_root = cfg.run_dir / CHECKPOINTS
        # the newest checkpoint that loads; a damaged one is reported on stderr and the one before it is used
        resume = resume_checkpoint(self.ckpt_root) if cfg.checkpoint.resume else None
        found = resume.path if resume is not None else None
        model = self._build_model(resume)
        for name, param in model.named_parameters():   # freeze per part (parts: the objective's, see config)
            trains = not cfg.freeze[part_of(name, self.objective.parts)]
            param.requires_grad_(trains and (not cfg.lora.enabled or cfg.lora.trains(name)))   # LoRA: adapters
        model.to(self.dev)
        self.model, self.num_params = model, base_param_count(model)   # MM1's LR rule: the model, not adapters
        self.peak_lr = cfg.optim.lr or mm1_peak_lr(self.num_params)
        wd = cfg.optim.weight_decay if cfg.optim.weight_decay is not None else mm1_weight_decay(self.peak_lr)
        self.mode = D.resolve_parallel(cfg.parallel, self.info)
        if cfg.lora.quantize and self.mode != "none":
            raise ValueError(f"lora.quantize runs in one process (4-bit weights are not sharded or broadcast here); "
                             f"this run is {self.mode} over {self.info.world} ranks: run one process or drop it")
        self.wrapped = D.wrap_model(model, self.mode, self.info, blocks=self.objective.blocks(model))
        # built after wrapping: FSDP2 swaps the parameters for sharded ones
        groups = param_groups(model, peak_lr=self.peak_lr, weight_decay=wd, lr_scale=cfg.optim.lr_scale,
                              parts=self.objective.parts)
        # Fused AdamW updates every tensor in one kernel instead of a dozen small ops per tensor: 4-5x faster steps
        # of the optimizer on the tiny model's 140 tensors (docs/benchmarks.md). FSDP2's DTensors keep the default.
        fused = self.mode != "fsdp" and self.dev.type in ("cpu", "cuda")
        if cfg.optim.name == "muon":
            if self.mode == "fsdp":
                raise ValueError("optim.name 'muon' orthogonalises whole matrices, and FSDP2 shards them: use "
                                 "parallel 'ddp' (or 'none'), or optim.name 'adamw'")
            self.optimizer = MuonWithAdamW(split_for_muon(model, groups, cfg.optim.muon_parts,
                                                          conv=cfg.optim.muon_conv),
                                           betas=cfg.optim.betas, eps=cfg.optim.eps, fused=fused or None)
        else:
            self.optimizer = torch.optim.AdamW(groups, betas=cfg.optim.betas, eps=cfg.optim.eps, fused=fused or None)
        warmup = cfg.optim.warmup_steps if cfg.optim.warmup_steps is not None else default_warmup(cfg.steps)
        self.schedule = WarmupCosine(self.optimizer, warmup=warmup, total=cfg.steps, min_ratio=cfg.optim.min_lr_ratio)
        if cfg.compile:
            self.objective.compile(model)
        self.forward = self.wrapped

        if source is None:
            source, collate = self.objective.data(cfg)
        self.micro, self.accum = cfg.accumulation(self.info.world)
        if self.objective.one_micro_batch and self.accum > 1:
            raise ValueError(f"objective {cfg.objective!r} needs each rank's share of a step in one micro-batch "
                             f"(its loss does not split); set micro_batch_size to batch_size / ranks "
                             f"({cfg.batch_size // self.info.world})")
        self.batches = GlobalBatches(source, collate, micro=self.micro, accum=self.accum, rank=self.info.rank,
                                     world=self.info.world, num_shards=cfg.data.shards, workers=cfg.data.num_workers)
        self.step, self.bad_run, self.bad_total = 0, 0, 0
        self.skipped: Counter[str] = Counter()
        if resume is not None:
            self._restore(resume)
        self.last_ckpt = found
        self.stop_requested = False

    # ---- the loop --------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to `cfg.steps`; checkpoint every `checkpoint.every` steps, at the end, and on Ctrl-C."""
        cfg, info = self.cfg, self.info
        if info.is_main:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(cfg.run_dir / "config.yaml")
        tracker = Tracker(cfg.run_dir, cfg, start_step=self.step, enabled=info.is_main)
        if self.step:
            tracker.write(f"resumed {cfg.name} from {self.last_ckpt} at step {self.step}")
        old_handler = self._install_sigint()
        window: list[dict[str, float]] = []
        record: dict[str, Any] = {}
        status = "finished"
        try:
            while self.step < cfg.steps:
                stats = self.train_step()
                window.append(stats)
                fault_point("train", self.step)
                stop = self._stop_agreed()
                if self.step % cfg.track.log_every == 0 or self.step == cfg.steps or stop:
                    record = self._record(window)
                    window = []
                    tracker.log(record)
                    if self.on_log is not None and info.is_main:
                        self.on_log(record)
                tracker.progress(self.step, stats["loss"], stats["tokens"] / max(stats["time"], 1e-9))
                due = self.step % cfg.checkpoint.every == 0 or self.step == cfg.steps or stop
                if due and self.bad_run == 0:   # never checkpoint in the middle of a non-finite streak
                    self.save(record)
                if stop:
                    status = "interrupted"
                    tracker.write(f"interrupted: checkpoint {self.last_ckpt} written at step {self.step}; "
                                  "run again to resume")
                    break
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            tracker.close()
        return TrainResult(run_dir=cfg.run_dir, checkpoint=self.last_ckpt, step=self.step, status=status,
                           metrics=record, peak_lr=self.peak_lr, model=self.model)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over one global batch; returns this step's global statistics."""
        t0 = time.perf_counter()
        micro_batches = self.batches.next_step()
        weights = [self.objective.weight(mb) for mb in micro_batches]
        global_units = D.all_reduce(torch.tensor(float(sum(weights)), dtype=torch.float64)).item()
        keys = self.objective.stat_keys
        sums = torch.zeros(1 + len(keys), dtype=torch.float64)       # [loss x units, *the objective's stats]
        autocast = torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")
        for j, (mb, weight) in enumerate(zip(micro_batches, weights)):
            self._sync_grads(j == len(micro_batches) - 1)
            with autocast:
                result = self.objective.loss(self.forward, mb, self.dev, len(micro_batches))
            share = weight / max(global_units, 1) * self.info.world   # ranks' grads are averaged
            (result.mean * share + result.aux / len(micro_batches)).backward()
            sums += torch.tensor([result.mean.item() * weight, *(result.stats.get(k, 0.0) for k in keys)],
                                 dtype=torch.float64)
            self.skipped.update(mb.get("skipped") or {})
        D.all_reduce(sums)
        stats = dict(zip(keys, sums[1:].tolist()))
        if self.info.enabled:   # per-micro-batch means were averaged per rank: average them over ranks as well
            stats.update({k: stats[k] / self.info.world for k in self.objective.averaged})
        loss = sums[0].item() / max(global_units, 1)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip or math.inf)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.bad_run = 0
        else:
            self.bad_run, self.bad_total = self.bad_run + 1, self.bad_total + 1
        lr = self.optimizer.param_groups[0]["lr"]
        # each part's LR as this step used it (read before the schedule moves on, as `lr` is)
        lr_parts = {g["name"]: g["lr"] for g in self.optimizer.param_groups if g["name"].endswith(".decay")}
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.step += 1
        if not finite and self.bad_run >= self.cfg.max_bad_steps:
            raise TrainingError(
                f"loss or gradient was non-finite for {self.bad_run} steps in a row (steps "
                f"{self.step - self.bad_run + 1}..{self.step}); stopped without saving. The last good checkpoint is "
                f"{self.last_ckpt or 'none (no checkpoint was written yet)'}. Try a lower optim.lr, "
                f"precision=fp32, or check the data of those steps.")
        return dict(loss=loss, lr=lr, lr_parts=lr_parts, grad_norm=grad_norm, finite=float(finite),
                    time=time.perf_counter() - t0,
                    tokens=stats.get("tokens", 0.0), images=stats.get("images", 0.0), stats=stats)

    def _sync_grads(self, last: bool) -> None:
        """Reduce gradients only on the last micro-batch of a step (DDP / FSDP2), saving communication."""
        if self.mode == "ddp":
            self.wrapped.require_backward_grad_sync = last
        elif self.mode == "fsdp":
            self.wrapped.set_requires_gradient_sync(last)

    def _record(self, window: list[dict[str, Any]]) -> dict[str, Any]:
        """One metrics record averaged over the steps since the last one (non-finite steps left out)."""
        good = [w for w in window if w["finite"]] or window
        mean = lambda key: sum(w[key] for w in good) / len(good)   # noqa: E731
        elapsed = sum(w["time"] for w in window)
        record: dict[str, Any] = dict(step=self.step, loss=mean("loss"), lr=window[-1]["lr"],
                                      grad_norm=mean("grad_norm"),
                                      tokens_per_s=sum(w["tokens"] for w in window) / max(elapsed, 1e-9),
                                      images_per_s=sum(w["images"] for w in window) / max(elapsed, 1e-9),
                                      step_time=elapsed / len(window))
        sums = {k: sum(w["stats"][k] for w in good) for k in self.objective.stat_keys}
        record.update(self.objective.record(sums, len(good)))
        record["lr_parts"] = window[-1]["lr_parts"]
        record.update(skipped=dict(self.skipped), nonfinite_steps=self.bad_total)
        return record

    # ---- the model -------------------------------------------------------------------------------------
    def _build_model(self, resume) -> nn.Module:
        """The run's model: resumed, started from `init_from` (SFT, or a CLIP continued) or from stage-0 parts, or
        fresh; seeded."""
        cfg = self.cfg
        continues = cfg.init_from and resume is None
        init = load_model(cfg.init_from).model if continues and cfg.objective == "vlm" else None
        torch.manual_seed(cfg.seed)   # same init on every rank
        if cfg.pretrained and resume is None:
            model = build_from_parts(cfg)
            self.model_cfg = model.cfg
        else:
            # a resumed run keeps its own model config; SFT takes the pre-trained model's
            self.model_cfg = (parse_model(cfg.objective, resume.model_config) if resume is not None
                              else init.cfg if init is not None else cfg.model_config())
        self.objective = OBJECTIVES[cfg.objective](self.model_cfg)
        if not (cfg.pretrained and resume is None):
            model = self.objective.build()
            if init is not None:
                model.load_state_dict(init.state_dict())
            elif continues:   # a stage-0 model continues from its own kind's weights
                self.objective.load_init(model, cfg.init_from)
        if resume is not None and resume.adapters is not None and not cfg.lora.enabled:
            raise ValueError(f"{resume.path} holds LoRA adapters but this config has lora.r=0; resume with the "
                             "run's own lora settings, or start a new out_dir")
        if cfg.lora.enabled:   # the base weights go in first: LoRA wraps the layers that hold them
            if resume is None:
                return apply_lora(model, cfg.lora)
            return restore_lora(model, cfg.lora, resume.weights, resume.adapters, resume.path)
        return model

    # ---- checkpoints -----------------------------------------------------------------------------------
    def save(self, record: dict[str, Any] | None = None) -> None:
        """Write a checkpoint of the current step (rank 0 writes; every rank takes part in gathering)."""
        weights, optim = D.gather_state(self.wrapped, self.optimizer)
        data = self.batches.state_dict()   # every rank: each holds the positions of its own data shards
        if self.info.is_main:
            adapters = adapter_config = None
            if self.cfg.lora.enabled:   # base weights under their plain names; adapters in peft's files beside
                weights, adapters, adapter_config = split_state(D.unwrap(self.wrapped), weights)
            state = dict(step=self.step, schedule=self.schedule.state_dict(), data=data,
                         rng=rng_state(), skipped=dict(self.skipped), bad_run=self.bad_run, bad_total=self.bad_total)
            import yaml
            self.last_ckpt = save_checkpoint(
                self.ckpt_root, self.step, weights=weights,
                model_config_json=json.dumps(self.model_cfg.to_dict(), indent=2),
                train_config_yaml=yaml.safe_dump(self.cfg.to_dict(), sort_keys=False), optimizer=optim,
                state=state, meta=dict(time=time.time(), objective=self.cfg.objective, metrics=record or {}),
                keep=self.cfg.checkpoint.keep, adapters=adapters, adapter_config=adapter_config)
        D.barrier()
        self.last_ckpt = find_checkpoint(self.ckpt_root)

    def _restore(self, ckpt) -> None:
        # a LoRA model got its weights in _build_model (4-bit layers do not load a state dict)
        D.load_state(self.wrapped, self.optimizer, None if self.cfg.lora.enabled else ckpt.weights, ckpt.optimizer)
        s = ckpt.state
        self.schedule.load_state_dict(s["schedule"])
        self.batches.load_state_dict(s["data"])
        set_rng_state(s["rng"])
        self.step, self.bad_run, self.bad_total = int(s["step"]), int(s["bad_run"]), int(s["bad_total"])
        self.skipped = Counter(s["skipped"])

    # ---- Ctrl-C ----------------------------------------------------------------------------------------
    def _install_sigint(self):
        """First Ctrl-C: finish the step, checkpoint, stop. Second: abort at once (KeyboardInterrupt)."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            print("\nCtrl-C: stopping after this step with a checkpoint (press again to abort)", flush=True)
        return signal.signal(signal.SIGINT, handler)

    def _stop_agreed(self) -> bool:
        """Every rank stops at the same step if any rank was interrupted."""
        flag = torch.tensor([float(self.stop_requested)])
        return bool(D.all_reduce(flag, op="max").item()) if self.info.enabled else self.stop_requested


def build_from_parts(cfg: TrainConfig) -> nn.Module:
    """MM1 from stage-0 parts (`cfg.pretrained`) through `build_mm1_from_parts`, the path public checkpoints take:
    pretrained encoder and/or LM and a fresh connector (`cfg.model`'s). A part not given is built fresh from
    `cfg.model`. The LM folder's tokenizer must be the data's (mm1lab's ShapeWorld tokenizer), since the data
    pipeline tokenizes with that one."""
    from mm1lab.pretrained import build_mm1_from_parts

    base = cfg.model_config()
    model, tokenizer = build_mm1_from_parts(
        cfg.pretrained.get("vision"), cfg.pretrained.get("lm"), base.connector, base=base,
        feature_layer=base.vision.feature_layer, max_images=base.max_images, name=f"{base.name}-from-stage0")
    if "lm" in cfg.pretrained:
        check_data_tokenizer(tokenizer, cfg.pretrained["lm"])
    return model


def check_data_tokenizer(tokenizer, folder) -> None:
    """Refuse an LM whose tokenizer is not the one the ShapeWorld data is tokenized with."""
    from mm1lab.data.tokenizer import load_tokenizer

    ours = load_tokenizer()
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    if vocab != ours.tokenizer.get_vocab():
        raise ValueError(f"{folder}: its tokenizer is not mm1lab's ShapeWorld tokenizer (data_samples/tokenizer.json),"
                         " which the training data is tokenized with; pass an LM trained on it (mm1lab stage0 ship "
                         "writes one) or bring your own data source and collator")
