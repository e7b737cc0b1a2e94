"""The training loop: forward / backward / step, with checkpoints, evaluation and logs around it.

    trainer = Trainer(cfg, output_dir="runs/shapes", device="cpu")
    trainer.train()

Everything is read from the config; `Trainer` only wires the pieces built by the `build_*`
functions together. Under torchrun each process trains on its shard of every global batch
with DistributedDataParallel; only rank 0 logs, evaluates and writes checkpoints.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ssd.engine import checkpoint as ckpt
from ssd.engine.distributed import DistInfo, barrier, ranks_agree
from ssd.engine.inference import evaluate_model
from ssd.engine.metrics_log import MetricsLog, plot_metrics
from ssd.engine.solver import build_optimizer, build_scheduler
from ssd.precision import autocast_context, precision_label, training_precision


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and why."""


class Trainer:
    """Iteration-based SSD training driven by a config.

    Args:
        cfg: the full config (ssd.config.Config).
        output_dir: where checkpoints, metrics.jsonl and plots go (default cfg.train.output_dir).
        device: "cpu", "cuda", "cuda:1", ... (default: cuda when available).
        dist_info: rank / world size when launched by torchrun.
        resume: a checkpoint path, "auto" (newest in output_dir, if any), or None.
        init_weights: a weights file (checkpoint or classic state_dict) to start the whole
            model from; model.pretrained initialises only the backbone.
        progress: show the tqdm bar.
    """

    def __init__(
        self,
        cfg,
        output_dir: str | Path | None = None,
        device: str | None = None,
        dist_info: DistInfo | None = None,
        resume: str | Path | None = None,
        init_weights: str | Path | None = None,
        progress: bool = True,
    ):
        from ssd.data import build_dataset, build_transform

        self.cfg = cfg
        self.dist = dist_info or DistInfo()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.output_dir = Path(output_dir or cfg.train.output_dir)
        self.progress = progress and self.dist.is_main
        self._stop_requested = False

        _seed_everything(cfg.train.seed)
        # Data first: a missing data set stops the run before any heavy work.
        self.train_set = build_dataset(cfg, train=True)
        self.test_set = build_dataset(cfg, train=False) if cfg.train.eval_period > 0 else None
        self.train_transform = build_transform(cfg, train=True)

        self.model = self._build_model(init_weights)
        self.criterion = _build_criterion(cfg)
        solver = cfg.solver
        self.optimizer = build_optimizer(self.model, solver.lr, solver.momentum, solver.weight_decay,
                                         name=solver.optimizer)
        self.scheduler = build_scheduler(self.optimizer, solver.lr_steps, solver.gamma,
                                         solver.warmup_iters, solver.warmup_factor,
                                         schedule=solver.schedule, max_iter=solver.max_iter)
        self.precision = training_precision(cfg.train.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.iteration = 0
        self.best_map = -1.0
        resume_path = self._resolve_resume(resume)
        if resume_path is not None:
            self._load_training_state(resume_path)
        self.log = MetricsLog(self.output_dir, enabled=self.dist.is_main)
        if resume_path is not None:
            self.log.truncate_after(self.iteration)
        self.ddp_model = self._wrap_distributed(self.model)

    # ----------------------------------------------------------------------------- building
    def _build_model(self, init_weights) -> nn.Module:
        from ssd.modeling import build_model
        from ssd.weights import load_model_weights, load_pretrained_backbone, read_checkpoint

        model = build_model(self.cfg)
        if init_weights is not None:
            state_dict, _ = read_checkpoint(init_weights)
            load_model_weights(model, state_dict, source=str(init_weights))
        elif self.cfg.model.pretrained:
            load_pretrained_backbone(model, self.cfg.model.pretrained)
        model.to(self.device)
        if self.cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _wrap_distributed(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def _make_batches(self):
        from ssd.data import make_train_loader

        batch_size = self.cfg.solver.batch_size
        if batch_size % self.dist.world_size:
            raise TrainingError(
                f"solver.batch_size={batch_size} is the global batch and must be divisible by "
                f"the number of processes ({self.dist.world_size})"
            )
        return iter(make_train_loader(
            self.train_set, self.train_transform, batch_size=batch_size // self.dist.world_size,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.cfg.data.pin_memory and self.device.type == "cuda",
            seed=self.cfg.train.seed, start_iter=self.iteration, rank=self.dist.rank,
            world_size=self.dist.world_size,
        ))

    # ----------------------------------------------------------------------------- resume
    def _resolve_resume(self, resume) -> Path | None:
        if resume is None:
            return None
        if str(resume) == "auto":
            found = ckpt.newest_checkpoint(self.output_dir)
            if found is None and self.dist.is_main:
                print(f"--resume auto: no checkpoint in {self.output_dir}, starting from scratch")
            return found
        return Path(resume)

    def _load_training_state(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_map = float(state.get("best_map", -1.0))
        _set_rng_state(state.get("rng"))
        if self.dist.is_main:
            print(f"Resumed from {path} at iteration {self.iteration} "
                  f"(lr {self.optimizer.param_groups[0]['lr']:.6g})")

    def training_state(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly where it is."""
        return {
            "model": self.model.state_dict(),
            "config": self.cfg.to_dict(),
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": _get_rng_state(),
            "best_map": self.best_map,
        }

    def save_checkpoint(self) -> Path | None:
        """Write model_<iteration>.pth atomically and keep the newest train.keep_checkpoints."""
        if not self.dist.is_main:
            return None
        path = ckpt.atomic_save(self.training_state(),
                                ckpt.checkpoint_path(self.output_dir, self.iteration))
        ckpt.prune_checkpoints(self.output_dir, self.cfg.train.keep_checkpoints)
        return path

    # ----------------------------------------------------------------------------- loop
    def train_step(self, images: torch.Tensor, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One forward / backward / optimizer step. images [B,3,S,S]; targets B x [n_i, 5]."""
        images = images.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [t.to(self.device, non_blocking=True) for t in targets]
        with autocast_context(self.device, self.precision):
            loc, conf = self.ddp_model(images)
        losses = self.criterion(loc.float(), conf.float(), self.model.priors, targets)
        loss = losses["loss_loc"] + losses["loss_conf"]
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the LR this step uses
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}}

    def train(self) -> dict[str, Any]:
        """Run until solver.max_iter; returns the last logged losses and evaluation."""
        cfg = self.cfg
        max_iter = cfg.solver.max_iter
        if self.dist.is_main:
            print(self._summary())
        batches = self._make_batches()
        bar = tqdm(total=max_iter, initial=self.iteration, desc="train", unit="it",
                   disable=not self.progress, dynamic_ncols=True)
        last: dict[str, Any] = {}
        window_start, window_images = time.perf_counter(), 0
        previous_handler = self._install_sigint_handler()
        try:
            while self.iteration < max_iter and not self._stop_requested:
                images, targets, indices = next(batches)
                losses = self.train_step(images, targets)
                self._check_finite(losses, indices)
                self.iteration += 1
                window_images += images.shape[0] * self.dist.world_size
                bar.update(1)
                if self.iteration % cfg.train.log_period == 0 or self.iteration == max_iter:
                    elapsed = time.perf_counter() - window_start
                    last = self._log_step(losses, window_images / max(elapsed, 1e-9), bar)
                    window_start, window_images = time.perf_counter(), 0
                if self.iteration % cfg.train.checkpoint_period == 0:
                    self.save_checkpoint()
                if cfg.train.eval_period and self.iteration % cfg.train.eval_period == 0:
                    last["eval"] = self.evaluate()
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous_handler)
        if self._stop_requested:
            path = self.save_checkpoint()
            raise KeyboardInterrupt(
                f"Interrupted at iteration {self.iteration}; checkpoint written to {path}. "
                f"Continue with --resume auto (or --resume {path})."
            )
        return self._finish(last)

    def _finish(self, last: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        if self.iteration % cfg.train.checkpoint_period != 0:
            self.save_checkpoint()
        needs_eval = cfg.train.eval_period and self.iteration % cfg.train.eval_period != 0
        if needs_eval and self.iteration > 0:
            last["eval"] = self.evaluate()
        if self.dist.enabled:
            agree, sums = ranks_agree(self.model, self.dist)
            if self.dist.is_main:
                verdict = "identical" if agree else "DIFFERENT"
                print(f"DDP: weights {verdict} across {self.dist.world_size} ranks "
                      f"(checksums {', '.join(f'{s:.10e}' for s in sums)})")
            last["ranks_agree"] = agree
        if self.dist.is_main and self.log.path.is_file():
            plot_metrics(self.log.path, self.output_dir / "metrics.png")
        self.log.close()
        return last

    def _check_finite(self, losses: dict[str, torch.Tensor], indices: torch.Tensor) -> None:
        if bool(torch.isfinite(losses["loss"])):
            return
        ids = [self.train_set.image_ids[i] for i in indices.tolist()]
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        raise TrainingError(
            f"Non-finite loss at iteration {self.iteration + 1} ({values}); batch images: "
            f"{', '.join(map(str, ids))}. The last good checkpoint in {self.output_dir} is "
            f"intact; try a lower solver.lr or check these images' annotations."
        )

    def _log_step(self, losses, images_per_second: float, bar) -> dict[str, Any]:
        record = {"kind": "train", "iteration": self.iteration,
                  **{k: round(v.item(), 6) for k, v in losses.items()},
                  "lr": self.last_lr,
                  "images_per_second": round(images_per_second, 2)}
        bar.set_postfix(loss_loc=f"{record['loss_loc']:.3f}", loss_conf=f"{record['loss_conf']:.3f}",
                        lr=f"{record['lr']:.2e}", img_s=f"{images_per_second:.1f}")
        self.log.write(record)
        return record

    def evaluate(self) -> dict[str, Any] | None:
        """VOC07 (or the configured metric) on the test split; rank 0 only. Logs the mAP and
        keeps best.pth."""
        from ssd.data import build_transform, make_test_loader

        if not self.dist.is_main or self.test_set is None:
            barrier(self.dist)
            return None
        loader = make_test_loader(self.test_set, build_transform(self.cfg, train=False),
                                  batch_size=self.cfg.test.batch_size,
                                  num_workers=self.cfg.data.num_workers)
        self.model.eval()
        result = evaluate_model(self.model, self.test_set, loader, self.device, self.cfg.test,
                                self.cfg.model.variances, precision="fp32", progress=self.progress)
        self.model.train()
        record = {"kind": "eval", "iteration": self.iteration, "mAP": result["mAP"],
                  "metric": self.cfg.test.metric, "ap": result.get("ap", {})}
        self.log.write(record)
        tqdm.write(f"[iteration {self.iteration}] {self.cfg.test.metric} mAP = {result['mAP']:.4f}")
        if result["mAP"] > self.best_map:
            self.best_map = result["mAP"]
            ckpt.atomic_save(self.training_state(), self.output_dir / ckpt.BEST_NAME)
        barrier(self.dist)
        return record

    def _install_sigint_handler(self):
        def request_stop(signum, frame):
            if self._stop_requested:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop_requested = True
            tqdm.write("Ctrl-C: finishing this iteration and writing a checkpoint "
                       "(press again to abort without saving)")

        try:
            return signal.signal(signal.SIGINT, request_stop)
        except ValueError:  # not in the main thread
            return signal.getsignal(signal.SIGINT)

    def _summary(self) -> str:
        cfg = self.cfg
        params = sum(p.numel() for p in self.model.parameters())
        return (
            f"Training {cfg.model.backbone} SSD{cfg.model.image_size} ({params:,} parameters, "
            f"{self.model.priors.shape[0]} priors, {cfg.model.num_classes} classes) on "
            f"{self.device}{f' x{self.dist.world_size} processes' if self.dist.enabled else ''} "
            f"({precision_label(self.precision)}): "
            f"{len(self.train_set)} training images, batch {cfg.solver.batch_size}, "
            f"iterations {self.iteration} -> {cfg.solver.max_iter}, output {self.output_dir}"
        )


def _build_criterion(cfg) -> nn.Module:
    from ssd.loss import build_loss

    return build_loss(cfg)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _get_rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
