"""Differentially private training (DP-SGD) on Opacus: per-unit clipping, Gaussian noise, Poisson sampling and
the privacy accountant, hooked into the shared :class:`~medsd.training.core.Trainer` under ``--dp``.

Opacus computes the per-sample gradients (``GradSampleModule`` hooks), clips and noises them (``DPOptimizer``),
samples units (``UniformWithReplacementSampler``, as its accountants assume) and accounts for the privacy spent
(``RDPAccountant`` / ``PRVAccountant`` / ``GaussianAccountant``). What medsd adds: a privacy *unit* of one image or
one patient (all of a patient's sampled images average into one gradient before clipping), augmentation
multiplicity (K noise draws and timesteps per unit averaged before clipping), a deterministic per-step sample so
that a resumed run draws the same batches, and the accountant's state in every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsd.errors import MedsdConfigError
from medsd.run_folder import RunFolder

PRIVACY_TAG = "differential-privacy"
SUMMARY_KEY = "differential_privacy"
"""The key of the privacy record in ``train_summary.json`` (and in checkpoints' metadata)."""


def check_dp_config(config: Any) -> None:
    """Refuse, in one line naming the flag, DP settings that cannot give a guarantee (checked before loading)."""
    if not getattr(config, "dp", False):
        return
    if (config.dp_target_epsilon is None) == (config.dp_noise_multiplier is None):
        raise MedsdConfigError(
            "--dp: give exactly one of --dp_target_epsilon (the noise is chosen to spend it over "
            "max_train_steps) or --dp_noise_multiplier"
        )
    if config.dp_delta is not None and not 0 < config.dp_delta < 1:
        raise MedsdConfigError(f"--dp_delta: expected a number in (0, 1), got {config.dp_delta!r}")
    if config.gradient_accumulation_steps != 1:
        raise MedsdConfigError(
            "--dp: gradient_accumulation_steps must be 1 (the Poisson-sampled batch is the logical batch; "
            "lower train_batch_size to save memory)"
        )
    if config.mixed_precision in ("fp16", "bf16"):
        raise MedsdConfigError(
            f"--dp: mixed_precision {config.mixed_precision} is not supported with DP (per-sample gradients "
            "in full precision); use --mixed_precision no"
        )
    if config.torch_compile:
        raise MedsdConfigError("--dp: torch_compile is not supported with Opacus' per-sample gradient hooks")
    if getattr(config, "streaming", False):
        raise MedsdConfigError("--dp: a streaming dataset cannot be Poisson-sampled; use a map-style source")


def default_delta(n_units: int) -> float:
    """δ when ``--dp_delta`` is not given: 1 / (10 N), below the 1/N at which (ε, δ)-DP stops meaning much."""
    return 1.0 / (10 * n_units)


def make_accountant(name: str) -> Any:
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=name)


def dataset_fingerprint(dataset: Any) -> str:
    """SHA-256 of what a DP guarantee is about: the images (a cached tensor) or, else, the item paths, and the
    patient ids. A resume on changed data would account against a dataset that no longer exists."""
    h = hashlib.sha256()
    images = getattr(getattr(dataset, "cache", dataset), "images", None)
    if isinstance(images, torch.Tensor):
        h.update(images.detach().cpu().contiguous().numpy().tobytes())
    for name in ("paths", "patient_ids"):
        values = getattr(getattr(dataset, "cache", dataset), name, None)
        if values is not None:
            h.update(json.dumps([str(v) for v in values]).encode())
    h.update(str(len(dataset)).encode())
    return h.hexdigest()


def privacy_units(dataset: Any, unit: str) -> list[list[int]]:
    """The dataset's items grouped into privacy units: one item each, or one list per patient id."""
    n = len(dataset)
    if unit == "image":
        return [[i] for i in range(n)]
    pids = getattr(getattr(dataset, "cache", dataset), "patient_ids", None)
    if pids is None or any(p is None or str(p) == "" for p in pids):
        raise MedsdConfigError(
            "--dp_unit patient: the training data has items without a patient id; give --patient_column "
            "(a metadata CSV) or --patient_id_pattern (a folder)"
        )
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pids):
        groups.setdefault(str(p), []).append(i)
    return list(groups.values())


