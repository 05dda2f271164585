"""One Hub artifact for the learned loss of a run: :class:`LearnedLoss`.

A :class:`LearnedLoss` bundles the learned logit loss network (:class:`~lkd_hf.LogitLossNet`) and / or the learned
feature loss network (:class:`~lkd_hf.FeatureLossNet`) of one run with what is needed to reuse them safely. A saved
(or pushed) bundle is one folder:

* ``config.json``: :class:`LearnedLossConfig`: the networks' constructor arguments (base loss, initial temperature,
  ...), the run's ``loss``, teacher / student timm names, ``num_classes``, feature taps and feature shapes, dataset,
  steps, the student's last evaluation metrics, the ``lkd_hf`` version, and whether the run learned the networks or
  kept them fixed (``meta_steps``) and, for a population, which student's loss they are (``population_*``);
* ``model.safetensors``: the weights (``logit.*``, ``feature.*``);
* ``README.md``: a model card (tags, provenance: learned or kept fixed, accuracy, the reuse code) embedding
* ``learned_loss.png``: the loss against the hand-made loss it was initialised as (when matplotlib is installed).

``save_pretrained`` writes the folder next to its target and renames it into place, so the folder is always one
whole save (never a mix of two saves' config and weights); ``from_pretrained`` validates ``config.json`` (required
fields, ``format_version``, field types) and refuses non-finite weights, naming the file and what to do.

The feature connectors are not part of it: they belong to the student (``connectors.safetensors`` beside it), and
the feature loss network works on any connector-mapped features; a run that reuses the loss trains its own.

``LKDTrainer`` saves the bundle of a run whose loss is learned into ``<output_dir>/lkd_loss`` (so it is pushed
with the student), ``LKDConfig(loss_hub_model_id=...)`` also pushes it to a repo of its own, and
``LKDConfig(loss_from=...)`` loads it (:meth:`LearnedLoss.from_pretrained`) and checks it against the run
(:meth:`LearnedLoss.check_compatible`).
"""

import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, ModelCard, PyTorchModelHubMixin, is_offline_mode, snapshot_download
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_model
from torch import nn
from transformers.utils import logging

from .learned_loss_config import (
    CONFIG_NAME,
    LEGACY_FEATURE_SUBDIR,
    LearnedLossConfig,
    config_from_json,
    differ,
    feature_channels,
    invalid_file,
    read_json,
)
from .losses.networks import FeatureLossNet, LogitLossNet
from .model_card import METHOD_URL, PLOT_NAME, REPO_URL, TAGS, model_card_text
from .plots import matplotlib_available, plot_learned_loss, synthetic_teacher_logits
from .ranges import NETWORK_RANGES, check_ranges
from .safe_io import atomic_directory
from .version import __version__

logger = logging.get_logger(__name__)

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"


