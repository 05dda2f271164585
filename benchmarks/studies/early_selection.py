"""Could a population choose its student early? Each student's validation top-1 after every epoch, and its test top-1
at the end, in the accuracy benchmark's settings (design datasets only).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/studies/early_selection.py --threads 1 \
        --datasets mnist-5k,mnist-5k/weak,mnist-5k/noise40,animal-mnist,animal-mnist/weak --pairs "teacher->s4" \
        --out docs/benchmark_accuracy/design_s4/early_selection/s4.json

Each run is the accuracy benchmark's ``lkd-pop3`` (the shipped loss kept fixed, three students side by side: at its
temperature and weight, at twice both, and at a third of the temperature and a sixteenth of the weight), seeds 0-4.
Students never interact while the loss is fixed, so each student's run is the one it would have alone, and
"choose at epoch e" is read off one run: the student with the best validation top-1 after epoch ``e`` is the one kept,
and its test top-1 at the end is the result. A choice after epoch ``e`` of ``E`` costs
``3 e / E + (E - e) / E`` student runs (three students until the choice, one after), against 2 for the two-student
population (two students to the end, the default until 2026-12-07) and 1 for a single student. "Drop the worst
after epoch ``e``" (successive halving's first round) keeps two students to the end and chooses between them there:
``3 e / E + 2 (E - e) / E``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common, accuracy

import torch  # noqa: E402
from transformers import HfArgumentParser, TrainerCallback  # noqa: E402

from accuracy import AccuracyArguments, Benchmark  # noqa: E402
from common import mean_std, save_json, split_list  # noqa: E402
from settings import balanced_top1  # noqa: E402
from tuning import format_ci95, paired_ci95  # noqa: E402

METHOD = "lkd-pop3"


def split_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """A transformed split's images stacked and its labels."""
    batch = data[:]
    images = batch["pixel_values"]
    images = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    return images, torch.as_tensor(batch["labels"])


def predictions(member: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The member's predicted classes, in evaluation mode, its mode restored."""
    training = member.training
    member.eval()
    with torch.no_grad():
        predicted = torch.cat([member(images[i:i + 256]).argmax(-1) for i in range(0, len(images), 256)])
    member.train(training)
    return predicted


class MemberScores(TrainerCallback):
    """Each population student's validation top-1 after every epoch and its test scores at the end of training
    (before the trainer keeps one)."""

    def __init__(self, validation: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]):
        self.validation, self.test = validation, test
        self.trainer = None
        self.val_top1: list[list[float]] = []  # [epoch][member]
        self.test_top1: list[float] = []
        self.test_balanced: list[float] = []

    def members(self) -> list[torch.nn.Module]:
        return list(self.trainer.distiller.population.members)

    def on_epoch_end(self, args, state, control, **kwargs):
        images, labels = self.validation
        self.val_top1.append([float((predictions(m, images) == labels).float().mean()) for m in self.members()])

    def on_train_end(self, args, state, control, **kwargs):
        images, labels = self.test
        for member in self.members():
            predicted = predictions(member, images)
            self.test_top1.append(float((predicted == labels).float().mean()))
            self.test_balanced.append(balanced_top1(predicted.numpy(), labels.numpy()))


def choose(val_top1: list[float], members: list[int]) -> int:
    """The member with the best validation top-1 among ``members`` (the first on a tie, as the trainer chooses)."""
    return max(members, key=lambda k: (val_top1[k], -k))


def drop_worst(val_top1: list[float], members: list[int]) -> list[int]:
    """``members`` without the one with the worst validation top-1 (the last on a tie)."""
    worst = min(members, key=lambda k: (val_top1[k], -k))
    return [k for k in members if k != worst]


def kept_member(run: dict, way: tuple[str, int], epochs: int) -> int:
    """The student a way of choosing keeps in one run: ``("pop2", E)`` the first two students at the end,
    ``("choose", e)`` the best of three after epoch ``e``, ``("halve", e)`` the worst of three dropped after epoch
    ``e`` and the best of the other two at the end."""
    kind, e = way
    if kind == "pop2":
        return choose(run["val_top1"][-1], [0, 1])
    if kind == "choose":
        return choose(run["val_top1"][e - 1], [0, 1, 2])
    return choose(run["val_top1"][-1], drop_worst(run["val_top1"][e - 1], [0, 1, 2]))


