"""Where a training epoch's time goes, for each network of the classifier zoo at its study size.

A real training epoch of the default bundle (``bundles/imbalance_baselines/configs/train.json``, in
process through MONAI's ``ConfigWorkflow``, with overrides for the classifier, image size and data;
MLflow into a temporary store, checkpoints into a temporary folder) is split with Ignite events into:

* **forward/backward**: the trainer's iteration function (MONAI ``SupervisedTrainer._iteration``: batch
  to device, forward, loss, backward, optimizer step), timed around the engine's process function;
* **data pipeline**: the time the trainer waits for the next batch (``GET_BATCH_STARTED`` to
  ``GET_BATCH_COMPLETED``: the ``DataLoader`` running the augmentation on cached images);
* **validation**: the validation evaluator's iterations (fetching a batch to the end of its
  ``ITERATION_COMPLETED`` handlers: forward, softmax, metric updates);
* **precise BN**: the batch-norm statistics recomputed before each validation (``precise_bn``: a
  forward pass over the training loader, its augmentation included);
* **EMA**: folding the weights into their moving average after each iteration (``ema``);
* **bookkeeping**: everything else in the epoch (handlers: validation metrics computed at the epoch's
  end, checkpoint, early stopping, learning-rate schedule, MLflow, console, progress bar).

The epoch is the time between the ends of two consecutive epochs (all their ``EPOCH_COMPLETED``
handlers run); the last epoch is reported, the first (which pays one-off costs) in the JSON. The
reference is pure forward+backward (+ AdamW step) at batch 32 on random images, the number the issue
gives per network. overhead = (epoch - forward/backward) / epoch.

    python benchmarks/epoch_time.py [--epochs 2] [--only resnet18-64]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BUNDLE = REPO / "bundles" / "imbalance_baselines"
RESULTS = REPO / "benchmarks" / "results"
PNEUMONIA = {
    "dataset_dir": "$medaug.io.shipped_data_path('pneumoniamnist.npz')",
    "class_names": ["normal", "pneumonia"],
    "positive_class": "pneumonia",
    "augment#preset": "chest_xray",
}


@dataclass(frozen=True)
class Case:
    classifier: str
    size: int
    data: str  # "breastmnist_64" or "pneumoniamnist"
    max_images: int | None  # per split; keeps the slow networks near a minute an epoch
    issue_reference: float | None  # images/s the issue measured on a quiet machine

    @property
    def label(self) -> str:
        return f"{self.classifier}-{self.size}"


CASES = (
    Case("resnet18", 64, "breastmnist_64", None, 60),
    Case("resnet18", 28, "pneumoniamnist", 600, 42),
    Case("small_cnn", 28, "pneumoniamnist", 1200, 1950),
    Case("vgg16-bn", 64, "breastmnist_64", 160, 9),
    Case("inception-v3", 75, "breastmnist_64", 300, 51),
    Case("efficientnet-b0", 64, "breastmnist_64", 300, None),
    Case("densenet121", 64, "breastmnist_64", 300, None),
)


def overrides(case: Case, out: Path, epochs: int, transform_threads="default") -> dict:
    data = PNEUMONIA if case.data == "pneumoniamnist" else {}
    threads = {} if transform_threads == "default" else {"transform_threads": transform_threads}
    return {
        **data,
        **threads,
        "bundle_root": str(BUNDLE),
        "output_dir": str(out),
        "classifier": case.classifier,
        "image_size": [case.size, case.size],
        "max_images_per_split": case.max_images,
        "max_epochs": epochs,
        "early_stop_patience": epochs,
        "study_data#progress": False,
        "oversample#progress": False,
    }


_COLLECTING: list = []  # the EpochTimer that the wrapped recipe steps report to


def _time_into(owner, name: str, part: str) -> None:
    """Wrap ``owner.name`` (once) so its wall time adds to ``part`` of the collecting timer: the
    precise-BN pass and the EMA update run inside Ignite handlers, which events alone cannot split."""
    original = getattr(owner, name)
    if getattr(original, "_epoch_time_part", None):
        return

    @functools.wraps(original)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            if _COLLECTING:
                _COLLECTING[-1]._parts[part] += time.perf_counter() - start

    timed._epoch_time_part = part
    setattr(owner, name, timed)


class EpochTimer:
    """Per-epoch wall time of a trainer and its parts (see the module docstring), from Ignite events.

    Attach after the engines are built, so that the marks that close a span (``EPOCH_COMPLETED``,
    the evaluator's ``ITERATION_COMPLETED``) run after the bundle's own handlers."""

    def __init__(self, trainer, evaluator) -> None:
        from ignite.engine import Events
        from torch.optim.swa_utils import AveragedModel

        import medaug.pipelines.train.precise_bn as precise_bn

        self.epochs: list[dict] = []
        self._parts = {"forward_backward": 0.0, "data": 0.0, "validation": 0.0, "precise_bn": 0.0, "ema": 0.0}
        _time_into(precise_bn, "recompute_batchnorm_statistics", "precise_bn")
        _time_into(AveragedModel, "update_parameters", "ema")
        _COLLECTING[:] = [self]
        self._mark = self._batch = self._val = 0.0
        process = trainer._process_function

        def timed(engine, batch):
            start = time.perf_counter()
            try:
                return process(engine, batch)
            finally:
                self._parts["forward_backward"] += time.perf_counter() - start

        trainer._process_function = timed
        trainer.add_event_handler(Events.STARTED, self._started)
        trainer.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        evaluator.add_event_handler(Events.GET_BATCH_STARTED, self._val_started)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._val_completed)

    def _started(self, engine) -> None:
        self._mark = time.perf_counter()

    def _batch_started(self, engine) -> None:
        self._batch = time.perf_counter()

    def _batch_completed(self, engine) -> None:
        self._parts["data"] += time.perf_counter() - self._batch

    def _val_started(self, engine) -> None:
        self._val = time.perf_counter()

    def _val_completed(self, engine) -> None:
        self._parts["validation"] += time.perf_counter() - self._val

    def _epoch_completed(self, engine) -> None:
        now = time.perf_counter()
        epoch = now - self._mark
        row = {"epoch_s": epoch, **self._parts}
        row["bookkeeping"] = epoch - sum(self._parts.values())
        row["iterations"] = engine.state.epoch_length
        self.epochs.append(row)
        self._parts = dict.fromkeys(self._parts, 0.0)
        self._mark = now


def train_epochs(case: Case, epochs: int, transform_threads="default") -> dict:
    """Train ``epochs`` epochs of the default bundle for ``case``; the timer's rows and the data sizes."""
    from monai.bundle import ConfigWorkflow

    with tempfile.TemporaryDirectory() as work:
        out = Path(work)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"
        workflow = ConfigWorkflow(
            config_file=str(BUNDLE / "configs" / "train.json"),
            meta_file=str(BUNDLE / "configs" / "metadata.json"),
            logging_file=None,
            workflow_type="train",
            **overrides(case, out, epochs, transform_threads),
        )
        start = time.perf_counter()
        workflow.initialize()  # settings check, data index, MLflow run, model record
        parser = workflow.parser
        trainer = parser.get_parsed_content("train#trainer")
        evaluator = parser.get_parsed_content("validate#evaluator")
        built = time.perf_counter() - start
        timer = EpochTimer(trainer, evaluator)
        trainer.run()
        parser.get_parsed_content("tracker").end()  # the bundle's test evaluation would end it
        study = parser.get_parsed_content("study_data")
        return {
            "setup_s": built,
            "train_images": len(parser.get_parsed_content("oversampled").train),
            "val_images": len(study.val),
            "batch_size": parser.get_parsed_content("batch_size"),
            "epochs": timer.epochs,
        }


def reference_images_per_s(case: Case, batch_size: int = 32, seconds: float = 6.0) -> float:
    """Pure forward + backward + AdamW step at ``batch_size`` on random images (train mode), images/s."""
    from medaug.models import build_classifier

    torch.manual_seed(0)
    network = build_classifier(case.classifier, 1, 2, [case.size, case.size])
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    images = torch.rand(batch_size, 1, case.size, case.size)
    labels = torch.randint(0, 2, (batch_size,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad()
        loss_fn(network(images), labels).backward()
        optimizer.step()

    step()  # warm-up (allocations, kernel selection)
    done, start = 0, time.perf_counter()
    while done < 3 or time.perf_counter() - start < seconds:
        step()
        done += 1
    return done * batch_size / (time.perf_counter() - start)


PARTS = ("forward_backward", "data", "validation", "precise_bn", "ema", "bookkeeping")


def summarise(case: Case, run: dict, reference: float) -> dict:
    last = run["epochs"][-1]
    epoch = last["epoch_s"]
    row = {
        "case": case.label,
        "classifier": case.classifier,
        "image_size": case.size,
        "data": case.data,
        "train_images": run["train_images"],
        "val_images": run["val_images"],
        "epoch_s": round(epoch, 2),
        **{f"{p}_s": round(last[p], 2) for p in PARTS},
        **{f"{p}_share": round(last[p] / epoch, 3) for p in PARTS},
        "overhead_share": round((epoch - last["forward_backward"]) / epoch, 3),
        "train_images_per_s_in_epoch": round(run["train_images"] / last["forward_backward"], 1),
        "reference_images_per_s": round(reference, 1),
        "issue_reference_images_per_s": case.issue_reference,
        "first_epoch_s": round(run["epochs"][0]["epoch_s"], 2),
        "setup_s": round(run["setup_s"], 2),
        "all_epochs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in e.items()} for e in run["epochs"]],
    }
    row["parts_over_30_percent"] = [p for p in PARTS[1:] if row[f"{p}_share"] > 0.30]
    return row


def before_after(rows_before: list[dict], rows: list[dict]) -> list[str]:
    """Markdown lines comparing the runs without the transform thread limit (before) to the default."""
    if not rows_before:
        return []
    after = {r["case"]: r for r in rows}
    lines = [
        "",
        "## The data pipeline before and after `transform_threads: 1`",
        "",
        "Before: `transform_threads: null` (the augmentation ran with PyTorch's 2 intra-op threads, as until "
        "now); after: the bundle's default, 1 thread while the transforms run (`ThreadLimitedCompose`), the "
        "training step keeping both. Same cases and settings otherwise.",
        "",
        "| network | px | epoch s before | after | data s before | after | data share before | after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in rows_before:
        a = after[b["case"]]
        lines.append(
            f"| {b['classifier']} | {b['image_size']} | {b['epoch_s']} | {a['epoch_s']} | {b['data_s']} | "
            f"{a['data_s']} | {b['data_share']:.0%} | {a['data_share']:.0%} |"
        )
    return lines


def table(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Epoch time: where a training epoch of the default bundle goes, per zoo network",
        "",
        f"The default bundle (`train.json`: {meta['recipe']}), trained in process with overrides for the network, "
        f"image size and data; the last of {meta['epochs']} epochs, {meta['threads']} CPU threads, batch "
        f"{rows[0]['batch_size'] if rows and 'batch_size' in rows[0] else 32}. Seconds and share of the epoch. "
        "forward/backward = the trainer's iteration function; data = waiting for the next batch; validation = "
        "the validation evaluator's iterations; precise BN = batch-norm statistics recomputed before validation; "
        "EMA = the weight average's updates; bookkeeping = the rest (epoch-end metrics, checkpoint, early "
        "stop, LR schedule, MLflow, console). Reference = pure forward+backward+AdamW at batch 32 on random "
        "images, same run; issue = the issue's numbers from a quiet machine.",
        "",
        "| network | px | data | train / val images | epoch s | fwd/bwd s | data s | validation s | precise BN s "
        "| EMA s | bookkeeping s | overhead | fwd/bwd img/s in epoch | reference img/s | issue img/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        parts = " | ".join(f"{r[f'{p}_s']} ({r[f'{p}_share']:.0%})" for p in PARTS)
        lines.append(
            f"| {r['classifier']} | {r['image_size']} | {r['data']} | {r['train_images']} / {r['val_images']} | "
            f"{r['epoch_s']} | {parts} | {r['overhead_share']:.0%} | {r['train_images_per_s_in_epoch']} | "
            f"{r['reference_images_per_s']} | {r['issue_reference_images_per_s'] or ''} |"
        )
    over = [f"{r['case']}: {', '.join(r['parts_over_30_percent'])}" for r in rows if r["parts_over_30_percent"]]
    lines += ["", "Overhead parts above 30% of the epoch: " + ("; ".join(over) if over else "none") + "."]
    lines += [
        "",
        f"Load average at the start / at the last write: {meta['load_before']} / {meta['load_now']} "
        f"({meta['cpus']} cores); {meta['note']}",
    ]
    return "\n".join(lines) + "\n"


def write_results(output: Path, rows: list[dict], rows_before: list[dict], meta: dict) -> str:
    """Write ``<output>.json`` and ``.md`` (after every case, so a stopped run keeps what it measured)."""
    meta = {**meta, "load_now": [round(x, 2) for x in os.getloadavg()]}
    text = table(rows, meta) + "\n".join(before_after(rows_before, rows)) + ("\n" if rows_before else "")
    output.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{output}.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "before_transform_threads": rows_before}, indent=2) + "\n"
    )
    Path(f"{output}.md").write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per network (the last is reported)")
    parser.add_argument("--only", nargs="*", help="cases to run, e.g. resnet18-64 small_cnn-28")
    parser.add_argument(
        "--before",
        nargs="*",
        default=["small_cnn-28"],
        help="cases also run without the transform thread limit (the before of the data pipeline's fix)",
    )
    parser.add_argument("--note", default="", help="a remark for the results (e.g. another process shared the cores)")
    parser.add_argument("--output", type=Path, default=RESULTS / "epoch_time")
    args = parser.parse_args(argv)

    import logging

    logging.getLogger("ignite").setLevel(logging.WARNING)
    cases = [c for c in CASES if not args.only or c.label in args.only]
    meta = {
        "epochs": args.epochs,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "recipe": "select_on auc, class-weighted loss, AdamW + cosine, EMA of the weights, precise BN, "
        "ultrasound/chest_xray preset, CacheDataset, num_workers 0, transform_threads 1",
        "note": args.note or "no other note",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    rows, rows_before, started = [], [], time.perf_counter()
    for case in cases:
        print(f"--- {case.label} ({case.data}, at most {case.max_images or 'all'} images per split)", flush=True)
        reference = reference_images_per_s(case)
        run = train_epochs(case, args.epochs)
        rows.append({**summarise(case, run, reference), "batch_size": run["batch_size"]})
        print({k: v for k, v in rows[-1].items() if k != "all_epochs"}, flush=True)
        write_results(args.output, rows, rows_before, {**meta, "total_s": round(time.perf_counter() - started, 1)})
    for case in cases:
        if case.label in (args.before or []):
            print(f"--- {case.label} before: transform_threads null", flush=True)
            run = train_epochs(case, args.epochs, transform_threads=None)
            rows_before.append(summarise(case, run, rows[cases.index(case)]["reference_images_per_s"]))
            print({k: v for k, v in rows_before[-1].items() if k != "all_epochs"}, flush=True)
    text = write_results(args.output, rows, rows_before, {**meta, "total_s": round(time.perf_counter() - started, 1)})
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
