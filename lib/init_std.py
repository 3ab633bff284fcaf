"""Why BERT's initial std is 0.02 (kexue.fm/archives/8747, with 8620).

What lives here, in the order the chapter uses it:

* truncated-normal statistics (TF semantics: cut at ``±a·σ``, no variance correction) and a
  BERT-style initializer that says which semantics it used and returns the realised std;
* second moments through deep stacks (LeCun / He / fixed 0.02), activation second moments, SELU;
* attention-softmax statistics with and without ``1/sqrt(d_h)``;
* small Post-LN / Pre-LN residual stacks built from a config, with hooks that record per-sublayer
  activations, the identity-path coefficient and gradient norms, and the closed form they are
  compared with;
* Adam vs SGD first steps, linear warmup, and a batched trainer for the warmup grid (K residual MLPs
  trained at once; a brute-force twin with ``torch.optim.Adam`` checks it);
* a tiny MLM with tied embeddings (with / without BERT's Dense+LN head), LayerNorm gains and the
  weight statistics of a pretrained ``transformers.BertModel``.

Conventions: hidden states are ``[B, T, d]`` (``[B, d]`` for the MLP); "alpha" is the *realised*
weight std times ``sqrt(d)``, so BERT-base (realised std 0.0175925, d = 768) is ``alpha = 0.4875``.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.checks import check_choice, check_finite, check_positive, check_tensor

# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# A. truncated normal and BERT's initializer
# --------------------------------------------------------------------------------------------

BERT_STD = 0.02


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def trunc_normal_variance_factor(a: float = 2.0) -> float:
    r"""Variance of N(0, 1) conditioned on ``|x| <= a``.

    .. math:: \gamma_a = 1 - \frac{2a\,\varphi(a)}{\Phi(a) - \Phi(-a)}

    ``gamma_2 = 0.7737413035``: a truncated normal with parameter σ cut at ±2σ has std
    ``sqrt(gamma_2)·σ = 0.8796·σ``.
    """
    check_positive("a", a)
    return 1.0 - 2.0 * a * _phi(a) / (_Phi(a) - _Phi(-a))


def realised_std(std: float = BERT_STD, a: float | None = 2.0) -> float:
    """Actual std of weights drawn with parameter `std`: ``std·sqrt(gamma_a)`` (``a=None``: untruncated)."""
    check_positive("std", std, allow_zero=True)
    return std if a is None else std * math.sqrt(trunc_normal_variance_factor(a))


def tf_truncated_normal_(tensor: torch.Tensor, std: float, a: float = 2.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Fill `tensor` in place with TF's ``truncated_normal(stddev=std)``: N(0, std²) cut at ±a·std.

    Bounds are in units of σ (TF semantics) and the variance is *not* corrected, so the realised std is
    ``std·sqrt(gamma_a)``. Sampling by inverse CDF: ``u ~ U[Φ(-a), Φ(a)]``, ``x = std·Φ^{-1}(u)``.
    (``torch.nn.init.trunc_normal_(w, std=s)`` instead cuts at ±2 in *absolute* units: the trap.)
    """
    check_tensor("tensor", tensor, floating=True)
    check_positive("std", std, allow_zero=True)
    check_positive("a", a)
    lo, hi = _Phi(-a), _Phi(a)
    with torch.no_grad():
        u = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
        x = torch.special.ndtri(lo + (hi - lo) * u).clamp_(-a, a) * std
        tensor.copy_(x.to(tensor.dtype))
    return tensor


