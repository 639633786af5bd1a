"""Model zoo: ``create_model(name, num_classes, in_channels, image_size)``.

Every model trains on 8×8 (sklearn digits), 28×28 (MNIST family) and 32×32 (CIFAR)
inputs with 1 or 3 channels; builders' docstrings say what was changed from the
published architecture and why. Every model is a :class:`Classifier`:
``model.forward_features(x) -> [B, model.feature_dim]``, ``model.head`` is the final
``nn.Linear`` and ``model(x) == model.head(model.forward_features(x))``.

Adding a model: write ``def name(num_classes, in_channels, image_size) -> nn.Module``
in a file here, list it in that file's ``BUILDERS`` and merge that dict below
(``tests/test_models.py`` fails for a file whose builders are not registered).

Parameters at 32×32, 3 channels, 10 classes (computed, not copied: regenerate with
``python -m unlearn_core.models``). ``feature_dim`` does not depend on the input
size; the parameter count does only for mlp, convnet, lenet, alexnet (flattened
maps) and vit_small (position embeddings).

==============  ==========  ===========
name            parameters  feature_dim
==============  ==========  ===========
alexnet          7,506,762         1024
allcnn           1,620,010          192
convnet            651,978          128
densenet121      6,956,426         1024
googlenet        5,602,474         1024
lenet               62,006           84
mlp              1,541,510          500
mobilenet_v2     2,236,682         1280
resnet18        11,173,962          512
resnet50        23,520,842         2048
resnet9          6,573,130          512
vgg16_bn        14,728,266          512
vit_small       21,342,346          384
==============  ==========  ===========
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable, Iterator, Mapping

from torch import nn

from ..errors import UserInputError
from ._common import Classifier

__all__ = ["MODELS", "Classifier", "create_model", "model_names"]

# Model name -> the file that builds it. Files are imported on first use: the
# torchvision-based ones cost ~1.3 s of imports (torchvision pulls in torch._dynamo),
# paid by every CLI call and every Ray worker otherwise, for runs that use an MLP.
# tests/test_models.py checks this table against each file's BUILDERS.
_MODULE_OF: dict[str, str] = {
    **dict.fromkeys(("mlp", "convnet", "lenet", "alexnet", "allcnn"), "small"),
    **dict.fromkeys(("resnet9", "resnet18", "resnet50"), "resnet"),
    **dict.fromkeys(("vgg16_bn", "densenet121", "googlenet", "mobilenet_v2"), "zoo"),
    "vit_small": "vit",
}


class _LazyBuilders(Mapping[str, Callable[..., nn.Module]]):
    """``name -> builder``, importing a builder's file only when it is looked up."""

    def __getitem__(self, name: str) -> Callable[..., nn.Module]:
        module = importlib.import_module(f"{__name__}.{_MODULE_OF[name]}")
        return module.BUILDERS[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULE_OF)

    def __len__(self) -> int:
        return len(_MODULE_OF)

    def __contains__(self, name: object) -> bool:
        return name in _MODULE_OF


MODELS: Mapping[str, Callable[..., nn.Module]] = _LazyBuilders()

MIN_IMAGE_SIZE = 8  # sklearn digits; the stems above are checked down to this size


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def create_model(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build ``name`` for ``in_channels``×``image_size``×``image_size`` inputs, fresh init.

    Initialisation draws from torch's global RNG, so ``torch.manual_seed`` before
    the call makes it reproducible. Nothing is downloaded.
    """
    if name not in MODELS:
        raise UserInputError(f"unknown model {name!r}; valid names: {', '.join(model_names())}")
    sizes: dict[str, int] = {}
    for field, value, lowest in (
        ("num_classes", num_classes, 1),
        ("in_channels", in_channels, 1),
        ("image_size", image_size, MIN_IMAGE_SIZE),
    ):
        # operator.index accepts numpy integers (len(np.unique(labels))) but not floats.
        ok = not isinstance(value, bool) and hasattr(value, "__index__")
        if not ok or operator.index(value) < lowest:
            raise UserInputError(f"model {field} must be an integer >= {lowest}, got {value!r}")
        sizes[field] = operator.index(value)
    return MODELS[name](**sizes)
