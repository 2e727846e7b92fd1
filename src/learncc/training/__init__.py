"""Training and evaluation of base models and parity models."""

from learncc.training.augment import random_affine
from learncc.training.base import TrainConfig, train_classifier
from learncc.training.evaluate import evaluate_code, overall_accuracy
from learncc.training.parity import train_parity

__all__ = [
    "TrainConfig",
    "evaluate_code",
    "overall_accuracy",
    "random_affine",
    "train_classifier",
    "train_parity",
]
