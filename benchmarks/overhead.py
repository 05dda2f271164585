"""Cost of LKD relative to KD: wall time per training step and peak memory, measured through ``LKDTrainer``.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/overhead.py            # full run (all rows)
    python benchmarks/overhead.py --quick                                           # smoke check (few steps)
    python benchmarks/overhead.py --device cpu --threads 2 --repeats 3 --out overhead.json

Every row trains the same student (``lkd_convnet_s16``, same seed) with ``LKDTrainer.train()`` for ``--steps``
optimizer steps on the bundled animal-mnist training split, each row in a fresh subprocess (so that peak memory
and timings of one row do not leak into the next), and times the steps after the first ``--warmup_steps``:

* ``ce``: cross-entropy only, no teacher (reference for the teacher's cost).
* ``kd``: Hinton KD (T=4): the baseline every ratio is relative to.
* ``lkd-{unrolled,fd}-i{1,10}``: learned loss, ``hypergradient`` = ``unrolled`` or ``finite_difference``, a meta
  step every 1 or 10 student steps, ``lookahead_steps=1``, ``snapshot_strategy="current"`` (meta steps start
  from the live weights).
* ``lkd-fd-i10-uniform``: as ``lkd-fd-i10`` with the default ``uniform`` snapshot pool (snapshot recording and
  meta steps from recorded students included).
* ``lkd-fd-i10-val2x``: as ``lkd-fd-i10`` with ``meta_batch_size`` twice the training batch (default: equal to it).
* ``lkd-fd-K5-i10``: as ``lkd-fd-i10`` with a K=5 look-ahead.
* ``lkd-frozen``: a learned loss loaded with ``loss_from=`` (saved by the first LKD row of this run, or
  ``--loss_from``) and ``freeze_loss=True``: no meta steps.

Reported per row: ms per step (median and mean over the timed steps; a step is ``on_step_begin`` ->
``on_step_end``: teacher forward, meta step when due, student forward/backward, optimizer step; data loading is
outside), the step-time ratio to ``kd`` (of means: the amortised cost, meta steps included), the time of one meta
step (from ``trainer.loss_learner.seconds``) and its ratio to a KD step, and peak memory: on CUDA
``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS (VmHWM, reset just before ``train()``), with
"delta" the growth over the RSS before ``train()``; ratios are to ``kd``'s.

Targets (a benchmark, not a test), checked in the table: a ``finite_difference`` meta step <= 2.0x a
KD step (``lkd-fd-i1``, ``lkd-fd-i10``, ``lkd-fd-i10-uniform``, ``lkd-fd-i10-val2x``); LKD at
``meta_interval=10`` <= 1.15x KD per step (the K=1 rows at interval 10); a frozen learned loss <= 1.05x KD per
step (``lkd-frozen``). The other rows are for reference.

Recipe of every row: SGD (Nesterov, momentum 0.9), constant learning rate 0.05, batch ``--batch_size``, no
augmentation, no evaluation, logging or saving, ``dataloader_num_workers=0``, ``torch.set_num_threads(--threads)``.
The report warns when the machine was not idle at start (1-minute load average > 0.5).

The teacher is randomly initialised unless ``--teacher_weights`` is given: the cost of a step does not depend on
the teacher's accuracy, and every row uses the same teacher.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import HfArgumentParser, TrainerCallback  # noqa: E402

from lkd_hf import LKDConfig, LKDTrainer, build_datasets, resolve_data_config  # noqa: E402

MB = 2**20
BUSY_LOAD = 0.5  # 1-minute load average above which the report warns that the machine is not idle


@dataclass
class OverheadArguments:
    dataset: str = field(default="animal-mnist", metadata={"help": "A bundled dataset, a Hub id or an image folder."})
    teacher_model: str = field(default="lkd_convnet_teacher", metadata={"help": "timm name of the teacher."})
    student_model: str = field(default="lkd_convnet_s16", metadata={"help": "timm name of the student."})
    teacher_weights: str | None = field(
        default=None, metadata={"help": "Optional teacher model.safetensors (default: random init, same for all rows)."}
    )
    img_size: int | None = field(default=None, metadata={"help": "Input height/width (default: the student's)."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size (LKD's meta batch: the same)."})
    steps: int = field(default=110, metadata={"help": "Optimizer steps per row (max_steps)."})
    warmup_steps: int = field(default=10, metadata={"help": "First steps of each row left out of the timing."})
    threads: int = field(default=2, metadata={"help": "torch.set_num_threads (and OMP/MKL threads) of every row."})
    device: str | None = field(default=None, metadata={"help": "'cpu' or 'cuda' (default: cuda if available)."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision for the student step (LKDConfig.bf16)."})
    rows: str | None = field(default=None, metadata={"help": "Comma-separated row names (default: all; kd is added)."})
    repeats: int = field(default=1, metadata={"help": "Runs per row; the report takes the median over runs."})
    loss_from: str | None = field(
        default=None, metadata={"help": "Learned loss for lkd-frozen (default: saved by this run's first LKD row)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the models, data order and meta steps."})
    out: str | None = field(default=None, metadata={"help": "Save the raw results (JSON) here."})
    quick: bool = field(default=False, metadata={"help": "Smoke check: 24 steps, 4 of them warm-up."})
    # internal: set by the parent for the subprocess that runs one row
    row: str | None = field(default=None, metadata={"help": "(internal) run only this row, write --result_file."})
    result_file: str | None = field(default=None, metadata={"help": "(internal) JSON result of --row."})
    save_loss_to: str | None = field(default=None, metadata={"help": "(internal) save the learned loss here."})


@dataclass(frozen=True)
class Target:
    metric: str  # "step" (step-time ratio to kd) or "meta" (meta step time / kd step time)
    limit: float

    def __str__(self) -> str:
        return f"{self.metric}<={self.limit:g}x"


@dataclass(frozen=True)
class Row:
    name: str
    loss: str
    fields: dict[str, Any] = field(default_factory=dict)
    targets: tuple[Target, ...] = ()


STEP_10 = Target("step", 1.15)
META_FD = Target("meta", 2.0)
FROZEN = Target("step", 1.05)


def lkd_row(name: str, hypergradient: str, interval: int, targets: tuple[Target, ...], **fields: Any) -> Row:
    base = dict(hypergradient=hypergradient, meta_interval=interval, lookahead_steps=1, snapshot_strategy="current",
                freeze_loss=False)  # meta steps on the shipped start (kept fixed by default)
    return Row(name, "lkd", {**base, **fields}, targets)


ROWS: tuple[Row, ...] = (
    Row("ce", "ce"),
    Row("kd", "kd"),
    lkd_row("lkd-unrolled-i1", "unrolled", 1, ()),
    lkd_row("lkd-unrolled-i10", "unrolled", 10, (STEP_10,)),
    lkd_row("lkd-fd-i1", "finite_difference", 1, (META_FD,)),
    lkd_row("lkd-fd-i10", "finite_difference", 10, (META_FD, STEP_10)),
    lkd_row("lkd-fd-i10-uniform", "finite_difference", 10, (META_FD, STEP_10), snapshot_strategy="uniform"),
    lkd_row("lkd-fd-i10-val2x", "finite_difference", 10, (META_FD, STEP_10), meta_batch_size="2x"),
    lkd_row("lkd-fd-K5-i10", "finite_difference", 10, (), lookahead_steps=5),
    Row("lkd-frozen", "lkd", {"freeze_loss": True}, (FROZEN,)),
)
ROWS_BY_NAME = {row.name: row for row in ROWS}


# ------------------------------------------------------------------------------------------------------------
# one row (runs in its own subprocess)
# ------------------------------------------------------------------------------------------------------------


class StepTimer(TrainerCallback):
    """Per-step wall time (``on_step_begin`` -> ``on_step_end``) and meta-step time (``loss_learner.seconds``) after
    the warm-up steps, and the time of all steps. With ``synchronize`` (CUDA) the GPU is waited for at both ends of a
    step and of a meta step (the loss learner's ``step`` is wrapped), so that each is timed for its own work."""

    def __init__(self, trainer: LKDTrainer, warmup_steps: int, synchronize: bool) -> None:
        self.learner, self.warmup_steps, self.synchronize = trainer.loss_learner, warmup_steps, synchronize
        self.step_seconds: list[float] = []
        self.meta_seconds: list[float] = []
        self.total_seconds = 0.0  # every step, the warm-up included
        self._begin = self._meta_begin = 0.0
        if synchronize and self.learner is not None:
            self.learner.step = synchronized(self.learner.step)

    def _now(self) -> float:
        if self.synchronize:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _meta_now(self) -> float:
        return 0.0 if self.learner is None else self.learner.seconds

    def on_step_begin(self, args, state, control, **kwargs):
        self._meta_begin = self._meta_now()
        self._begin = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        seconds = self._now() - self._begin
        self.total_seconds += seconds
        if state.global_step > self.warmup_steps:  # global_step already counts the step that just ended
            self.step_seconds.append(seconds)
            meta = self._meta_now() - self._meta_begin
            if meta > 0:
                self.meta_seconds.append(meta)

    def meta_share(self) -> float:
        """The meta steps' share of the time of all steps."""
        return self._meta_now() / max(self.total_seconds, 1e-9)


def synchronized(step: Callable[..., None]) -> Callable[..., None]:
    """``step`` with the GPU waited for before and after it."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        torch.cuda.synchronize()
        step(*args, **kwargs)
        torch.cuda.synchronize()

    return wrapper


class PeakMemory:
    """Peak memory of ``train()``: CUDA ``max_memory_allocated``, or on CPU the process's VmHWM reset at start."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.base = self.setup_peak = 0
        self.method = ""

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.method = "cuda max_memory_allocated"
            return
        self.setup_peak = _proc_status_bytes("VmHWM")
        self.base = _proc_status_bytes("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.method = "VmHWM reset before train()"
        except OSError:
            self.method = "ru_maxrss (whole process: setup peak included)"

    def stop(self) -> dict[str, Any]:
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
        elif self.method.startswith("VmHWM"):
            peak = _proc_status_bytes("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {
            "peak_mb": peak / MB,
            "delta_mb": (peak - self.base) / MB,
            "setup_peak_rss_mb": self.setup_peak / MB,  # CPU: the process's peak before train()
            "memory_method": self.method,
        }


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def build_data_and_models(args: OverheadArguments) -> tuple[Any, torch.nn.Module, torch.nn.Module]:
    """The training split (transforms for the student) and the seeded teacher and student."""
    probe = timm.create_model(args.student_model)
    data_config = resolve_data_config(probe)
    if args.img_size is not None:
        data_config["input_size"] = (data_config["input_size"][0], args.img_size, args.img_size)
    data = build_datasets(args.dataset, data_config, seed=args.seed, augment="none")
    num_classes = data["train"].features["label"].num_classes
    torch.manual_seed(args.seed)
    teacher = timm.create_model(args.teacher_model, num_classes=num_classes)
    if args.teacher_weights:
        teacher.load_state_dict(load_file(args.teacher_weights))
    torch.manual_seed(args.seed)
    student = timm.create_model(args.student_model, num_classes=num_classes)
    return data["train"], teacher, student


def training_args(args: OverheadArguments, row: Row, output_dir: str) -> LKDConfig:
    fields = dict(row.fields)
    fields.setdefault("lkd_val_fraction", 0.1)  # meta steps on a held-out validation batch
    if fields.get("meta_batch_size") == "2x":  # validation batch twice the training batch (default: as large)
        fields["meta_batch_size"] = 2 * args.batch_size
    if fields.get("freeze_loss"):
        fields["loss_from"] = args.loss_from
    return LKDConfig(
        output_dir=output_dir,
        loss=row.loss,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=0.05,
        optim="sgd",
        optim_args="momentum=0.9,nesterov=True",
        lr_scheduler_type="constant",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=args.device == "cpu",
        bf16=args.bf16,
        seed=args.seed,
        **fields,
    )


def run_row(args: OverheadArguments, row: Row) -> dict[str, Any]:
    """Train one row and return its timings and peak memory."""
    torch.set_num_threads(args.threads)
    train, teacher, student = build_data_and_models(args)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = LKDTrainer(
            model=student,
            teacher=None if row.loss == "ce" else teacher,
            args=training_args(args, row, output_dir),
            train_dataset=train,
        )
        timer = StepTimer(trainer, args.warmup_steps, synchronize=args.device == "cuda")
        trainer.add_callback(timer)
        memory = PeakMemory(args.device)
        memory.start()
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        result = memory.stop()
    if args.save_loss_to and trainer.loss_params:
        trainer.distill_loss.save_pretrained(args.save_loss_to)
    return {
        "row": row.name,
        "loss": row.loss,
        "fields": row.fields,
        "steps": trainer.state.global_step,
        "timed_steps": len(timer.step_seconds),
        "step_ms": [1000 * s for s in timer.step_seconds],
        "meta_ms": [1000 * s for s in timer.meta_seconds],
        "meta_time_share": timer.meta_share(),
        "train_seconds": train_seconds,
        **result,
    }


# ------------------------------------------------------------------------------------------------------------
# the parent: one subprocess per row, then the report
# ------------------------------------------------------------------------------------------------------------


def resolve_args(args: OverheadArguments) -> OverheadArguments:
    """Apply ``--quick`` and the device default; check the step counts."""
    if args.quick:
        args = dataclasses.replace(args, steps=24, warmup_steps=4)
    if args.device is None:
        args = dataclasses.replace(args, device="cuda" if torch.cuda.is_available() else "cpu")
    if args.device not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device must be 'cpu' or 'cuda', got {args.device!r}")
    if args.steps <= args.warmup_steps:
        raise SystemExit(f"error: --steps ({args.steps}) must exceed --warmup_steps ({args.warmup_steps}).")
    return args


def selected_rows(args: OverheadArguments) -> list[Row]:
    if args.rows is None:
        return list(ROWS)
    names = {n.strip() for n in args.rows.split(",") if n.strip()} | {"kd"}
    unknown = names - ROWS_BY_NAME.keys()
    if unknown:
        raise SystemExit(f"error: unknown rows {sorted(unknown)}. Known: {', '.join(ROWS_BY_NAME)}.")
    rows = [row for row in ROWS if row.name in names]
    if args.loss_from is None and "lkd-frozen" in names and loss_saving_row(rows) is None:
        raise SystemExit("error: lkd-frozen needs --loss_from or a learned (lkd) row in the same run.")
    return rows


def loss_saving_row(rows: list[Row]) -> str | None:
    """The first row that learns a loss: it saves it for lkd-frozen."""
    return next((r.name for r in rows if r.loss == "lkd" and not r.fields.get("freeze_loss")), None)


def child_argv(args: OverheadArguments, row: Row, result_file: str, save_loss_to: str | None) -> list[str]:
    """The command line of the subprocess that runs ``row`` with the parent's (resolved) settings."""
    skip = {"rows", "repeats", "out", "quick", "row", "result_file", "save_loss_to"}
    argv = [sys.executable, os.path.abspath(__file__)]
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if f.name not in skip and value is not None:
            argv += [f"--{f.name}", str(value)]
    argv += ["--row", row.name, "--result_file", result_file]
    if save_loss_to:
        argv += ["--save_loss_to", save_loss_to]
    return argv


def run_child(args: OverheadArguments, row: Row, workdir: str, save_loss_to: str | None) -> dict[str, Any]:
    result_file = os.path.join(workdir, f"{row.name}.json")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(
        child_argv(args, row, result_file, save_loss_to), env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"Row {row.name!r} failed (exit code {proc.returncode}).")
    with open(result_file) as f:
        return json.load(f)


def run_all(args: OverheadArguments, rows: list[Row]) -> dict[str, list[dict[str, Any]]]:
    """Every row ``--repeats`` times, each run in a fresh subprocess; the first LKD row saves lkd-frozen's loss."""
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        saver = None
        if args.loss_from is None:
            saver = loss_saving_row(rows)
            args = dataclasses.replace(args, loss_from=os.path.join(workdir, "lkd_loss"))
        for repeat in range(args.repeats):  # round-robin over rows: slow drifts of the machine hit every row alike
            for i, row in enumerate(rows, 1):
                start = time.perf_counter()
                save = args.loss_from if row.name == saver and repeat == 0 else None
                results.setdefault(row.name, []).append(run_child(args, row, workdir, save))
                print(f"[run {repeat + 1}/{args.repeats}, row {i}/{len(rows)}] {row.name}: "
                      f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return results


def summarize_run(run: dict[str, Any]) -> dict[str, float | None]:
    meta = run["meta_ms"]
    return {
        "step_ms_median": statistics.median(run["step_ms"]),
        "step_ms_mean": statistics.fmean(run["step_ms"]),
        "meta_ms_mean": statistics.fmean(meta) if meta else None,
        "meta_steps": len(meta),
        "peak_mb": run["peak_mb"],
        "delta_mb": run["delta_mb"],
    }


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per row: the median over repeats of each run statistic, and the ratios to kd."""
    summary = {}
    for name, runs in results.items():
        stats = [summarize_run(r) for r in runs]
        summary[name] = {key: _median([s[key] for s in stats]) for key in stats[0]}
        summary[name]["timed_steps"] = runs[0]["timed_steps"]
        summary[name]["steps"] = runs[0]["steps"]
    kd = summary["kd"]
    for row in summary.values():
        row["step_ratio"] = row["step_ms_mean"] / kd["step_ms_mean"]
        row["meta_ratio"] = row["meta_ms_mean"] / kd["step_ms_mean"] if row["meta_ms_mean"] is not None else None
        row["peak_ratio"] = row["peak_mb"] / kd["peak_mb"]
        row["delta_ratio"] = row["delta_mb"] / kd["delta_mb"] if kd["delta_mb"] > 0 else None
    return summary


def target_status(row: Row, stats: dict[str, Any]) -> tuple[str, str]:
    if not row.targets:
        return "", ""
    verdicts = []
    for target in row.targets:
        value = stats["step_ratio"] if target.metric == "step" else stats["meta_ratio"]
        verdicts.append("n/a" if value is None else ("yes" if value <= target.limit else "NO"))
    return ", ".join(map(str, row.targets)), ", ".join(verdicts)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return platform.processor() or "unknown"


def environment(args: OverheadArguments) -> dict[str, Any]:
    return {
        "command": shlex.join(["python", *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "cpu": cpu_model(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "threads": args.threads,
        "load_average_at_start": os.getloadavg(),
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def print_report(args: OverheadArguments, rows: list[Row], summary: dict[str, dict[str, Any]], env: dict) -> None:
    memory = "CUDA max_memory_allocated" if args.device == "cuda" else "process peak RSS (VmHWM)"
    print(f"# LKD overhead vs KD ({args.device})\n")
    print(f"Command: `{env['command']}`")
    print(f"torch {env['torch']}, transformers {env['transformers']}, timm {env['timm']}, python {env['python']}; "
          f"device {args.device}{' (' + env['gpu'] + ')' if env['gpu'] else ''}; CPU {env['cpu']} "
          f"({env['cpus_available']} available), torch threads {args.threads}; "
          f"load average at start {', '.join(f'{x:.2f}' for x in env['load_average_at_start'])}")
    print(f"Student {args.student_model}, teacher {args.teacher_model} "
          f"({'weights ' + args.teacher_weights if args.teacher_weights else 'random init: cost does not depend on it'}"
          f"), {args.dataset}, batch {args.batch_size} (meta batch {args.batch_size}, {2 * args.batch_size} where the "
          f"row says 2x), {args.steps} steps per row, "
          f"first {args.warmup_steps} not timed, {args.repeats} run(s) per row (median), seed {args.seed}"
          f"{', bf16 mixed precision' if args.bf16 else ''}.\n")
    if env["load_average_at_start"][0] > BUSY_LOAD:
        print(f"**Warning**: 1-minute load average {env['load_average_at_start'][0]:.2f} at start: other processes "
              "compete for the CPU, and timings (ratios included) are not reliable. Re-run on an idle machine.\n")
    print("| row | timed steps | ms/step median | ms/step mean | step ratio to kd | meta steps | ms per meta step "
          "| meta step / kd step | peak MB | train delta MB | peak ratio | delta ratio | target | met? |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        s = summary[row.name]
        target, met = target_status(row, s)
        print(f"| {row.name} | {s['timed_steps']} | {s['step_ms_median']:.2f} | {s['step_ms_mean']:.2f} "
              f"| {s['step_ratio']:.3f} | {_fmt(s['meta_steps'] or None, 'g')} | {_fmt(s['meta_ms_mean'], '.2f')} "
              f"| {_fmt(s['meta_ratio'], '.3f')} | {s['peak_mb']:.1f} | {s['delta_mb']:.1f} | {s['peak_ratio']:.3f} "
              f"| {_fmt(s['delta_ratio'], '.3f')} | {target} | {met} |")
    print(f"\nStep = on_step_begin -> on_step_end (teacher forward, meta step when due, student forward/backward, "
          f"optimizer step; not data loading). Step ratio = mean ms/step / kd's (amortised: meta steps included). "
          f"Meta step / kd step = mean time of one meta step (loss_learner.seconds) / kd's mean ms/step. "
          f"Memory: {memory} during train(); delta = growth over the level before train().")


def main() -> None:
    (args,) = HfArgumentParser(OverheadArguments).parse_args_into_dataclasses()
    if args.row is not None:  # subprocess: one row
        result = run_row(args, ROWS_BY_NAME[args.row])
        with open(args.result_file, "w") as f:
            json.dump(result, f)
        return
    args = resolve_args(args)
    rows = selected_rows(args)
    env = environment(args)
    start = time.perf_counter()
    results = run_all(args, rows)
    summary = summarize(results)
    print_report(args, rows, summary, env)
    print(f"\nTotal wall time {time.perf_counter() - start:.0f} s.")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "arguments": dataclasses.asdict(args), "summary": summary,
                       "runs": results}, f, indent=1)


if __name__ == "__main__":
    main()
