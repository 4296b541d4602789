"""Training: `train(cfg)` for pre-training, SFT and connector alignment, with checkpoints, tracking and torchrun.

    from mm1lab.train import TrainConfig, train
    result = train(TrainConfig.load("configs/pretrain-tiny.yaml", ["steps=100"]))
"""

from mm1lab.folders import find_checkpoint
from mm1lab.train.checkpoint import load_checkpoint
from mm1lab.train.config import STAGES, TrainConfig
from mm1lab.train.schedule import WarmupCosine, mm1_peak_lr, mm1_weight_decay
from mm1lab.train.tracking import read_metrics
from mm1lab.train.trainer import Trainer, TrainingError, TrainResult, train

__all__ = ["STAGES", "TrainConfig", "TrainResult", "Trainer", "TrainingError", "WarmupCosine", "find_checkpoint",
           "load_checkpoint", "mm1_peak_lr", "mm1_weight_decay", "read_metrics", "train"]
