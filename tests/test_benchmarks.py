"""The accuracy benchmark's bookkeeping (``benchmarks/accuracy.py``): what ``--resume`` may continue, the tuned
searches, and how a method's knobs of single losses reach ``LKDConfig``."""

import dataclasses
import json
import math
import warnings
from types import SimpleNamespace
from pathlib import Path

import pytest
import timm
import torch
from conftest import load_script
from transformers import TrainerCallback

from lkd_hf import PRETRAINED_LOSS_DIR, LearnedLoss, LKDConfig, LKDTrainer, build_loss, parse_loss_spec
from lkd_hf import population_choice
from lkd_hf.losses import loss_options

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def accuracy():
    return load_script(BENCHMARKS / "accuracy.py", "lkd_accuracy_benchmark")


def _results_file(accuracy, args, **config_changes):
    results = accuracy.Results(args)
    results.data["runs"].append(dict(pair="teacher->s4", method="ce", seed=0, test_top1=0.5))
    results.data["config"] = {**results.config, **config_changes}
    results.save()


def test_resume_continues_records_made_with_the_same_settings_defaults_and_start(accuracy, tmp_path):
    args = accuracy.AccuracyArguments(quick=True, output_dir=str(tmp_path), resume=True)
    _results_file(accuracy, args)
    resumed = accuracy.Results(args)
    assert resumed.get("teacher->s4", "ce", 0)["test_top1"] == 0.5
    assert resumed.config["lkd_defaults"]["population_temperature_factors"] is None  # LKDConfig's own fields
    assert "learning_rate" not in resumed.config["lkd_defaults"]  # not TrainingArguments'


@pytest.mark.parametrize("changed", ["lkd_defaults", "lkd_start_sha256", "epochs"])
def test_resume_refuses_records_made_under_other_lkd_defaults_or_start(accuracy, tmp_path, changed):
    args = accuracy.AccuracyArguments(quick=True, output_dir=str(tmp_path), resume=True)
    config = accuracy.Results(args).config
    earlier = {"lkd_defaults": {**config["lkd_defaults"], "population_weight_factors": [1.0, 3.0]},
               "lkd_start_sha256": "0" * 64, "epochs": config["epochs"] + 1}[changed]
    _results_file(accuracy, args, **{changed: earlier})
    with pytest.raises(ValueError, match=f"other {changed} than this run"):
        accuracy.Results(args)
    fresh = accuracy.Results(dataclasses.replace(args, resume=False))  # without --resume: starts over
    assert fresh.data["runs"] == []


def test_the_start_fingerprint_follows_the_loss_folder(accuracy, tmp_path):
    start = accuracy.folder_sha256(PRETRAINED_LOSS_DIR)
    LearnedLoss.from_pretrained(PRETRAINED_LOSS_DIR).save_pretrained(tmp_path / "copy")
    assert accuracy.folder_sha256(str(tmp_path / "copy")) == start  # the same loss saved again
    changed = LearnedLoss.from_pretrained(PRETRAINED_LOSS_DIR)
    with torch.no_grad():
        changed.logit.log_weight.add_(0.1)
    changed.save_pretrained(tmp_path / "changed")
    assert accuracy.folder_sha256(str(tmp_path / "changed")) != start


def test_long_tailed_runs_are_scored_by_balanced_top1_in_tables_summaries_and_intervals(accuracy):
    clean = dict(pair="teacher->s4", seed=0, test_top1=0.9)
    assert accuracy.score(clean) == pytest.approx(90.0)
    assert accuracy.score(dict(clean, balanced_top1=0.6)) == pytest.approx(60.0)
    results = SimpleNamespace(config={"setting": {"setting": "lt50", "imbalance_ratio": 50.0}})
    assert accuracy.long_tailed(results) and not accuracy.long_tailed(SimpleNamespace(config={"setting": None}))


