"""Kernel search: tune a catalog op's launch knobs (and its kernel body) with PUCT.

    python -m zmlx.discover search rms_norm --case decode-4096 --steps 24
    python -m zmlx.discover report discover_rms_norm_decode-4096_float16.json
    python -m zmlx.discover export discover_rms_norm_decode-4096_float16.json

A candidate is ``(op, knobs, optional body rewrite)`` (:mod:`.target`). Each one is statically
checked (:mod:`.safety`), then compiled, checked against the op's reference on several shapes
and dtypes with fresh inputs, and timed against the catalog kernel and stock MLX
(:mod:`.worker`), in a worker process with time limits (:mod:`.evaluator`). Proposers
(:mod:`.proposers`): offline mutations of the knobs, or a language model behind an
OpenAI-compatible endpoint (or a local mlx-lm model). The tree, its evidence and the search
state live in a JSON session (:mod:`.session`); ``export`` registers the best knobs as an
override the op consults (:mod:`zmlx.core.overrides`), with a capsule as evidence.

On a CPU-only machine the kernels run on the SIMT emulator: the search logic, the static
checks and correctness are real, timing is skipped (and every record says so).
"""

from .evaluator import Evaluator, default_runner
from .proposers import LLMProposer, MutationProposer
from .search import new_session, run
from .session import Node, Session
from .target import Target, searchable

__all__ = [
    "Evaluator",
    "LLMProposer",
    "MutationProposer",
    "Node",
    "Session",
    "Target",
    "default_runner",
    "new_session",
    "run",
    "searchable",
]
