"""Experiment config: one YAML file in, validated on load.

Unknown keys, wrong types and impossible values are refused with the field's
path (``methods.1.trials``) and what is accepted. A method's ``fixed`` hparams and
``space`` domains are checked against the ranges its Hparams fields declare
(``methods.0.fixed.lr``), so a bad value is refused here, before anything trains.
``--smoke`` shrinks a config to seconds on 2 CPUs (few references, one trial, two
replicates, few epochs).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from unlearn_core.data.datasets import dataset_names
from unlearn_core.data.forget import parse_forget_spec
from unlearn_core.errors import UserInputError
from unlearn_core.methods import (
    get_method,
    is_zero_glance,
    method_names,
    reports_epochs,
)
from unlearn_core.models import model_names
from unlearn_core.search import Range, domain_from_spec, field_ranges
from unlearn_core.train.recipe import OPTIMIZERS, SCHEDULES

SEARCH_ALGORITHMS = ("random", "grid", "optuna", "asha")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(Strict):
    name: str = "digits"
    root: str | None = None
    download: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def known_dataset(cls, value: str) -> str:
        if value not in dataset_names():
            raise ValueError(f"unknown dataset {value!r}; accepted: {dataset_names()}")
        return value


class SplitConfig(Strict):
    seed: int = 0
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    retain_subset_per_class: int = Field(0, ge=0)
    max_train: int | None = Field(None, ge=2)


class RecipeConfig(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal[OPTIMIZERS] = "sgd"  # type: ignore[valid-type]
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal[SCHEDULES] = "cosine"  # type: ignore[valid-type]
    milestones: tuple[int, ...] = ()
    gamma: float = Field(0.1, gt=0.0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    augment: bool | None = None
    compile: bool = False


class SourceConfig(Strict):
    model: str = "mlp"
    seed: int = 0
    recipe: RecipeConfig = Field(default_factory=RecipeConfig)
    # seed 004: one-shot magnitude pruning to this sparsity, then fine-tuning with the
    # mask fixed; applies to the source and to every reference.
    sparsity: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("model")
    @classmethod
    def known_model(cls, value: str) -> str:
        if value not in model_names():
            raise ValueError(f"unknown model {value!r}; accepted: {model_names()}")
        return value


class ReferencesConfig(Strict):
    count: int = Field(8, ge=1, le=4096)
    seed_start: int = 1000  # reference i uses seed seed_start + i
    recipe: RecipeConfig | None = None  # None: the source's recipe (it should be the same)
    # data_parallel only: Ray Train workers that train each model together. Otherwise the
    # references are a pool of one-model tasks that every free worker pulls from.
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    # True: all workers train each model together (data-parallel: each takes 1/workers of
    # every batch, gradients summed; one large model); False: each trains its own models.
    data_parallel: bool = False
    # Pool mode: references trained at once in one task, stacked with torch.func
    # (unlearn_core/train/stacked.py). 0: auto (spread over the pool's free slots, capped by
    # the worker's memory); 1: one at a time; K: packs of at most K models.
    pack: int = Field(0, ge=0, le=4096)

    @model_validator(mode="after")
    def pack_without_data_parallel(self) -> ReferencesConfig:
        if self.data_parallel and self.pack > 1:
            raise ValueError("references.pack > 1 stacks several models in one pool task; "
                             "data_parallel trains each model across all workers: set one")
        return self


class ResourcesConfig(Strict):
    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)


class AshaConfig(Strict):
    """ASHA early stopping (``search: asha``): configs drawn as for ``random``, each trial
    evaluated after every epoch and stopped at rungs grace_period·rf^k where it falls out
    of the top 1/rf of the trials that reached that rung (Li et al., MLSys 2020). Only
    for methods that report epochs (``unlearn_core.methods.reports_epochs``), e.g.::

        - name: finetune
          search: asha
          trials: 16
          fixed: {epochs: 10}     # one time axis for all trials: ASHA's max_t
          asha: {grace_period: 1, reduction_factor: 2}
    """

    grace_period: int = Field(1, ge=1)  # epochs before a trial can first be stopped
    reduction_factor: float = Field(2.0, gt=1.0)  # rf: 1/rf of the trials pass each rung


class MethodConfig(Strict):
    name: str
    trials: int = Field(4, ge=1)
    search: Literal[SEARCH_ALGORITHMS] = "random"  # type: ignore[valid-type]
    fixed: dict[str, Any] = Field(default_factory=dict)  # hparams held fixed
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)  # overrides of SEARCH_SPACE
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    asha: AshaConfig = Field(default_factory=AshaConfig)  # read only with search: asha

    @field_validator("name")
    @classmethod
    def known_method(cls, value: str) -> str:
        if value not in method_names():
            raise ValueError(f"unknown method {value!r}; accepted: {method_names()}")
        return value

    @field_validator("fixed")
    @classmethod
    def fixed_in_range(cls, fixed: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Every fixed hparam is a field of the method and lies in its declared range."""
        if "name" not in info.data:  # unknown method: refused under its name
            return fixed
        method = info.data["name"]
        ranges = field_ranges(get_method(method).Hparams)
        errors, checked = [], {}
        for key, value in fixed.items():
            if key not in ranges:
                errors.append((key, _unknown_hparam(method, ranges), value))
                continue
            declared = ranges[key]
            value = _coerce(declared, value)
            problem = declared.problem(value) if declared is not None else None
            if problem:
                errors.append((key, f"{method}.{key}: {problem}", value))
            checked[key] = value
        if errors:
            raise _located_errors(errors)
        return checked

    @field_validator("space")
    @classmethod
    def space_well_formed(cls, space: dict[str, dict[str, Any]], info: ValidationInfo
                          ) -> dict[str, dict[str, Any]]:
        """Every domain has the right form and arity, low < high (low > 0 for loguniform),
        and draws only values inside the field's declared range."""
        if "name" not in info.data:
            return space
        method = info.data["name"]
        ranges = field_ranges(get_method(method).Hparams)
        errors = []
        for key, spec in space.items():
            if key not in ranges:
                errors.append((key, _unknown_hparam(method, ranges), spec))
                continue
            try:
                domain = domain_from_spec(spec)
            except ValueError as err:
                errors.append((key, str(err), spec))
                continue
            declared = ranges[key]
            problem = declared.domain_problem(domain) if declared is not None else None
            if problem:
                errors.append((key, f"{method}.{key}: {problem}", spec))
        if errors:
            raise _located_errors(errors)
        return space

    @model_validator(mode="after")
    def asha_needs_epochs(self) -> MethodConfig:
        if self.search == "asha" and not reports_epochs(self.name):
            reporting = [m for m in method_names() if reports_epochs(m)]
            raise ValueError(
                f"search: asha stops trials between epochs, but {self.name} reports no "
                f"epochs; use random, grid or optuna, or a method that does: {reporting}"
            )
        return self