class LearnedLoss(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="lkd_hf",
    tags=list(TAGS),  # a copy: the mixin appends its own tags
    repo_url=REPO_URL,
    paper_url=METHOD_URL,
):
    """The learned loss networks of one run as one Hub model: ``save_pretrained`` / ``from_pretrained`` /
    ``push_to_hub`` (see the module docstring for the folder layout).

    Build one with :meth:`from_networks` or ``LKDTrainer.learned_loss()``; ``.logit`` and ``.feature`` are the
    networks (``None`` when absent), ``.config`` the :class:`LearnedLossConfig`.

    Args:
        config: what the bundle holds; the networks are created from ``config.logit_net`` / ``config.feature_net``.
    """

    def __init__(self, config: LearnedLossConfig) -> None:
        super().__init__()
        if config.logit_net is None and config.feature_net is None:
            raise ValueError("A LearnedLoss holds at least one loss network: config.logit_net or config.feature_net.")
        self.config = config
        self.logit = _build_network(LogitLossNet, config.logit_net, "`logit_net`")
        self.feature = _build_network(FeatureLossNet, config.feature_net, "`feature_net`")
        self.source: str | None = None  # where it was loaded from (for messages)

    # --- building ---------------------------------------------------------------------------------------------
    @classmethod
    def from_networks(
        cls, logit: LogitLossNet | None = None, feature: FeatureLossNet | None = None, **metadata: Any
    ) -> "LearnedLoss":
        """A bundle of (copies of) these networks; ``metadata`` sets :class:`LearnedLossConfig` fields.

        ``loss`` defaults to the learned parts (``"lkd"``, ``"feat"`` or ``"lkd+feat"``).

        Args:
            logit: the learned logit loss network, or ``None``.
            feature: the learned feature loss network, or ``None`` (at least one of the two is needed).
            **metadata: :class:`LearnedLossConfig` fields other than ``logit_net`` / ``feature_net`` /
                ``lkd_hf_version`` (e.g. ``teacher``, ``student``, ``num_classes``, ``dataset``, ``steps``,
                ``meta_steps``).

        Raises:
            TypeError: ``logit`` or ``feature`` is not a network of its kind.
        """
        for net, kind in ((logit, LogitLossNet), (feature, FeatureLossNet)):
            if net is not None and not isinstance(net, kind):
                raise TypeError(f"Expected a {kind.__name__} (or None), got {type(net).__name__}.")
        metadata.setdefault("loss", "+".join(name for name, net in (("lkd", logit), ("feat", feature)) if net))
        config = LearnedLossConfig(
            logit_net=None if logit is None else dict(logit._hub_mixin_config),
            feature_net=None if feature is None else dict(feature._hub_mixin_config),
            lkd_hf_version=__version__,
            **metadata,
        )
        bundle = cls(config)
        for target, net in ((bundle.logit, logit), (bundle.feature, feature)):
            if net is not None:
                target.load_state_dict(net.state_dict())
        return bundle.eval()

    # --- loading ----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str = "cpu",
    ) -> "LearnedLoss":
        """Load a bundle from a local folder or the Hub, validated (see Raises), weights loaded strictly.

        A folder in the layout used before bundles (a ``LogitLossNet`` saved in it, and / or a ``FeatureLossNet`` in
        ``feature/``) loads too, without run metadata (a warning says so).

        Args:
            pretrained_model_name_or_path: a folder, a Hub repo id (``"user/repo"``) or a folder inside a repo
                (``"user/repo/lkd_loss"``: the copy pushed with a student).
            revision / cache_dir / force_download / local_files_only / token: for a Hub repo, as
                :func:`huggingface_hub.snapshot_download`.
            map_location: the device to load the weights on.

        Raises:
            OSError: not a folder, and the Hub is offline / unreachable or the repo is unknown (named in the message);
                ``FileNotFoundError`` when ``config.json`` is there but not its weights.
            ValueError: no learned loss in the folder; a ``config.json`` that is not valid JSON, lacks a field, has
                a field of the wrong type, or a ``format_version`` this ``lkd_hf`` cannot read (a newer one: upgrade
                ``lkd_hf``); weights that do not match the config or hold NaN / inf values. The message names the
                file, the field or tensor, and what to do.
        """
        source = str(pretrained_model_name_or_path)
        directory = resolve_directory(
            source, revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token,
        )
        config_path = os.path.join(directory, CONFIG_NAME)
        raw = read_json(config_path, source) if os.path.isfile(config_path) else None
        legacy = _legacy_arguments(directory, raw, source)
        if legacy is not None:
            bundle = cls._from_legacy_layout(directory, source, *legacy, map_location=map_location)
        elif raw is None:
            where = "" if os.path.abspath(directory) == os.path.abspath(source) else f" ({directory})"
            raise ValueError(
                f"No learned loss in {source!r}{where}: expected the {CONFIG_NAME} and {WEIGHTS_NAME} of a "
                "LearnedLoss. Pass the folder LearnedLoss.save_pretrained wrote (the trainer writes "
                "<output_dir>/lkd_loss), or the Hub repo id (or repo folder) it was pushed to."
            )
        else:
            config = config_from_json(raw, config_path, source)
            try:
                bundle = cls(config)
            except ValueError as error:
                raise invalid_file(source, config_path, str(error)) from error
            _load_weights(bundle, os.path.join(directory, WEIGHTS_NAME), source, map_location)
        bundle.source = source
        return bundle.eval()

    @classmethod
    def _from_legacy_layout(
        cls,
        directory: str,
        source: str,
        logit_arguments: dict[str, Any] | None,
        feature_arguments: dict[str, Any] | None,
        map_location: str,
    ) -> "LearnedLoss":
        """A bundle of the networks saved one per folder (``LogitLossNet`` in ``directory``, ``FeatureLossNet`` in
        ``directory/feature``), as ``lkd_hf`` saved them before bundles; its run metadata is unknown."""
        feature_dir = os.path.join(directory, LEGACY_FEATURE_SUBDIR)
        networks = []
        for kind, folder, arguments in (
            (LogitLossNet, directory, logit_arguments), (FeatureLossNet, feature_dir, feature_arguments)
        ):
            network = None
            if arguments is not None:
                config_path = os.path.join(folder, CONFIG_NAME)
                try:
                    network = _build_network(kind, arguments, "the arguments")
                except ValueError as error:
                    raise invalid_file(source, config_path, str(error)) from error
                _load_weights(network, os.path.join(folder, WEIGHTS_NAME), source, map_location)
            networks.append(network)
        logger.warning(
            f"{source!r} holds loss networks saved without run metadata (the layout before LearnedLoss bundles): "
            "their compatibility with this run cannot be checked. Re-save them with LearnedLoss.save_pretrained."
        )
        return cls.from_networks(*networks)

    # --- compatibility ----------------------------------------------------------------------------------------
    def check_compatible(
        self,
        *,
        teacher: str | None = None,
        student: str | None = None,
        num_classes: int | None = None,
        student_taps: list[int | str] | None = None,
        teacher_taps: list[int | str] | None = None,
        student_feature_shapes: list[list[int]] | None = None,
        teacher_feature_shapes: list[list[int]] | None = None,
    ) -> None:
        """Check that this learned loss fits a run (arguments as :meth:`~lkd_hf.Distiller.describe` returns them;
        ``None``, here or in the config: not checked).

        Raises ``ValueError`` saying what differs and what to do when the logit loss was learned for another number
        of classes, or the feature loss on other teacher taps or teacher feature channels. Warns (``UserWarning``)
        when only the teacher or student name differs (the loss was learned for another pair, but fits), or the
        student's taps / feature shapes (connectors map them onto the teacher's).

        Args:
            teacher: the run's teacher timm name.
            student: the run's student timm name.
            num_classes: the run's number of classes (checked for the logit loss).
            student_taps: the student's resolved feature taps (stage indices or module names).
            teacher_taps: the teacher's resolved feature taps (checked for the feature loss).
            student_feature_shapes: ``[C, H, W]`` of the student's features, one per tap.
            teacher_feature_shapes: ``[C, H, W]`` of the teacher's features, one per tap (their channels are checked
                for the feature loss).
        """
        c, name = self.config, repr(self.source) if self.source else "this learned loss"
        errors, notes = [], []
        if self.logit is not None and differ(c.num_classes, num_classes):
            errors.append(
                f"its logit loss was learned for {c.num_classes} classes, this run has {num_classes}: a learned "
                f"logit loss is specific to its label space. Load one learned with {num_classes} classes, or learn "
                "one for this task (loss='lkd' without loss_from)."
            )
        if self.feature is not None:
            learned_channels = feature_channels(c.teacher_feature_shapes)
            run_channels = feature_channels(teacher_feature_shapes)
            if differ(c.teacher_taps, teacher_taps) or differ(learned_channels, run_channels):
                errors.append(
                    f"its feature loss was learned on teacher taps {c.teacher_taps} with {learned_channels} channels, "
                    f"this run taps the teacher at {teacher_taps} with {run_channels} channels. Set "
                    f"teacher_feature_taps={c.teacher_taps} (and one student tap each in feature_taps) with the same "
                    "teacher, or learn a new feature loss (loss='lkd+feat' without loss_from)."
                )
            if differ(c.student_taps, student_taps) or differ(
                feature_channels(c.student_feature_shapes), feature_channels(student_feature_shapes)
            ):
                notes.append(
                    f"student taps {student_taps} with {feature_channels(student_feature_shapes)} channels (learned "
                    f"with {c.student_taps}, {feature_channels(c.student_feature_shapes)} channels; connectors map "
                    "them)"
                )
        for role, learned, run in (("teacher", c.teacher, teacher), ("student", c.student, student)):
            if differ(learned, run):
                notes.append(f"{role} {run!r} (learned with {learned!r})")
        if errors:
            raise ValueError(f"The learned loss {name} does not fit this run:\n- " + "\n- ".join(errors))
        if notes:
            warnings.warn(
                f"The learned loss {name} was learned for another setting; this run has " + "; ".join(notes)
                + ". It fits (same classes and teacher feature shapes), but it was not learned for this pair.",
                UserWarning,
                stacklevel=2,
            )

    # --- saving, model card, Hub --------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str | None:
        """Write ``config.json``, ``model.safetensors``, the plot and a fresh model card as the folder
        ``save_directory``, replacing a folder there as a whole.

        The files are written into a new folder beside the target (``_<name>.tmp-*``), which is then renamed to
        ``save_directory``; an existing ``save_directory`` stays untouched until then, is renamed aside
        (``_<name>.old-*``) just before and deleted just after. So an interrupted save leaves the previous folder
        as it was, and of concurrent saves to one folder the last rename wins whole. (The ``_`` prefix keeps
        leftovers of a killed process out of the Trainer's Hub pushes.)

        Args:
            save_directory: the bundle's folder (created with its parents; an existing one is replaced).
            repo_id: where the folder will live on the Hub (used by the card's reuse code), and the repo to push to
                with ``push_to_hub=True`` (default: the folder's name).
            push_to_hub: push the bundle to ``repo_id`` after saving (see :meth:`push_to_hub`).
            model_card_kwargs: passed to :meth:`generate_model_card`.
            **kwargs: ``config`` (the ``config.json`` content, default: :meth:`LearnedLossConfig.to_json` of
                :attr:`config`) and, with ``push_to_hub=True``, the arguments of :meth:`push_to_hub`.

        Returns:
            The Hub commit's URL with ``push_to_hub=True``, else ``None``.

        Raises:
            NotADirectoryError: ``save_directory`` is a file.
        """
        target = Path(save_directory).absolute()
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"Cannot save the learned loss as {str(target)!r}: it is a file, not a folder.")
        card_kwargs = {"repo_id": repo_id, **(model_card_kwargs or {})}
        config = kwargs.pop("config", None)
        config = config if config is not None else self.config.to_json()
        with atomic_directory(str(target)) as staging:
            super().save_pretrained(Path(staging), config=config, model_card_kwargs=card_kwargs)
        if push_to_hub:
            return self.push_to_hub(
                repo_id or target.name, config=config, model_card_kwargs=model_card_kwargs, **kwargs
            )
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        """The weights (``model.safetensors``) and, with matplotlib, the plot (``learned_loss.png``)."""
        save_model(self, str(save_directory / WEIGHTS_NAME))
        teacher_logits, label = synthetic_teacher_logits(self.config.num_classes or 10)
        title = f"learned loss of {self.config.teacher} -> {self.config.student}" if self.config.student else None
        plot_learned_loss(
            self, str(save_directory / PLOT_NAME), teacher_logits=teacher_logits, label=label, title=title
        )

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """Push the bundle (weights, config, plot and a card whose reuse code names ``repo_id``) to ``repo_id``.

        Raises ``OSError`` naming the repo when the Hub is offline or unreachable, or refuses the push.

        Args:
            repo_id: the Hub model repo (``"user/repo"``), created if needed.
            model_card_kwargs: passed to :meth:`generate_model_card` (``repo_id`` defaults to this one).
            **kwargs: as in :meth:`huggingface_hub.ModelHubMixin.push_to_hub` (``config``, ``commit_message``,
                ``private``, ``token``, ``branch``, ``create_pr``, ...).

        Returns:
            The URL of the Hub commit.
        """
        card_kwargs = {"repo_id": repo_id, **(model_card_kwargs or {})}
        try:
            return super().push_to_hub(repo_id, model_card_kwargs=card_kwargs, **kwargs)
        except Exception as error:  # offline, unreachable, no auth, bad repo id: name the repo and the reason
            raise hub_error(f"Cannot push the learned loss to Hub repo {repo_id!r}", error) from error

    def generate_model_card(self, repo_id: str | None = None, **kwargs: Any) -> ModelCard:
        """The model card: metadata (``library_name: lkd_hf``, tags), provenance, accuracy, plot and reuse code.

        Args:
            repo_id: the repo id (or folder) the card's reuse code loads from (``None``: a placeholder).
            **kwargs: other model card arguments of :class:`huggingface_hub.ModelHubMixin`; unused.
        """
        return ModelCard(model_card_text(self, repo_id, with_plot=matplotlib_available()))


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def resolve_directory(source: str, **download_kwargs: Any) -> str:
    """A local folder for ``source``: the folder itself, or a Hub snapshot of ``"user/repo"`` or of a folder inside
    a repo (``"user/repo/sub/folder"``).

    Args:
        source: a local folder, a Hub repo id or a folder inside a repo.
        **download_kwargs: passed to :func:`huggingface_hub.snapshot_download` (``revision``, ``cache_dir``,
            ``force_download``, ``local_files_only``, ``token``).

    Raises:
        OSError: ``source`` is not a local folder and the snapshot cannot be downloaded (see :func:`hub_error`).
    """
    if os.path.isdir(source):
        return source
    parts = source.strip("/").split("/")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        patterns = [f"{subfolder}/*"] if subfolder else None
        snapshot = snapshot_download(repo_id, allow_patterns=patterns, **download_kwargs)
    except Exception as error:  # offline and not cached, unreachable, unknown repo, no auth, invalid id
        raise hub_error(
            f"Cannot load the learned loss {source!r}: it is not a local folder, and Hub repo {repo_id!r} is not in "
            "the local cache and could not be downloaded", error,
        ) from error
    return os.path.join(snapshot, subfolder) if subfolder else snapshot


