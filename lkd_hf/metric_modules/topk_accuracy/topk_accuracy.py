# Copyright 2025 The lkd_hf Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Top-1, top-k and balanced accuracy from classification logits, as an ``evaluate`` metric module.

Load it offline by path, e.g. ``evaluate.load(lkd_hf.metrics.TOPK_METRIC_PATH)`` (the directory holding this
file, or the path of this file itself); no Hugging Face Hub access is needed.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-k accuracy is the fraction of examples whose true class is among the k classes with the highest scores
(logits or probabilities). Top-1 accuracy is the usual accuracy of the arg-max prediction:
    Top-k accuracy = (1 / N) * sum_i [ rank_i(reference_i) < k ]
where rank_i(c) counts the classes scored strictly higher than c for example i, plus the equally scored
classes with a lower index (ties are broken towards the lower class index, as ``numpy.argmax`` does, so top-1
accuracy equals the accuracy of ``argmax(logits)`` and top-k accuracy never decreases with k). An example
whose true-class score is NaN counts as wrong.

Balanced accuracy is the mean over classes of the top-1 recall (the fraction of a class's examples whose
prediction is right):
    Balanced accuracy = (1 / |C|) * sum_{c in C} (1 / N_c) * sum_{i: reference_i = c} [ rank_i(c) < 1 ]
where C is the set of classes that occur in the references and N_c the number of examples of class c. A class
absent from the references has no recall and is left out of the mean (as scikit-learn's
``balanced_accuracy_score`` does), so the value is never NaN. It equals top-1 accuracy when every class has the
same number of examples, and is not fooled by a model that always predicts a frequent class.
"""


_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, or a 2-D array of shape (N, num_classes)): Scores of each class
        for each example, e.g. the logits of a classifier. Only their order within a row matters.
    references (`list` of `int`): True class ids, each in [0, num_classes).
    k (`int`, defaults to 5): The k of top-k accuracy. If k >= num_classes every example counts as correct.
Returns:
    accuracy (`float`): Top-1 accuracy, in [0, 1].
    top{k}_accuracy (`float`): Top-k accuracy, in [0, 1], e.g. `top5_accuracy` for the default k=5.
    balanced_accuracy (`float`): Mean top-1 recall over the classes present in `references`, in [0, 1].
Examples:

    >>> topk_accuracy = evaluate.load("path/to/lkd_hf/metric_modules/topk_accuracy")
    >>> logits = [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]]
    >>> results = topk_accuracy.compute(predictions=logits, references=[1, 1, 0], k=2)
    >>> print(results)
    {'accuracy': 0.3333333333333333, 'top2_accuracy': 0.6666666666666666, 'balanced_accuracy': 0.25}
"""


_CITATION = """
@article{russakovsky2015imagenet,
  title={ImageNet Large Scale Visual Recognition Challenge},
  author={Russakovsky, Olga and Deng, Jia and Su, Hao and Krause, Jonathan and Satheesh, Sanjeev and Ma, Sean
          and Huang, Zhiheng and Karpathy, Andrej and Khosla, Aditya and Bernstein, Michael and Berg,
          Alexander C. and Fei-Fei, Li},
  journal={International Journal of Computer Vision},
  volume={115},
  number={3},
  pages={211--252},
  year={2015}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopkAccuracy(evaluate.Metric):
    """Top-1, top-k and balanced accuracy of classification scores."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://en.wikipedia.org/wiki/Evaluation_of_binary_classifiers#Top-k_accuracy"],
        )

    def _compute(self, predictions, references, k=5):
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k}.")
        scores = np.asarray(predictions, dtype=np.float32)
        labels = np.asarray(references, dtype=np.int64).reshape(-1)
        if scores.ndim != 2:
            raise ValueError(
                f"predictions must be a 2-D array of class scores (N, num_classes), got shape {scores.shape}."
            )
        num_examples, num_classes = scores.shape
        if num_examples != labels.shape[0]:
            raise ValueError(f"Got {num_examples} predictions but {labels.shape[0]} references.")
        if num_examples == 0:
            raise ValueError("Cannot compute accuracy of zero examples.")
        bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])
        if bad.size:
            raise ValueError(
                f"Reference label(s) {bad.tolist()} outside the valid range [0, {num_classes}) of the "
                f"{num_classes} predicted classes."
            )
        rows = np.arange(num_examples)
        target = scores[rows, labels][:, None]
        # Rank of the true class: higher scores, plus equal scores at a lower index (argmax's tie-break).
        higher = (scores > target).sum(axis=1)
        tied_before = ((scores == target) & (np.arange(num_classes)[None, :] < labels[:, None])).sum(axis=1)
        rank = higher + tied_before
        valid = ~np.isnan(target[:, 0])
        correct = (rank < 1) & valid
        top1 = float(np.mean(correct))
        topk = float(np.mean((rank < k) & valid))
        # Per-class recall over the classes present in the references (absent classes have no recall).
        per_class_total = np.bincount(labels, minlength=num_classes)
        per_class_correct = np.bincount(labels, weights=correct, minlength=num_classes)
        present = per_class_total > 0
        balanced = float(np.mean(per_class_correct[present] / per_class_total[present]))
        return {"accuracy": top1, f"top{k}_accuracy": topk, "balanced_accuracy": balanced}