def _unknown_hparam(method: str, ranges: dict) -> str:
    return f"unknown hparam of {method}; accepted: {sorted(ranges)}"


def _coerce(declared: Range | None, value: Any) -> Any:
    """A number written as text for a float hparam -> the number (YAML 1.1 reads 1e-4 as a
    string; pydantic's own float fields accept it too)."""
    if declared is not None and declared.kind == "float" and not declared.sequence \
            and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def _located_errors(errors: list[tuple[str, str, Any]]) -> ValidationError:
    """One error per hparam, located under it (``methods.0.fixed.lr``), for a field
    validator of a dict of hparams to raise."""
    return ValidationError.from_exception_data("hparams", [
        InitErrorDetails(type=PydanticCustomError("hparam", "{message}", {"message": message}),
                         loc=(key,), input=value)
        for key, message, value in errors
    ])


class ObjectiveConfig(Strict):
    """What each method's sweep optimises (its best config is replicated).

    ``metric`` may read every split. Zero-glance methods (seed 003) may not read D_f,
    nor may the objective that tunes them, so for them ``zero_glance`` decides:
    ``heldout`` (default) sweeps them on held-out test accuracy only: forgotten classes
    toward 0, retained classes toward the source's (``heldout/disparity`` when ``mode``
    is min, ``heldout/score`` = 1 − it when max; pipelines/evaluate.py
    ``heldout_metrics``); ``fixed`` runs one config, the method's defaults (seed 003's
    values) plus its ``fixed``, without a search. The reported metrics still evaluate D_f.
    """

    metric: str = "disparity/avg"  # default: average disparity to the references (seed 004)
    mode: Literal["min", "max"] = "min"
    zero_glance: Literal["heldout", "fixed"] = "heldout"


class RelearnConfig(Strict):
    """Relearn time (seed 003, §V "RT"): epochs of training on ``samples`` random
    examples of D until forget accuracy reaches the source's; reported ">cap" if not."""

    enabled: bool = True
    samples: int = Field(500, ge=1)  # seed 003: 500 random samples of D per epoch
    cap: int = Field(50, ge=1)  # 003 reports up to 100 epochs; 50 keeps sweeps cheap (ours)
    tolerance: float = Field(0.0, ge=0.0, le=1.0)  # accepted shortfall below the source's acc


