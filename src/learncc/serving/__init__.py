"""Coded serving: the frontend, its backends, and instance processes."""

from learncc.serving.backend import DATA, PARITY, Backend, LocalBackend
from learncc.serving.deploy import MODES, Deployment, coding_from_bundle, deployment
from learncc.serving.frontend import Answer, Coding, Frontend, Statistics

__all__ = [
    "DATA",
    "MODES",
    "PARITY",
    "Answer",
    "Backend",
    "Coding",
    "Deployment",
    "Frontend",
    "LocalBackend",
    "Statistics",
    "coding_from_bundle",
    "deployment",
]