def test_dataset_roles_are_declared_for_every_setting_and_unknown_keys_are_refused():
    roles = load_script(BENCHMARKS / "roles.py", "lkd_benchmark_roles")
    assert roles.role("mnist-5k") == roles.role("animal-mnist/noise40") == "design"
    assert roles.role("letters") == roles.role("letters/lt50") == "evaluation"
    assert roles.parse_key("letters/weak") == ("letters", "weak")
    assert roles.role("mnist-5k/lt50-shared") == "design" and roles.corruption("lt50-shared") == "lt50"
    assert roles.corruption("weak") == "weak" and roles.corruption("noise20") == "noise20"
    with pytest.raises(ValueError, match="Unknown dataset"):
        roles.role("cifar10")
    with pytest.raises(ValueError, match="Unknown setting"):
        roles.role("mnist-5k/noise30")


@pytest.fixture(scope="module")
def tuning():
    return load_script(BENCHMARKS / "tuning.py", "lkd_benchmark_tuning")


def test_paired_ci95_matches_a_hand_computation(tuning):
    ours, theirs = [80.0, 82.5, 81.0, 79.5, 83.0], [79.0, 81.0, 81.5, 78.0, 81.0]
    # differences 1.0, 1.5, -0.5, 1.5, 2.0: mean 1.1, sample variance (0.01 + 0.16 + 2.56 + 0.16 + 0.81) / 4 = 0.925;
    # t(0.975, 4) = 2.7764451 (tables), half width 2.7764451 * sqrt(0.925 / 5) = 1.19418
    ci = tuning.paired_ci95(ours, theirs)
    assert ci["n"] == 5 and ci["mean"] == pytest.approx(1.1)
    assert (ci["low"], ci["high"]) == (pytest.approx(1.1 - 1.19418, abs=1e-4), pytest.approx(1.1 + 1.19418, abs=1e-4))
    single = tuning.paired_ci95([80.0], [79.0])
    assert single["mean"] == 1.0 and math.isnan(single["low"]) and math.isnan(single["high"])
    with pytest.raises(ValueError):
        tuning.paired_ci95([1.0, 2.0], [1.0])  # unpaired


def test_every_tuned_method_has_the_same_grid_budget_and_distinct_trial_names(tuning, accuracy):
    assert set(tuning.SEARCHES) <= set(accuracy.METHODS)
    assert {m for m in accuracy.METHODS if "-tuned" in m} == set(tuning.SEARCHES)
    for space in tuning.SEARCHES.values():
        grid = space.grid()
        assert len(grid) == tuning.BUDGET
        names = {space.name(p) for p in grid}
        assert len(names) == tuning.BUDGET and all("-grid-" in n for n in names)
        for knob in space.knobs:  # grids ascending, extensions outward
            assert list(knob.values) == sorted(set(knob.values))
            assert list(knob.below) == sorted(knob.below, reverse=True) and all(v < knob.values[0] for v in knob.below)
            assert list(knob.above) == sorted(knob.above) and all(v > knob.values[-1] for v in knob.above)


def test_the_trials_knobs_reach_their_loss_through_loss_kwargs_and_no_deprecated_field(tuning, tmp_path):
    common = load_script(BENCHMARKS / "common.py", "lkd_benchmark_common")
    for space in tuning.SEARCHES.values():
        for point in space.grid():
            fields = space.fields(point)
            if fields["loss"] == "la":
                fields["la_class_prior"] = [0.1] * 10
            with warnings.catch_warnings():
                warnings.simplefilter("error", FutureWarning)  # a deprecated per-loss field warns
                config = LKDConfig(output_dir=str(tmp_path), **common.config_fields(fields))
            logit = parse_loss_spec(fields["loss"]).logit
            options = loss_options(logit, config)
            for name, value in fields.items():
                if name in common.LOSS_KNOBS:
                    assert options[common.LOSS_KNOBS[name][logit]] == value, (space.name(point), name)
                else:
                    assert getattr(config, name) == value, (space.name(point), name)
            build_loss(logit, config)  # the loss takes every option it is given
    fields = dict(loss="lkd", lkd_init="dist", dist_temperature=8.0, loss_kwargs={"lkd": {"hidden_dim": 8}})
    assert common.config_fields(fields)["loss_kwargs"] == {"lkd": {"hidden_dim": 8, "dist_temperature": 8.0}}
    with pytest.raises(ValueError, match="takes no knob"):
        common.config_fields(dict(loss="kd", dist_gamma=2.0))


