"""LearnedLoss: one Hub artifact for a run's learned loss (save / load, model card, plot, compatibility checks, the
trainer's save / push / loss_from, and clear failures when the Hub is offline)."""

import ast
import concurrent.futures
import json
import os
import sys
import time
import tomllib
import types
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard

import lkd_hf
import lkd_hf.version
from lkd_hf import LearnedLoss, LKDTrainer, LogitLossNet
from lkd_hf.hub import CARD_NAME, CONFIG_NAME, PLOT_NAME, WEIGHTS_NAME
from lkd_hf.losses.logit import DISTLoss, KDLoss
from lkd_hf.plots import matplotlib_available, plot_learned_loss, starting_loss
from lkd_hf.constants import LOSS_DIRNAME

MISSING_REPO = "lkd-hf-tests/no-such-learned-loss"  # never in the local Hub cache
FAIL_FAST_SECONDS = 5.0


@pytest.fixture
def offline(monkeypatch):
    """The Hub's own offline switch (what ``HF_HUB_OFFLINE=1`` sets at import), whatever this process started with."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def assert_fails_fast_naming(call, repo_id: str) -> None:
    start = time.perf_counter()
    with pytest.raises(OSError) as error:
        call()
    assert time.perf_counter() - start < FAIL_FAST_SECONDS
    message = str(error.value)
    assert repo_id in message and "offline" in message and "HF_HUB_OFFLINE" in message, message


# --- the bundle on disk ---------------------------------------------------------------------------------------
def test_round_trip_gives_identical_losses_config_card_and_plot(tmp_path, learned_bundle, assert_same_losses, RUN):
    bundle = learned_bundle(loss="lkd+feat", dataset="synthetic", steps=6, metrics={"eval_accuracy": 0.8125, "step": 6})
    bundle.save_pretrained(tmp_path, repo_id="user/learned-loss")

    loaded = LearnedLoss.from_pretrained(tmp_path)
    assert_same_losses(loaded, bundle)
    assert loaded.logit.temperature.item() != 3.0  # the learned temperature, not the initial one
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["logit_net"]["base"] == "kd" and config["logit_net"]["temperature"] == 3.0
    assert {k: config[k] for k in RUN} == RUN
    assert (config["loss"], config["dataset"], config["steps"]) == ("lkd+feat", "synthetic", 6)
    assert config["metrics"]["eval_accuracy"] == 0.8125 and config["lkd_hf_version"] and config["format_version"] == 1
    assert os.path.isfile(tmp_path / WEIGHTS_NAME)

    card = ModelCard.load(tmp_path / CARD_NAME)
    assert card.data.library_name == "lkd_hf"
    assert {"knowledge-distillation", "lkd", "timm"} <= set(card.data.tags)
    assert 'LKDConfig(output_dir="out", loss="lkd+feat", loss_from="user/learned-loss", freeze_loss=True' in card.text
    assert "81.25%" in card.text and "test_resnet" in card.text and "KD, T=3" in card.text
    assert os.path.isfile(tmp_path / PLOT_NAME) == matplotlib_available()
    assert (f"]({PLOT_NAME})" in card.text) == matplotlib_available()


def test_without_matplotlib_the_card_has_no_plot(tmp_path, monkeypatch, learned_bundle, assert_same_losses):
    learned_bundle().save_pretrained(tmp_path)  # with a plot, if matplotlib is installed
    for module in ("matplotlib", "matplotlib.figure"):  # importing them now fails, as if not installed
        monkeypatch.setitem(sys.modules, module, None)
    learned_bundle().save_pretrained(tmp_path)
    assert not os.path.exists(tmp_path / PLOT_NAME)  # the stale plot is gone, too
    assert PLOT_NAME not in (tmp_path / CARD_NAME).read_text()
    assert_same_losses(LearnedLoss.from_pretrained(tmp_path), learned_bundle())


@pytest.mark.parametrize("base, reference_type, name", [("kd", KDLoss, "KD, T=2"), ("dist", DISTLoss, "DIST")])
def test_plot_reference_is_the_base_loss_at_the_initial_temperature(base, reference_type, name, fixed_inputs):
    net = LogitLossNet(temperature=2.0, base=base)
    x = fixed_inputs()
    at_init = net(x["s"], x["t"], x["y"])
    with torch.no_grad():
        net.log_temperature.add_(0.5)  # learning moved the temperature: the reference stays where it started
    reference, label = starting_loss(net)
    assert isinstance(reference, reference_type) and reference.temperature == 2.0 and label.startswith(name)
    torch.testing.assert_close(reference(x["s"], x["t"], x["y"]), at_init)


def test_folder_without_a_learned_loss_and_newer_format_are_refused(tmp_path, learned_bundle):
    with pytest.raises(ValueError, match="No learned loss in"):
        LearnedLoss.from_pretrained(tmp_path)
    learned_bundle().save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99.*Upgrade lkd_hf"):
        LearnedLoss.from_pretrained(tmp_path)


def test_folders_without_the_run_record_load_and_say_it_is_not_recorded(tmp_path, learned_bundle):
    """A ``config.json`` written before ``meta_steps`` and ``population_*`` existed (such as the shipped loss's)
    loads with them unknown, and saving it again writes the same file."""
    shipped = LearnedLoss.from_pretrained(lkd_hf.PRETRAINED_LOSS_DIR)
    assert shipped.config.meta_steps is None and shipped.config.learned_in_run is None
    shipped.save_pretrained(tmp_path / "shipped")
    shipped_config = (Path(lkd_hf.PRETRAINED_LOSS_DIR) / CONFIG_NAME).read_text()
    assert (tmp_path / "shipped" / CONFIG_NAME).read_text() == shipped_config
    card = (tmp_path / "shipped" / CARD_NAME).read_text()
    assert "does not record whether that run learned it" in card and "| loss networks in this run | unknown |" in card

    learned_bundle(meta_steps=0).save_pretrained(tmp_path / "fixed")
    fixed = json.loads((tmp_path / "fixed" / CONFIG_NAME).read_text())
    assert fixed["meta_steps"] == 0 and "population_member" not in fixed  # written only when known
    assert LearnedLoss.from_pretrained(tmp_path / "fixed").config.learned_in_run is False


@pytest.mark.parametrize("meta_steps, title, says", [
    (0, "# Distillation loss:", "The run did not learn it: no meta step updated its loss networks"),
    (1, "# Learned distillation loss:", "validation loss: 1 meta step) by"),
    (12, "# Learned distillation loss:", "validation loss: 12 meta steps) by"),
    (None, "# Distillation loss:", "The file does not record whether that run learned it"),
])
def test_the_card_says_whether_the_run_learned_the_loss(learned_bundle, meta_steps, title, says):
    card = learned_bundle(meta_steps=meta_steps).generate_model_card().text
    assert title in card and says in card
    assert ("Learnable Knowledge Distillation](" in card.split("## The run")[0]) == (meta_steps != 0)
    assert ("(at the end of the run)" in card) == bool(meta_steps)
    row = {0: "kept fixed: no meta step", 1: "learned: 1 meta step", 12: "learned: 12 meta steps", None: "unknown"}
    assert f"| loss networks in this run | {row[meta_steps]} |" in card


@pytest.mark.parametrize("member, whose", [(1, "student 1 (the one kept)"), (None, "student 0 (before one was kept)")])
def test_the_card_says_whose_loss_of_a_population_it_is(learned_bundle, member, whose):
    bundle = learned_bundle(meta_steps=0, population_factors=[[1.0, 1.0], [2.0, 3.0]], population_member=member,
                            population_network_knobs={"temperature": 3.0, "weight": 1.5})
    card = bundle.generate_model_card().text
    factors = "temperature factor 2 and weight factor 3" if member == 1 else "temperature factor 1 and weight factor 1"
    assert (f"The run trained a population of 2 students side by side, each with the shared logit loss network "
            f"(temperature 3.000, weight 1.500) at its own factors of the temperature and weight: (1, 1), (2, 3). This "
            f"file holds the loss of {whose}: the shared network at {factors}, as that student used it.") in card
    assert f"| population | 2 students, {'student 1 kept' if member == 1 else 'none kept yet'} |" in card
    assert f"temperature {bundle.logit.temperature.item():.3f}, weight {bundle.logit.weight.item():.3f}." in card


def test_networks_saved_one_per_folder_still_load(tmp_path, learned_networks, assert_same_losses):
    logit, feature = learned_networks()
    logit.save_pretrained(tmp_path)
    feature.save_pretrained(tmp_path / "feature")
    loaded = LearnedLoss.from_pretrained(tmp_path)
    assert_same_losses(loaded, LearnedLoss.from_networks(logit, feature))
    assert loaded.config.num_classes is None and loaded.config.loss == "lkd+feat"
    loaded.check_compatible(num_classes=100, teacher_feature_shapes=[[7, 1, 1]])  # nothing recorded: nothing checked


# --- compatibility ---------------------------------------------------------------------------------------------
def test_other_num_classes_is_an_error_that_says_what_to_do(learned_bundle, RUN):
    what_differs, what_to_do = "learned for 10 classes, this run has 100", "loss='lkd' without loss_from"
    with pytest.raises(ValueError, match=rf"{what_differs}[\s\S]*{what_to_do}"):
        learned_bundle().check_compatible(**{**RUN, "num_classes": 100})


def test_other_teacher_feature_channels_or_taps_are_errors(learned_bundle, RUN):
    bundle = learned_bundle()
    with pytest.raises(ValueError, match=r"teacher taps \[4\] with \[96\] channels.*at \[4\] with \[48\] channels"):
        bundle.check_compatible(**{**RUN, "teacher_feature_shapes": [[48, 1, 1]]})
    with pytest.raises(ValueError, match=r"teacher_feature_taps=\[4\]"):
        bundle.check_compatible(**{**RUN, "teacher_taps": [3], "teacher_feature_shapes": [[96, 2, 2]]})


def test_other_student_with_fitting_shapes_only_warns(learned_networks, learned_bundle, RUN):
    bundle = learned_bundle()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundle.check_compatible(**RUN)  # the same setting: silent
    with pytest.warns(UserWarning, match="student 'resnet18' \\(learned with 'test_resnet'\\)"):
        bundle.check_compatible(**{**RUN, "student": "resnet18", "student_feature_shapes": [[512, 1, 1]]})
    logit_only = LearnedLoss.from_networks(learned_networks()[0], num_classes=10)
    logit_only.check_compatible(num_classes=10, teacher_feature_shapes=[[7, 1, 1]])  # no feature loss: not checked


# --- the trainer ------------------------------------------------------------------------------------------------
FEATURE_RUN = dict(loss="lkd+feat", feature_taps=[-1], max_steps=4, meta_interval=2, meta_learning_rate=0.05,
                   hypergradient="finite_difference", per_device_train_batch_size=8)


@pytest.fixture
def feature_run(make_config, make_dataset, make_models):
    """``feature_run(tmp_path, num_classes=10, **overrides)``: a few steps of a tiny test_resnet pair on 16x16 synthetic
    images, learned logit + feature loss by default."""

    def build(tmp_path, num_classes: int = 10, **overrides) -> LKDTrainer:
        student, teacher = make_models(num_classes)
        args = make_config(tmp_path, **{**FEATURE_RUN, **overrides})
        data = make_dataset(48, num_classes=num_classes, size=16)
        return LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=data, eval_dataset=data)

    return build


def loss_logs(trainer: LKDTrainer) -> list[dict[str, float]]:
    keys = ("loss", "ce", "distill", "feature")
    return [{k: e[k] for k in keys} for e in trainer.state.log_history if "distill" in e]


def test_trainer_saves_the_bundle_and_a_frozen_reuse_computes_identical_losses(
    tmp_path, feature_run, make_models, make_dataset, make_config, assert_same_losses
):
    learner = feature_run(tmp_path / "learn")
    learner.train()
    accuracy = learner.evaluate()["eval_accuracy"]
    learner.save_model()
    saved = tmp_path / "learn" / "out" / LOSS_DIRNAME
    config = LearnedLoss.from_pretrained(saved).config
    assert (config.teacher, config.student, config.num_classes) == ("test_resnet", "test_resnet", 10)
    assert config.loss == "lkd+feat"
    assert (config.teacher_taps, config.teacher_feature_shapes, config.steps) == ([4], [[96, 1, 1]], 4)
    assert config.metrics["eval_accuracy"] == accuracy
    card = (saved / CARD_NAME).read_text()
    assert f"{100 * accuracy:.2f}%" in card
    assert config.meta_steps == learner.loss_learner.updates > 0 and config.learned_in_run
    assert "# Learned distillation loss" in card and f"| learned: {config.meta_steps} meta step" in card
    assert config.population_factors is None and "population" not in card  # a feature loss: a single student

    reuse = feature_run(tmp_path / "reuse", loss_from=str(saved), freeze_loss=True)
    assert reuse.loss_params == [] and reuse.loss_learner is None
    assert_same_losses(reuse, learner)
    reuse.train()
    assert_same_losses(reuse, learner)  # frozen: unchanged by training
    reused = reuse.learned_loss()
    assert (reused.config.meta_steps, reused.config.learned_in_run) == (0, False)
    reuse_card = reused.generate_model_card().text
    assert "# Distillation loss" in reuse_card and "The run did not learn it" in reuse_card
    for claim in ("learned with", "meta steps)", "(at the end of the run)"):
        assert claim not in reuse_card, claim

    # the same run with the learner's networks handed over in memory: every logged loss value is identical
    student, teacher = make_models()
    handed = LearnedLoss.from_networks(learner.distill_loss.cpu(), learner.feature_loss.cpu())  # RNG use as loading
    in_memory = LKDTrainer(
        model=student, teacher=teacher, args=make_config(tmp_path / "memory", **FEATURE_RUN, freeze_loss=True),
        train_dataset=make_dataset(48, size=16), loss_network=handed.logit, feature_loss_network=handed.feature,
    )
    in_memory.train()
    assert loss_logs(reuse) == loss_logs(in_memory) and len(loss_logs(reuse)) > 0


def test_loss_from_into_a_run_with_other_classes_fails_at_construction(tmp_path, feature_run, learned_bundle):
    bundle = learned_bundle()
    bundle.save_pretrained(tmp_path / "loss")
    with pytest.raises(ValueError, match="learned for 10 classes, this run has 5"):
        feature_run(tmp_path, num_classes=5, loss_from=str(tmp_path / "loss"), freeze_loss=True)


# --- the Hub, offline ------------------------------------------------------------------------------------------
def test_push_fails_fast_naming_the_repo_when_offline(tmp_path, offline, learned_bundle):
    assert_fails_fast_naming(lambda: learned_bundle().push_to_hub(MISSING_REPO), MISSING_REPO)


@pytest.mark.parametrize("source", [MISSING_REPO, f"{MISSING_REPO}/lkd_loss"])
def test_loading_from_the_hub_fails_fast_naming_the_repo_when_offline(tmp_path, offline, source, feature_run):
    assert_fails_fast_naming(lambda: LearnedLoss.from_pretrained(source), MISSING_REPO)
    assert_fails_fast_naming(lambda: feature_run(tmp_path, loss_from=source, freeze_loss=True), MISSING_REPO)


def test_trainer_pushing_the_loss_to_its_own_repo_fails_at_construction_when_offline(tmp_path, offline, feature_run):
    loss_repo = f"{MISSING_REPO}-own"
    assert_fails_fast_naming(
        lambda: feature_run(tmp_path, push_to_hub=True, hub_model_id=MISSING_REPO, loss_hub_model_id=loss_repo),
        loss_repo,
    )


class RecordingHub:
    """Stands in for the Hub's two write endpoints (create_repo, upload_folder) and records what would be uploaded:
    the repo, the files of the uploaded folder and the text of its model cards."""

    def __init__(self, monkeypatch) -> None:
        self.created: list[str] = []
        self.uploads: list[dict] = []
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", self.upload_folder)

    def create_repo(self, repo_id, **kwargs):
        self.created.append(repo_id)
        return types.SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, run_as_future=False, **kwargs):
        files = sorted(
            os.path.relpath(os.path.join(d, f), folder_path) for d, _, names in os.walk(folder_path) for f in names
        )
        cards = {f: open(os.path.join(folder_path, f)).read() for f in files if f.endswith(CARD_NAME)}
        self.uploads.append(dict(repo_id=repo_id, files=files, cards=cards))
        if not run_as_future:
            return f"https://huggingface.co/{repo_id}/commit/0"
        done = concurrent.futures.Future()
        done.set_result(None)
        return done


def test_trainer_pushes_the_loss_with_the_student_and_to_its_own_repo(tmp_path, offline, monkeypatch, feature_run):
    hub = RecordingHub(monkeypatch)
    trainer = feature_run(
        tmp_path, push_to_hub=True, hub_model_id="user/student", loss_hub_model_id="user/student-loss",
        save_strategy="steps", save_steps=4,
    )
    assert hub.created == ["user/student-loss", "user/student"]  # both repos exist before training starts
    trainer.train()
    checkpoint_push = hub.uploads[0]
    assert checkpoint_push["repo_id"] == "user/student"
    assert {f"{LOSS_DIRNAME}/{CONFIG_NAME}", f"{LOSS_DIRNAME}/{WEIGHTS_NAME}"} <= set(checkpoint_push["files"])

    trainer.push_to_hub()
    student_push, loss_push = hub.uploads[-2:]
    assert student_push["repo_id"] == "user/student" and "model.safetensors" in student_push["files"]
    assert f"{LOSS_DIRNAME}/{WEIGHTS_NAME}" in student_push["files"]
    assert 'loss_from="user/student/lkd_loss"' in student_push["cards"][f"{LOSS_DIRNAME}/{CARD_NAME}"]
    assert loss_push["repo_id"] == "user/student-loss"
    assert {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME} <= set(loss_push["files"])
    assert 'loss_from="user/student-loss"' in loss_push["cards"][CARD_NAME]


def test_save_with_push_to_hub_pushes_under_the_folder_name(
    tmp_path, offline, monkeypatch, learned_bundle, assert_same_losses
):
    hub = RecordingHub(monkeypatch)
    url = learned_bundle().save_pretrained(tmp_path / "my-loss", push_to_hub=True)
    assert url.startswith("https://huggingface.co/my-loss/") and hub.created == ["my-loss"]
    assert {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME} <= set(hub.uploads[0]["files"])
    assert_same_losses(LearnedLoss.from_pretrained(tmp_path / "my-loss"), learned_bundle())


# --- plots and imports ----------------------------------------------------------------------------------------
def test_plot_takes_networks_or_anything_holding_them_and_asks_to_load_a_path_first(
    tmp_path, learned_networks, learned_bundle
):
    logit, feature = learned_networks()
    holder = types.SimpleNamespace(logit=logit, feature=None)  # duck typing, as for a LearnedLoss
    expected = str(tmp_path / "plot.png") if matplotlib_available() else None
    assert plot_learned_loss(holder, str(tmp_path / "plot.png")) == expected
    learned_bundle().save_pretrained(tmp_path / "loss")
    with pytest.raises(TypeError, match=r"load it first: plot_learned_loss\(LearnedLoss.from_pretrained"):
        plot_learned_loss(str(tmp_path / "loss"), str(tmp_path / "plot.png"))
    with pytest.raises(TypeError, match="Cannot plot a SimpleNamespace"):
        plot_learned_loss(types.SimpleNamespace(logit=feature, feature=None), str(tmp_path / "plot.png"))


def imported_modules(module: str) -> set[str]:
    """The ``lkd_hf`` modules a module of the package imports, anywhere in it (functions, ``TYPE_CHECKING``)."""
    tree = ast.parse(Path(lkd_hf.__file__).with_name(f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([node.module] if node.module else [f"__init__ ({a.name})" for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lkd_hf"):
            names.add(node.module.removeprefix("lkd_hf.") or "__init__")
    return names


def test_plots_and_hub_import_neither_each_other_nor_the_package():
    hub, plots = imported_modules("hub"), imported_modules("plots")
    assert not any(name.startswith("__init__") for name in hub), hub
    assert "hub" not in plots and not any(name.startswith("__init__") for name in plots), plots
    assert imported_modules("version") == set()


def test_the_version_comes_from_the_leaf_module_the_build_reads(learned_bundle):
    pyproject = tomllib.loads((Path(lkd_hf.__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lkd_hf.version.__version__"}
    assert lkd_hf.version.__version__ == lkd_hf.__version__
    assert learned_bundle().config.lkd_hf_version == lkd_hf.version.__version__
