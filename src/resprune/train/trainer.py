"""The training loop: SGD + schedule, validation, per-epoch checkpoints, exact resume.

A run directory receives, at the end of every epoch:

- ``metrics.jsonl``: one JSON object per finished epoch (the whole file rewritten atomically);
- ``model.safetensors`` + ``arch.json`` via :func:`resprune.save` (resprune models only; a
  user model that has no architecture spec gets no such files);
- ``train_state.pt``: everything a resumed run needs, in ONE atomically written file (model
  and optimizer state, epoch, global step, history, RNG states as tensors, the config), so a
  process killed between two writes can never resume from an inconsistent pair of files. It
  is read back only through :func:`resprune.io.safe_torch_load` (``weights_only=True``).

``train_state.pt`` is written last and is the single source of truth: on resume the other
files are rewritten from it. A run killed after epoch ``k`` and resumed ends bit-identical (on
the CPU) to an uninterrupted run with the same seed: the learning rate is a pure function of
the global step, the loader is reseeded from ``(seed, epoch)`` via ``set_epoch``, and every
other piece of state is restored.

Under torchrun (:mod:`resprune.distributed`) the model trains inside
``DistributedDataParallel``, rebuilt by every ``fit()``: gradients are averaged over the
processes, each of which reads its slice of every global batch; with ``sync_bn`` BatchNorm
uses the statistics of the global batch (:mod:`resprune.train.syncbn`). Loss terms and
callbacks act on the unwrapped model, once per step on every process (the same arithmetic
on the same weights). Epoch records hold the sums over all processes; rank 0 alone writes.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import distributed
from ..checkpoint import save
from ..errors import UserError
from ..io import atomic_torch_save, atomic_write_text, safe_torch_load
from ..measure import evaluate
from ..measure._device import autocast, bf16_warning, synchronize
from ..models import spec_of
from ..runstate import TRAIN_STATE_FILE
from .callbacks import Callback
from .config import TrainConfig
from .distill import Distillation
from .mixup import mix
from .schedule import LRSchedule
from .state import capture_rng, restore_rng
from .syncbn import global_batchnorm

STATE_FILE = TRAIN_STATE_FILE  # the one name, owned by resprune.runstate
METRICS_FILE = "metrics.jsonl"
STATE_FORMAT = 1
# Options that may change between a run and its resumption: they do not change the arithmetic
# (channels_last and compile reorder memory / fuse kernels; results agree to rounding).
RESUME_FREE_OPTIONS = ("device", "compile", "channels_last")
# On CUDA, reading the loss back every step would stall the GPU queue; check this often.
CUDA_CHECK_EVERY = 32

LossTerm = Callable[[nn.Module], torch.Tensor]


def _plain(v: Any) -> Any:
    """A JSON-safe copy of a metrics value (tensors / NumPy scalars become numbers)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        v = v.item() if v.numel() == 1 else v.tolist()
    elif isinstance(v, (np.generic, np.ndarray)):
        v = v.tolist()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"metrics value of type {type(v).__name__} is not JSON-serialisable")