def _run_search(space, score):
    """Play a search out with a score function of the point: the trials in planned order and the rounds."""
    trials = [(p, score(p)) for p in space.grid()]
    rounds = []
    while new := space.extensions(trials):
        rounds.append(new)
        trials += [(p, score(p)) for p in new]
    return trials, rounds


def test_a_pick_on_an_edge_is_extended_until_it_is_inside_or_at_the_bound(tuning):
    space = tuning.SEARCHES["kd-tuned"]  # T 1..8 (then 16, 32), w 0.5..4 (below 0.25, 0.125, ..., 1/64, 0)
    inside, rounds = _run_search(space, lambda p: -abs(p["temperature"] - 4) - abs(p["distill_weight"] - 2))
    assert rounds == [] and space.pick(inside) == {"temperature": 4.0, "distill_weight": 2.0}

    # the best T is 16: T 16 is tried from the pick at T 8, then T 32 from T 16, where the pick stays inside
    trials, rounds = _run_search(space, lambda p: -abs(p["temperature"] - 16) - abs(p["distill_weight"] - 2))
    assert rounds == [[{"temperature": 16.0, "distill_weight": 2.0}], [{"temperature": 32.0, "distill_weight": 2.0}]]
    assert space.pick(trials) == {"temperature": 16.0, "distill_weight": 2.0}
    assert space.name(rounds[0][0]) == "kd-ext-T16-w2"

    # a weight that helps less and less: extended down to its bound 0, where it stops; two knobs on edges at once
    trials, rounds = _run_search(space, lambda p: -p["distill_weight"] - abs(p["temperature"] - 2))
    assert [[(p["temperature"], p["distill_weight"]) for p in r] for r in rounds] == [
        [(2.0, 0.25)], [(2.0, 0.125)], [(2.0, 0.0625)], [(2.0, 0.03125)], [(2.0, 0.015625)], [(2.0, 0.0)]]
    assert space.pick(trials)["distill_weight"] == 0.0
    trials, rounds = _run_search(space, lambda p: p["temperature"] + p["distill_weight"])
    assert rounds[0] == [{"temperature": 16.0, "distill_weight": 4.0}, {"temperature": 8.0, "distill_weight": 8.0}]
    assert rounds[1:] == [[{"temperature": 32.0, "distill_weight": 4.0}]]  # w 8 was tried: w 4 is inside its range
    assert space.pick(trials) == {"temperature": 32.0, "distill_weight": 4.0}  # T at its cap: the search stops


def test_ties_keep_the_earlier_trial(tuning):
    space = tuning.SEARCHES["la-tuned"]
    trials = [(p, 0.5) for p in space.grid()]
    assert space.pick(trials) == {"la_tau": 0.0}  # the first trial, on the lower bound: nothing to extend
    assert space.extensions(trials) == []


def _record(pair, method, seed, test, val=None, wall=10.0):
    record = dict(pair=pair, method=method, seed=seed, test_top1=test, wall_s=wall)
    return record if val is None else dict(record, val_top1=val)


