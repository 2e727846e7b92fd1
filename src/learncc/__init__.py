"""learncc: learning-based coded computation.

k queries are encoded into r parity queries; a parity model computes on each
parity query in parallel with the deployed model F on the k originals; when an
original result is late or lost, a decoder rebuilds it from the others and the
parity outputs. The packages follow that pipeline:

- ``learncc.codes``: encoders and decoders (one implementation for training
  and serving).
- ``learncc.data``: datasets with seeded splits.
- ``learncc.models``: model registry (F and parity models are plain modules).
- ``learncc.training``: training and degraded-mode evaluation.
- ``learncc.bundle``: the coded model bundle (safetensors + JSON manifest).
- ``learncc.serving``: the coded frontend and its instance backends.
- ``learncc.bench``: open-loop load generation and latency reporting.

Reference: Kosaian, Rashmi, Venkataraman, "Parity Models: Erasure-Coded
Resilience for Prediction Serving Systems", SOSP 2019.
"""

import logging

from learncc.errors import LearnccError

__version__ = "0.1.0"
__all__ = ["LearnccError", "__version__"]

# Library code never configures logging; the CLI does.
logging.getLogger(__name__).addHandler(logging.NullHandler())