class Trainer:
    """Train ``model`` on ``train_loader`` with the settings of ``config``.

    Loaders yield ``(x, y)`` batches (float images ``[B, C, H, W]``, int64 labels) and have
    ``__len__``; the training loader's ``set_epoch(epoch)`` (0-based) is called before every
    epoch when it exists. ``val_loader`` may be ``None`` or empty (then ``val_acc`` is null).

    Extension points, so features add regularisers and gate logic without copying the loop:

    - ``loss_terms``: callables ``(model) -> scalar Tensor`` added to the loss of every step;
      one that also has ``add_grad_(model) -> Tensor`` (a :class:`resprune.vacl.Regularizer`)
      is applied by that method instead, between ``backward()`` and the optimizer step: it
      adds its gradient to ``.grad`` directly and returns its value (the same update, in far
      fewer ops);
    - ``callbacks``: :class:`~resprune.train.Callback` instances (``on_fit_start``,
      ``after_step``, ``on_epoch_end``);
    - ``distill``: a :class:`~resprune.train.Distillation` (frozen teacher + KD loss) that
      replaces the plain cross-entropy; the teacher's time is recorded per epoch.

    Attributes for callbacks: ``model``, ``optimizer``, ``device``, ``config``, ``schedule``,
    ``history`` (records so far), ``epoch`` (1-based number of the epoch being trained, or of
    the last finished one), ``global_step`` (optimizer steps taken in the whole run),
    ``step_in_epoch`` (1-based), ``loss`` (detached total loss of the last step).
    """

    def __init__(self, model: nn.Module, train_loader: Any, val_loader: Any | None,
                 config: TrainConfig, run_dir: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), loss_terms: Sequence[LossTerm] = (),
                 progress: bool = True, distill: Distillation | None = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config.validate()
        self.device = config.resolve_device()
        slow = bf16_warning(self.device, config.precision)
        if slow:
            warnings.warn(f"{slow}; consider precision='fp32'", stacklevel=2)
        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = list(callbacks)
        # a term with ``add_grad_`` (a VACL Regularizer) adds its own gradient after backward
        self.grad_terms = [t for t in loss_terms if callable(getattr(t, "add_grad_", None))]
        self.loss_terms = [t for t in loss_terms if t not in self.grad_terms]
        self.progress = progress
        self.distill = distill.to(self.device, config.channels_last) if distill else None
        if self.distill is not None:
            self.distill.attach(self.model)
        try:
            self.steps_per_epoch = len(train_loader)
        except TypeError:
            raise TypeError("train_loader must have __len__ (number of batches)") from None
        if self.steps_per_epoch < 1:
            raise UserError("the training set gives no batches; check the data set and "
                            "--batch-size")
        self.schedule = LRSchedule(config, self.steps_per_epoch)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum,
            nesterov=config.nesterov, weight_decay=config.weight_decay)
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        self.world_size = distributed.world_size()
        try:
            spec_of(self.model)
            self._saveable = True
        except UserError:  # a user model without an architecture spec: no model.safetensors
            self._saveable = False
        self.epoch = 0
        self.global_step = 0
        self.step_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.loss: torch.Tensor | None = None

    # -- public ---------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` epochs are done; return the per-epoch records.

        ``resume=True`` continues the run saved in ``run_dir/train_state.pt`` (and returns at
        once if that run already finished). Raises :class:`UserError` if the loss becomes NaN
        or infinite; the last checkpoint on disk is then left untouched.
        """
        if resume:
            if self._resume():
                return list(self.history)
        else:
            torch.manual_seed(self.config.seed)
            self.epoch, self.global_step, self.history = 0, 0, []
            self.optimizer.state.clear()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        sync = self.config.sync_bn and self.world_size > 1
        with global_batchnorm(self.model, sync):
            self._forward = self._wrap()
            try:
                while self.epoch < self.config.epochs:
                    record = self._train_epoch(self.epoch + 1)
                    for cb in self.callbacks:
                        cb.on_epoch_end(self, record)
                    self.history.append(_plain(record))
                    self._checkpoint()
            finally:
                self._forward = self.model
        return list(self.history)

    def _wrap(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward the steps call: the model, in DDP with several processes (built anew
        by every fit, so a model whose architecture changed in between is wrapped as it is
        now; DDP starts every process from rank 0's weights), compiled with ``compile``."""
        forward: nn.Module = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = None
            if self.device.type == "cuda":  # "cuda" means this process's GPU (LOCAL_RANK)
                index = self.device.index
                ids = [torch.cuda.current_device() if index is None else index]
            forward = DistributedDataParallel(self.model, device_ids=ids)
        return torch.compile(forward) if self.config.compile else forward

    # -- one epoch ------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, dev = self.config, self.device
        self.epoch = epoch
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch - 1)
        self.model.train()
        check_every = 1 if dev.type == "cpu" else CUDA_CHECK_EVERY
        data_sum = torch.zeros((), dtype=torch.float64, device=dev)
        extra_sum = torch.zeros((), dtype=torch.float64, device=dev)
        total_sum = torch.zeros((), dtype=torch.float64, device=dev)
        finite_steps = torch.zeros((), dtype=torch.int64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        n, lr = 0, self.schedule.lr(self.global_step)
        if self.distill is not None:
            self.distill.reset()
        show = self.progress and distributed.is_main()
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}",
                   file=sys.stderr, disable=not show, unit="batch", dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            for i, (x, y) in enumerate(self.train_loader):
                self.step_in_epoch = i + 1
                lr = self.schedule.lr(self.global_step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                mixed = None
                if cfg.mixup > 0:
                    mixed = mix(x, y, cfg.mixup, cfg.seed, epoch, i, distributed.rank())
                    x = mixed.x
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(dev, cfg.precision):
                    logits = self._forward(x)
                logits = logits.float()
                if mixed is None:
                    data_loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                else:
                    data_loss = mixed.cross_entropy(logits, cfg.label_smoothing)
                    y = mixed.dominant()  # what train_acc counts a prediction against
                loss = (data_loss if self.distill is None
                        else self.distill.loss(logits, x, data_loss))
                if self.loss_terms:
                    extra = sum(term(self.model) for term in self.loss_terms)
                    loss = loss + extra
                    extra_sum += torch.as_tensor(extra).detach().double() * y.shape[0]
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_terms:  # their gradients go straight into .grad
                    extra = sum(term.add_grad_(self.model) for term in self.grad_terms)
                    loss = loss.detach() + extra  # the running sums and self.loss read it
                    extra_sum += extra.double() * y.shape[0]
                # Running sums stay on the device; NaN/inf is absorbing, so the number of
                # steps with a finite running total is the index of the first bad step.
                total_sum += loss.detach().double()
                finite_steps += torch.isfinite(total_sum).long()
                if (i + 1) % check_every == 0:
                    self._check_finite(total_sum, finite_steps, epoch)
                    if show:
                        bar.set_postfix(loss=f"{data_sum.item() / max(n, 1):.4f}",
                                        lr=f"{lr:.4g}", refresh=False)
                self.optimizer.step()
                self.global_step += 1
                self.loss = loss.detach()
                data_sum += data_loss.detach().double() * y.shape[0]
                correct += (logits.detach().argmax(dim=1) == y).sum()
                n += int(y.shape[0])
                for cb in self.callbacks:
                    cb.after_step(self)
                bar.update(1)
            self._check_finite(total_sum, finite_steps, epoch)
            synchronize(dev)
            train_seconds = time.perf_counter() - t0
            if self.world_size > 1:  # the epoch over all processes
                counts = torch.tensor([n], dtype=torch.int64, device=dev)
                distributed.all_reduce_sum(counts, data_sum, correct, extra_sum)
                n = int(counts.item())
            if n == 0:
                raise UserError("the training loader produced no batches; check the data set")
            record: dict[str, Any] = {
                "epoch": epoch, "lr": lr, "samples": n, "train_loss": data_sum.item() / n,
                "train_acc": correct.item() / n, "val_acc": None,
                "images_per_s": n / train_seconds if train_seconds > 0 else None,
                "seconds": 0.0,
            }
            if self.loss_terms or self.grad_terms:
                record["extra_loss"] = extra_sum.item() / n
            if self.distill is not None:
                record["teacher_seconds"] = self.distill.seconds
                record.update(self.distill.inner_means())  # attention_loss, feature_loss
            if self.val_loader is not None and _nonempty(self.val_loader):
                ev = evaluate(self.model, self.val_loader, cfg.precision)
                record["val_acc"], record["val_loss"] = ev["top1"], ev["loss"]
            record["seconds"] = time.perf_counter() - t0
            if show:
                post = {"loss": f"{record['train_loss']:.4f}", "acc": f"{record['train_acc']:.3f}"}
                if record["val_acc"] is not None:
                    post["val"] = f"{record['val_acc']:.3f}"
                bar.set_postfix(post, refresh=True)
        finally:
            bar.close()
        return record

    def _check_finite(self, total_sum: torch.Tensor, finite_steps: torch.Tensor,
                      epoch: int) -> None:
        if not bool(torch.isfinite(total_sum)):
            step = int(finite_steps.item()) + 1
            raise UserError(f"training loss became NaN at epoch {epoch}, step {step}; lower the "
                            "learning rate (--lr) or use --precision fp32")

    # -- files ----------------------------------------------------------------------------
    def _write_files(self) -> None:
        """metrics.jsonl and the model files, as of the current in-memory state."""
        assert self.run_dir is not None
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write_text(self.run_dir / METRICS_FILE, lines)
        if self._saveable:
            save(self.model, self.run_dir, metadata={"epoch": str(self.epoch)})

    def _checkpoint(self) -> None:
        if self.run_dir is None:
            return
        self._write_files()
        state = {
            "format": STATE_FORMAT,
            "kind": "resprune-train-state",
            "epoch": self.epoch,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "finished": self.epoch >= self.config.epochs,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "rng": capture_rng(),
            "config": self.config.to_dict(),
            "callbacks": [cb.state_dict() for cb in self._stateful()],
            "world_size": self.world_size,
        }
        atomic_torch_save(state, self.run_dir / STATE_FILE)  # last: marks the epoch done

    def _stateful(self) -> list[Callback]:
        """The callbacks that keep state (override ``state_dict``), in order."""
        return [cb for cb in self.callbacks if type(cb).state_dict is not Callback.state_dict]

    def _resume(self) -> bool:
        """Restore ``train_state.pt``; return True if that run had already finished."""
        if self.run_dir is None:
            raise UserError("cannot resume: no run directory was given")
        path = self.run_dir / STATE_FILE
        if not path.is_file():
            raise UserError(f"cannot resume: {path} does not exist; start a new run "
                            "(without --resume) or pass the directory of an unfinished run")
        st = safe_torch_load(path, "training state")
        need = ("format", "epoch", "global_step", "steps_per_epoch", "model", "optimizer",
                "history", "rng", "config")
        if not isinstance(st, dict) or st.get("format") != STATE_FORMAT or any(
                k not in st for k in need):
            raise UserError(f"{path} is not a resprune training state (format "
                            f"{STATE_FORMAT}); start a new run without --resume")
        saved, now = st["config"], self.config.to_dict()
        defaults = TrainConfig().to_dict()  # options added later: a state without them ran
        changed = [f"{k}: {saved.get(k, defaults[k])!r} -> {v!r}" for k, v in now.items()
                   if k not in RESUME_FREE_OPTIONS and saved.get(k, defaults[k]) != v]
        if changed:
            raise UserError(f"cannot resume {self.run_dir}: it was started with other settings "
                            f"({'; '.join(changed)}); resume with the same settings or start "
                            "a new run")
        if st["steps_per_epoch"] != self.steps_per_epoch:
            raise UserError(f"cannot resume {self.run_dir}: it ran {st['steps_per_epoch']} "
                            f"batches per epoch, this data gives {self.steps_per_epoch}; use "
                            "the same data set and batch size")
        try:
            self.model.load_state_dict(st["model"], strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"cannot resume: the model does not match {path} "
                            f"({first[:200]})") from None
        try:
            self.optimizer.load_state_dict(st["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"cannot resume: optimizer state in {path} does not fit the "
                            f"model ({e})") from None
        was = int(st.get("world_size", 1))
        if was != self.world_size:
            logging.getLogger("resprune").info(
                "resuming a run of %d process(es) with %d: the global batch and the schedule "
                "are the same%s", was, self.world_size,
                "" if self.config.sync_bn else "; BatchNorm statistics now come from "
                f"{self.config.batch_size // self.world_size} images per process")
        self.epoch, self.global_step = int(st["epoch"]), int(st["global_step"])
        self.history = list(st["history"])
        restore_rng(st["rng"])
        saved_cbs = st.get("callbacks") or []
        stateful = self._stateful()
        if any(saved_cbs) and len(saved_cbs) != len(stateful):
            raise UserError(f"cannot resume {self.run_dir}: it ran with {len(saved_cbs)} "
                            f"stateful callback(s), now {len(stateful)} are given")
        for cb, cb_state in zip(stateful, saved_cbs):
            cb.load_state_dict(cb_state)
        self._write_files()  # make metrics.jsonl / model files agree with train_state.pt
        return self.epoch >= self.config.epochs


def _nonempty(loader: Iterable[Any]) -> bool:
    try:
        return len(loader) > 0  # type: ignore[arg-type]
    except TypeError:
        return True