def test_the_search_is_replayed_from_the_records_and_its_pick_recorded(accuracy, tmp_path):
    args = accuracy.AccuracyArguments(quick=True, output_dir=str(tmp_path))
    bench = accuracy.Benchmark.__new__(accuracy.Benchmark)  # the bookkeeping only: no data, no teacher
    bench.args, bench.results = args, accuracy.Results(args)
    space, pair = accuracy.SEARCHES["kd-tuned"], "teacher->s4"
    _, pending = bench.search_state(pair, "kd-tuned")
    assert pending == space.grid()
    for p in space.grid():  # best at T 8, w 1: on the T edge
        bench.results.add(_record(pair, space.name(p), 0, 0.5, 0.9 - abs(p["temperature"] - 8) / 100
                                  - abs(p["distill_weight"] - 1) / 100))
    _, pending = bench.search_state(pair, "kd-tuned")
    assert pending == [{"temperature": 16.0, "distill_weight": 1.0}]
    bench.results.add(_record(pair, "kd-ext-T16-w1", 0, 0.6, 0.8))  # worse: the pick stays at T 8, now inside
    trials, pending = bench.search_state(pair, "kd-tuned")
    assert pending == [] and len(trials) == 16 + 1
    bench.finish_search(pair, "kd-tuned")
    search = bench.results.data["searches"][pair]["kd-tuned"]
    assert search["budget"] == 16 and len(search["trials"]) == 16
    assert search["extensions"] == [dict(run="kd-ext-T16-w1", T=16.0, w=1.0, val_top1=0.8)]
    assert search["pick"] == "kd-grid-T8-w1" and search["pick_knobs"] == {"T": 8.0, "w": 1.0}
    assert bench.results.get(pair, "kd-tuned", 0)["reused"] == "kd-grid-T8-w1"
    fields, _ = bench.method_fields(pair, "kd-tuned", 1)
    assert (fields["temperature"], fields["distill_weight"], fields["ce_weight"]) == (8.0, 1.0, 1.0)


def test_summary_keeps_its_schema_adds_the_role_and_the_paired_interval_against_the_best_by_validation(
        accuracy, tmp_path):
    args = accuracy.AccuracyArguments(quick=True, output_dir=str(tmp_path))
    results = accuracy.Results(args)
    pair = "teacher->s4"
    lkd = [0.90, 0.91, 0.92]
    kd_tuned = [0.88, 0.90, 0.89]  # validation better than dist-tuned's, test worse: the reference by validation
    dist_tuned = [0.91, 0.92, 0.93]
    for seed in range(3):
        results.add(_record(pair, "lkd", seed, lkd[seed], wall=20.0))
        results.add(_record(pair, "kd-tuned", seed, kd_tuned[seed], val=0.95))
        results.add(_record(pair, "dist-tuned", seed, dist_tuned[seed], val=0.94))
        results.add(_record(pair, "ce", seed, 0.5))
    table = accuracy.summary(results, "mnist-5k/lt10")
    assert list(table) == ["mnist-5k/lt10"] and table["mnist-5k/lt10"]["role"] == "design"
    row = table["mnist-5k/lt10"][pair]
    for method in ("lkd", "kd-tuned", "dist-tuned", "ce"):
        assert {"mean", "std", "n", "train_seconds"} <= set(row[method]) and row[method]["n"] == 3
    assert row["kd-tuned"]["val_mean"] == 95.0 and "val_mean" not in row["ce"]
    ci = row["ci95"]
    assert ci["reference"] == "kd-tuned" and ci["n"] == 3
    assert ci["mean"] == pytest.approx(2.0)  # (2 + 1 + 3) / 3 points
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, 2) * std of the differences (2, 1, 3) / sqrt(3)
    assert (ci["low"], ci["high"]) == (pytest.approx(2 - half, abs=0.01), pytest.approx(2 + half, abs=0.01))
    assert accuracy.summary(results, "letters/noise40")["letters/noise40"]["role"] == "evaluation"
    text = accuracy.summary_table(table)
    assert "#### mnist-5k/lt10 (design)" in text and "lkd − best tuned (kd-tuned" in text and "tie" in text
    assert "win" not in text  # the interval includes 0


def test_win_is_said_only_where_the_interval_excludes_zero(accuracy):
    assert accuracy.verdict(dict(mean=1.0, low=0.2, high=1.8, n=5)) == "win"
    assert accuracy.verdict(dict(mean=1.0, low=-0.2, high=2.2, n=5)) == "tie"
    assert accuracy.verdict(dict(mean=-1.0, low=-1.8, high=-0.2, n=5)) == "loss"
    assert accuracy.verdict(dict(mean=1.0, low=math.nan, high=math.nan, n=1)).startswith("n/a")


