"""ChildTuning (Xu et al., EMNLP 2021) and Su Jianlin's analysis of it (kexue.fm/archives/8764).

ChildTuning fine-tunes only a "child" part of a pretrained network by multiplying the gradient with a
0/1 mask ``M`` (same shape as each parameter):

* **ChildTuning-F** draws a fresh ``M ~ Bernoulli(p)`` at every optimizer step and uses ``g * M / p``:
  dropout on the gradient, with ``p`` the **keep** probability (``reserve_p`` in the official code).
* **ChildTuning-D** fixes ``M`` once, before training, to the top-``p`` fraction of the diagonal Fisher
  information ``F_i = E[(d log p(y|x) / d theta_i)^2]``.

Contents
--------
* masks: :func:`bernoulli_mask_like`, :func:`gradient_dropout_`, :func:`random_fixed_mask`,
  :func:`fisher_mask`, :func:`mask_density`, :func:`masks_by_parameter`
* the optimizer-agnostic hook :class:`ChildTuningHook` (works with any ``torch.optim`` optimizer through
  its step pre/post hooks), the reference optimizer :class:`ChildTuningAdamW` (the official algorithm,
  HF-style AdamW with the mask inside ``step``) and the ``transformers`` callback :class:`ChildTuningCallback`
* Fisher scores: :func:`fisher_diagonal` (per example or per batch, optional per-tensor clipping)
* Su's analysis: :func:`sgd_dropout_moments`, :func:`adam_stationary_moments`,
  :func:`simulate_adam_updates`, :func:`fraction_changed_curve`, :func:`fraction_moved_theory`
* a toy transfer study: :func:`make_teacher_tasks`, :func:`pretrain_student`, :func:`finetune_toy`
* the real task (all-MiniLM-L6-v2 as a cross-encoder on sentence-pair classification — in the book STS-B
  pairs binarised at 2.5; GLUE RTE loads the same way — on cached features of
  :mod:`lib.encoders`): :func:`pair_ids`, :func:`cls_layer_output`, :class:`CrossEncoderClassifier`,
  :func:`accuracy`, :func:`finetune_classifier`
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lib.checks import check_choice, check_finite
from lib.train import fit

MODES = (None, "F", "D", "gauss")
TARGETS = ("grad", "update")
TOY_METHODS = ("vanilla", "lr_sqrt_p", "F", "update", "gauss", "D", "random", "lowest")


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------
def _check_prob(name: str, p: Any, *, allow_one: bool = True) -> float:
    """Return ``float(p)`` if it is a real number in (0, 1] (or (0, 1)), else raise ValueError/TypeError."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(p).__name__} {p!r}")
    p = float(p)
    ok = 0.0 < p <= 1.0 if allow_one else 0.0 < p < 1.0
    if not ok or math.isnan(p):
        raise ValueError(f"{name} must be in (0, 1{']' if allow_one else ')'}, got {p!r}")
    return p


def _check_real(name: str, value: Any) -> float:
    """Return ``float(value)`` if it is a finite real number, else raise TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _make_generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(int(seed))
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


# ----------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------
def bernoulli_mask_like(t: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """A 0/1 mask with the shape, dtype and device of ``t``; each entry is 1 with probability ``p``.

    ``p`` is the keep probability (not the drop probability of ``nn.Dropout``).
    ``E[M] = p`` and ``E[M / p] = 1``. Draws come from ``generator`` (a dedicated stream, so masking does
    not shift the global RNG that drives data order and model dropout).

    Shapes: ``t`` any ``[...]``; returns ``[...]``.
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    p = _check_prob("p", p)
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
    if p == 1.0:
        return torch.ones_like(t)
    uniform = torch.rand(t.shape, generator=generator, dtype=torch.float32, device=t.device)
    return (uniform < p).to(t.dtype)  # twice as fast as torch.bernoulli on a CPU, same distribution


def gradient_dropout_(params: Iterable[Tensor], p: float, generator: torch.Generator | None = None) -> None:
    """In place, ``g <- g * M / p`` with a fresh ``M ~ Bernoulli(p)`` for every ``param.grad`` (eq. 4).

    Parameters without a gradient are skipped (no mask is drawn for them)."""
    p = _check_prob("p", p)
    for param in params:
        if not isinstance(param, Tensor):
            raise TypeError(f"params must contain tensors, got {type(param).__name__}")
        if param.grad is not None:
            param.grad.mul_(bernoulli_mask_like(param.grad, p, generator).div_(p))


