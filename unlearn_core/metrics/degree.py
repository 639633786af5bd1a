"""Unlearning degree via SPD-GAN (seed 000, §3.3, Eq. 11-12, Algorithm 2, Fig. 3).

A generator G learns a slight perturbation of the forget set D_UL such that the
source model M still classifies the perturbed data D_p = G(D_UL) + D_UL well
while the unlearned model M_UL does not. M and M_UL are frozen and act as a
joint discriminator; G minimises (Eq. 11, Alg. 2 lines 2-7)

    loss = CE(M(G(x) + x), y) − η · CE(M_UL(G(x) + x), y),   η = 0.03 (§4.3.1),

and the degree is (Eq. 12) degree = acc(M, D_p) − acc(M_UL, D_p), in
[0, 1 − 1/C] for a well-behaved pair (it can be negative when M_UL beats M).

Generator (§4.3.1, Fig. 3): encoder (two Conv2d)-BatchNorm-Conv2d-BatchNorm
with LeakyReLU, decoder ConvTranspose2d-BatchNorm-ConvTranspose2d-Conv2d with
ReLU, Tanh output in [-1, 1]. The paper gives no kernel sizes or widths; ours:

    Conv3×3/1(w) LReLU · Conv4×4/2(2w) BN LReLU · Conv4×4/2(4w) BN LReLU
    ConvT4×4/2(2w) BN ReLU · ConvT4×4/2(w) ReLU · Conv3×3/1(C) Tanh

with w = ``width_mult``. The two stride-2 convolutions halve the size twice
(32 -> 16 -> 8, 28 -> 14 -> 7, 8 -> 4 -> 2) and the transposed ones double it
back; ``output_padding`` restores odd sizes, so any H, W >= 4 maps to itself.

Choices where the paper is silent:

- Perturbation space. ``DeviceData`` stores uint8 images and normalises them
  per channel for the model. The paper adds G's output to the *image* (Fig. 4
  shows D_p as images next to the originals) and bounds it with Tanh to
  [-1, 1], i.e. the size of the whole image range. So G's Tanh output δ is
  added in [0, 1] pixel units, x_p = clip(x + δ, 0, 1), and x_p is then
  normalised with the data's own mean/std before either model sees it. The
  clip keeps D_p valid images (what D_p is meant to be: perturbed data, not
  arbitrary tensors); it is the one step Algorithm 2 does not write out. Adding
  δ in normalised units instead would make the Tanh bound mean ±1 standard
  deviation, a different (dataset-dependent) budget. G's *input* is the
  normalised image, only because zero-mean inputs train better; it does not
  change what is perturbed.
- Training: Adam (the optimizer the paper uses throughout §4.3.1) at
  ``lr`` = 1e-3, ``epochs`` passes over D_UL in shuffled mini-batches, no
  augmentation. Neither epochs nor LR is given in the paper; 20 epochs of
  1e-3 are our defaults. G is in train mode (BatchNorm batch statistics) while
  training and in eval mode when D_p is produced (Alg. 2 line 9).
- Discriminators: deep copies of M and M_UL in eval mode with
  ``requires_grad`` off, so gradients flow through them to G only and the
  caller's models (weights, BatchNorm statistics, flags) are never modified.

Returns ``degree/value`` (Eq. 12), ``degree/source_acc_p`` = acc(M, D_p),
``degree/unlearned_acc_p`` = acc(M_UL, D_p), and, for reference, the same two
accuracies on the clean forget set (``degree/source_acc_ul``,
``degree/unlearned_acc_ul``). All are fractions.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from unlearn_core.errors import UserInputError
from unlearn_core.train.device_data import DeviceData
from unlearn_core.train.loop import autocast, prepare_model

# η in Eq. 11, seed paper 000, §4.3.1: 0.03.
DEFAULT_ETA = 0.03
# Smallest side the two stride-2 stages can halve twice without reaching 0.
MIN_SIDE = 4


class Generator(nn.Module):
    """SPD-GAN's encoder-decoder (seed 000, Fig. 3); output has the input's shape, in [-1, 1]."""

    def __init__(self, channels: int, height: int, width: int, width_mult: int = 16) -> None:
        super().__init__()
        w = width_mult
        # A stride-2 4×4 conv with padding 1 gives floor(s/2); the transposed one gives 2s.
        # output_padding = s % 2 adds back the row/column an odd side loses.
        mid_h, mid_w = height // 2, width // 2
        pad_outer = (height % 2, width % 2)
        pad_inner = (mid_h % 2, mid_w % 2)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w, 3, 1, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1),
            nn.BatchNorm2d(4 * w),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, output_padding=pad_inner),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, output_padding=pad_outer),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, channels, 3, 1, 1),
            nn.Tanh(),  # "used to limit the output within [-1, 1]" (§4.3.1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def make_generator(channels: int, height: int, width: int, width_mult: int = 16) -> nn.Module:
    """SPD-GAN generator for ``channels``×``height``×``width`` inputs (seed 000, Fig. 3).

    Output shape equals input shape; values lie in [-1, 1] (Tanh). ``width_mult``
    is the channel count of the first stage (then 2× and 4×); the paper gives none.
    """
    for name, value, lowest in (
        ("channels", channels, 1), ("height", height, MIN_SIDE), ("width", width, MIN_SIDE),
        ("width_mult", width_mult, 1),
    ):
        if isinstance(value, bool) or int(value) != value or value < lowest:
            raise UserInputError(f"make_generator: {name} must be an integer >= {lowest}, "
                                 f"got {value!r}")
    return Generator(int(channels), int(height), int(width), int(width_mult))


def _frozen_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """An eval-mode, gradient-free copy: a fixed discriminator the caller never sees change."""
    frozen = prepare_model(copy.deepcopy(model), device)
    frozen.eval()
    frozen.requires_grad_(False)
    return frozen


def _perturb(
    generator: nn.Module, images_uint8: torch.Tensor, data: DeviceData
) -> torch.Tensor:
    """Normalised model input of G(x) + x, with the sum taken in [0, 1] pixel units."""
    pixels = images_uint8.float() / 255.0
    delta = generator(data.normalise(images_uint8)).float()
    perturbed = (pixels + delta).clamp(0.0, 1.0)  # keep D_p valid images
    return (perturbed - data.mean) / data.std


def _to_model(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def unlearning_degree(
    source: nn.Module,
    unlearned: nn.Module,
    forget_data: DeviceData,
    *,
    eta: float = DEFAULT_ETA,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Seed 000's unlearning degree: train SPD-GAN on D_UL, then Eq. 12 on D_p.

    ``source`` is M (before unlearning), ``unlearned`` is M_UL, ``forget_data``
    is D_UL. Neither model is modified. Same seed and device: same result.
    See the module docstring for the architecture and every choice.
    """
    if len(forget_data) == 0:
        raise UserInputError(
            "unlearning_degree: forget_data is empty; SPD-GAN needs forget samples to perturb"
        )
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise UserInputError(f"unlearning_degree: epochs must be an integer >= 0, got {epochs!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise UserInputError(
            f"unlearning_degree: batch_size must be an integer >= 1, got {batch_size!r}"
        )
    if not lr > 0:
        raise UserInputError(f"unlearning_degree: lr must be > 0, got {lr!r}")
    if not eta >= 0:
        raise UserInputError(f"unlearning_degree: eta must be >= 0, got {eta!r}")

    device = forget_data.device
    channels_last = device.type == "cuda"
    m_source = _frozen_copy(source, device)
    m_unlearned = _frozen_copy(unlearned, device)
    _, c, h, w = forget_data.images.shape
    fork_devices = [device] if device.type == "cuda" else []
    # G's initialisation draws from the global RNG: seed it without disturbing the caller's.
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        generator = make_generator(c, h, w).to(device)
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)

    # Algorithm 2, lines 1-8: train G against the frozen joint discriminator.
    generator.train()
    for _ in range(int(epochs)):
        n = len(forget_data)
        perm = torch.randperm(n, generator=order).to(device)
        for start in range(0, n, int(batch_size)):
            index = perm[start : start + int(batch_size)]
            y = forget_data.labels[index]
            with autocast(device):
                x_p = _to_model(_perturb(generator, forget_data.images[index], forget_data),
                                channels_last)
                loss_source = F.cross_entropy(m_source(x_p).float(), y)
                loss_unlearned = F.cross_entropy(m_unlearned(x_p).float(), y)
            loss = loss_source - eta * loss_unlearned  # Eq. 11
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    # Lines 9-10: D_p = G(D_UL) + D_UL with G fixed, then Eq. 12.
    generator.eval()
    correct = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(forget_data), 1024):
            images = forget_data.images[start : start + 1024]
            y = forget_data.labels[start : start + 1024]
            x_ul = _to_model(forget_data.normalise(images), channels_last)
            with autocast(device):
                x_p = _to_model(_perturb(generator, images, forget_data), channels_last)
                preds = [
                    m(x).float().argmax(1)
                    for m, x in ((m_source, x_p), (m_unlearned, x_p),
                                 (m_source, x_ul), (m_unlearned, x_ul))
                ]
            correct += torch.stack([(p == y).sum() for p in preds]).double().cpu()
    source_p, unlearned_p, source_ul, unlearned_ul = (correct / len(forget_data)).tolist()
    return {
        "degree/value": source_p - unlearned_p,
        "degree/source_acc_p": source_p,
        "degree/unlearned_acc_p": unlearned_p,
        "degree/source_acc_ul": source_ul,
        "degree/unlearned_acc_ul": unlearned_ul,
    }
