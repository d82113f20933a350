"""LoRA fine-tuning of mlx-lm models with zmlx's fused kernels in the training step.

    python -m zmlx.train --model PATH --iters 200 --data DIR --adapter-path adapters
    python -m zmlx.train --model "$(python -c 'from zmlx.models import fixtures; print(fixtures.path())')" --iters 20

Built on mlx-lm's tuner (LoRA layers, datasets, batching, evaluation, adapter files); see
:mod:`.trainer` for what zmlx changes in the step and :mod:`.data` for the data it reads.
Needs the ``lm`` extra.
"""

from .trainer import TrainConfig, TrainResult, fused_loss, prepare, train

__all__ = ["TrainConfig", "TrainResult", "fused_loss", "prepare", "train"]