def test_full_runs_default_to_five_seeds_and_long_tailed_settings_add_logit_adjustment(accuracy, tmp_path):
    full = accuracy.AccuracyArguments(output_dir=str(tmp_path))
    assert full.num_seeds == 5 and "la-tuned" not in full.method_list and "dkd-tuned" in full.method_list
    assert accuracy.AccuracyArguments(quick=True, output_dir=str(tmp_path)).num_seeds == 1


def test_early_selection_reads_each_choice_off_one_run_and_counts_its_cost():
    study = load_script(BENCHMARKS / "studies" / "early_selection.py", "lkd_study_early_selection")
    # validation top-1 per epoch and student; the first student wins a tie, as the trainer's choice does
    runs = [dict(dataset="mnist-5k", val_top1=[[0.5, 0.6, 0.4], [0.5, 0.5, 0.9]], test_top1=[0.1, 0.2, 0.3],
                 test_balanced=[0.0, 0.0, 0.0]),
            dict(dataset="mnist-5k", val_top1=[[0.7, 0.6, 0.8], [0.4, 0.6, 0.5]], test_top1=[0.4, 0.5, 0.6],
                 test_balanced=[0.0, 0.0, 0.0])]
    ways = study.summarize(runs, epochs=2)["ways"]
    assert ways["pop2-end (default)"]["kept"] == [0, 1] and ways["pop3-end"]["kept"] == [2, 1]
    assert ways["pop3-epoch1"]["kept"] == [1, 2]
    assert ways["pop3-end"]["mean"] == pytest.approx((30 + 50) / 2)
    assert ways["pop3-epoch1"]["minus_default_ci95"]["mean"] == pytest.approx(((20 - 10) + (60 - 50)) / 2)
    assert (ways["pop3-epoch1"]["student_runs"], ways["pop3-end"]["student_runs"]) == (2.0, 3.0)
    # the worst of three after epoch 1 dropped (run 0: student 2, run 1: student 1), the better of two at the end
    assert ways["pop3-drop-worst-epoch1"]["kept"] == [0, 2] and ways["pop3-drop-worst-epoch1"]["student_runs"] == 2.5
    assert study.summarize([dict(runs[0], dataset="mnist-5k/lt50")], epochs=2)["metric"] == "test_balanced"


def test_fork_study_copies_the_leader_over_the_runner_up_with_the_variants_factors(tmp_path, make_config,
                                                                                  make_dataset, monkeypatch):
    """After the first drop (step 4 of 8) the leader's weights and optimizer state are copied over the runner-up,
    which trains on at the variant's factors; the second drop then chooses between leader and copy."""
    study = load_script(BENCHMARKS / "studies" / "fork.py", "lkd_study_fork")
    scores = {"eval_member0": 0.5, "eval_member1": 0.2, "eval_member2": 0.9}  # drop 1; leader 2, runner-up 0
    monkeypatch.setattr(population_choice, "selection_score", lambda metrics, metric, greater, prefix: scores[prefix])
    torch.manual_seed(0)
    student, teacher = (timm.create_model("test_resnet", num_classes=10) for _ in range(2))
    args = make_config(tmp_path, max_steps=8, max_grad_norm=1.0, logging_steps=1, loss="lkd", temperature=3.0,
                       optim_args="momentum=0.9,nesterov=True",
                       freeze_loss=True, population_temperature_factors=[1.0, 2.0, 1 / 3],
                       population_weight_factors=[1.0, 2.0, 1 / 16], population_drop_fractions=[0.5, 0.75])
    fork = study.ForkAtFirstDrop("anneal")
    trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(64),
                         eval_dataset=make_dataset(48, seed=1), callbacks=[fork])
    fork.attach(trainer)
    members, seen = list(trainer.model.members), {}

    class Seen(TrainerCallback):  # added after the fork: sees each step after it
        def on_step_end(self, args, state, control, **kwargs):
            seen[state.global_step] = [[p.detach().clone() for p in m.parameters()] for m in members]
            if state.global_step == 4:
                seen["optimizer"] = [[{k: torch.as_tensor(v).clone() for k, v in trainer.optimizer.state[p].items()}
                                      for p in m.parameters()] for m in members]

    trainer.add_callback(Seen())
    trainer.train()
    assert fork.done == {"step": 4, "leader": 2, "copy": 0, "factors": [1 / 3, 1 / 64],
                         "scores": {"0": 0.5, "2": 0.9}}
    assert trainer.distiller.factors[0] == (1 / 3, 1 / 64)
    for copied, leader in zip(seen[4][0], seen[4][2], strict=True):
        assert torch.equal(copied, leader)
    for copied, leader in zip(seen["optimizer"][0], seen["optimizer"][2], strict=True):
        assert copied.keys() == leader.keys() and copied and all(torch.equal(copied[k], leader[k]) for k in copied)
    assert not all(torch.equal(a, b) for a, b in zip(seen[5][0], seen[5][2], strict=True))  # another loss from here
    drops = [log["population/dropped"] for log in trainer.state.log_history if "population/dropped" in log]
    assert drops == [1, 0] and trainer.distiller.kept == 2  # the copy scores 0.5 < 0.9 at the second drop
    assert study.fork_factors("runnerup", ((1.0, 1.0), (2.0, 2.0), (1 / 3, 1 / 16)), 2, 0) == (1.0, 1.0)


