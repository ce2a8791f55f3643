"""Training the VisionSelector scorer on a frozen Qwen2.5-VL (transformers + accelerate).

``train_scorer(TrainConfig(...))`` or ``vs-vllm train ...``; see :mod:`vs_vllm.training.trainer`. Heavy imports
(transformers, accelerate) happen only when a trainer is built.
"""

from __future__ import annotations

from vs_vllm.training.data import ConversationDataset, collate_batch, load_records, parse_record
from vs_vllm.training.loss import SoftSelection, lambda_at, soft_select
from vs_vllm.training.trainer import ScorerTrainer, TrainConfig, find_checkpoint, train_scorer

__all__ = [
    "ConversationDataset",
    "ScorerTrainer",
    "SoftSelection",
    "TrainConfig",
    "collate_batch",
    "find_checkpoint",
    "lambda_at",
    "load_records",
    "parse_record",
    "soft_select",
    "train_scorer",
]
