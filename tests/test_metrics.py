"""lkd_hf.metrics and the top-k / balanced accuracy evaluate module."""

import os
import warnings

import evaluate
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score
from transformers import EvalPrediction

from lkd_hf.metrics import TOPK_METRIC_PATH, build_compute_metrics, load_topk_accuracy

# 4 examples, 6 classes. True class ranks: 0 (top-1), 2, 5 (last), 1.
LOGITS = np.array(
    [
        [5.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        [3.0, 2.0, 1.0, 0.0, -1.0, -2.0],
        [0.0, 1.0, 2.0, 3.0, 4.0, -5.0],
        [1.0, 9.0, 0.0, 0.0, 0.0, 0.0],
    ],
    dtype=np.float32,
)
LABELS = np.array([0, 2, 5, 0])
# Arg-max predictions 0, 0, 4, 1: recall 1/2 for class 0, 0 for classes 2 and 5.
BALANCED = (0.5 + 0.0 + 0.0) / 3


def test_module_is_shipped_as_a_local_evaluate_script():
    assert os.path.isabs(TOPK_METRIC_PATH)
    assert os.path.isfile(os.path.join(TOPK_METRIC_PATH, "topk_accuracy.py"))


@pytest.mark.parametrize("k, expected", [(1, 0.25), (2, 0.5), (3, 0.75), (5, 0.75), (6, 1.0), (10, 1.0)])
def test_topk_on_hand_made_logits(k, expected):
    result = load_topk_accuracy().compute(predictions=LOGITS, references=LABELS, k=k)
    assert result == {
        "accuracy": pytest.approx(0.25),
        f"top{k}_accuracy": pytest.approx(expected),
        "balanced_accuracy": pytest.approx(BALANCED),
    }


def test_ties_follow_argmax():
    logits = np.zeros((3, 4), dtype=np.float32)  # an untrained model: all classes tied
    result = load_topk_accuracy().compute(predictions=logits, references=[0, 1, 3], k=2)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == [0, 1, 3]))
    assert result["top2_accuracy"] == pytest.approx(2 / 3)
    nan = np.full((1, 4), np.nan, dtype=np.float32)
    assert load_topk_accuracy().compute(predictions=nan, references=[0], k=2)["top2_accuracy"] == 0.0


def test_module_rejects_out_of_range_references():
    with pytest.raises(ValueError, match=r"\[7\]"):
        load_topk_accuracy().compute(predictions=LOGITS, references=[0, 1, 7, 0])


@pytest.mark.parametrize("target", ["dir", "file"])
def test_module_loads_offline_by_path(monkeypatch, target):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = TOPK_METRIC_PATH if target == "dir" else os.path.join(TOPK_METRIC_PATH, "topk_accuracy.py")
    metric = evaluate.load(path, keep_in_memory=True)
    assert isinstance(metric, evaluate.Metric)
    assert "top-k" in metric.description.lower() and metric.citation and metric.inputs_description
    assert set(metric.features) == {"predictions", "references"}
    assert (
        metric.compute(predictions=LOGITS.tolist(), references=LABELS.tolist(), k=2)["top2_accuracy"] == 0.5
    )


def test_load_is_cached():
    assert load_topk_accuracy() is load_topk_accuracy()


def test_compute_metrics_reports_top5_only_with_more_than_5_classes():
    rng = np.random.default_rng(0)
    logits10, labels10 = rng.normal(size=(32, 10)).astype(np.float32), rng.integers(0, 10, 32)
    metrics = build_compute_metrics(10)(EvalPrediction(predictions=logits10, label_ids=labels10))
    assert set(metrics) == {"accuracy", "top5_accuracy", "balanced_accuracy"}
    assert metrics["accuracy"] == pytest.approx(np.mean(logits10.argmax(-1) == labels10))
    ranks = (logits10 > logits10[np.arange(32), labels10][:, None]).sum(-1)
    assert metrics["top5_accuracy"] == pytest.approx(np.mean(ranks < 5))
    assert all(isinstance(v, float) for v in metrics.values())

    logits3, labels3 = rng.normal(size=(16, 3)).astype(np.float32), rng.integers(0, 3, 16)
    metrics = build_compute_metrics(3)(EvalPrediction(predictions=logits3, label_ids=labels3))
    assert set(metrics) == {"accuracy", "balanced_accuracy"}
    assert metrics["accuracy"] == pytest.approx(np.mean(logits3.argmax(-1) == labels3))


