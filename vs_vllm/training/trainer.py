"""Train the VisionSelector scorer on a frozen Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3-VL-MoE (transformers; the
model types in ``vs_vllm.hf.qwen_vl.MODEL_TYPES``), single process or multi-GPU via accelerate.

Only the scorer's four tensors train (AdamW, cosine schedule with linear warm-up, gradient clipping, gradient
accumulation); every parameter of the model is frozen and asserted to be. ``accelerate launch -m vs_vllm train ...``
or ``torchrun -m vs_vllm train ...`` runs data parallel (the scorer is DDP-wrapped, the data sharded per rank); a
plain ``vs-vllm train ...`` runs one process on the available device.

Layout of ``output_dir``::

    scorer.safetensors        final scorer (vs_vllm.selection.checkpoint format; `vs-vllm serve --scorer` loads it)
    train_config.json         the configuration plus derived values (steps, warm-up, sizes)
    train_log.jsonl           one line of metrics per optimizer step
    checkpoint-<step>/        every --save-every steps and at the end: scorer.safetensors + training_state.pt (optimizer,
                              scheduler, step, RNG) + train_config.json; --resume takes one of these (or output_dir,
                              meaning its latest checkpoint)

The data stream is deterministic: epoch e visits a permutation seeded by (seed, e), micro-batch m of the run is batch
m mod len(epoch) of epoch m div len(epoch), and an optimizer step consumes grad_accum consecutive micro-batches. A
resumed run therefore sees exactly the micro-batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vs_vllm.selection.checkpoint import load_scorer, save_scorer
from vs_vllm.selection.scorer import TransformerScorer
from vs_vllm.training.data import ConversationDataset, collate_batch
from vs_vllm.training.loss import SCOPES, lambda_at

__all__ = ["ScorerTrainer", "TrainConfig", "find_checkpoint", "train_scorer"]

SCORER_FILE = "scorer.safetensors"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.jsonl"
_STATE_VERSION = 1
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults follow the reference Qwen2.5-VL recipe where it has one."""

    model: str  # local directory (or hub id) of a checkpoint whose model_type is in vs_vllm.hf.qwen_vl.MODEL_TYPES
    data: str  # .json (list of records) or .jsonl
    output_dir: str
    image_root: str | None = None  # default: the data file's directory
    ratio: float = 0.2  # training retention ratio
    lambda_start: float = 0.1
    lambda_end: float = 2.0
    lr: float = 5e-5
    epochs: float = 1.0  # ignored when max_steps is set
    max_steps: int | None = None
    batch_size: int = 1  # per device
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0  # applied to the two weight matrices only, never the biases
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    topk_scope: str = "sample"  # "sample" (per sample) or "pooled" (over the micro-batch, the original's)
    precision: str = "auto"  # fp32 | bf16 (frozen model only; scorer math is always fp32) | auto (bf16 on CUDA)
    save_every: int = 0  # checkpoint every N optimizer steps (0: final scorer only)
    resume: str | None = None  # checkpoint-<step> directory, or an output dir (its latest checkpoint)
    seed: int = 42
    init_scorer: str | None = None  # start from these scorer weights instead of the near-zero init
    num_workers: int = 0
    min_pixels: int | None = None
    max_pixels: int | None = None  # the reference trains with 50176 (<= 64 tokens per image)
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    shuffle: bool = True
    progress: bool = True

    def validate(self) -> TrainConfig:
        def bad(name: str, msg: str) -> ValueError:
            return ValueError(f"{name}: {msg}, got {getattr(self, name)!r}")

        if not 0.0 < float(self.ratio) < 1.0:
            raise bad("ratio", "the training ratio must be in (0, 1)")
        for name in ("lambda_start", "lambda_end", "weight_decay", "warmup_ratio"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise bad(name, "must be a finite number >= 0")
        if self.warmup_ratio >= 1:
            raise bad("warmup_ratio", "must be < 1")
        if not (math.isfinite(float(self.lr)) and self.lr > 0):
            raise bad("lr", "must be > 0")
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise bad("max_steps", "must be >= 1")
        if self.max_steps is None and not float(self.epochs) > 0:
            raise bad("epochs", "must be > 0")
        for name in ("batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be >= 1")
        for name in ("save_every", "num_workers", "seed"):
            if int(getattr(self, name)) < 0:
                raise bad(name, "must be >= 0")
        if self.topk_scope not in SCOPES:
            raise bad("topk_scope", f"must be one of {SCOPES}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {PRECISIONS}")
        if not math.isfinite(float(self.max_grad_norm)):
            raise bad("max_grad_norm", "must be finite")
        return self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory ``path`` names: itself if it holds a training state, else its latest checkpoint-N."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"resume: no such checkpoint directory: {path}")
    found = []
    for child in path.iterdir():
        if child.name.startswith("checkpoint-") and (child / STATE_FILE).is_file():
            suffix = child.name.removeprefix("checkpoint-")
            if suffix.isdigit():
                found.append((int(suffix), child))
    if not found:
        raise FileNotFoundError(f"resume: {path} has no {STATE_FILE} and no checkpoint-<step>/ with one")
    return max(found)[1]


class ShardedEpochSampler(torch.utils.data.Sampler[int]):
    """Deterministic per-epoch order, sharded across ranks, with an exact skip for resuming mid-epoch.

    Epoch e uses ``randperm(n)`` seeded by (seed, e) (or the natural order); the order is padded by wrap-around to a
    multiple of the world size and rank r takes every world-th index from r. ``set_position(e, skip)`` drops the
    first ``skip`` micro-batches of epoch e without loading them.
    """

    def __init__(self, n: int, *, batch_size: int, seed: int, shuffle: bool, num_replicas: int = 1, rank: int = 0):
        if n < 1:
            raise ValueError("empty dataset")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.per_rank = math.ceil(n / num_replicas)
        self.epoch = 0
        self.skip = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def set_position(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip = int(skip_batches)

    def order(self, epoch: int) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.num_replicas
        order = (order * math.ceil(total / self.n))[:total]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch)[self.skip * self.batch_size :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip * self.batch_size)


def _check_paths(cfg: TrainConfig) -> None:
    if not Path(cfg.data).is_file():
        raise FileNotFoundError(f"data file not found: {cfg.data}")
    if cfg.image_root is not None and not Path(cfg.image_root).is_dir():
        raise FileNotFoundError(f"image root not found: {cfg.image_root}")
    if cfg.init_scorer is not None and not Path(cfg.init_scorer).is_file():
        raise FileNotFoundError(f"init scorer not found: {cfg.init_scorer}")
    if cfg.resume is not None:
        find_checkpoint(cfg.resume)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


class ScorerTrainer:
    """Holds the frozen model, the scorer, the data and the optimizer; :meth:`train` runs to ``max_steps``.

    ``model``/``processor`` may be passed in already loaded (tests do); otherwise they come from ``config.model``.
    After :meth:`train`, ``history`` holds one metrics dict per optimizer step of this run.
    """

    def __init__(self, config: TrainConfig | Mapping[str, Any], *, model: Any = None, processor: Any = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        if not isinstance(config, TrainConfig):
            config = TrainConfig.from_mapping(config)
        self.config = cfg = config.validate()
        _check_paths(cfg)  # before any heavy loading
        # accelerate only goes multi-process on CPU when told to (torchrun / `accelerate launch` without GPUs: gloo).
        cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = acc = Accelerator(mixed_precision="no", cpu=cpu_ddp)
        self.device = acc.device
        self.output_dir = Path(cfg.output_dir)
        set_seed(cfg.seed)

        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        self.precision = precision
        self.model_dtype = torch.bfloat16 if precision == "bf16" else torch.float32

        self.processor = processor if processor is not None else self._load_processor()
        self.model = model if model is not None else self._load_model()
        self._freeze_model()
        hidden = int(self.model.config.get_text_config().hidden_size)
        out_hidden = getattr(self.model.config.vision_config, "out_hidden_size", hidden)
        if int(out_hidden) != hidden:
            raise ValueError(f"vision out_hidden_size {out_hidden} != text hidden_size {hidden}")
        self.hidden_size = hidden

        self.dataset = ConversationDataset(
            cfg.data, self.processor, cfg.image_root, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels
        )
        tok = getattr(self.processor, "tokenizer", self.processor)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.sampler = ShardedEpochSampler(
            len(self.dataset), batch_size=cfg.batch_size, seed=cfg.seed, shuffle=cfg.shuffle,
            num_replicas=acc.num_processes, rank=acc.process_index,
        )
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            collate_fn=functools.partial(collate_batch, pad_token_id=int(pad_id or 0)),
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        per_epoch = self.sampler.batches_per_epoch
        if cfg.max_steps is not None:
            self.max_steps = int(cfg.max_steps)
        else:
            micro = cfg.epochs * per_epoch
            self.max_steps = max(1, int(micro // cfg.grad_accum))
            if micro % cfg.grad_accum:
                warnings.warn(
                    f"{cfg.epochs} epoch(s) of {per_epoch} micro-batches is not a multiple of grad_accum="
                    f"{cfg.grad_accum}; training for {self.max_steps} optimizer steps", stacklevel=2,
                )
        self.warmup_steps = math.ceil(cfg.warmup_ratio * self.max_steps)

        # Scorer: near-zero init (seeded), or given weights; a resume overwrites them below.
        if cfg.init_scorer:
            scorer = load_scorer(cfg.init_scorer, in_features=hidden, dtype=torch.float32)
        else:
            set_seed(cfg.seed)  # again: loading the model may have drawn from the RNG
            scorer = TransformerScorer(hidden)
        scorer = scorer.to(device=self.device, dtype=torch.float32).train()
        scorer.requires_grad_(True)
        decay = [scorer.q_proj.weight, scorer.k_proj.weight]
        no_decay = [scorer.q_proj.bias, scorer.k_proj.bias]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, self.warmup_steps, self.max_steps)
        self.step = 0
        if cfg.resume:
            self._load_state(scorer, find_checkpoint(cfg.resume))
        self._check_trainable(scorer)
        # Only the scorer is prepared: DDP across ranks when distributed, a no-op otherwise. The frozen model is
        # placed on the device by hand (DDP refuses a module without trainable parameters).
        self.scorer = acc.prepare(scorer)
        self.history: list[dict[str, float]] = []
        self.summary: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------------- setup
    def _load_processor(self) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(self.config.model)

    def _load_model(self) -> Any:
        from transformers import AutoConfig, AutoModelForImageTextToText

        mcfg = AutoConfig.from_pretrained(self.config.model)
        _check_model_type(getattr(mcfg, "model_type", None))
        kwargs: dict[str, Any] = {"dtype": self.model_dtype}
        if self.config.attn_implementation:
            kwargs["attn_implementation"] = self.config.attn_implementation
        return AutoModelForImageTextToText.from_pretrained(self.config.model, **kwargs)

    def _freeze_model(self) -> None:
        model = self.model
        _check_model_type(getattr(getattr(model, "config", None), "model_type", None))
        model.requires_grad_(False)
        model.to(device=self.device, dtype=self.model_dtype)
        if self.config.gradient_checkpointing:
            # HF only checkpoints in training mode; Qwen2.5-VL has no dropout, so train() changes nothing else.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()
        else:
            model.eval()
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert not trainable, f"frozen model has trainable parameters: {trainable[:5]}"

    def _check_trainable(self, scorer: torch.nn.Module) -> None:
        assert not any(p.requires_grad for p in self.model.parameters()), "model parameters must be frozen"
        assert all(p.requires_grad for p in scorer.parameters()), "every scorer parameter must train"
        opt_params = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        assert opt_params == {id(p) for p in scorer.parameters()}, "the optimizer must hold exactly the scorer"

    # ------------------------------------------------------------------------------------------ checkpoints
    def _unwrapped(self) -> TransformerScorer:
        return self.accelerator.unwrap_model(self.scorer)

    def _config_record(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.config),
            "derived": {
                "max_steps": self.max_steps,
                "warmup_steps": self.warmup_steps,
                "precision": self.precision,
                "num_samples": len(self.dataset),
                "micro_batches_per_epoch": self.sampler.batches_per_epoch,
                "num_processes": self.accelerator.num_processes,
                "hidden_size": self.hidden_size,
                "scorer_hidden": self.hidden_size // 2,
            },
        }

    def save_checkpoint(self) -> Path | None:
        """Write checkpoint-<step>/ (main process only; every rank waits). Returns its path on the main process."""
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        if acc.is_main_process:
            path = self.output_dir / f"checkpoint-{self.step}"
            path.mkdir(parents=True, exist_ok=True)
            save_scorer(self._unwrapped(), path / SCORER_FILE)
            state = {
                "version": _STATE_VERSION,
                "step": self.step,
                "max_steps": self.max_steps,
                "micro_batches_per_epoch": self.sampler.batches_per_epoch,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(),
            }
            tmp = path / (STATE_FILE + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, path / STATE_FILE)
            (path / CONFIG_FILE).write_text(json.dumps(self._config_record(), indent=2) + "\n")
        acc.wait_for_everyone()
        return path

    def _load_state(self, scorer: TransformerScorer, ckpt: Path) -> None:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"resume: {ckpt / STATE_FILE} has unsupported version {state.get('version')!r}")
        saved = load_scorer(ckpt / SCORER_FILE, in_features=self.hidden_size, dtype=torch.float32)
        with torch.no_grad():
            for dst, src in zip(scorer.parameters(), saved.parameters()):
                dst.copy_(src.to(dst.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        if state.get("max_steps") != self.max_steps:
            warnings.warn(
                f"resume: checkpoint was made for max_steps={state.get('max_steps')}, this run has {self.max_steps}; "
                "the lambda and learning-rate schedules follow the new value", stacklevel=2,
            )
        if state.get("micro_batches_per_epoch") != self.sampler.batches_per_epoch:
            warnings.warn("resume: the data (or batch size / world size) differs from the checkpoint's run; the data "
                          "order will not continue where it stopped", stacklevel=2)
        _set_rng_state(state["rng"])
        self.resumed_from = str(ckpt)

    # ------------------------------------------------------------------------------------------------ data
    def _micro_batches(self, start_micro: int) -> Iterator[dict[str, Any]]:
        per_epoch = self.sampler.batches_per_epoch
        epoch, skip = divmod(start_micro, per_epoch)
        while True:
            self.sampler.set_position(epoch, skip)
            for batch in self.loader:
                yield self._to_device(batch)
            epoch, skip = epoch + 1, 0

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        nb = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # ----------------------------------------------------------------------------------------------- train
    def train(self) -> str:
        """Run from the current step to ``max_steps``; return the final scorer file's path."""
        from tqdm.auto import tqdm

        from vs_vllm.training.forward import training_forward

        cfg, acc = self.config, self.accelerator
        main = acc.is_main_process
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / CONFIG_FILE).write_text(json.dumps(self._config_record(), indent=2) + "\n")
        autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None
        G = cfg.grad_accum
        stream = self._micro_batches(self.step * G)
        bar = tqdm(total=self.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (main and cfg.progress))
        log = open(self.output_dir / LOG_FILE, "a", encoding="utf-8") if main else None
        start_step, t0 = self.step, time.perf_counter()
        try:
            while self.step < self.max_steps:
                lam = lambda_at(self.step, self.max_steps, cfg.lambda_start, cfg.lambda_end)
                lr = float(self.scheduler.get_last_lr()[0])
                parts: dict[str, list[float]] = {}
                for j in range(G):
                    batch = next(stream)
                    sync = j == G - 1
                    ctx = acc.no_sync(self.scorer) if not sync else contextlib.nullcontext()
                    with ctx:
                        out = training_forward(
                            self.model, self.scorer, batch, ratio=cfg.ratio, scope=cfg.topk_scope, lam=lam,
                            autocast_dtype=autocast_dtype,
                        )
                        acc.backward(out.loss / G)
                    for key, value in (("loss", out.loss.detach()), ("ce", out.ce), ("bce", out.bce)):
                        parts.setdefault(key, []).append(float(value))
                    for key in ("score_std", "p_kept", "p_dropped"):
                        parts.setdefault(key, []).append(float(out.stats.get(key, float("nan"))))
                if cfg.max_grad_norm > 0:
                    grad_norm = float(acc.clip_grad_norm_(self.scorer.parameters(), cfg.max_grad_norm))
                else:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(self.scorer.parameters(), float("inf")))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1

                keys = ("loss", "ce", "bce", "score_std", "p_kept", "p_dropped")
                local = torch.tensor([_nanmean(parts[k]) for k in keys], dtype=torch.float64, device=self.device)
                if acc.num_processes > 1:
                    local = acc.reduce(local, reduction="mean")
                record = {"step": self.step, **{k: float(v) for k, v in zip(keys, local.tolist())},
                          "lambda": lam, "lr": lr, "grad_norm": grad_norm}
                self.history.append(record)
                if main:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.set_postfix_str(
                        f"loss={record['loss']:.4f} ce={record['ce']:.4f} bce={record['bce']:.4f} lam={lam:.3f} "
                        f"lr={lr:.2e} p_kept={record['p_kept']:.3f} s_std={record['score_std']:.3g}",
                        refresh=False,
                    )
                bar.update(1)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    ckpt = self.save_checkpoint()
                    if main and cfg.progress:
                        bar.write(f"saved {ckpt}")
        finally:
            bar.close()
            if log is not None:
                log.close()
        elapsed = time.perf_counter() - t0
        steps = self.step - start_step
        if cfg.save_every and steps and self.step % cfg.save_every:
            self.save_checkpoint()  # the last step is resumable too (e.g. to extend the run with a larger max_steps)
        acc.wait_for_everyone()
        final = self.output_dir / SCORER_FILE
        if main:
            save_scorer(self._unwrapped(), final)
        acc.wait_for_everyone()
        self.summary = {
            "steps": steps,
            "seconds": elapsed,
            "steps_per_second": steps / elapsed if elapsed > 0 else float("nan"),
            "final_scorer": str(final),
            "last": self.history[-1] if self.history else None,
        }
        return str(final)


def train_scorer(config: TrainConfig | Mapping[str, Any]) -> str:
    """Train a scorer as ``config`` says and return the path of the final scorer file (save_scorer format)."""
    return ScorerTrainer(config).train()


def _check_model_type(model_type: object) -> None:
    from vs_vllm.hf.qwen_vl import MODEL_TYPES

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model: training supports model_type {', '.join(MODEL_TYPES)}; got {model_type!r}")
