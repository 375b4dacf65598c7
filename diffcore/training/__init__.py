"""Training: the objective, the Trainer, safe checkpoints and the ``diffcore.train`` API."""

from diffcore.training.config import TrainConfig

__all__ = ["TrainConfig"]