def test_compute_metrics_handles_tuple_predictions():
    features = np.ones((4, 8), dtype=np.float32)
    compute_metrics = build_compute_metrics(6, k=2)
    from_tuple = compute_metrics(EvalPrediction(predictions=(LOGITS, features), label_ids=LABELS))
    from_array = compute_metrics(EvalPrediction(predictions=LOGITS, label_ids=LABELS))
    from_pair = compute_metrics((LOGITS.astype(np.float64), LABELS))
    assert from_tuple == from_array == from_pair
    assert from_tuple == pytest.approx({"accuracy": 0.25, "top2_accuracy": 0.5, "balanced_accuracy": BALANCED})


def test_compute_metrics_checks_the_number_of_classes():
    with pytest.raises(ValueError, match=r"\(N, 10\)"):
        build_compute_metrics(10)(EvalPrediction(predictions=LOGITS, label_ids=LABELS))


def sklearn_balanced_accuracy(logits, labels):
    """scikit-learn's balanced accuracy of the arg-max predictions; its warning about predicted classes absent
    from the labels is expected (it leaves them out, like lkd_hf)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return balanced_accuracy_score(labels, logits.argmax(-1))


def test_balanced_accuracy_matches_sklearn_on_imbalanced_labels():
    rng = np.random.default_rng(0)
    # 8 classes, very imbalanced: class 0 has 60 of the 100 examples, class 7 only 1.
    labels = np.repeat(np.arange(8), [60, 20, 8, 4, 3, 2, 2, 1])
    logits = rng.normal(size=(labels.size, 8)).astype(np.float32)
    logits[np.arange(labels.size), labels] += rng.uniform(0, 2, size=labels.size).astype(np.float32)
    metrics = build_compute_metrics(8)(EvalPrediction(predictions=logits, label_ids=labels))
    expected = sklearn_balanced_accuracy(logits, labels)
    assert metrics["balanced_accuracy"] == pytest.approx(expected)
    assert metrics["balanced_accuracy"] != pytest.approx(metrics["accuracy"])  # the imbalance matters here

    # A model that always predicts the majority class: 60% accurate, balanced accuracy 1/8.
    majority = np.zeros_like(logits)
    majority[:, 0] = 1.0
    metrics = build_compute_metrics(8)((majority, labels))
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["balanced_accuracy"] == pytest.approx(1 / 8) == sklearn_balanced_accuracy(majority, labels)


def test_balanced_accuracy_leaves_out_classes_absent_from_the_labels():
    # 5 classes; classes 3 and 4 never occur in the labels, but class 4 is predicted once.
    labels = np.array([0, 0, 0, 1, 2, 2])
    predicted = np.array([0, 4, 0, 1, 2, 0])
    logits = np.eye(5, dtype=np.float32)[predicted]
    metrics = build_compute_metrics(5)(EvalPrediction(predictions=logits, label_ids=labels))
    # Recalls: class 0 2/3, class 1 1, class 2 1/2; classes 3 and 4 have no examples and are left out.
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert metrics["balanced_accuracy"] == pytest.approx(sklearn_balanced_accuracy(logits, labels))
    assert all(np.isfinite(v) for v in metrics.values())
    # A single example of a single class: defined, no NaN.
    one = load_topk_accuracy().compute(predictions=logits[:1], references=labels[:1], k=2)
    assert one["balanced_accuracy"] == 1.0
