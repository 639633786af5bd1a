"""Shared machinery of seed 000 (Zuo et al., fine-grained parameter perturbation).

Private helper (leading underscore: not a method). Used by ``topk_perturb``,
``randomk_perturb``, ``random_topk_perturb`` (perturb, then train with
CE + λ·JS) and by the ``eu_k`` / ``cf_k`` baselines (last-K-layer training).

- ``sensitivity``: Eq. 3-4, |∂F/∂w| per parameter entry from one forward and
  backward pass. F is the cross-entropy of the converged source on the forget
  set D_UL (mean over the samples used). Alg. 1 l.4 says "a data sample x in
  D"; we use D_UL, the data whose influence the perturbation is to remove (the
  project's seed-000 issue fixes this). BatchNorm runs in eval mode (the
  converged model's statistics).
- ``topk_mask`` / ``random_mask`` / ``random_topk_mask``: which entries to
  perturb, over all trainable parameters taken together (seed 000 Table 1:
  Random-k's 0.558M on ResNet18 is 5 % of all 11.17M parameters, BN included).
- ``perturb_``: Eq. 5, w_i = ε·w_rand on the selected entries, or Alg. 1
  l.12's interpolation w = (1−ε)·w + ε·w_rand. w_rand is ``Rand(w.shape)``
  (Alg. 1 l.10: uniform on [0, 1)) or standard normal noise.
- ``js_divergence``: Eq. 6, in bits (the paper: JS "always falls between 0 and
  1", true for log base 2; ``unlearn_core.metrics.similarity`` uses the same).
- ``train_retain_js``: Eq. 8 / Alg. 1 l.14-18: Adam on L = CE(D_RE batch) +
  λ·JS(P_unlearned ‖ P_ref) on a D_UL batch, one D_UL batch (cycled) per D_RE
  batch. ``trainable`` restricts the trained parameters (EU-K / CF-K), and
  ``grad_masks`` restricts updates to entries (Theorem 1's δw_i = 0 outside the
  perturbed set). Normalisation layers none of whose parameters train are kept
  in eval mode, so the frozen part of the network stays exactly as it was.
- ``last_parameter_tensors``: the paper's "last K layers" (see the function).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from unlearn_core.errors import UserInputError
from unlearn_core.methods.common import method_recipe
from unlearn_core.methods.task import UnlearnTask
from unlearn_core.models import create_model
from unlearn_core.train.device_data import Batch, DeviceData
from unlearn_core.train.layers import parameter_layers
from unlearn_core.train.loop import autocast, make_optimizer, prepare_model, seed_everything

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor of its shape

JS_REFERENCES = ("source", "retrain")
W_RAND = ("uniform", "normal")
PERTURB_RULES = ("replace", "interpolate")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


# ---------------------------------------------------------------- sensitivity (Eq. 3-4)

def sensitivity(
    model: nn.Module, data: DeviceData, *, max_samples: int = 0, seed: int = 0,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """|∂F/∂w| for every trainable parameter, F = mean cross-entropy on ``data``.

    ``max_samples`` > 0 uses a seeded random subset of that size. The pass is
    chunked for memory only: the gradient is that of one mean over the samples.
    """
    if len(data) == 0:
        raise UserInputError("sensitivity (seed 000, Eq. 4) needs a non-empty forget set")
    if 0 < max_samples < len(data):
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        data = data.subset(pick[:max_samples])
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for _, p in params]
    was_training = model.training
    model.eval()
    for batch in data.batches(batch_size, shuffle=False, augment=False):
        with autocast(data.device):
            logits = model(batch.x)
        loss = F.cross_entropy(logits.float(), batch.y, reduction="sum") / len(data)
        parts = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        for acc, g in zip(grads, parts, strict=True):
            if g is not None:
                acc += g
    model.train(was_training)
    return {name: g.abs() for (name, _), g in zip(params, grads, strict=True)}


# ---------------------------------------------------------------- masks

def _flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def _unflat(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> Masks:
    out, start = {}, 0
    for name, t in like.items():
        out[name] = flat[start : start + t.numel()].view(t.shape)
        start += t.numel()
    return out


def mask_count(masks: Masks) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))


def topk_mask(scores: dict[str, torch.Tensor], k: int) -> Masks:
    """The ``k`` entries with the largest score, over all parameters together."""
    flat = _flat(scores)
    if not 0 <= k <= flat.numel():
        raise UserInputError(f"top_k must be in [0, {flat.numel()}] (parameter count), got {k}")
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[torch.topk(flat.float(), k).indices] = True
    return _unflat(mask, scores)


def _count(ratio: float, n: int) -> int:
    if not 0.0 <= ratio <= 1.0:
        raise UserInputError(f"ratio k must be in [0, 1], got {ratio}")
    return round(ratio * n)


def random_mask(like: dict[str, torch.Tensor], ratio: float, seed: int) -> Masks:
    """Exactly round(ratio·n) entries drawn uniformly without replacement.

    Alg. 1 l.10-11 draws ``Rand(w.shape) < k`` per entry, whose count is
    round(k·n) only on average; drawing the exact count is the same selection
    conditioned on its size.
    """
    n = sum(t.numel() for t in like.values())
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: _count(ratio, n)]
    device = next(iter(like.values())).device
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[pick.to(device)] = True
    return _unflat(mask, like)


def random_topk_mask(scores: dict[str, torch.Tensor], ratio: float, k: int, seed: int) -> Masks:
    """Random-TopK (§4.3.4): a Random-k mask of round(ratio·n) entries, K of which
    are replaced by the Top-K entries (Top-K ∪ round(ratio·n) − K random others)."""
    top = _flat(topk_mask(scores, k))
    n, m = top.numel(), _count(ratio, top.numel())
    if k > m:
        raise UserInputError(f"random_topk: top_k={k} exceeds the Random-k count {m}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(top.device)
    others = perm[~top[perm]][: m - k]
    mask = top.clone()
    mask[others] = True
    return _unflat(mask, scores)


# ---------------------------------------------------------------- perturbation (Eq. 5)

@torch.no_grad()
def perturb_(model: nn.Module, masks: Masks, *, eps: float, w_rand: str = "uniform",
             rule: str = "replace", seed: int = 0) -> int:
    """Set the masked entries to ε·w_rand (or move them by ε toward w_rand); returns the count."""
    if w_rand not in W_RAND or rule not in PERTURB_RULES:
        raise UserInputError(f"w_rand must be one of {W_RAND} and perturb_rule one of "
                             f"{PERTURB_RULES}, got {w_rand!r}, {rule!r}")
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand if w_rand == "uniform" else torch.randn
    for name, p in model.named_parameters():
        mask = masks.get(name)
        if mask is None or not bool(mask.any()):
            continue
        noise = draw(p.shape, generator=generator).to(device=p.device, dtype=p.dtype)
        new = eps * noise if rule == "replace" else (1.0 - eps) * p + eps * noise
        p.copy_(torch.where(mask.to(p.device), new, p))
    return mask_count(masks)


# ---------------------------------------------------------------- JS divergence (Eq. 6-7)

def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-row JS(softmax(p) ‖ softmax(q)) in bits, in [0, 1]."""
    log_p = F.log_softmax(logits_p.float(), dim=1)
    log_q = F.log_softmax(logits_q.float(), dim=1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(1)
    return (0.5 * (kl_pm + kl_qm) / math.log(2.0)).clamp_min(0.0)


def needs_retrain_model(hp) -> bool:
    """Whether training with ``hp`` reads ``task.extras["retrain_model"]``.

    Only the JS term of Eq. 8 reads a reference, and only λ > 0 computes it
    (``train_retain_js``); the retrained model is that reference when
    ``js_reference="retrain"`` (§3.2.2's text). ``hp`` is any Hparams with ``lam`` and
    ``js_reference`` fields. Each perturbation method exposes this as its module-level
    ``needs_retrain_model`` so a sweep loads a retrained model only for trials that use it.
    """
    return hp.js_reference == "retrain" and hp.lam > 0


def js_reference_model(task: UnlearnTask, which: str) -> nn.Module:
    """P(w, x) of Eq. 6-8: the source (Alg. 1 l.16) or the retrained model (§3.2.2)."""
    if which == "source":
        return task.source_copy()
    if which == "retrain":
        if "retrain_model" not in task.extras:
            raise UserInputError(
                "js_reference='retrain' needs a retrained model in task.extras['retrain_model'] "
                "(seed 000 §3.2.2); use js_reference='source' (Alg. 1) to run without one"
            )
        ref = copy.deepcopy(task.extras["retrain_model"]).to(task.device).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref
    raise UserInputError(f"js_reference must be one of {JS_REFERENCES}, got {which!r}")


# ---------------------------------------------------------------- layers (EU-K / CF-K)

def last_parameter_tensors(model: nn.Module, k: int) -> list[str]:
    """Names of the last ``k`` parameter tensors, input-to-output order.

    Seed 000 counts a "layer" as one parameter tensor (a weight, a bias, a BN
    scale or shift): its Table 1 sizes (ResNet18 EU-5 2.37M and EU-10 4.73M,
    VGG 6666 and 4.73M, DenseNet 49162 and 0.178M) are exactly the sums of the
    last 5 and 10 tensors of those models, e.g. ResNet18's last 5 are
    layer4.1.conv2.weight, bn2.weight, bn2.bias, fc.weight, fc.bias. Tensors
    are taken in ``parameter_layers`` order. ``k`` above the model's tensor
    count means every tensor (with a warning): small models have fewer.
    """
    names = [name for layer in parameter_layers(model) for name in layer]
    if k < 1:
        raise UserInputError(f"the number of last layers K must be >= 1, got {k}")
    if k > len(names):
        warnings.warn(f"K={k} exceeds the model's {len(names)} parameter tensors: using all",
                      stacklevel=2)
    return names[-k:]


@torch.no_grad()
def reinitialise_(model: nn.Module, task: UnlearnTask, names: list[str]) -> None:
    """Give ``names`` the values of a freshly initialised model of the same architecture."""
    if not task.model_name:
        raise UserInputError("re-initialising layers needs the source's model name in the task")
    images = task.val_data.images
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        fresh = dict(create_model(task.model_name, task.num_classes, images.shape[1],
                                  images.shape[2]).named_parameters())
    params = dict(model.named_parameters())
    for name in names:
        params[name].copy_(fresh[name])


# ---------------------------------------------------------------- training (Eq. 8, Alg. 1)

def _cycle(data: DeviceData, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    while True:
        yield from data.batches(batch_size, shuffle=True, generator=generator, augment=False)


def train_retain_js(
    model: nn.Module, task: UnlearnTask, *, epochs: int, lr: float, batch_size: int,
    lam: float = 0.0, js_reference: str = "source", trainable: list[str] | None = None,
    grad_masks: Masks | None = None,
) -> nn.Module:
    """Adam on CE(D_RE) + λ·JS(P_model(x_f) ‖ P_ref(x_f)), x_f from D_UL (Eq. 8).

    Calls ``task.end_epoch`` after each epoch."""
    device = task.device
    model = prepare_model(model, device)
    params = dict(model.named_parameters())
    keep = set(params) if trainable is None else set(trainable)
    if grad_masks is not None:
        keep &= {name for name, m in grad_masks.items() if bool(m.any())}
    flags = {name: p.requires_grad for name, p in params.items()}
    for name, p in params.items():
        p.requires_grad_(name in keep)
    frozen_norms = [m for m in model.modules() if isinstance(m, _NORMS)
                    and not any(p.requires_grad for p in m.parameters(recurse=False))]
    reference = js_reference_model(task, js_reference) if lam > 0 else None
    masks = {n: m.to(device=device, dtype=params[n].dtype) for n, m in (grad_masks or {}).items()
             if n in keep}
    recipe = method_recipe(epochs, lr, batch_size, optimizer="adam", weight_decay=0.0)
    optimizer = make_optimizer([params[n] for n in params if n in keep], recipe)
    seed_everything(task.seed)
    generator = torch.Generator().manual_seed(task.seed)
    forget = _cycle(task.forget, batch_size, generator) if reference is not None else None
    channels_last = device.type == "cuda"

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with autocast(device):
            return model(x)

    model.train()
    for module in frozen_norms:
        module.eval()
    for epoch in range(epochs if keep else 0):
        for batch in task.retain.batches(batch_size, shuffle=True, generator=generator):
            loss = F.cross_entropy(forward(batch.x).float(), batch.y)
            if reference is not None:
                fb = next(forget)
                with torch.no_grad(), autocast(device):
                    ref_logits = reference(fb.x)
                loss = loss + lam * js_divergence(forward(fb.x), ref_logits).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for name, m in masks.items():
                if params[name].grad is not None:
                    params[name].grad.mul_(m)
            optimizer.step()
        task.end_epoch(model, epoch + 1)
    for name, p in params.items():
        p.requires_grad_(flags[name])
    return model


def train_after_perturbation(model: nn.Module, task: UnlearnTask, hp, masks: Masks) -> nn.Module:
    """Alg. 1 l.14-19 with a perturbation method's Hparams (fields read by name)."""
    return train_retain_js(
        model, task, epochs=hp.epochs, lr=hp.lr, batch_size=hp.batch_size, lam=hp.lam,
        js_reference=hp.js_reference, grad_masks=masks if hp.train_only_perturbed else None,
    )