class DegreeConfig(Strict):
    """SPD-GAN unlearning degree (seed 000, §3.3, Alg. 2); trains a generator per model."""

    enabled: bool = False
    eta: float = Field(0.03, gt=0.0)  # seed 000, Eq. 11
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    # small batches: forget sets are small and the generator needs enough Adam steps (ours)
    batch_size: int = Field(32, ge=1)


class MetricsConfig(Strict):
    """Metrics that need the model itself, not only its stored outputs."""

    relearn: RelearnConfig = Field(default_factory=RelearnConfig)
    degree: DegreeConfig = Field(default_factory=DegreeConfig)
    # layer-wise weight distance to the source and forget-set prediction distribution (003)
    distance: bool = True
    # references that get these metrics too (the retrain row); each costs a relearn run
    references: int = Field(4, ge=0)
    # bootstrap replicates of the forget quality's interval (methods.json, MLflow); each
    # rescores every forget example once (0: no interval). Override: unlearn tables --bootstrap
    fscore_bootstrap: int = Field(50, ge=0)


class SmokeConfig(Strict):
    references: int = Field(2, ge=1)
    trials: int = Field(1, ge=1)
    replicates: int = Field(2, ge=1)
    epochs: int = Field(2, ge=1)


class ExperimentConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    forget: str = "classes=3"
    source: SourceConfig = Field(default_factory=SourceConfig)
    references: ReferencesConfig = Field(default_factory=ReferencesConfig)
    methods: list[MethodConfig] = Field(min_length=1)
    replicates: int = Field(4, ge=1)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    mia_max_per_class: int = Field(5000, ge=10)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    # extra table columns by metric key, e.g. test/acc_class_7 (seed 001's retained classes)
    table_columns: list[str] = Field(default_factory=list)
    tracking_uri: str | None = None
    # a local folder or a URI: file://, s3://, gs://, hdfs://, abfs:// (unlearn_core.storage)
    results_dir: str = "results"
    # times a reference, trial or replicate is retried after an infrastructure failure
    # (worker or node lost, object lost, I/O error); a method's own failure is never retried
    max_retries: int = Field(3, ge=0)
    device: str = "auto"
    smoke: SmokeConfig = Field(default_factory=SmokeConfig)

    @field_validator("forget")
    @classmethod
    def valid_forget(cls, value: str) -> str:
        try:
            parse_forget_spec(value)
        except UserInputError as err:
            raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def unique_methods(self) -> ExperimentConfig:
        names = [m.name for m in self.methods]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"methods: {dupes} listed more than once")
        zero_glance = [n for n in names if is_zero_glance(n)]
        if zero_glance and self.split.retain_subset_per_class == 0:
            raise ValueError(
                f"methods {zero_glance} are zero-glance and read only the retain subset "
                "D_r_sub: set split.retain_subset_per_class > 0 (seed 003: 1000 per class "
                "on CIFAR-10)"
            )
        return self

    def reference_recipe(self) -> RecipeConfig:
        return self.references.recipe or self.source.recipe

    def smoked(self) -> ExperimentConfig:
        """The same experiment shrunk to run in seconds (``--smoke``)."""
        smoke = self.smoke

        def shrink(recipe: RecipeConfig) -> RecipeConfig:
            return recipe.model_copy(update={"epochs": min(recipe.epochs, smoke.epochs)})

        refs = self.references
        return self.model_copy(update={
            "name": f"{self.name}-smoke",
            "source": self.source.model_copy(update={"recipe": shrink(self.source.recipe)}),
            "references": refs.model_copy(update={
                "count": min(refs.count, smoke.references),
                "recipe": shrink(refs.recipe) if refs.recipe else None,
            }),
            "methods": [m.model_copy(update={"trials": min(m.trials, smoke.trials)})
                        for m in self.methods],
            "replicates": min(self.replicates, smoke.replicates),
        })

    def config_hash(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required field missing"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise UserInputError(f"{source}: expected a mapping at the top level")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise UserInputError(_format_errors(err, source)) from None


def quickstart_config_path() -> Path:
    """The bundled quickstart config (``unlearn quickstart``)."""
    return Path(__file__).parent / "configs" / "quickstart.yaml"


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserInputError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data, str(path))