def bert_init_(module: nn.Module, std: float = BERT_STD, semantics: str = "tf",
               generator: torch.Generator | None = None) -> float:
    """BERT-style init of every Linear / Embedding / LayerNorm inside `module`; returns the realised std.

    * ``semantics="tf"``: Google's BERT, ``tf.truncated_normal_initializer(stddev=std)`` (cut at ±2σ),
      realised std ``0.8796·std`` (0.0175925 for 0.02);
    * ``semantics="torch"``: Hugging Face's ``_init_weights``, plain ``normal_(0, std)``, realised std `std`.

    Biases zero, LayerNorm weight 1 / bias 0, an Embedding's ``padding_idx`` row zero (as in transformers).
    Parameters named ``bias`` that belong to no Linear (e.g. an MLM output bias) are zeroed too.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    check_positive("std", std)
    check_choice("semantics", semantics, ("tf", "torch"))

    def draw(w: torch.Tensor) -> None:
        if semantics == "tf":
            tf_truncated_normal_(w, std, 2.0, generator)
        else:
            with torch.no_grad():
                w.copy_(torch.randn(w.shape, generator=generator) * std)

    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Linear):
                draw(sub.weight)
                if sub.bias is not None:
                    sub.bias.zero_()
            elif isinstance(sub, nn.Embedding):
                draw(sub.weight)
                if sub.padding_idx is not None:
                    sub.weight[sub.padding_idx].zero_()
            elif isinstance(sub, nn.LayerNorm) or "LayerNorm" in type(sub).__name__:
                if getattr(sub, "weight", None) is not None:
                    sub.weight.fill_(1.0)
                if getattr(sub, "bias", None) is not None:
                    sub.bias.zero_()
            else:
                own = getattr(sub, "bias", None)
                if isinstance(own, nn.Parameter):
                    own.zero_()
    return realised_std(std, 2.0 if semantics == "tf" else None)


# --------------------------------------------------------------------------------------------
# second moments, activations, attention scale (8620)
# --------------------------------------------------------------------------------------------



def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    acts = {
        "identity": lambda x: x,
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "sigmoid_rescaled": lambda x: torch.sigmoid(x) / math.sqrt(activation_second_moment("sigmoid", 1.0)),
        "selu": F.selu,
        "gelu": F.gelu,
        "tanh": torch.tanh,
    }
    check_choice("activation", name, list(acts))
    return acts[name]


def _np_activation(name: str) -> Callable[[float], float]:
    from scipy.special import expit, erf  # local: scipy only needed here

    lam, alp = 1.0507009873554805, 1.6732632423543772
    acts = {
        "identity": lambda z: z,
        "relu": lambda z: max(z, 0.0),
        "sigmoid": lambda z: float(expit(z)),
        "gelu": lambda z: 0.5 * z * (1.0 + float(erf(z / math.sqrt(2.0)))),
        "selu": lambda z: lam * z if z > 0 else lam * alp * (math.exp(z) - 1.0),
        "tanh": math.tanh,
    }
    check_choice("act", name, list(acts))
    return acts[name]


def activation_second_moment(act: str, var: float = 1.0) -> float:
    r"""``E[act(z)^2]`` for ``z ~ N(0, var)`` by quadrature; sigmoid at var 1: 0.2933790."""
    from scipy.integrate import quad

    check_positive("var", var)
    f = _np_activation(act)
    s = math.sqrt(var)
    val, _ = quad(lambda z: f(s * z) ** 2 * _phi(z), -np.inf, np.inf, limit=200)
    return float(val)


def selu_constants() -> tuple[float, float]:
    r"""Solve ``E[selu(z)] = 0`` and ``E[selu(z)^2] = 1`` for ``z ~ N(0,1)``: returns (λ, α) ≈ (1.0507, 1.6733)."""
    from scipy.integrate import quad
    from scipy.optimize import fsolve

    def moments(params: np.ndarray) -> list[float]:
        lam, alp = params
        f = lambda z: lam * z if z > 0 else lam * alp * (math.exp(z) - 1.0)  # noqa: E731
        m1 = quad(lambda z: f(z) * _phi(z), -np.inf, 0)[0] + quad(lambda z: f(z) * _phi(z), 0, np.inf)[0]
        m2 = quad(lambda z: f(z) ** 2 * _phi(z), -np.inf, 0)[0] + quad(lambda z: f(z) ** 2 * _phi(z), 0, np.inf)[0]
        return [m1, m2 - 1.0]

    lam, alp = fsolve(moments, [1.0, 1.5], xtol=1e-12)
    return float(lam), float(alp)


def init_std_by_name(init: str | float, fan_in: int) -> float:
    """Realised weight std of a named init: ``lecun`` 1/√m, ``he`` √(2/m), ``bert`` 0.0175925 (TF 0.02),
    ``bert_corrected`` 0.02 (TF param 0.02·1.1368), ``glorot`` for square matrices = lecun; or a float std."""
    check_positive("fan_in", fan_in, integer=True)
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        check_positive("init", init)
        return float(init)
    table = {"lecun": 1 / math.sqrt(fan_in), "he": math.sqrt(2 / fan_in),
             "bert": realised_std(BERT_STD), "bert_corrected": BERT_STD}
    check_choice("init", init, list(table))
    return table[init]


def second_moment_profile(width: int = 256, depth: int = 20, init: str | float = "lecun",
                          activation: str = "identity", n: int = 1024, seed: int = 0) -> np.ndarray:
    r"""Mean ``x^2`` after each of `depth` bias-free ``width×width`` layers ``x ← act(x W)``.

    Input ``x_0 ~ N(0, I)`` of shape ``[n, width]``; returns ``[depth + 1]`` (index 0 is the input).
    Per layer ``E[y^2] = m·E[w^2]·E[x^2]``, then the activation's own factor.
    """
    for nm, v in (("width", width), ("depth", depth), ("n", n)):
        check_positive(nm, v, integer=True)
    act = _activation(activation)
    std = init_std_by_name(init, width)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    out = [x.pow(2).mean().item()]
    for _ in range(depth):
        w = torch.empty(width, width)
        tf_truncated_normal_(w, std / math.sqrt(trunc_normal_variance_factor(2.0)), 2.0, g)
        x = act(x @ w)
        out.append(x.pow(2).mean().item())
    return np.asarray(out)


def attention_softmax_stats(d: int, T: int = 64, scale: bool = True, n: int = 256, seed: int = 0) -> dict:
    r"""Softmax of ``q·k_j`` (``/√d`` if `scale`) for unit-variance q, k in R^d over T keys.

    Returns mean max-probability, mean entropy (nats, max ``log T``) and ``E[(q·k)^2]/d`` (≈ 1).
    """
    for nm, v in (("d", d), ("T", T), ("n", n)):
        check_positive(nm, v, integer=True)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 1, d, generator=g)
    k = torch.randn(n, T, d, generator=g)
    scores = (q * k).sum(-1)  # [n, T]
    second = scores.pow(2).mean().item() / d
    if scale:
        scores = scores / math.sqrt(d)
    logp = scores.log_softmax(-1)
    p = logp.exp()
    return {"max_prob": p.max(-1).values.mean().item(),
            "entropy": -(p * logp).sum(-1).mean().item(),
            "second_moment_over_d": second}


# --------------------------------------------------------------------------------------------
# B. Post-LN / Pre-LN stacks built from a config, probes and closed forms
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackConfig:
    """A residual stack: `L` blocks of (attention, FFN) sublayers (``branch="attn_ffn"``), of one
    ReLU MLP ``W2·relu(W1 h)`` (``"mlp"``), or of independent noise ``sigma·ε`` (``"noise"``, the toy
    of the identity-path argument). All branch weights have realised std ``alpha/√d`` (one std for all matrices, as in BERT),
    TF-truncated at ±2σ if `truncated`. ``kind``: ``"post"`` (x ← LN(x + F(x))) or ``"pre"``
    (x ← x + F(LN(x)), plus a final LN)."""
    d: int = 128
    L: int = 12
    heads: int = 4
    ff: int = 512
    kind: str = "post"
    alpha: float = 0.4875
    branch: str = "attn_ffn"
    truncated: bool = True
    sigma: float = 1.0  # only for branch="noise"

    def __post_init__(self) -> None:
        for nm in ("d", "L", "heads", "ff"):
            check_positive(nm, getattr(self, nm), integer=True)
        check_choice("kind", self.kind, ("post", "pre"))
        check_choice("branch", self.branch, ("attn_ffn", "mlp", "noise"))
        check_positive("alpha", self.alpha)
        check_positive("sigma", self.sigma, allow_zero=True)
        if self.d % self.heads:
            raise ValueError(f"d must be divisible by heads, got d={self.d}, heads={self.heads}")

    @property
    def weight_std(self) -> float:
        """Realised weight std ``alpha/√d``."""
        return self.alpha / math.sqrt(self.d)


class SelfAttention(nn.Module):
    """Multi-head self-attention without mask: ``[B, T, d] -> [B, T, d]``, scores ``QKᵀ/√d_h``."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # divides by sqrt(d_h)
        return self.out(y.transpose(1, 2).reshape(B, T, d))