def random_fixed_mask(
    named_tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
    reserve_p: float,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The "random child network" ablation: one Bernoulli(``reserve_p``) bool mask per tensor, drawn once."""
    reserve_p = _check_prob("reserve_p", reserve_p)
    items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
    return {name: bernoulli_mask_like(t.detach().float(), reserve_p, generator).bool() for name, t in items}


def fisher_mask(
    fisher: Mapping[str, Tensor], reserve_p: float, which: str = "top", rule: str = "rank"
) -> dict[str, Tensor]:
    """ChildTuning-D mask (eq. 2): keep the ``reserve_p`` fraction of scalars with the largest Fisher score.

    The ranking is global over all tensors in ``fisher`` (not per tensor).

    * ``rule="rank"``: exactly ``k = round(reserve_p * N)`` entries. Scores are sorted once, descending,
      with a *stable* sort, so ties are broken by position (tensor order, then flat index): the result is
      deterministic and nested (``M(p1) <= M(p2)`` for ``p1 < p2``). ``which="bottom"`` takes the last
      ``k`` of the same ordering (the lowest-Fisher ablation), so top and bottom are disjoint for
      ``reserve_p <= 0.5`` even with ties.
    * ``rule="threshold"``: the official code's ``F >= q`` with ``q`` the k-th largest score
      (``torch.kthvalue``; ``which="bottom"``: ``F <= q'`` with ``q'`` the k-th smallest). Ties at the
      threshold can admit more than ``k`` entries. Without ties both rules agree.

    Shapes: each ``fisher[name]`` is ``[...]`` (a parameter's shape); returns bool tensors of the same shapes.
    """
    if not isinstance(fisher, Mapping) or not fisher:
        raise ValueError("fisher must be a non-empty mapping name -> tensor")
    reserve_p = _check_prob("reserve_p", reserve_p)
    check_choice("which", which, ("top", "bottom"))
    check_choice("rule", rule, ("rank", "threshold"))
    names = list(fisher)
    for name in names:
        if not isinstance(fisher[name], Tensor):
            raise TypeError(f"fisher[{name!r}] must be a tensor, got {type(fisher[name]).__name__}")
        check_finite(f"fisher[{name!r}]", fisher[name],
                     what="a NaN score would be ranked as the largest; check the loss used for the Fisher pass")
    flat = torch.cat([fisher[n].detach().reshape(-1).float().cpu() for n in names])
    n_total = flat.numel()
    k = max(1, min(n_total, round(reserve_p * n_total)))
    if rule == "rank":
        order = torch.argsort(flat, descending=True, stable=True)
        chosen = order[:k] if which == "top" else order[n_total - k:]
        keep = torch.zeros(n_total, dtype=torch.bool)
        keep[chosen] = True
    elif which == "top":
        threshold = torch.kthvalue(flat, n_total - k + 1).values
        keep = flat >= threshold
    else:
        threshold = torch.kthvalue(flat, k).values
        keep = flat <= threshold
    out, start = {}, 0
    for name in names:
        size = fisher[name].numel()
        out[name] = keep[start:start + size].reshape(fisher[name].shape).to(fisher[name].device)
        start += size
    return out


def _check_bool_masks(name: str, masks: Any) -> None:
    """Raise unless ``masks`` is a mapping of boolean tensors (scores or 0/1 floats are a different thing)."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"{name} must be a mapping name/parameter -> bool tensor, got {type(masks).__name__}")
    for key, mask in masks.items():
        label = key if isinstance(key, str) else f"parameter of shape {tuple(getattr(key, 'shape', ()))}"
        if not isinstance(mask, Tensor):
            raise TypeError(f"{name}[{label!r}] must be a bool tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"{name}[{label!r}] must be a bool tensor (a mask), got dtype {mask.dtype}; "
                            "turn Fisher scores into a mask with fisher_mask, or 0/1 values with .bool()")


def mask_density(masks: Mapping[Any, Tensor]) -> float:
    """Fraction of ``True`` entries over all masks together (the masks must be bool tensors)."""
    _check_bool_masks("masks", masks)
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        raise ValueError("masks must contain at least one element")
    return float(sum(m.sum().item() for m in masks.values()) / total)


def masks_by_parameter(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[nn.Parameter, Tensor]:
    """Turn ``{parameter name: mask}`` into ``{parameter: mask}`` (what :class:`ChildTuningHook` takes)."""
    _check_bool_masks("masks", masks)
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(f"masks names not found in model.named_parameters(): {unknown[:5]}")
    for name, mask in masks.items():
        if mask.shape != params[name].shape:
            raise ValueError(f"mask for {name!r} must have shape {tuple(params[name].shape)}, got {tuple(mask.shape)}")
    return {params[n]: m.bool() for n, m in masks.items()}


# ----------------------------------------------------------------------------------------------
# the optimizer-agnostic hook
# ----------------------------------------------------------------------------------------------
class ChildTuningHook:
    """Gradient (or update) masking that works with any ``torch.optim`` optimizer.

    Attach it with :meth:`attach` (it registers ``optimizer.register_step_pre_hook`` and
    ``register_step_post_hook``) or call :meth:`before_step` / :meth:`after_step` yourself around
    ``optimizer.step()`` (what :class:`ChildTuningCallback` does inside a ``transformers.Trainer``).

    Because the mask is applied right before ``step()``, it acts **after** gradient clipping, the order
    of the official pipeline.

    Modes (``p`` = ``reserve_p``, the keep ratio):

    * ``None``: vanilla (does nothing).
    * ``"F"``: fresh ``M ~ Bernoulli(p)`` each step. ``target="grad"``: ``g <- g*M/p`` (ChildTuning-F).
      ``target="update"``: the optimizer runs on the full gradient, then the parameter change is
      masked, ``theta <- theta_old + (theta_new - theta_old)*M/p`` (Su's "incre drop", eq. 6).
    * ``"D"``: fixed masks ``{parameter: bool tensor}`` (:meth:`set_masks`); ``g <- g*M`` (or ``g*M/p``
      with ``rescale=True``). Parameters without a mask are not touched. With ``decay_masked=False``
      masked-out entries are restored after the step, so decoupled weight decay cannot move them.
    * ``"gauss"``: the matched-moment multiplicative noise of eq. (13), ``g <- g*(1 + s*xi)``,
      ``s = sqrt((1-p)/p)``: same first two moments as ``g*M/p`` but no sparsity.

    All random draws come from the hook's own generator (seeded by ``seed``), in parameter order.
    """

    def __init__(
        self,
        mode: str | None,
        reserve_p: float = 0.3,
        *,
        masks: Mapping[nn.Parameter, Tensor] | None = None,
        target: str = "grad",
        rescale: bool | None = None,
        decay_masked: bool = True,
        params: Iterable[nn.Parameter] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        self.mode = check_choice("mode", mode, MODES)
        self.reserve_p = _check_prob("reserve_p", reserve_p)
        self.target = check_choice("target", target, TARGETS)
        if target == "update" and mode != "F":
            raise ValueError(f"target='update' is only defined for mode='F', got mode={mode!r}")
        self.rescale = (mode == "F") if rescale is None else bool(rescale)
        self.decay_masked = bool(decay_masked)
        self.scope = None if params is None else {id(p) for p in params}
        self.generator = _make_generator(generator, seed)
        self.masks: dict[int, Tensor] = {}
        if masks is not None:
            self.set_masks(masks)
        self._snapshots: dict[int, Tensor] = {}
        self._handles: list[Any] = []

    def set_masks(self, masks: Mapping[nn.Parameter, Tensor]) -> None:
        """Fixed ChildTuning-D masks, keyed by parameter (see :func:`masks_by_parameter`)."""
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks must be a mapping parameter -> bool tensor, got {type(masks).__name__}")
        new = {}
        for param, mask in masks.items():
            if not isinstance(param, Tensor) or not isinstance(mask, Tensor):
                raise TypeError("masks must map tensors (parameters) to tensors")
            if mask.shape != param.shape:
                raise ValueError(f"mask shape {tuple(mask.shape)} must equal parameter shape {tuple(param.shape)}")
            new[id(param)] = mask.to(device=param.device, dtype=torch.bool)
        self.masks = new

    # -- which parameters are touched ------------------------------------------------------------
    def _in_scope(self, param: Tensor) -> bool:
        if self.mode == "D":
            return id(param) in self.masks
        return self.scope is None or id(param) in self.scope

    def _needs_snapshot(self) -> bool:
        return (self.mode == "F" and self.target == "update") or (self.mode == "D" and not self.decay_masked)

    @torch.no_grad()
    def before_step(self, params: Iterable[Tensor]) -> None:
        """Mask the gradients (and snapshot parameters if :meth:`after_step` will need them)."""
        if self.mode is None:
            return
        p = self.reserve_p
        self._snapshots = {}
        for param in params:
            if param.grad is None or not self._in_scope(param):
                continue
            if self._needs_snapshot():
                self._snapshots[id(param)] = param.detach().clone()
            if self.mode == "F" and self.target == "grad":
                scale = bernoulli_mask_like(param.grad, p, self.generator)
                param.grad.mul_(scale.div_(p) if self.rescale else scale)
            elif self.mode == "D":
                mask = self.masks[id(param)].to(param.grad.dtype)
                param.grad.mul_(mask / p if self.rescale else mask)
            elif self.mode == "gauss":
                noise = torch.randn(param.grad.shape, generator=self.generator, dtype=torch.float32)
                param.grad.mul_(1.0 + math.sqrt((1.0 - p) / p) * noise.to(param.grad))

    @torch.no_grad()
    def after_step(self, params: Iterable[Tensor]) -> None:
        """Update dropout (``target="update"``) or restoring masked-out entries (``decay_masked=False``)."""
        if not self._snapshots:
            return
        for param in params:
            old = self._snapshots.get(id(param))
            if old is None:
                continue
            if self.mode == "F":
                keep = bernoulli_mask_like(param, self.reserve_p, self.generator)
                scale = keep.div_(self.reserve_p) if self.rescale else keep
                param.copy_(old + (param - old) * scale)
            else:
                param.copy_(torch.where(self.masks[id(param)], param, old))
        self._snapshots = {}

    # -- torch.optim integration ------------------------------------------------------------------
    @staticmethod
    def _params_of(optimizer: Any) -> list[Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    def attach(self, optimizer: torch.optim.Optimizer) -> "ChildTuningHook":
        """Register on ``optimizer`` (any ``torch.optim.Optimizer``); returns ``self``."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.detach()
        self._handles = [
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.before_step(self._params_of(opt))),
            optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_step(self._params_of(opt))),
        ]
        return self

    def detach(self) -> None:
        """Remove the hooks registered by :meth:`attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


# ----------------------------------------------------------------------------------------------
# the official optimizer, written out (reference twin of the hook)
# ----------------------------------------------------------------------------------------------
class ChildTuningAdamW(torch.optim.Optimizer):
    """AdamW as in the official ``ChildTuningAdamW`` (alibaba/AliceMind), with the mask inside ``step``.

    For each parameter with gradient ``g``:

    1. ``mode="D"`` and a stored mask ``M``: ``g <- g*M`` (``/p`` if ``rescale``).
    2. ``mode="F"``, ``target="grad"``: ``g <- g*M/p`` with a fresh ``M ~ Bernoulli(p)``.
    3. ``m <- b1*m + (1-b1)*g``, ``v <- b2*v + (1-b2)*g^2``,
       ``u = lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)`` (HF style: eps before bias correction).
    4. ``mode="F"``, ``target="update"``: ``u <- u*M/p`` with a fresh mask.
    5. ``theta <- theta - u``, then decoupled decay ``theta <- theta - lr*wd*theta`` (skipped on masked-out
       entries in D mode when ``decay_masked=False``).

    Masks are drawn from ``generator`` in parameter order, exactly like :class:`ChildTuningHook`.
    The moments and the update are computed in float32 (float64 for float64 parameters) whatever the
    parameter's dtype, so half-precision parameters with small gradients still receive their update
    (rounded once, when it is written back).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        *,
        mode: str | None = None,
        reserve_p: float = 1.0,
        target: str = "grad",
        rescale: bool | None = None,
        decay_masked: bool = True,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        check_choice("mode", mode, (None, "F", "D"))
        check_choice("target", target, TARGETS)
        if target == "update" and mode != "F":
            raise ValueError(f"target='update' is only defined for mode='F', got mode={mode!r}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        super().__init__(params, defaults)
        self.mode, self.target = mode, target
        self.reserve_p = _check_prob("reserve_p", reserve_p)
        self.rescale = (mode == "F") if rescale is None else bool(rescale)
        self.decay_masked = bool(decay_masked)
        self.generator = _make_generator(generator, seed)
        self.gradient_mask: dict[int, Tensor] = {}

    def set_gradient_mask(self, masks: Mapping[nn.Parameter, Tensor]) -> None:
        """Fixed D-mode masks ``{parameter: bool tensor of its shape}``; parameters absent from the dict are
        unmasked."""
        _check_bool_masks("masks", masks)
        for param, mask in masks.items():
            if not isinstance(param, Tensor):
                raise TypeError(f"masks must be keyed by parameters, got a key of type {type(param).__name__}")
            if mask.shape != param.shape:
                raise ValueError(f"masks: a mask of shape {tuple(mask.shape)} was given for a parameter of shape "
                                 f"{tuple(param.shape)}")
        self.gradient_mask = {id(p): m.to(device=p.device) for p, m in masks.items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # noqa: C901 (mirrors the paper)
        loss = closure() if closure is not None else None
        p_keep = self.reserve_p
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                work = torch.float64 if param.dtype == torch.float64 else torch.float32
                grad = param.grad.to(work)
                mask = self.gradient_mask.get(id(param)) if self.mode == "D" else None
                if mask is not None:
                    grad = grad * (mask.to(grad.dtype) / p_keep if self.rescale else mask.to(grad.dtype))
                elif self.mode == "F" and self.target == "grad":
                    keep = bernoulli_mask_like(grad, p_keep, self.generator)
                    grad = grad * (keep / p_keep if self.rescale else keep)
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, dtype=work)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=work)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(grad, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
                step_size = group["lr"]
                if group["correct_bias"]:
                    t = state["step"]
                    step_size = step_size * math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
                update = step_size * m / (v.sqrt() + group["eps"])
                if self.mode == "F" and self.target == "update":
                    keep = bernoulli_mask_like(update, p_keep, self.generator)
                    update = update * (keep / p_keep if self.rescale else keep)
                value = param if param.dtype == work else param.to(work)
                value.sub_(update)
                if group["weight_decay"] > 0.0:
                    decay = value * (group["lr"] * group["weight_decay"])
                    if mask is not None and not self.decay_masked:
                        decay = decay * mask.to(decay.dtype)
                    value.sub_(decay)
                if value is not param:
                    param.copy_(value)
        return loss


# ----------------------------------------------------------------------------------------------
# Fisher information
# ----------------------------------------------------------------------------------------------
def official_scope(name: str) -> bool:
    """The official ChildTuning-D scope: parameters whose name contains ``"layer"`` (encoder layers)."""
    return "layer" in name


def _clip_(grad: Tensor, max_norm: float | None) -> Tensor:
    """Per-tensor clipping exactly like ``torch.nn.utils.clip_grad_norm_(tensor, max_norm)``."""
    if max_norm is None:
        return grad
    coef = max_norm / (grad.norm() + 1e-6)
    return grad * torch.clamp(coef, max=1.0)


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    *,
    per_sample: bool = True,
    param_filter: Callable[[str], bool] | None = None,
    clip_norm: float | None = None,
    train_mode: bool = True,
) -> dict[str, Tensor]:
    """Diagonal (empirical) Fisher information of the trainable parameters (eq. 1).

    ``loss_fn(model, batch)`` returns the negative log-likelihood: per example ``[B]`` (required when
    ``per_sample=True``) or its batch mean (a scalar, allowed when ``per_sample=False``).

    * ``per_sample=True``: ``F_i = (1/n) sum_j (d loss_j / d theta_i)^2`` over all ``n`` examples
      (one backward per example on a shared forward; dropout, if active, is shared within a batch).
    * ``per_sample=False`` (the official code): ``F_i = (1/N_b) sum_b (clip(d mean_b loss / d theta_i))^2``
      over the ``N_b`` batches. Expected values differ: ``mu^2 + sigma^2`` versus ``mu^2 + sigma^2 / B``.

    ``clip_norm`` clips each parameter tensor's gradient to that norm first (per tensor, as the official
    ``clip_grad_norm_(params, max_grad_norm)`` inside its loop). ``param_filter(name)`` selects the scope
    (e.g. :func:`official_scope`); the model is put in train (dropout on, official) or eval mode and
    restored afterwards. Returns ``{name: tensor of the parameter's shape}``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and (param_filter is None or param_filter(n))]
    if not named:
        raise ValueError("no trainable parameter matches param_filter")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm!r}")
    names, params = [n for n, _ in named], [p for _, p in named]
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was_training = model.training
    model.train(train_mode)
    count = 0
    try:
        for batch in batches:
            losses = loss_fn(model, batch)
            if per_sample:
                if losses.dim() != 1:
                    raise ValueError(f"per_sample=True needs loss_fn to return per-example losses [B], got shape {tuple(losses.shape)}")
                for j in range(losses.shape[0]):
                    grads = torch.autograd.grad(losses[j], params, retain_graph=j < losses.shape[0] - 1, allow_unused=True)
                    for a, g in zip(acc, grads):
                        if g is not None:
                            a.add_(_clip_(g.float(), clip_norm) ** 2)
                count += losses.shape[0]
            else:
                loss = losses.mean() if losses.dim() > 0 else losses
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for a, g in zip(acc, grads):
                    if g is not None:
                        a.add_(_clip_(g.float(), clip_norm) ** 2)
                count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("batches must not be empty")
    return {n: a / count for n, a in zip(names, acc)}


# ----------------------------------------------------------------------------------------------
# transformers integration
# ----------------------------------------------------------------------------------------------
try:  # transformers is a dependency of the book, but keep the core importable without it
    from transformers import TrainerCallback as _TrainerCallback
except ImportError:  # pragma: no cover
    _TrainerCallback = object  # type: ignore[misc,assignment]


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def hf_batch_loss(model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    """Mean loss of a ``transformers`` model on a batch that contains ``labels`` (a scalar)."""
    device = next(model.parameters()).device
    return model(**_to_device(batch, device)).loss


class ChildTuningCallback(_TrainerCallback):
    """ChildTuning inside ``transformers.Trainer``, with any optimizer the Trainer builds.

    * ``on_train_begin`` (D mode, unless ``masks`` were given): one pass over the Trainer's training
      dataloader computes the per-batch Fisher of the parameters selected by ``param_filter`` (default:
      :func:`official_scope`), each tensor's gradient clipped to ``args.max_grad_norm`` like the official
      code; the top ``reserve_p`` fraction becomes the fixed mask.
    * ``on_pre_optimizer_step`` (after the Trainer's gradient clipping) masks the gradients;
      ``on_optimizer_step`` finishes update dropout / the decay exemption (see :class:`ChildTuningHook`).
    """

    def __init__(
        self,
        mode: str | None,
        reserve_p: float = 0.3,
        *,
        masks: Mapping[str, Tensor] | None = None,
        param_filter: Callable[[str], bool] = official_scope,
        target: str = "grad",
        rescale: bool | None = None,
        decay_masked: bool = True,
        seed: int = 0,
    ) -> None:
        self.hook = ChildTuningHook(mode, reserve_p, target=target, rescale=rescale, decay_masked=decay_masked, seed=seed)
        self.name_masks = None if masks is None else dict(masks)
        self.param_filter = param_filter
        self.fisher: dict[str, Tensor] | None = None

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):  # noqa: D401
        if self.hook.mode != "D":
            return
        if self.name_masks is None:
            if model is None or train_dataloader is None:
                raise ValueError("D mode needs the Trainer's model and train_dataloader to compute the Fisher scores")
            clip = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None
            self.fisher = fisher_diagonal(model, train_dataloader, hf_batch_loss, per_sample=False,
                                          param_filter=self.param_filter, clip_norm=clip, train_mode=True)
            model.zero_grad(set_to_none=True)
            self.name_masks = fisher_mask(self.fisher, self.hook.reserve_p)
        self.hook.set_masks(masks_by_parameter(model, self.name_masks))

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.hook.before_step(ChildTuningHook._params_of(optimizer))

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.hook.after_step(ChildTuningHook._params_of(optimizer))


# ----------------------------------------------------------------------------------------------
# Su's analysis: moments and simulations
# ----------------------------------------------------------------------------------------------
def sgd_dropout_moments(mu: float, sigma: float, p: float) -> tuple[float, float]:
    """Mean and variance of ``g*eps/p`` for ``E g = mu``, ``Var g = sigma^2``, ``eps ~ Bernoulli(p)``
    independent of ``g`` (eqs. 7-8): ``(mu, (mu^2 + sigma^2)/p - mu^2)``; no Gaussianity needed."""
    p = _check_prob("p", p)
    _check_real("mu", mu)
    if _check_real("sigma", sigma) < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    return float(mu), float((mu**2 + sigma**2) / p - mu**2)


def adam_stationary_moments(
    mu: float, sigma: float, p: float, beta1: float = 0.9, mode: str = "none"
) -> tuple[float, float]:
    """Stationary mean and variance of Adam's per-step update ``m/sqrt(v)`` in units of ``lr`` (eqs. 9-11).

    Model: iid gradients with mean ``mu`` and std ``sigma``, ``v = E[g~^2]`` (``beta2 -> 1``), the EMA
    variance factor ``c = (1 - beta1)/(1 + beta1)`` and ``r = mu^2/(mu^2 + sigma^2)``.

    ============  =========================  ======================================
    mode          mean                       variance
    ============  =========================  ======================================
    none          ``mu/sqrt(mu^2+sigma^2)``  ``c (1 - r)``
    grad/gauss    ``sqrt(p) * mean_none``    ``c (1 - p r)``  (more noise than none)
    lr_sqrt_p     ``sqrt(p) * mean_none``    ``p c (1 - r)``
    update        ``mean_none``              ``(c (1 - r) + mean_none^2)/p - mean_none^2``
    ============  =========================  ======================================
    """
    p = _check_prob("p", p)
    check_choice("mode", mode, ("none", "grad", "gauss", "lr_sqrt_p", "update"))
    if not 0.0 <= _check_real("beta1", beta1) < 1.0:
        raise ValueError(f"beta1 must be in [0, 1), got {beta1!r}")
    _check_real("mu", mu)
    if _check_real("sigma", sigma) < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if mu == 0 and sigma == 0:
        raise ValueError("mu and sigma cannot both be 0")
    c = (1.0 - beta1) / (1.0 + beta1)
    r = mu**2 / (mu**2 + sigma**2)
    mean0 = mu / math.sqrt(mu**2 + sigma**2)
    if mode == "none":
        return mean0, c * (1.0 - r)
    if mode in ("grad", "gauss"):
        return math.sqrt(p) * mean0, c * (1.0 - p * r)
    if mode == "lr_sqrt_p":
        return math.sqrt(p) * mean0, p * c * (1.0 - r)
    var0 = c * (1.0 - r)
    return mean0, (var0 + mean0**2) / p - mean0**2


def simulate_adam_updates(
    mu: float,
    sigma: float,
    p: float,
    mode: str,
    n: int = 2000,
    steps: int = 6000,
    keep_last: int = 2000,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-12,
    seed: int = 0,
) -> np.ndarray:
    """Adam (bias-corrected) on ``n`` independent scalar parameters fed iid ``N(mu, sigma^2)`` gradients.

    ``mode``: ``"none"`` (plain), ``"grad"`` (gradient dropout), ``"update"`` (update dropout),
    ``"lr_sqrt_p"`` (plain Adam with lr x sqrt(p)) or ``"gauss"`` (multiplicative noise of eq. 13).
    Returns the updates ``u_t`` (in units of lr, sign: along ``+g``) of the last ``keep_last`` steps,
    shape ``[keep_last, n]`` (float64).
    """
    p = _check_prob("p", p)
    check_choice("mode", mode, ("none", "grad", "update", "lr_sqrt_p", "gauss"))
    _check_positive_int("n", n)
    _check_positive_int("steps", steps)
    _check_positive_int("keep_last", keep_last)
    if keep_last > steps:
        raise ValueError(f"keep_last must be <= steps ({steps}), got {keep_last}")
    gen = torch.Generator().manual_seed(seed)
    m = torch.zeros(n, dtype=torch.float64)
    v = torch.zeros(n, dtype=torch.float64)
    out = np.empty((keep_last, n))
    s = math.sqrt((1.0 - p) / p)
    for t in range(1, steps + 1):
        g = mu + sigma * torch.randn(n, generator=gen, dtype=torch.float64)
        if mode == "grad":
            g = g * (torch.rand(n, generator=gen, dtype=torch.float64) < p) / p
        elif mode == "gauss":
            g = g * (1.0 + s * torch.randn(n, generator=gen, dtype=torch.float64))
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        u = (m / (1.0 - beta1**t)) / ((v / (1.0 - beta2**t)).sqrt() + eps)
        if mode == "lr_sqrt_p":
            u = u * math.sqrt(p)
        elif mode == "update":
            u = u * (torch.rand(n, generator=gen, dtype=torch.float64) < p) / p
        if t > steps - keep_last:
            out[t - (steps - keep_last) - 1] = u.numpy()
    return out


def fraction_moved_theory(p: float, steps: int, optimizer_name: str, target: str) -> np.ndarray:
    """Expected fraction of coordinates that change at step ``t = 1..steps`` (eq. 12).

    Update dropout, or gradient dropout with memory-less SGD: ``p``. Gradient dropout with momentum
    (SGDM, Adam): a coordinate moves once it has been unmasked at least once, ``1 - (1 - p)^t``.
    """
    p = _check_prob("p", p)
    check_choice("optimizer_name", optimizer_name, ("sgd", "sgdm", "adam"))
    check_choice("target", target, TARGETS)
    t = np.arange(1, _check_positive_int("steps", steps) + 1)
    if target == "update" or optimizer_name == "sgd":
        return np.full(t.shape, p)
    return 1.0 - (1.0 - p) ** t


def fraction_changed_curve(
    optimizer_name: str, target: str, p: float, steps: int = 60, size: int = 256, lr: float = 1e-3, seed: int = 0
) -> np.ndarray:
    """Measured fraction of the entries of a ``size x size`` linear layer that change at each step.

    Random regression data, the named torch optimizer (``"sgd"``, ``"sgdm"`` with momentum 0.9,
    ``"adam"``) and a :class:`ChildTuningHook` in F mode with the given ``target``. Returns ``[steps]``."""
    check_choice("optimizer_name", optimizer_name, ("sgd", "sgdm", "adam"))
    _check_positive_int("steps", steps)
    _check_positive_int("size", size)
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(size, size, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(size, size, generator=gen) / math.sqrt(size))
    x = torch.randn(4 * size, size, generator=gen)
    y = torch.randn(4 * size, size, generator=gen)
    if optimizer_name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9 if optimizer_name == "sgdm" else 0.0)
    ChildTuningHook("F", p, target=target, seed=seed + 1).attach(opt)
    fractions = np.empty(steps)
    for t in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=gen)
        before = layer.weight.detach().clone()
        opt.zero_grad()
        ((layer(x[idx]) - y[idx]) ** 2).mean().backward()
        opt.step()
        fractions[t] = (layer.weight.detach() != before).float().mean().item()
    return fractions


def adam_trajectory(
    method: str, p: float = 0.3, steps: int = 300, lr: float = 1e-3, batch_size: int = 64,
    n: int = 2000, dim: int = 50, n_classes: int = 10, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Adam on a tanh MLP ``dim -> 64 -> n_classes`` (synthetic data fixed by ``seed=0``; ``seed`` drives
    init, batches and masks) with ``method`` in ``adam`` (plain), ``F`` (gradient dropout ``p``) or
    ``lr_sqrt_p`` (plain Adam, lr x sqrt(p)).

    Returns ``displacement [steps]`` (``||theta_t - theta_0||``) and ``loss [steps]`` (full-data loss)."""
    check_choice("method", method, ("adam", "F", "lr_sqrt_p"))
    p = _check_prob("p", p)
    data_gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=data_gen)
    y = (x @ torch.randn(dim, n_classes, generator=data_gen) + 0.5 * torch.randn(n, n_classes, generator=data_gen)).argmax(-1)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _mlp([dim, 64, n_classes])
    opt = torch.optim.Adam(model.parameters(), lr=lr * (math.sqrt(p) if method == "lr_sqrt_p" else 1.0))
    if method == "F":
        ChildTuningHook("F", p, seed=seed + 1).attach(opt)
    theta0 = _param_vector(model)
    disp, loss = np.empty(steps), np.empty(steps)
    for t in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        with torch.no_grad():
            disp[t] = (_param_vector(model) - theta0).norm().item()
            loss[t] = nn.functional.cross_entropy(model(x), y).item()
    return {"displacement": disp, "loss": loss}


# ----------------------------------------------------------------------------------------------
# toy transfer study
# ----------------------------------------------------------------------------------------------
def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def make_teacher_tasks(
    dim: int = 32,
    hidden: int = 64,
    n_classes: int = 8,
    n_source: int = 8000,
    n_target: int = 128,
    n_test: int = 4000,
    shift: float = 0.5,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Source and related target classification tasks from random tanh teachers ``dim -> hidden -> n_classes``.

    The target teacher is the source teacher plus ``shift`` x (relative) Gaussian noise on every weight
    matrix. Labels are the teachers' argmax. Returns ``x_source [n_source, dim]``, ``y_source``,
    ``x_target [n_target, dim]``, ``y_target``, ``x_test [n_test, dim]``, ``y_test`` (target teacher).
    """
    for name, value in (("dim", dim), ("hidden", hidden), ("n_source", n_source), ("n_target", n_target), ("n_test", n_test)):
        _check_positive_int(name, value)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
    if _check_real("shift", shift) < 0:
        raise ValueError(f"shift must be >= 0, got {shift!r}")
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(dim, hidden, generator=gen) / math.sqrt(dim) * 2.0
    w2 = torch.randn(hidden, n_classes, generator=gen) / math.sqrt(hidden) * 2.0
    v1 = w1 + shift * w1.std() * torch.randn(w1.shape, generator=gen)
    v2 = w2 + shift * w2.std() * torch.randn(w2.shape, generator=gen)

    def label(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return (torch.tanh(x @ a) @ b).argmax(-1)

    xs = torch.randn(n_source, dim, generator=gen)
    xt = torch.randn(n_target, dim, generator=gen)
    xe = torch.randn(n_test, dim, generator=gen)
    return {"x_source": xs, "y_source": label(xs, w1, w2), "x_target": xt, "y_target": label(xt, v1, v2),
            "x_test": xe, "y_test": label(xe, v1, v2)}


def _classification_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor
                          ) -> Callable[[Tensor], float]:
    """``step(idx)`` for :func:`lib.train.fit`: one cross-entropy update on rows ``idx`` of ``x [N, D]``,
    ``y [N]``; returns the loss."""

    def step(idx: Tensor) -> float:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        return loss.item()

    return step


def pretrain_student(
    x: Tensor, y: Tensor, hidden: int = 128, epochs: int = 8, lr: float = 3e-3, batch_size: int = 64, seed: int = 0
) -> nn.Sequential:
    """Train a tanh MLP ``dim -> hidden -> hidden -> n_classes`` on the source task with Adam."""
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be [N, D] and y [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _mlp([x.shape[1], hidden, hidden, int(y.max()) + 1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    step = _classification_step(model, opt, x, y)

    fit(step, lambda epoch: list(torch.randperm(x.shape[0], generator=gen).split(batch_size)), epochs,
        desc="pretrain student", progress=False)
    return model


def _param_vector(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def finetune_toy(
    pretrained: nn.Sequential,
    data: Mapping[str, Tensor],
    method: str,
    p: float = 0.3,
    steps: int = 150,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Fine-tune a copy of ``pretrained`` on ``data["x_target"], data["y_target"]`` with a fresh head.

    ``method``: ``vanilla``, ``lr_sqrt_p`` (Adam with lr x sqrt(p)), ``F`` (gradient dropout), ``update``
    (update dropout), ``gauss`` (eq. 13), ``D`` (top-p per-example Fisher mask on the hidden layers),
    ``random`` (random fixed mask), ``lowest`` (lowest-Fisher mask). Optimizer: ``torch.optim.Adam`` with
    a :class:`ChildTuningHook`. Returns ``acc`` (test accuracy), ``displacement`` (``||theta_T - theta_0||``)
    and ``losses``.
    """
    check_choice("method", method, TOY_METHODS)
    p = _check_prob("p", p)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(pretrained)
    n_classes = int(torch.cat([data["y_target"], data["y_test"]]).max()) + 1
    model[-1] = nn.Linear(model[-1].in_features, n_classes)  # fresh head
    x, y = data["x_target"], data["y_target"]
    body = {n: q for n, q in model.named_parameters() if not n.startswith(str(len(model) - 1))}
    hook: ChildTuningHook
    if method in ("vanilla", "lr_sqrt_p"):
        hook = ChildTuningHook(None)
    elif method in ("F", "update"):
        hook = ChildTuningHook("F", p, target="grad" if method == "F" else "update", seed=seed + 1)
    elif method == "gauss":
        hook = ChildTuningHook("gauss", p, seed=seed + 1)
    else:
        if method == "random":
            name_masks = random_fixed_mask(body, p, generator=torch.Generator().manual_seed(seed + 1))
        else:
            def nll(m: nn.Module, idx: Tensor) -> Tensor:
                return nn.functional.cross_entropy(m(x[idx]), y[idx], reduction="none")
            fisher = fisher_diagonal(model, torch.arange(x.shape[0]).split(64), nll, per_sample=True,
                                     param_filter=lambda n: n in body)
            name_masks = fisher_mask(fisher, p, which="top" if method == "D" else "bottom")
        hook = ChildTuningHook("D", p, masks=masks_by_parameter(model, name_masks))
    opt = torch.optim.Adam(model.parameters(), lr=lr * (math.sqrt(p) if method == "lr_sqrt_p" else 1.0))
    hook.attach(opt)
    theta0 = _param_vector(model)

    step = _classification_step(model, opt, x, y)

    size = min(batch_size, x.shape[0])
    batches = [torch.randint(0, x.shape[0], (size,), generator=gen) for _ in range(steps)]
    losses = fit(step, lambda epoch: batches, 1, desc=f"toy {method}", progress=False).losses
    hook.detach()
    with torch.no_grad():
        acc = (model(data["x_test"]).argmax(-1) == data["y_test"]).float().mean().item()
    return {"acc": acc, "displacement": (_param_vector(model) - theta0).norm().item(), "losses": losses}


# ----------------------------------------------------------------------------------------------
# the real task: MiniLM as a cross-encoder on sentence pairs, trainable top layers on cached features
# ----------------------------------------------------------------------------------------------
PAIR_METHODS = ("vanilla", "F", "D", "lr_sqrt_p", "random", "head")


def pair_ids(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int = 128) -> list[list[int]]:
    """Token ids of each sentence pair encoded *together* (a cross-encoder input):
    ``[CLS] a [SEP] b [SEP]``, truncated longest-first to ``max_length`` tokens. Returns one id list per pair."""
    _check_positive_int("max_length", max_length)
    if isinstance(pairs, (str, bytes)) or not len(pairs):
        raise ValueError("pairs must be a non-empty sequence of (text_a, text_b)")
    out = []
    for i, pair in enumerate(pairs):
        a, b = pair[0], pair[1]
        if not isinstance(a, str) or not isinstance(b, str):
            raise TypeError(f"pairs[{i}] must start with two str, got {type(a).__name__}, {type(b).__name__}")
        out.append(list(tokenizer(a, b, truncation=True, max_length=max_length)["input_ids"]))
    return out


def cls_layer_output(layer: nn.Module, hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The output of one BERT layer (``transformers`` ``BertLayer``, Post-LN) at position 0 ([CLS]) only.

    hidden ``[B, L, D]`` (the layer's input), attention_mask ``[B, L]`` -> ``[B, D]``, equal to
    ``layer(hidden, mask)[0][:, 0]``. Only the [CLS] query is formed, and its attention is rewritten by
    associativity: with head ``h``'s key map ``k_j = W_k^h x_j + b_k^h`` the scores are
    ``q^h . k_j = (W_k^{h T} q^h) . x_j + q^h . b_k^h`` and the context is
    ``sum_j a_j v_j = W_v^h (sum_j a_j x_j) + b_v^h``. The keys and values of the L tokens are never
    built: the cost per sequence is ``O(D^2 + H L D)`` instead of the full layer's ``O(L D^2)``, and the
    gradients reach every weight of the layer (keys and values included), exactly as through the full
    layer. A classifier that reads only [CLS] needs nothing else from its last layer."""
    from lib.checks import check_tensor

    check_tensor("hidden", hidden, 3, floating=True)
    check_tensor("attention_mask", attention_mask, 2)
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"attention_mask must be {tuple(hidden.shape[:2])}, got {tuple(attention_mask.shape)}")
    attn = layer.attention.self
    heads, size = attn.num_attention_heads, attn.attention_head_size
    batch, _, dim = hidden.shape
    x0 = hidden[:, :1]                                                    # [B, 1, D]
    q = attn.query(x0[:, 0]).view(batch, heads, size)                     # [B, H, d]
    wk = attn.key.weight.view(heads, size, dim)                           # [H, d, D]
    wv = attn.value.weight.view(heads, size, dim)
    u = torch.einsum("bhd,hdi->bhi", q, wk)                               # [B, H, D]
    scores = torch.einsum("bhi,bli->bhl", u, hidden) + torch.einsum("bhd,hd->bh", q, attn.key.bias.view(heads, size))[..., None]
    scores = scores * size ** -0.5
    scores = scores.masked_fill(~attention_mask.bool().to(hidden.device)[:, None, :], torch.finfo(scores.dtype).min)
    probs = attn.dropout(torch.softmax(scores, dim=-1))                  # [B, H, L]
    pooled = torch.einsum("bhl,bli->bhi", probs, hidden)                  # [B, H, D]
    context = torch.einsum("bhi,hdi->bhd", pooled, wv) + attn.value.bias.view(heads, size) * probs.sum(-1, keepdim=True)
    attention_out = layer.attention.output(context.reshape(batch, 1, heads * size), x0)
    return layer.output(layer.intermediate(attention_out), attention_out)[:, 0]


class CrossEncoderClassifier(nn.Module):
    """Trainable top layers of a pretrained encoder + a linear head on the [CLS] output.

    forward(hidden ``[B, L, D]`` — cached features after the frozen first ``k`` layers —, attention_mask
    ``[B, L]``) -> logits ``[B, num_labels]``. ``top`` is a :class:`lib.encoders.TopLayers`; all its
    applications but the last run on every token, the last only at [CLS] (:func:`cls_layer_output`).
    Parameter names are ``top.layers.<i>. ...`` (inside the official ChildTuning-D scope, see
    :func:`official_scope`) and ``classifier.*`` (outside it)."""

    def __init__(self, top: nn.Module, num_labels: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if not hasattr(top, "layers") or not hasattr(top, "schedule"):
            raise TypeError(f"top must be a lib.encoders.TopLayers, got {type(top).__name__}")
        _check_positive_int("num_labels", num_labels)
        self.top = top
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(int(top.config.hidden_size), num_labels)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        from lib.encoders import TopLayers

        schedule = self.top.schedule
        if len(schedule) > 1:
            hidden = TopLayers(self.top.layers, schedule[:-1], self.top.config)(hidden, attention_mask)
        cls = cls_layer_output(self.top.layers[schedule[-1]], hidden, attention_mask)
        return self.classifier(self.dropout(cls))


def _feature_batches(features: Sequence[Tensor], idx: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
    from lib.encoders import pad_features

    hidden, mask = pad_features([features[i] for i in idx])
    return hidden.to(device), mask.to(device)


@torch.no_grad()
def accuracy(model: nn.Module, features: Sequence[Tensor], labels: Tensor, batch_size: int = 64) -> float:
    """Accuracy of ``model(hidden, mask).argmax(-1)`` against ``labels [N]`` (eval mode, batched by length)."""
    from lib.train import length_batches

    if len(features) != len(labels):
        raise ValueError(f"features ({len(features)}) and labels ({len(labels)}) must have the same length")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for idx in length_batches([f.shape[0] for f in features], batch_size=batch_size, shuffle=False):
        logits = model(*_feature_batches(features, idx, device))
        correct += int((logits.argmax(-1).cpu() == labels[idx]).sum())
    model.train(was_training)
    return correct / len(labels)


def finetune_classifier(
    top: nn.Module,
    train: tuple[Sequence[Tensor], Tensor],
    dev: tuple[Sequence[Tensor], Tensor],
    method: str,
    *,
    p: float = 0.3,
    lr: float = 2e-4,
    epochs: int = 3,
    batch_size: int = 16,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    max_grad_norm: float = 1.0,
    fisher_batches: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Fine-tune a :class:`CrossEncoderClassifier` on a copy of ``top`` with one ChildTuning arm.

    ``train`` / ``dev``: ``(features, labels [N])``, features a list of ``[L_i, D]`` cached hidden states
    (:func:`lib.encoders.cached_features`). Training goes through :func:`lib.train.fit` with
    :func:`lib.train.length_batches` (batch order seeded by ``seed`` and the epoch). ``method``:

    * ``vanilla``; ``lr_sqrt_p`` (vanilla with lr x sqrt(p): Su's reading of ChildTuning-F);
    * ``F`` (ChildTuning-F: gradient dropout, keep ratio ``p``, on every parameter, as the official code);
    * ``D`` (ChildTuning-D: per-batch Fisher, each tensor's gradient clipped to ``max_grad_norm``, over
      ``fisher_batches`` training batches at the pretrained weights; the top ``p`` of all scalars in the
      encoder layers — :func:`official_scope` — form the child network; the head is never masked);
    * ``random`` (the ablation: a fixed mask of exactly the same size as D's, placed uniformly at random
      over the same scope);
    * ``head`` (reference: the encoder layers frozen, only the head trains).

    Optimizer: ``torch.optim.AdamW`` (eps 1e-8; no decay on biases and LayerNorm) with a
    :class:`ChildTuningHook`, linear warmup then linear decay, global-norm clipping *before* the mask
    (the official order). Returns ``dev_acc`` (after the last epoch), ``losses``
    (per step), ``seconds``, ``density`` (fraction of in-scope scalars the fixed mask keeps; 1 without one)
    and ``density_by_param``."""
    from lib.train import fit, length_batches
    from lib.utils import device as default_device

    check_choice("method", method, PAIR_METHODS)
    p = _check_prob("p", p)
    for name, value in (("lr", lr), ("weight_decay", weight_decay), ("warmup_ratio", warmup_ratio),
                        ("max_grad_norm", max_grad_norm)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    feats, labels = train
    if len(feats) != len(labels):
        raise ValueError(f"train features ({len(feats)}) and labels ({len(labels)}) must have the same length")
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev_device = default_device()
    model = CrossEncoderClassifier(copy.deepcopy(top)).to(dev_device).train()
    lengths = [f.shape[0] for f in feats]
    density, density_by_param = 1.0, {}
    hook = ChildTuningHook(None)
    if method == "F":
        hook = ChildTuningHook("F", p, seed=seed + 1)
    elif method in ("D", "random"):
        fisher_idx = torch.randperm(len(labels), generator=gen)[: fisher_batches * batch_size]

        def nll(m: nn.Module, idx: Tensor) -> Tensor:
            logits = m(*_feature_batches(feats, idx.tolist(), dev_device))
            return nn.functional.cross_entropy(logits, labels[idx].to(dev_device))

        if method == "D":
            scores = fisher_diagonal(model, fisher_idx.split(batch_size), nll, per_sample=False,
                                     param_filter=official_scope, clip_norm=max_grad_norm)
        else:  # random: the same count as D (fisher_mask keeps exactly round(p N)) over the same scope, random places
            scores = {n: torch.rand(q.shape, generator=gen) for n, q in model.named_parameters()
                      if q.requires_grad and official_scope(n)}
        name_masks = fisher_mask(scores, p)
        density = mask_density(name_masks)
        density_by_param = {n: m.float().mean().item() for n, m in name_masks.items()}
        hook = ChildTuningHook("D", p, masks=masks_by_parameter(model, name_masks))
    if method == "head":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("classifier"))
    named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    plain = [n.endswith("bias") or "LayerNorm" in n for n, _ in named]
    groups = [{"params": [q for (_, q), f in zip(named, plain) if not f], "weight_decay": weight_decay},
              {"params": [q for (_, q), f in zip(named, plain) if f], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr * (math.sqrt(p) if method == "lr_sqrt_p" else 1.0), eps=1e-8, foreach=True)
    hook.attach(opt)
    steps_per_epoch = len(length_batches(lengths, batch_size=batch_size, seed=0))
    total = steps_per_epoch * epochs
    warmup = max(1, int(warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    params = [q for _, q in named]

    def step(idx: list[int]) -> float:
        loss = nn.functional.cross_entropy(model(*_feature_batches(feats, idx, dev_device)), labels[idx].to(dev_device))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        return loss.item()

    history = fit(step, lambda epoch: length_batches(lengths, batch_size=batch_size, seed=1000 * seed + epoch),
                  epochs, desc=f"pairs {method}")
    hook.detach()
    return {"dev_acc": accuracy(model, *dev), "losses": history.losses,
            "seconds": time.perf_counter() - start, "density": density, "density_by_param": density_by_param}