def student_runs(way: tuple[str, int], epochs: int) -> float:
    """What a way of choosing costs, in single-student runs."""
    kind, e = way
    after = {"pop2": 2, "choose": 1, "halve": 2}[kind]
    return 2.0 if kind == "pop2" else (3 * e + after * (epochs - e)) / epochs


def summarize(runs: list[dict], epochs: int) -> dict:
    """Per setting and pair: mean test top-1 (balanced for a long tail) of each way of choosing, its paired
    difference to the two-student population (chosen at the end, the default until 2026-12-07) and its cost in
    student runs."""
    metric = "test_balanced" if "lt" in runs[0]["dataset"] else "test_top1"
    ways = {"pop2-end (default)": ("pop2", epochs), "pop3-end": ("choose", epochs),
            **{f"pop3-epoch{e}": ("choose", e) for e in range(1, epochs)},
            **{f"pop3-drop-worst-epoch{e}": ("halve", e) for e in range(1, epochs)}}
    rows = {}
    default = [r[metric][kept_member(r, ways["pop2-end (default)"], epochs)] * 100 for r in runs]
    for name, way in ways.items():
        kept = [kept_member(r, way, epochs) for r in runs]
        scores = [r[metric][k] * 100 for r, k in zip(runs, kept)]
        ci = paired_ci95(scores, default) if len(runs) > 1 and name != "pop2-end (default)" else None
        mean, std = mean_std(scores)
        rows[name] = {"mean": mean, "std": std,
                      "n": len(scores), "student_runs": round(student_runs(way, epochs), 3),
                      "minus_default_ci95": ci, "kept": kept}
    return {"metric": metric, "ways": rows}


@dataclass
class StudyArguments:
    datasets: str = field(default="mnist-5k,mnist-5k/weak", metadata={"help": "Benchmark keys, comma-separated."})
    pairs: str = field(default="teacher->s4", metadata={"help": "Teacher -> student pairs, comma-separated."})
    num_seeds: int = field(default=5, metadata={"help": "Seeds 0..n-1."})
    threads: int = field(default=1, metadata={"help": "torch.set_num_threads."})
    out: str = field(default="outputs/early_selection.json", metadata={"help": "Records and summary (JSON)."})
    run_dir: str = field(default="outputs/early_selection", metadata={"help": "The runs' output folders."})


def main() -> None:
    (study,) = HfArgumentParser(StudyArguments).parse_args_into_dataclasses()
    torch.set_num_threads(study.threads)
    records = json.load(open(study.out)) if os.path.exists(study.out) else {"runs": [], "summary": {}}
    for key in split_list(study.datasets):
        (args,) = HfArgumentParser(AccuracyArguments).parse_args_into_dataclasses(
            args=["--dataset", key, "--pairs", study.pairs, "--methods", METHOD, "--output_dir", study.run_dir])
        bench = Benchmark(args, record=False)
        data = bench.setting.data
        validation, test = split_tensors(data["validation"]), split_tensors(data["test"])
        for pair in split_list(study.pairs):
            for seed in range(study.num_seeds):
                if any((r["dataset"], r["pair"], r["seed"]) == (key, pair, seed) for r in records["runs"]):
                    continue
                fields, _ = bench.method_fields(pair, METHOD, seed)
                scores = MemberScores(validation, test)

                def attach(trainer, scores=scores):
                    scores.trainer = trainer

                bench.setting.train_student(pair, seed, os.path.join(study.run_dir, key, pair, str(seed)), fields,
                                            callbacks=[scores], setup=attach)
                records["runs"].append(dict(dataset=key, pair=pair, seed=seed, val_top1=scores.val_top1,
                                            test_top1=scores.test_top1, test_balanced=scores.test_balanced))
                print(json.dumps(records["runs"][-1]), flush=True)
                save_json(study.out, records)
            runs = [r for r in records["runs"] if (r["dataset"], r["pair"]) == (key, pair)]
            records["summary"][f"{key} {pair}"] = summarize(runs, len(runs[0]["val_top1"]))
            save_json(study.out, records)
    for name, entry in records["summary"].items():
        print(f"\n{name} ({entry['metric']}):")
        for way, row in entry["ways"].items():
            print(f"  {way:20s} {row['mean']:6.2f} ± {row['std']:.2f}  vs default "
                  f"{format_ci95(row['minus_default_ci95']):24s} "
                  f"student runs {row['student_runs']:.2f}  kept {row['kept']}")


if __name__ == "__main__":
    main()
