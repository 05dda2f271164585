"""How large is each loss's gradient, and how does the validation CE rank its students? (animal-mnist)

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/studies/logit_scale.py --threads 1

For each loss of ``LOSSES`` a student of each ``--pairs`` pair is trained with the accuracy benchmark's recipe
(``benchmarks/accuracy.py``: 2000 images, 6 epochs, SGD, ``max_grad_norm=1``), seed ``--seed``. Reported: the
median and range of the Trainer's logged ``grad_norm`` (the student's gradient norm *before* clipping to 1), and on
the 1000-image validation split: top-1, plain cross-entropy, the cross-entropy after temperature scaling
(``lkd_hf.meta.outer_objectives.calibrated_cross_entropy``, the ``calibrated_ce`` outer objective), the fitted logit
scale and the standard deviation of the logits. It measures two facts behind the meta step's design
(docs/experiments.md):
LKD's virtual steps must clip like the real ones, and plain CE ranks these students by their logit scale, not by
what they predict (hence the ``calibrated_ce`` outer objective).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from common import Setting, split_list  # noqa: E402
from lkd_hf.meta.outer_objectives import calibrated_cross_entropy, fit_logit_scale  # noqa: E402

LOSSES = {
    "ce": dict(loss="ce"),
    "kd-T4": dict(loss="kd", temperature=4.0, distill_weight=1.0),
    "dist-T1": dict(loss="dist", dist_temperature=1.0, distill_weight=1.0),
    "dist-T4": dict(loss="dist", dist_temperature=4.0, distill_weight=1.0),
    "dist-T8-w2": dict(loss="dist", dist_temperature=8.0, distill_weight=2.0),
    "dist-T16": dict(loss="dist", dist_temperature=16.0, distill_weight=1.0),
}


@dataclass
class ScaleArguments:
    pairs: str = field(default="teacher->s4,teacher->s16", metadata={"help": "Pairs of benchmarks/accuracy.py."})
    losses: str = field(default=",".join(LOSSES), metadata={"help": f"Comma-separated of {list(LOSSES)}."})
    seed: int = field(default=0, metadata={"help": "Seed of every run."})
    threads: int = field(default=1, metadata={"help": "torch.set_num_threads."})
    output_dir: str = field(default="outputs/logit_scale", metadata={"help": "Where results.json goes."})


def main() -> None:
    (args,) = HfArgumentParser(ScaleArguments).parse_args_into_dataclasses()
    torch.set_num_threads(args.threads)
    pairs = split_list(args.pairs)
    setting = Setting()
    rows = []
    print("| pair | loss | grad norm median (min-max) | val top-1 | val CE | val calibrated CE | fitted scale | "
          "logit std |\n|---|---|---|---|---|---|---|---|")
    for pair in pairs:
        for name in split_list(args.losses):
            run_dir = os.path.join(args.output_dir, "runs", pair.replace("->", "_to_"), name)
            trainer, _ = setting.train_student(pair, args.seed, run_dir, dict(LOSSES[name], logging_steps=5))
            norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
            prediction = trainer.predict(setting.data["validation"])
            logits, labels = torch.tensor(prediction.predictions).double(), torch.tensor(prediction.label_ids)
            row = dict(pair=pair, loss=name, grad_norm_median=statistics.median(norms), grad_norm_min=min(norms),
                       grad_norm_max=max(norms), val_top1=(logits.argmax(1) == labels).double().mean().item(),
                       val_ce=F.cross_entropy(logits, labels).item(),
                       val_calibrated_ce=calibrated_cross_entropy(logits, labels).item(),
                       scale=fit_logit_scale(logits, labels).item(), logit_std=logits.std().item())
            rows.append(row)
            print(f"| {pair} | {name} | {row['grad_norm_median']:.3g} ({row['grad_norm_min']:.3g}-"
                  f"{row['grad_norm_max']:.3g}) | {100 * row['val_top1']:.2f} | {row['val_ce']:.3f} | "
                  f"{row['val_calibrated_ce']:.3f} | {row['scale']:.3g} | {row['logit_std']:.3f} |", flush=True)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
