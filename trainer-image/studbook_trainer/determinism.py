"""What makes a seeded run give the same bytes twice.

An artifact id is a function of its inputs only if the operator is: every random generator is
seeded from the plan before any model is built (a classification head and LoRA's A matrices are
initialised at load time), PyTorch is asked for deterministic kernels, and the CPU thread count
is fixed, since a reduction split over another number of threads sums in another order.
"""

from __future__ import annotations

import os
import random

CPU_THREADS = 2
"""Intra-op threads of every CPU run, whatever the machine: results must not depend on its size."""


def make_deterministic(seed: int) -> None:
    """Seed Python's and PyTorch's generators and pin PyTorch's arithmetic for this process."""
    import torch

    # cuBLAS needs this set before its first call to choose deterministic workspaces.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(CPU_THREADS)