class PoissonUnitSampler:
    """Step ``k``'s sample: each unit in independently with probability ``rate`` (Opacus'
    ``UniformWithReplacementSampler``, seeded by ``(seed, k)`` so a resumed run draws the same), then at most
    ``cap`` of a patient's images, chosen at random."""

    def __init__(self, units: list[list[int]], rate: float, seed: int, cap: int):
        self.units, self.rate, self.seed, self.cap = units, rate, seed, cap

    def sample(self, step: int) -> tuple[list[int], list[int]]:
        """(item indices, the position of each item's unit among the sampled units)."""
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2**63))
        sampler = UniformWithReplacementSampler(
            num_samples=len(self.units), sample_rate=self.rate, generator=g, steps=1
        )
        chosen = next(iter(sampler))
        items: list[int] = []
        owner: list[int] = []
        for k, u in enumerate(chosen):
            members = self.units[u]
            if len(members) > self.cap:
                pick = torch.randperm(len(members), generator=g)[: self.cap].tolist()
                members = [members[j] for j in sorted(pick)]
            items += members
            owner += [k] * len(members)
        return items, owner


def repeat_batch(batch: dict[str, Any], times: int) -> dict[str, Any]:
    """Each item ``times`` times in a row (tensors and lists): augmentation multiplicity draws new noise and a
    new timestep for every copy in the task's loss."""
    if times == 1:
        return batch
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            out[k] = v.repeat_interleave(times, dim=0)
        elif isinstance(v, list):
            out[k] = [x for x in v for _ in range(times)]
        else:
            out[k] = v
    return out


def group_grad_samples(params: list[nn.Parameter], owner: torch.Tensor, n_units: int) -> None:
    """Replace each ``p.grad_sample`` (one row per input) with one row per privacy unit: the mean over the
    unit's inputs (its images times the augmentation copies), which is the gradient of the unit's mean loss."""
    counts = torch.bincount(owner, minlength=n_units).clamp(min=1)
    for p in params:
        gs = p.grad_sample
        if (
            gs is None and p.grad is not None
        ):  # a layer Opacus has no per-sample rule for: never train it blind
            raise MedsdConfigError(
                f"--dp: Opacus computed no per-sample gradient for a trainable parameter of shape {tuple(p.shape)}; "
                "its layer type is not supported by Opacus' hooks"
            )
        if gs is None:  # not used by this loss (e.g. a frozen branch): no contribution
            gs = torch.zeros((len(owner), *p.shape), device=p.device, dtype=p.dtype)
        grouped = torch.zeros((n_units, *gs.shape[1:]), device=gs.device, dtype=gs.dtype)
        grouped.index_add_(0, owner.to(gs.device), gs)
        p.grad_sample = grouped / counts.to(gs.device).view(-1, *([1] * (gs.ndim - 1)))


def refuse_batch_statistics(modules: dict[str, nn.Module]) -> None:
    """One line when Opacus' ``ModuleValidator`` finds a layer DP-SGD cannot use (BatchNorm mixes examples)."""
    from opacus.validators import ModuleValidator

    for name, module in modules.items():
        was_training = module.training
        module.train()  # the validator checks training-time behaviour
        errors = ModuleValidator.validate(module, strict=False)
        module.train(was_training)
        if errors:
            first = str(errors[0]).splitlines()[0]
            raise MedsdConfigError(
                f"--dp: module {name!r} cannot be trained with DP-SGD ({len(errors)} problem(s), first: {first}); "
                "use GroupNorm/LayerNorm instead of BatchNorm"
            )