def hub_error(what: str, error: Exception) -> OSError:
    """``OSError("what: reason (error)")``, the reason being the Hub's offline mode when it is on.

    Args:
        what: what failed, e.g. ``"Cannot push the learned loss to Hub repo 'user/repo'"``.
        error: the exception the Hub call raised.
    """
    if is_offline_mode():
        reason = "the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1; unset it on a machine that can reach the Hub)"
    else:
        reason = "the Hugging Face Hub is unreachable or refused the request"
    return OSError(f"{what}: {reason} ({type(error).__name__}: {error}).")


def _build_network(kind: type[nn.Module], arguments: dict[str, Any] | None, name: str) -> nn.Module | None:
    """``kind(**arguments)`` (``None`` for ``None``); ``ValueError`` naming ``name`` when the arguments do not fit."""
    if arguments is None:
        return None
    try:
        check_ranges(arguments, NETWORK_RANGES[kind.__name__], kind.__name__)
        return kind(**arguments)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} {arguments} are not valid {kind.__name__} arguments ({error})") from error


def _constructor_arguments(kind: type[nn.Module]) -> set[str]:
    return set(inspect.signature(kind.__init__).parameters) - {"self"}


def _legacy_arguments(
    directory: str, raw: Any, source: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None] | None:
    """The constructor arguments of the ``LogitLossNet`` / ``FeatureLossNet`` of a folder in the layout before
    bundles (each network's ``config.json`` and ``model.safetensors``: the logit one in ``directory``, the feature
    one in ``directory/feature``); ``None`` when ``directory`` is not such a folder.

    Args:
        directory: the folder.
        raw: the content of its ``config.json`` (``None``: there is none).
        source: what the caller asked to load (for messages).
    """

    def arguments(folder: str, content: Any, kind: type[nn.Module]) -> dict[str, Any] | None:
        fits = isinstance(content, dict) and bool(content) and set(content) <= _constructor_arguments(kind)
        return content if fits and os.path.isfile(os.path.join(folder, WEIGHTS_NAME)) else None

    logit = arguments(directory, raw, LogitLossNet)
    if raw is not None and logit is None:
        return None  # a config.json that is not a LogitLossNet's: a bundle's (validated as one)
    feature_dir = os.path.join(directory, LEGACY_FEATURE_SUBDIR)
    feature_config = os.path.join(feature_dir, CONFIG_NAME)
    feature_raw = read_json(feature_config, source) if os.path.isfile(feature_config) else None
    feature = arguments(feature_dir, feature_raw, FeatureLossNet)
    return None if logit is None and feature is None else (logit, feature)