class FeedForward(nn.Module):
    """``W2·act(W1 x + b1) + b2``: ``[..., d] -> [..., d]`` (GELU for BERT, ReLU for the MLP stacks)."""

    def __init__(self, d: int, ff: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class NoiseBranch(nn.Module):
    """``F(x) = sigma·ε`` with fresh ε ~ N(0, I): a branch independent of its input."""

    def __init__(self, sigma: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.sigma, self.generator = sigma, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigma * torch.randn(x.shape, generator=self.generator, dtype=x.dtype)


class Sublayer(nn.Module):
    """One residual sublayer: Post-LN ``LN(x + F(x))`` or Pre-LN ``x + F(LN(x))``."""

    def __init__(self, branch: nn.Module, d: int, kind: str) -> None:
        super().__init__()
        check_choice("kind", kind, ("post", "pre"))
        self.branch, self.norm, self.kind = branch, nn.LayerNorm(d), kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "post":
            return self.norm(x + self.branch(x))
        return x + self.branch(self.norm(x))


class ResidualStack(nn.Module):
    """A stack of `Sublayer`s built from a `StackConfig`: ``[B, T, d] -> [B, T, d]``.

    ``attn_ffn`` gives 2 sublayers per block (attention, FFN), the others 1. Pre-LN ends with a final LN.
    """

    def __init__(self, cfg: StackConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, StackConfig):
            raise TypeError(f"cfg must be a StackConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        subs: list[Sublayer] = []
        for _ in range(cfg.L):
            if cfg.branch == "attn_ffn":
                subs += [Sublayer(SelfAttention(cfg.d, cfg.heads), cfg.d, cfg.kind),
                         Sublayer(FeedForward(cfg.d, cfg.ff, "gelu"), cfg.d, cfg.kind)]
            elif cfg.branch == "mlp":
                subs.append(Sublayer(FeedForward(cfg.d, cfg.d, "relu"), cfg.d, cfg.kind))
            else:
                subs.append(Sublayer(NoiseBranch(cfg.sigma, generator), cfg.d, cfg.kind))
        self.sublayers = nn.ModuleList(subs)
        self.final_norm = nn.LayerNorm(cfg.d) if cfg.kind == "pre" else nn.Identity()
        std = cfg.weight_std
        if cfg.truncated:
            bert_init_(self, std / math.sqrt(trunc_normal_variance_factor(2.0)), "tf", generator)
        else:
            bert_init_(self, std, "torch", generator)

    @property
    def sublayers_per_block(self) -> int:
        return 2 if self.cfg.branch == "attn_ffn" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for sub in self.sublayers:
            x = sub(x)
        return self.final_norm(x)


def postln_coefficient(sigmas2: Sequence[float]) -> np.ndarray:
    r"""Coefficient of ``x_0`` after each sublayer, ``c_l = prod_{t<l} (1 + σ_t²)^{-1/2}``.

    `sigmas2`: ``[n]`` branch variances relative to the branch input; returns ``[n]`` (c after 1..n).
    All σ² = 1 gives ``2^{-l/2}``.
    """
    s = np.asarray(sigmas2, dtype=float)
    if s.ndim != 1 or np.any(~np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"sigmas2 must be a 1-D sequence of finite non-negative numbers, got {sigmas2!r}")
    return np.cumprod(1.0 / np.sqrt(1.0 + s))


def branch_variance_linear(d: int, std: float) -> float:
    """Branch variance of one bias-free ``d×d`` map with realised std `std` on unit input: ``d·std²``."""
    check_positive("d", d, integer=True)
    check_positive("std", std, allow_zero=True)
    return d * std * std


def branch_variance_ffn(d: int, std: float, ff_mult: int = 4) -> float:
    r"""``σ²_FFN = ff·std²·E[GELU(z)²]``, ``z ~ N(0, d·std²)``; BERT-base (d=768, std 0.0175925): 0.074822."""
    check_positive("ff_mult", ff_mult, integer=True)
    v = branch_variance_linear(d, std)
    return ff_mult * d * std * std * activation_second_moment("gelu", v)


@torch.no_grad()
def record_stack(model: ResidualStack, x0: torch.Tensor) -> dict[str, np.ndarray]:
    r"""Run `model` on ``x0 [B, T, d]`` with forward hooks on every sublayer.

    Returns arrays of length ``n`` (number of sublayers):

    * ``c``: empirical identity coefficient after each sublayer, ``<x_l, x_0> / <x_0, x_0>``;
    * ``sigma2``: branch variance ratio ``mean(F_t²) / mean(in_t²)`` where ``in_t`` is the branch input;
    * ``branch_sq`` / ``stream_sq``: ``mean(F_t²)`` and ``mean(x_{t+1}²)`` (the residual stream);
    * ``predicted_c``: `postln_coefficient` of the measured ``sigma2`` (Post-LN) or 1 (Pre-LN: the identity path is intact).
    """
    if not isinstance(model, ResidualStack):
        raise TypeError(f"model must be a ResidualStack, got {type(model).__name__}")
    check_tensor("x0", x0, 3)
    if x0.shape[-1] != model.cfg.d:
        raise ValueError(f"x0 must have last dim d={model.cfg.d}, got shape {tuple(x0.shape)}")
    rec: dict[str, list[float]] = {"c": [], "sigma2": [], "branch_sq": [], "stream_sq": []}
    x0_sq = (x0 * x0).sum()

    def branch_hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        rec["sigma2"].append((out.pow(2).mean() / inp[0].pow(2).mean()).item())
        rec["branch_sq"].append(out.pow(2).mean().item())

    def sub_hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        rec["c"].append(((out * x0).sum() / x0_sq).item())
        rec["stream_sq"].append(out.pow(2).mean().item())

    handles = []
    for sub in model.sublayers:
        handles += [sub.branch.register_forward_hook(branch_hook), sub.register_forward_hook(sub_hook)]
    try:
        model(x0)
    finally:
        for h in handles:
            h.remove()
    res = {k: np.asarray(v) for k, v in rec.items()}
    res["predicted_c"] = (postln_coefficient(res["sigma2"]) if model.cfg.kind == "post"
                          else np.ones_like(res["c"]))
    return res


def gradient_profile(model: ResidualStack, x0: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
    r"""One backward pass of ``MSE(model(x0), target)``; per sublayer (input side first):

    * ``weight_grad``: ``||∂L/∂θ_t||`` over the branch parameters of sublayer t;
    * ``input_grad``: ``||∂L/∂x_t||`` at the sublayer's input (the residual stream entering it).
    Shapes: ``x0, target [B, T, d]``; returns arrays ``[n]``.
    """
    if not isinstance(model, ResidualStack):
        raise TypeError(f"model must be a ResidualStack, got {type(model).__name__}")
    check_tensor("x0", x0, 3)
    check_tensor("target", target, 3)
    if target.shape != x0.shape:
        raise ValueError(f"target must have the shape of x0 {tuple(x0.shape)}, got {tuple(target.shape)}")
    inputs: list[torch.Tensor] = []

    def pre_hook(mod: nn.Module, inp: tuple) -> None:
        inp[0].retain_grad()
        inputs.append(inp[0])

    handles = [sub.register_forward_pre_hook(pre_hook) for sub in model.sublayers]
    try:
        model.zero_grad(set_to_none=True)
        x = x0.detach().clone().requires_grad_(True)
        F.mse_loss(model(x), target).backward()
    finally:
        for h in handles:
            h.remove()
    wg = [math.sqrt(sum(float(p.grad.pow(2).sum()) for p in sub.branch.parameters() if p.grad is not None))
          for sub in model.sublayers]
    ig = [float(t.grad.norm()) for t in inputs]
    model.zero_grad(set_to_none=True)
    return {"weight_grad": np.asarray(wg), "input_grad": np.asarray(ig)}


def probe_stack(cfg: StackConfig, B: int = 16, T: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Build `cfg` with `seed`, run `record_stack` and `gradient_profile` on ``x0 ~ N(0, I) [B, T, d]``
    against a random ``N(0, I)`` target; returns the union of both dicts (arrays per sublayer)."""
    check_positive("B", B, integer=True)
    check_positive("T", T, integer=True)
    g = torch.Generator().manual_seed(seed)
    model = ResidualStack(cfg, g)
    x0 = torch.randn(B, T, cfg.d, generator=g)
    target = torch.randn(B, T, cfg.d, generator=g)
    out = record_stack(model, x0)
    out.update(gradient_profile(model, x0, target))
    return out


# --------------------------------------------------------------------------------------------
# Adam vs SGD, warmup
# --------------------------------------------------------------------------------------------


def first_step_update(grad: torch.Tensor, optimizer: str = "adam", lr: float = 1e-3,
                      eps: float = 1e-8) -> torch.Tensor:
    r"""Displacement ``θ_1 - θ_0`` after one ``torch.optim`` step with gradient `grad` (any shape).

    Adam: ``-lr·g/(|g| + eps)`` (bias corrections cancel at t = 1), i.e. ``≈ -lr·sign(g)``; SGD: ``-lr·g``.
    """
    check_tensor("grad", grad, floating=True)
    check_finite("grad", grad)
    check_choice("optimizer", optimizer, ("adam", "sgd"))
    check_positive("lr", lr)
    check_positive("eps", eps, allow_zero=True)
    p = nn.Parameter(torch.zeros_like(grad, dtype=torch.float64))
    opt = (torch.optim.Adam([p], lr=lr, eps=eps) if optimizer == "adam" else torch.optim.SGD([p], lr=lr))
    p.grad = grad.detach().to(torch.float64).clone()
    opt.step()
    return p.detach().clone()


def linear_warmup(step: int, warmup: int, peak_lr: float, total_steps: int | None = None) -> float:
    r"""Learning rate of the optimizer update with 0-based index `step` (transformers' convention).

    ``peak·step/W`` for ``step < W`` (so the very first update has lr 0), then `peak_lr`
    (``total_steps=None``, as ``get_constant_schedule_with_warmup``) or a linear decay to 0 at
    `total_steps` (as ``get_linear_schedule_with_warmup``).
    """
    check_positive("step", step, integer=True, allow_zero=True)
    check_positive("warmup", warmup, integer=True, allow_zero=True)
    check_positive("peak_lr", peak_lr, allow_zero=True)
    if step < warmup:
        return peak_lr * step / max(1, warmup)
    if total_steps is None:
        return float(peak_lr)
    check_positive("total_steps", total_steps, integer=True)
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup))


# --------------------------------------------------------------------------------------------
# Residual MLPs on a teacher task, K models trained at once
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmupRun:
    """One cell of the warmup grid; `seed` picks the network's init and its stream of batches (runs with the
    same seed share both, so they are paired)."""
    kind: str = "post"
    alpha: float = 1.0
    lr: float = 1e-3
    warmup: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ("post", "pre"))
        check_positive("alpha", self.alpha)
        check_positive("lr", self.lr)
        check_positive("warmup", self.warmup, integer=True, allow_zero=True)
        check_positive("seed", self.seed, integer=True, allow_zero=True)


@dataclass(frozen=True)
class TeacherTask:
    """Inputs ``x ~ N(0, I_din)``; labels ``argmax(tanh(x A) C)`` of a random 2-layer tanh teacher."""
    din: int = 32
    classes: int = 10
    hidden: int = 64
    seed: int = 1234

    def sampler(self) -> Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
        """Returns ``sample(batch, generator) -> (x [batch, din], y [batch])``."""
        g = torch.Generator().manual_seed(self.seed)
        A = torch.randn(self.din, self.hidden, generator=g) / math.sqrt(self.din)
        C = torch.randn(self.hidden, self.classes, generator=g)

        def sample(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(batch, self.din, generator=gen)
            return x, (torch.tanh(x @ A) @ C).argmax(-1)
        return sample


class ResidualMLP(nn.Module):
    """Single residual MLP (the twin of one member of `BatchedResidualMLP`): ``[B, din] -> [B, classes]``.

    ``h = x W_in + b``; L blocks Post ``h ← LN(h + W2 relu(W1 h))`` or Pre ``h ← h + W2 relu(W1 LN(h))``;
    Pre adds a final LN; logits ``h W_out + b``. Branch weights std alpha/√d, in/out LeCun, biases 0.
    """

    def __init__(self, din: int, d: int, L: int, classes: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.inp = nn.Linear(din, d)
        self.w1 = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(L))
        self.w2 = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(L))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(L))
        self.final = nn.LayerNorm(d) if kind == "pre" else nn.Identity()
        self.out = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for w1, w2, ln in zip(self.w1, self.w2, self.norms):
            h = ln(h + w2(torch.relu(w1(h)))) if self.kind == "post" else h + w2(torch.relu(w1(ln(h))))
        return self.out(self.final(h))


class BatchedResidualMLP(nn.Module):
    """K independent `ResidualMLP`s of one kind stored as stacked tensors (K first), run with ``bmm``.

    ``forward(x [B, din] or [K, B, din]) -> logits [K, B, classes]``: one batch for every member, or one each.
    """

    def __init__(self, K: int, din: int, d: int, L: int, classes: int, kind: str,
                 alphas: Sequence[float], generator: torch.Generator | None = None,
                 seeds: Sequence[int] | None = None) -> None:
        super().__init__()
        check_choice("kind", kind, ("post", "pre"))
        if len(alphas) != K:
            raise ValueError(f"alphas must have K={K} entries, got {len(alphas)}")
        if seeds is not None and len(seeds) != K:
            raise ValueError(f"seeds must have K={K} entries, got {len(seeds)}")
        self.kind, self.K, self.d, self.L = kind, K, d, L
        # one generator per member (seeds given: member k draws from its own seed, so members with the same
        # seed start from the same normal draws, scaled by their alpha) or one shared generator
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds] if seeds is not None else [generator] * K
        tn = lambda shape, std, g: tf_truncated_normal_(  # noqa: E731  realised std `std`
            torch.empty(shape), std / math.sqrt(trunc_normal_variance_factor(2.0)), 2.0, g)
        w_in, w1, w2, w_out = [], [], [], []
        for a, g in zip(alphas, gens):
            w_in.append(tn((din, d), 1 / math.sqrt(din), g))
            w1.append(tn((L, d, d), a / math.sqrt(d), g))
            w2.append(tn((L, d, d), a / math.sqrt(d), g))
            w_out.append(tn((d, classes), 1 / math.sqrt(d), g))
        self.w_in = nn.Parameter(torch.stack(w_in))   # [K, din, d]
        self.b_in = nn.Parameter(torch.zeros(K, 1, d))
        self.w1 = nn.Parameter(torch.stack(w1))  # [K, L, d, d]
        self.w2 = nn.Parameter(torch.stack(w2))
        n_norm = L + (kind == "pre")
        self.ln_g = nn.Parameter(torch.ones(K, n_norm, 1, d))
        self.ln_b = nn.Parameter(torch.zeros(K, n_norm, 1, d))
        self.w_out = nn.Parameter(torch.stack(w_out))  # [K, d, classes]
        self.b_out = nn.Parameter(torch.zeros(K, 1, classes))

    def _ln(self, h: torch.Tensor, i: int) -> torch.Tensor:
        return F.layer_norm(h, (self.d,)) * self.ln_g[:, i] + self.ln_b[:, i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, floating=True)
        if x.dim() not in (2, 3) or (x.dim() == 3 and x.shape[0] != self.K):
            raise ValueError(f"x must be [B, din] or [K={self.K}, B, din], got shape {tuple(x.shape)}")
        h = torch.matmul(x, self.w_in) + self.b_in  # [K, B, d]
        for i in range(self.L):
            if self.kind == "post":
                h = self._ln(h + torch.bmm(torch.relu(torch.bmm(h, self.w1[:, i])), self.w2[:, i]), i)
            else:
                h = h + torch.bmm(torch.relu(torch.bmm(self._ln(h, i), self.w1[:, i])), self.w2[:, i])
        if self.kind == "pre":
            h = self._ln(h, self.L)
        return torch.bmm(h, self.w_out) + self.b_out

    def member(self, k: int) -> ResidualMLP:
        """A plain `ResidualMLP` holding a copy of member `k`'s weights (for the twin test / live runs)."""
        din, classes = self.w_in.shape[1], self.w_out.shape[2]
        m = ResidualMLP(din, self.d, self.L, classes, self.kind)
        with torch.no_grad():
            m.inp.weight.copy_(self.w_in[k].T)
            m.inp.bias.copy_(self.b_in[k, 0])
            for i in range(self.L):
                m.w1[i].weight.copy_(self.w1[k, i].T)
                m.w2[i].weight.copy_(self.w2[k, i].T)
                m.norms[i].weight.copy_(self.ln_g[k, i, 0])
                m.norms[i].bias.copy_(self.ln_b[k, i, 0])
            if self.kind == "pre":
                m.final.weight.copy_(self.ln_g[k, self.L, 0])
                m.final.bias.copy_(self.ln_b[k, self.L, 0])
            m.out.weight.copy_(self.w_out[k].T)
            m.out.bias.copy_(self.b_out[k, 0])
        return m


class BatchedAdam:
    """Adam (PyTorch's formula) on parameters whose dim 0 indexes K models, with a per-model lr [K].

    ``m ← β1 m + (1-β1) g``, ``v ← β2 v + (1-β2) g²``, ``θ ← θ - lr_k · m̂ / (√v̂ + ε)``.
    """

    def __init__(self, params: Iterable[nn.Parameter], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        self.b1, self.b2, self.eps, self.t = betas[0], betas[1], eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        """`lr`: ``[K]`` learning rates of this step."""
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(self.b1).add_(p.grad, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
            denom = (v / c2).sqrt_().add_(self.eps)
            p.sub_(lr.view(-1, *([1] * (p.dim() - 1))) * (m / c1) / denom)


@dataclass(frozen=True)
class WarmupGridConfig:
    """Shared settings of the warmup grid: stack size, steps, batch, task, seed."""
    d: int = 64
    L: int = 16
    steps: int = 400
    batch: int = 64
    seed: int = 0
    task: TeacherTask = field(default_factory=TeacherTask)


def train_warmup_grid(runs: Sequence[WarmupRun], cfg: WarmupGridConfig = WarmupGridConfig(),
                      return_drift: bool = False, early_steps: int = 0):
    r"""Train every run of `runs`; returns losses ``[len(runs), S]`` (``S = cfg.steps``, fewer with BOOK_SMOKE).

    Run ``r`` starts from the init of seed ``cfg.seed + r.seed`` and sees that seed's stream of teacher
    batches, so runs that differ only in kind / alpha / lr / warmup are paired. With `return_drift` also the
    relative weight change of every block at the end, ``[len(runs), L]``:
    ``sqrt(|ΔW1|² + |ΔW2|²) / sqrt(|W1|² + |W2|²)``; with ``early_steps = E > 0`` also the same drift after
    each of the first E updates, ``[len(runs), E, L]`` (which blocks move first). Returns ``losses``,
    ``(losses, drift)`` or ``(losses, drift, early)``.

    Runs of one kind are trained together as a `BatchedResidualMLP` with `BatchedAdam` (identical to
    separate ``torch.optim.Adam`` runs, see the tests) through ``lib.train.fit``. lr of update t:
    ``linear_warmup(t, W, lr)``. A run that diverges gives NaN from then on, without touching the others.
    """
    from lib.train import fit

    if not runs or not all(isinstance(r, WarmupRun) for r in runs):
        raise TypeError(f"runs must be a non-empty sequence of WarmupRun, got {runs!r}")
    if not isinstance(cfg, WarmupGridConfig):
        raise TypeError(f"cfg must be a WarmupGridConfig, got {type(cfg).__name__}")
    check_positive("early_steps", early_steps, integer=True, allow_zero=True)
    out = np.full((len(runs), cfg.steps), np.nan)
    drift = np.full((len(runs), cfg.L), np.nan)
    early = np.full((len(runs), early_steps, cfg.L), np.nan)
    sample = cfg.task.sampler()
    done = cfg.steps
    for kind in ("post", "pre"):
        idx = [i for i, r in enumerate(runs) if r.kind == kind]
        if not idx:
            continue
        seeds = [cfg.seed + runs[i].seed for i in idx]
        distinct = sorted(set(seeds))
        which = torch.tensor([distinct.index(s) for s in seeds])
        model = BatchedResidualMLP(len(idx), cfg.task.din, cfg.d, cfg.L, cfg.task.classes, kind,
                                   [runs[i].alpha for i in idx], seeds=seeds)
        opt = BatchedAdam(model.parameters())
        w1_0, w2_0 = model.w1.detach().clone(), model.w2.detach().clone()
        size = w1_0.pow(2).sum((2, 3)) + w2_0.pow(2).sum((2, 3))  # [K, L]
        data_gens = [torch.Generator().manual_seed(s + 10_000) for s in distinct]
        alive = torch.ones(len(idx), dtype=torch.bool)
        t_box = [0]

        def block_drift() -> np.ndarray:
            with torch.no_grad():
                moved = (model.w1 - w1_0).pow(2).sum((2, 3)) + (model.w2 - w2_0).pow(2).sum((2, 3))
                return (moved / size).sqrt().numpy()

        def step(_batch: int) -> float:
            t = t_box[0]
            xs, ys = zip(*(sample(cfg.batch, g) for g in data_gens))
            x, y = torch.stack(xs)[which], torch.stack(ys)[which]    # [K, B, din], [K, B]
            logits = model(x)  # [K, B, C]
            losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                     reduction="none").view(len(idx), -1).mean(1)
            alive.logical_and_(torch.isfinite(losses.detach()))
            model.zero_grad(set_to_none=True)
            torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
            lr = torch.tensor([linear_warmup(t, runs[i].warmup, runs[i].lr) for i in idx]) * alive
            opt.step(lr)
            out[idx, t] = torch.where(alive, losses.detach(), torch.full_like(losses, float("nan"))).numpy()
            if t < early_steps:
                early[idx, t] = block_drift()
            t_box[0] = t + 1
            finite = losses.detach()[alive]
            return float(finite.mean()) if len(finite) else 0.0

        fit(step, lambda epoch: range(cfg.steps), 1, desc=f"warmup grid ({kind})")
        done = min(done, t_box[0])
        drift[idx] = block_drift()
    out = out[:, :done]
    if early_steps:
        return out, drift, early[:, :done]
    return (out, drift) if return_drift else out


def smooth(losses: np.ndarray, window: int = 25) -> np.ndarray:
    """Moving average over the last axis (``'valid'`` part), NaN-propagating: ``[..., S] -> [..., S-w+1]``."""
    check_positive("window", window, integer=True)
    a = np.asarray(losses, dtype=float)
    if a.ndim == 0 or a.shape[-1] < window:
        raise ValueError(f"window must be at most the series length: window={window}, losses has shape {a.shape}")
    c = np.cumsum(np.concatenate([np.zeros(a.shape[:-1] + (1,)), a], -1), -1)
    return (c[..., window:] - c[..., :-window]) / window


# --------------------------------------------------------------------------------------------
# Logits at init, tiny MLM with tied embeddings, LayerNorm gains, real BERT statistics
# --------------------------------------------------------------------------------------------


def predicted_logit_entropy(d: int, V: int, std: float) -> float:
    r"""Softmax entropy of ``u Eᵀ`` (u unit second moment, E i.i.d. std `std`): ``log V - τ²/2``, ``τ² = d·std²``.

    Valid while ``e^{τ²} ≪ V`` (many logits share the mass); fails for large τ.
    """
    check_positive("V", V, integer=True)
    return math.log(V) - branch_variance_linear(d, std) / 2


def softmax_entropy_at_init(d: int, V: int, std: float, n: int = 64, seed: int = 0) -> float:
    """Mean softmax entropy (nats) of ``u Eᵀ`` with ``u = LN(z) [n, d]`` and ``E ~ N(0, std²) [V, d]``."""
    for nm, v in (("d", d), ("V", V), ("n", n)):
        check_positive(nm, v, integer=True)
    check_positive("std", std)
    g = torch.Generator().manual_seed(seed)
    u = F.layer_norm(torch.randn(n, d, generator=g, dtype=torch.float64), (d,))
    E = torch.randn(V, d, generator=g, dtype=torch.float64) * std
    logp = (u @ E.T).log_softmax(-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def make_markov_corpus(V: int = 512, T: int = 32, n: int = 2048, seed: int = 0, successors: int = 4,
                       zipf: float = 1.1) -> torch.Tensor:
    """Token sequences ``[n, T]`` (ids in ``[0, V)``) from a sparse Markov chain: each token has `successors`
    next tokens drawn Zipf-distributed over the vocabulary, chosen with probability ∝ 1/(j+1)."""
    for nm, v in (("V", V), ("T", T), ("n", n), ("successors", successors)):
        check_positive(nm, v, integer=True)
    check_positive("zipf", zipf, allow_zero=True)
    if successors > V:
        raise ValueError(f"successors must be <= V={V}, got {successors}")
    g = torch.Generator().manual_seed(seed)
    freq = 1.0 / torch.arange(1, V + 1, dtype=torch.float64) ** zipf
    succ = torch.multinomial(freq.expand(V, V), successors, replacement=False, generator=g)  # [V, S]
    pick_p = 1.0 / torch.arange(1, successors + 1, dtype=torch.float64)
    seq = torch.empty(n, T, dtype=torch.long)
    seq[:, 0] = torch.multinomial(freq, n, replacement=True, generator=g)
    for t in range(1, T):
        j = torch.multinomial(pick_p.expand(n, successors), 1, generator=g)[:, 0]
        seq[:, t] = succ[seq[:, t - 1], j]
    return seq


def mask_tokens(tokens: torch.Tensor, mask_id: int, p: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a random `p` fraction of positions (at least one per row) by `mask_id`.

    ``tokens [B, T] -> (inputs [B, T], masked [B, T] bool)``; the loss uses ``tokens[masked]``.
    """
    check_tensor("tokens", tokens, 2)
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    masked = torch.rand(tokens.shape, generator=generator) < p
    first = torch.randint(tokens.shape[1], (tokens.shape[0],), generator=generator)
    masked[torch.arange(tokens.shape[0]), first] = True
    return tokens.masked_fill(masked, mask_id), masked


class TinyMLM(nn.Module):
    r"""Post-LN Transformer MLM. Vocabulary `V` plus a [MASK] id ``V``.

    ``h = Encoder(LN(E[x] + P))``; head (if `head`): ``u = LN(GELU(h W_d + b_d))`` else ``u = h``;
    logits ``u Oᵀ + b_out`` on the masked positions only: ``[N_masked, V + 1]``, with ``O = E`` (`tied`, as
    BERT) or a separate output matrix ``O [V + 1, d]`` (untied). Init: BERT (TF, 0.02) for E, P and O.
    """

    def __init__(self, V: int = 512, T: int = 32, L: int = 4, d: int = 64, heads: int = 4, ff: int = 256,
                 std: float = BERT_STD, head: bool = True, generator: torch.Generator | None = None,
                 tied: bool = True) -> None:
        super().__init__()
        if not isinstance(tied, bool):
            raise TypeError(f"tied must be a bool, got {type(tied).__name__}")
        self.V, self.has_head, self.tied = V, head, tied
        self.tok = nn.Embedding(V + 1, d)
        self.pos = nn.Embedding(T, d)
        self.emb_norm = nn.LayerNorm(d)
        self.encoder = ResidualStack(StackConfig(d=d, L=L, heads=heads, ff=ff, kind="post"), generator)
        if head:
            self.head_dense, self.head_norm = nn.Linear(d, d), nn.LayerNorm(d)
        if not tied:
            self.out_emb = nn.Embedding(V + 1, d)  # an Embedding so that bert_init_ draws it like E
        self.out_bias = nn.Parameter(torch.zeros(V + 1))
        bert_init_(self, std, "tf", generator)

    @property
    def output_matrix(self) -> torch.Tensor:
        """``O [V + 1, d]``: the token embeddings when tied, else the separate output matrix."""
        return self.tok.weight if self.tied else self.out_emb.weight

    @property
    def mask_id(self) -> int:
        return self.V

    def forward(self, inputs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """``inputs [B, T]`` long, ``masked [B, T]`` bool -> logits ``[N_masked, V + 1]``."""
        check_tensor("inputs", inputs, 2)
        check_tensor("masked", masked, 2)
        if masked.dtype != torch.bool or masked.shape != inputs.shape:
            raise ValueError(f"masked must be a bool tensor of shape {tuple(inputs.shape)}, "
                             f"got {masked.dtype} {tuple(masked.shape)}")
        pos = torch.arange(inputs.shape[1])
        h = self.encoder(self.emb_norm(self.tok(inputs) + self.pos(pos)))[masked]  # [N, d]
        if self.has_head:
            h = self.head_norm(F.gelu(self.head_dense(h)))
        return h @ self.output_matrix.T + self.out_bias

    def loss(self, tokens: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.15) -> torch.Tensor:
        """MLM cross-entropy on the masked positions of ``tokens [B, T]``."""
        inputs, masked = mask_tokens(tokens, self.mask_id, p, generator)
        return F.cross_entropy(self(inputs, masked), tokens[masked])


def layernorm_gains(model: nn.Module) -> dict[str, float]:
    """Mean ``|γ|`` of every LayerNorm of `model`, keyed by module name, in registration order
    (= forward order for BERT-like models; checked with hooks in the tests)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: float(m.weight.detach().abs().mean()) for name, m in model.named_modules()
            if (isinstance(m, nn.LayerNorm) or "LayerNorm" in type(m).__name__)
            and getattr(m, "weight", None) is not None}


@dataclass(frozen=True)
class MLMConfig:
    """Tiny-MLM experiment."""
    V: int = 512
    T: int = 32
    L: int = 4
    d: int = 64
    heads: int = 4
    ff: int = 256
    steps: int = 400
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 40
    corpus: int = 4096
    seed: int = 0


def train_tiny_mlm(cfg: MLMConfig, head: bool, tied: bool = True) -> dict:
    """Train `TinyMLM` with Adam + linear warmup on the Markov corpus (through ``lib.train.fit``); returns a
    dict with ``losses [steps]``, ``gains`` (LayerNorm name -> mean |γ|, in order), ``gains_init``, the
    embedding std before / after and (untied) the output matrix's std before / after."""
    from lib.train import fit

    if not isinstance(cfg, MLMConfig):
        raise TypeError(f"cfg must be an MLMConfig, got {type(cfg).__name__}")
    g = torch.Generator().manual_seed(cfg.seed)
    corpus = make_markov_corpus(cfg.V, cfg.T, cfg.corpus, cfg.seed)
    model = TinyMLM(cfg.V, cfg.T, cfg.L, cfg.d, cfg.heads, cfg.ff, head=head, generator=g, tied=tied)
    gains_init, emb0 = layernorm_gains(model), float(model.tok.weight.detach()[: cfg.V].std())
    out0 = float(model.output_matrix.detach()[: cfg.V].std())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: linear_warmup(t, cfg.warmup, 1.0))

    def step(idx: torch.Tensor) -> float:
        loss = model.loss(corpus[idx], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss.item()

    batches = lambda epoch: (torch.randint(cfg.corpus, (cfg.batch,), generator=g) for _ in range(cfg.steps))  # noqa: E731
    history = fit(step, batches, 1, desc="tiny MLM")
    return {"losses": np.asarray(history.losses), "gains": layernorm_gains(model), "gains_init": gains_init,
            "emb_std_init": emb0, "emb_std": float(model.tok.weight.detach()[: cfg.V].std()),
            "out_std_init": out0, "out_std": float(model.output_matrix.detach()[: cfg.V].std()),
            "tied": tied, "config": asdict(cfg)}


_BERT_KINDS = [  # (regex on the parameter name, kind)
    (r"word_embeddings", "word embedding"), (r"position_embeddings", "position embedding"),
    (r"token_type_embeddings", "token-type embedding"), (r"attention\.self\.query", "query"),
    (r"attention\.self\.key", "key"), (r"attention\.self\.value", "value"),
    (r"attention\.output\.dense", "attention output"), (r"intermediate\.dense", "FFN in"),
    (r"output\.dense", "FFN out"), (r"pooler\.dense", "pooler"),
    (r"predictions\.transform\.dense", "MLM head dense"),
]


def bert_weight_stats(model: nn.Module) -> list[dict]:
    """Std of every 2-D weight of a BERT-like model, with its matrix type, layer and fan-in.

    Returns rows ``{name, kind, layer, shape, std, fan_in, std_x_sqrt_fan_in, ratio_to_0.02}``; the
    columns compare with BERT's nominal 0.02 and with fan-in (LeCun) ``1/√fan_in``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rows = []
    for name, p in model.named_parameters():
        if p.dim() != 2:
            continue
        kind = next((k for pat, k in _BERT_KINDS if re.search(pat, name)), "other")
        layer = re.search(r"layer\.(\d+)\.", name)
        fan_in = p.shape[1]  # nn.Linear: [out, in]; nn.Embedding: [num, d] (a row is what is used)
        std = float(p.detach().std())
        rows.append({"name": name, "kind": kind, "layer": int(layer.group(1)) if layer else -1,
                     "shape": tuple(p.shape), "std": std, "fan_in": fan_in,
                     "std_x_sqrt_fan_in": std * math.sqrt(fan_in), "ratio_to_0.02": std / BERT_STD})
    return rows


@torch.no_grad()
def bert_sublayer_ratios(model: nn.Module, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    r"""Branch-to-stream ratios of a Hugging Face ``BertModel`` (Post-LN): for each sublayer t (attention
    output, FFN output, in order) ``sigma2_t = mean(F_t²)/mean(x_t²)`` over real tokens, where ``x_t`` is
    the residual input and ``F_t`` the dense output added to it, plus ``postln_coefficient`` of them.

    ``input_ids [B, T]``; returns ``sigma2 [2L]``, ``predicted_c [2L]``.
    """
    if not hasattr(model, "encoder") or not hasattr(model.encoder, "layer"):
        raise TypeError(f"model must be a transformers BertModel (with .encoder.layer), got {type(model).__name__}")
    check_tensor("input_ids", input_ids, 2)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    keep = attention_mask.bool()
    rec: list[float] = []
    branch: dict[int, torch.Tensor] = {}

    def dense_hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        branch[0] = out

    def sub_hook(mod: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        resid = args[1] if len(args) > 1 else kwargs["input_tensor"]
        rec.append(float(branch[0][keep].pow(2).mean() / resid[keep].pow(2).mean()))

    handles = []
    for layer in model.encoder.layer:
        for sub in (layer.attention.output, layer.output):
            handles += [sub.dense.register_forward_hook(dense_hook),
                        sub.register_forward_hook(sub_hook, with_kwargs=True)]
    was_training = model.training
    model.eval()
    try:
        model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    s = np.asarray(rec)
    return {"sigma2": s, "predicted_c": postln_coefficient(s)}


def embedding_grad_rows(model: TinyMLM, tokens: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Fraction of the embedding rows (real tokens ``[0, V)``) that get a non-zero gradient in one MLM step
    on ``tokens [B, T]``, through the input lookup only and through the whole (tied) model.

    Su's "embedding updates are sparse" premise holds for the input side; the tied output projection
    gives every row a gradient (softmax is dense)."""
    if not isinstance(model, TinyMLM):
        raise TypeError(f"model must be a TinyMLM, got {type(model).__name__}")
    check_tensor("tokens", tokens, 2)
    g = torch.Generator().manual_seed(seed)
    inputs, masked = mask_tokens(tokens, model.mask_id, 0.15, g)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs, masked), tokens[masked]).backward()
    full = model.tok.weight.grad[: model.V].abs().sum(-1) > 0
    lookup = torch.zeros(model.V, dtype=torch.bool)
    lookup[inputs[inputs < model.V].unique()] = True
    model.zero_grad(set_to_none=True)
    return {"input_side": float(lookup.float().mean()), "tied_total": float(full.float().mean())}