def trainable_modules(modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
    return {k: m for k, m in modules.items() if any(p.requires_grad for p in m.parameters())}


class DPTraining:
    """The DP-SGD state of one run: privacy units, sampler, noise, the Opacus optimizer and accountant."""

    def __init__(self, config: Any, dataset: Any):
        self.config = config
        self.unit = config.dp_unit
        self.units = privacy_units(dataset, self.unit)
        self.n_units = len(self.units)
        if config.train_batch_size >= self.n_units:
            raise MedsdConfigError(
                f"--dp: train_batch_size {config.train_batch_size} must be below the number of privacy units "
                f"({self.n_units} {self.unit}s): it is the expected batch, q = batch / N"
            )
        self.sample_rate = config.train_batch_size / self.n_units
        self.delta = config.dp_delta if config.dp_delta is not None else default_delta(self.n_units)
        self.fingerprint = dataset_fingerprint(dataset)
        self.accountant = make_accountant(config.dp_accountant)
        self.noise_multiplier = self._noise_multiplier()
        cap = config.dp_max_images_per_patient if self.unit == "patient" else 1
        self.sampler = PoissonUnitSampler(self.units, self.sample_rate, config.seed, cap)

    def _noise_multiplier(self) -> float:
        cfg = self.config
        if cfg.dp_noise_multiplier is not None:
            return float(cfg.dp_noise_multiplier)
        from opacus.accountants.utils import get_noise_multiplier

        return float(
            get_noise_multiplier(
                target_epsilon=cfg.dp_target_epsilon,
                target_delta=self.delta,
                sample_rate=self.sample_rate,
                steps=cfg.max_train_steps,
                accountant=cfg.dp_accountant,
            )
        )

    def wrap(self, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> Any:
        """Opacus' per-sample gradient hooks on the modules being trained (which the task keeps calling as
        before) and its ``DPOptimizer`` around ``optimizer``."""
        import warnings

        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        # inputs (images, timesteps) need no gradient; torch warns about that once per hooked module
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        trained = trainable_modules(modules)
        refuse_batch_statistics(trained)
        self.hooked = [GradSampleModule(m, loss_reduction="mean", strict=False) for m in trained.values()]
        self.params = [p for m in trained.values() for p in m.parameters() if p.requires_grad]
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.config.dp_max_grad_norm,
            expected_batch_size=self.config.train_batch_size,
            loss_reduction="mean",
        )
        return self.optimizer

    def batches(
        self, dataset: Any, task: Any, config: Any, accelerator: Any, start_step: int
    ) -> Iterator[Any]:
        """(batch or None when no unit was sampled, owner tensor) for each step from ``start_step`` on
        (``batch_stream``'s signature; a DP step is one micro-batch)."""
        from .batches import to_device
        from .task import BatchSource, MovableBatchSource

        device = accelerator.device
        if isinstance(dataset, MovableBatchSource) and self.config.cache_images_on_device:
            dataset = dataset.to(device)
        step = start_step
        while True:
            items, owner = self.sampler.sample(step)
            step += 1
            if not items:
                yield None, torch.zeros(0, dtype=torch.long)
            elif isinstance(dataset, BatchSource):
                yield dataset.get_batch(items, device), torch.tensor(owner)
            else:
                yield to_device(task.collate([dataset[i] for i in items]), device), torch.tensor(owner)

    def step(self, trainer: Any) -> None:
        """One DP-SGD step: the loss of K copies of every sampled item, per-unit gradients, then Opacus' clip,
        noise and update, and the accountant's step (an empty sample still adds noise and counts)."""
        batch, owner = next(trainer.batch_iter)
        k = self.config.dp_augmentation_multiplicity
        n_units = int(owner.max()) + 1 if len(owner) else 0
        if batch is None:
            for p in self.params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        else:
            loss = trainer.task.loss(repeat_batch(batch, k), trainer.modules, trainer.accelerator)
            trainer._record(loss.detach().float())
            trainer.accelerator.backward(loss)
            group_grad_samples(self.params, owner.repeat_interleave(k), n_units)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def epsilon(self) -> float:
        """ε spent so far at this run's δ (0 before the first step)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.delta))

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the accountant's history, the noise and the data it is about."""
        return {
            "accountant": self.config.dp_accountant,
            "history": [list(h) for h in self.accountant.history],
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "n_units": self.n_units,
            "data_sha256": self.fingerprint,
        }

    def load_state(self, checkpoint: Path) -> None:
        """Restore the accountant from a checkpoint's metadata, refusing a resume on other data or of a
        checkpoint written without DP (its steps spent privacy nobody accounted for)."""
        from .checkpoints import CHECKPOINT_META

        state = json.loads((Path(checkpoint) / CHECKPOINT_META).read_text()).get(SUMMARY_KEY)
        if state is None:
            raise MedsdConfigError(
                f"--dp: {checkpoint} was written without --dp; its steps were not accounted: start a new DP run"
            )
        if state["data_sha256"] != self.fingerprint or state["n_units"] != self.n_units:
            raise MedsdConfigError(
                f"--dp: the training data changed since {checkpoint} ({state['n_units']} {self.unit}s then, "
                f"{self.n_units} now, or other content); the guarantee covers one dataset: start a new run"
            )
        self.accountant.history = [tuple(h) for h in state["history"]]
        if self.config.dp_noise_multiplier is None:  # keep the noise chosen for the target at the start
            self.noise_multiplier = float(state["noise_multiplier"])
            self.optimizer.noise_multiplier = self.noise_multiplier

    def summary(self, steps: int, model_folder: Path | None = None) -> dict[str, Any]:
        """The privacy record of train_summary.json and generated datasets' cards; with ``model_folder``, also
        added to its model card."""
        record = {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "unit": self.unit,
            "n_units": self.n_units,
            "accountant": self.config.dp_accountant,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.config.dp_max_grad_norm,
            "sample_rate": self.sample_rate,
            "expected_batch_size": self.config.train_batch_size,
            "steps": steps,
            "augmentation_multiplicity": self.config.dp_augmentation_multiplicity,
            "max_images_per_patient": self.config.dp_max_images_per_patient if self.unit == "patient" else 1,
            "target_epsilon": self.config.dp_target_epsilon,
            "library": "opacus " + _opacus_version(),
        }
        if model_folder is not None:
            add_privacy_to_card(model_folder, record)
        return record


def start_dp(config: Any, task: Any, accelerator: Any) -> DPTraining | None:
    """The run's :class:`DPTraining` under ``--dp`` (None without), after the checks that need the launch."""
    if not getattr(config, "dp", False):
        return None
    check_dp_config(config)  # a Trainer built directly, not through Trainer.from_config, has not checked it
    if accelerator.num_processes > 1:
        raise MedsdConfigError(
            "--dp: multi-process training is not supported with DP yet (Opacus' distributed path is not "
            "wired into medsd); launch one process"
        )
    if str(accelerator.mixed_precision) != "no":
        raise MedsdConfigError(
            f"--dp: mixed precision {accelerator.mixed_precision} (from accelerate's config) is not supported "
            "with DP; use --mixed_precision no"
        )
    return DPTraining(config, task.train_dataset())


def _opacus_version() -> str:
    from importlib.metadata import version

    return version("opacus")


def privacy_section(record: dict[str, Any]) -> str:
    """A markdown section stating the guarantee (model cards and dataset cards)."""
    eps = record["epsilon"]
    eps_text = f"{eps:.3g}" if math.isfinite(eps) else "∞"
    unit = "one patient's images (at most " + str(record["max_images_per_patient"]) + " per step)"
    unit = unit if record["unit"] == "patient" else "one training image"
    return (
        "## Differential privacy\n\n"
        f"Trained with DP-SGD (Opacus): the weights, and everything generated from them, satisfy "
        f"(ε = {eps_text}, δ = {record['delta']:.3g})-differential privacy with respect to {unit}, as accounted "
        f"by the {record['accountant'].upper()} accountant after {record['steps']} steps.\n\n"
        "| setting | value |\n| --- | --- |\n"
        f"| ε (spent) | {eps_text} |\n| δ | {record['delta']:.3g} |\n| unit | {record['unit']} "
        f"({record['n_units']} in the training data) |\n| accountant | {record['accountant']} |\n"
        f"| noise multiplier | {record['noise_multiplier']:.4g} |\n| clipping norm | {record['max_grad_norm']} |\n"
        f"| sampling rate (Poisson) | {record['sample_rate']:.4g} |\n| steps | {record['steps']} |\n"
        f"| augmentation multiplicity | {record['augmentation_multiplicity']} |\n\n"
        "DP bounds what the model can reveal about any one unit; it does not make the images clinically "
        "correct, nor protect information shared by many units (see medsd's docs/privacy.md).\n"
    )


def privacy_line(record: dict[str, Any]) -> str:
    """One sentence for a generated dataset's card: the images inherit the model's guarantee (post-processing)."""
    eps = record["epsilon"]
    return (
        f"differential privacy: the model was trained with DP-SGD, (ε = {eps:.3g}, δ = {record['delta']:.3g}) per "
        f"{record['unit']} ({record['accountant']} accountant, {record['steps']} steps); images generated from it "
        "keep that guarantee (post-processing)"
    )


def add_privacy_to_card(folder: Path, record: dict[str, Any]) -> None:
    """Add the ``differential-privacy`` tag and the privacy section (before ``## Training``) to ``README.md``."""
    from huggingface_hub import ModelCard

    path = Path(folder) / "README.md"
    if not path.is_file():
        return
    card = ModelCard(path.read_text())
    card.data.tags = [*(card.data.tags or []), PRIVACY_TAG]
    text = card.text
    section = privacy_section(record)
    marker = "## Training\n"
    card.text = text.replace(marker, section + "\n" + marker, 1) if marker in text else text + "\n" + section
    card.save(path)


def model_privacy(model: str | Path | None) -> dict[str, Any] | None:
    """The privacy record of a local model folder's ``train_summary.json`` (None: not trained with DP)."""
    if not model:
        return None
    path = RunFolder(model).run_finished
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get(SUMMARY_KEY)
    except (OSError, ValueError):
        return None