def test_runs_go_seed_by_seed_with_the_methods_alternating(accuracy):
    args = SimpleNamespace(pair_list=["teacher->s4"], method_list=["ce", "kd"], seeds=[0, 1], validate=False)
    bench = SimpleNamespace(args=args, results=SimpleNamespace(get=lambda pair, method, seed: None),
                            method_fields=lambda pair, method, seed: ({}, {}))
    tasks = accuracy.next_runs(bench)
    assert [(task[1], task[2]) for task in tasks] == [("ce", 0), ("kd", 0), ("ce", 1), ("kd", 1)]


def test_shared_teacher_study_reads_records_and_applies_its_rule(tmp_path, accuracy):
    study = load_script(BENCHMARKS / "studies" / "shared_teacher.py", "lkd_study_shared_teacher")
    pair = "teacher->s4"
    runs = [dict(pair=pair, method=m, seed=s, test_top1=(base + gain * s) / 100, wall_s=1.0, val_top1=base / 100)
            for m, base, gain in (("ce", 40, 0), ("dist-tuned", 90, 0), ("lkd", 89, 0), ("lkd-meta-heads", 90, 1))
            for s in range(5)]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": {"setting": None}, "teacher": {"test_top1": 0.9}, "runs": runs}))
    row = study.cell(accuracy.Results.load(str(path)), "mnist-5k/noise40-shared")
    assert row["best_tuned"] == "dist-tuned" and row["means"]["lkd-meta-heads"] == pytest.approx(92.0)
    assert row["candidate_minus_lkd"]["mean"] == pytest.approx(3.0) and row["candidate_minus_lkd"]["low"] > 0
    assert row["lkd_minus_best_tuned"]["mean"] == pytest.approx(-1.0)
    gain = {"mean": 3.0, "low": 0.5, "high": 5.5, "n": 5}
    small = {"mean": 0.5, "low": 0.1, "high": 0.9, "n": 5}
    cells = {f"{d}/{s}-shared": {"candidate_minus_lkd": gain if s in ("lt10", "lt50") else small}
             for d in ("mnist-5k", "animal-mnist") for s in ("lt10", "lt50", "noise20", "noise40")}
    assert study.decide(cells, {"mnist-5k/weak": small}) == {"pays_in": ["lt10-shared", "lt50-shared"],
                                                              "below_floor": [],
                                                              "passes": True}
    cells["animal-mnist/lt10-shared"] = {"candidate_minus_lkd": small}  # must pay on both datasets
    assert study.decide(cells, {})["pays_in"] == ["lt50-shared"]
    below = {"mean": -0.8, "low": -1.4, "high": -0.2, "n": 5}
    assert study.decide(cells, {"mnist-5k/noise40": below})["below_floor"] == ["mnist-5k/noise40"]
