"""The training loop shared by every resprune command.

>>> from resprune.train import TrainConfig, Trainer
>>> history = Trainer(model, train_loader, val_loader, TrainConfig(epochs=2), "runs/x").fit()
"""

from .callbacks import Callback
from .config import TrainConfig
from .distill import Distillation, DistillConfig
from .fade import FADES, Fade, Slice
from .reconstruction import reconstruct
from .run import RunResult, train_run
from .schedule import LRSchedule, lr_factor
from .trainer import METRICS_FILE, STATE_FILE, Trainer

__all__ = ["FADES", "METRICS_FILE", "STATE_FILE", "Callback", "DistillConfig", "Distillation",
           "Fade", "LRSchedule", "RunResult", "Slice", "TrainConfig", "Trainer", "lr_factor",
           "reconstruct", "train_run"]