def _load_weights(module: nn.Module, path: str, source: str, map_location: str) -> None:
    """Load the safetensors file ``path`` into ``module`` strictly, after checking that every tensor is finite.

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: ``path`` is not a safetensors file, holds a NaN / inf value (the tensor is named) or does not
            match ``module`` (missing, unexpected or differently shaped tensors).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Cannot load the learned loss {source!r}: {path} is missing (the folder has a config.json but not its "
            f"weights: an incomplete copy). Copy the whole folder LearnedLoss.save_pretrained wrote, or save it again."
        )
    try:
        with safe_open(path, framework="pt", device=map_location) as weights:
            tensors = {name: weights.get_tensor(name) for name in weights.keys()}
    except SafetensorError as error:
        raise invalid_file(source, path, f"not a readable safetensors file ({error})") from error
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise invalid_file(
                source, path, f"tensor {name!r} holds non-finite values (NaN or inf)",
                advice="The run that saved it diverged: load an earlier save of it (e.g. the lkd_loss folder of an "
                "earlier checkpoint) or learn the loss again.",
            )
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        problem = f"its weights do not fit the networks of its config.json ({error})"
        raise invalid_file(source, path, problem) from error


# --- saving: replace a folder as a whole ------------------------------------------------------------------------
def create_repo(repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Create (or find) the Hub model repo ``repo_id``; returns its full id. ``OSError`` naming it on failure.

    Args:
        repo_id: the repo id (``"user/repo"`` or ``"repo"``).
        token: the Hub token (``None``: the locally saved one).
        private: whether a new repo is private (``None``: the Hub's default).
    """
    try:
        return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True).repo_id
    except Exception as error:
        raise hub_error(f"Cannot create the learned loss's Hub repo {repo_id!r}", error) from error


