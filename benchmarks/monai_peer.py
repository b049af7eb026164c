"""The plain MONAI peer of medaug's default recipe: what a researcher writes in ~60 lines.

ResNet-18 (MONAI's, ImageNet stem), Adam, left-right flips and small rotations, a class-weighted
cross-entropy, the epoch with the best validation AUC scored once on the test split. It shares no
code with medaug on purpose (only the metric definitions, so both sides are scored alike), so the
benchmarks can say whether medaug's defaults beat it in the same run.

Run alone: ``python benchmarks/monai_peer.py --data data/breastmnist_64.npz --seed 0``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from monai import transforms as mt
from monai.data import DataLoader, Dataset
from monai.networks.nets import resnet18
from monai.utils import set_determinism
from sklearn.metrics import roc_auc_score


def run_peer(npz_path: str, seed: int = 0, epochs: int = 30, batch_size: int = 32, lr: float = 1e-3) -> dict:
    """Train the peer; returns the test split's class probabilities (N, 2) and labels, the best
    epoch, its validation AUC (of class 1; AUC is symmetric for two classes) and the wall time."""
    set_determinism(seed=seed)
    arrays = np.load(npz_path)

    def items(split):
        images = arrays[f"{split}_images"].astype(np.float32)[:, None] / 255.0
        return [{"image": im, "label": int(lab)} for im, lab in zip(images, arrays[f"{split}_labels"].ravel())]

    train_tf = mt.Compose(
        [
            mt.RandFlipd("image", prob=0.5, spatial_axis=1),
            mt.RandRotated("image", range_x=np.pi / 12, prob=0.5, padding_mode="zeros"),
            mt.EnsureTyped("image", dtype=torch.float32, track_meta=False),
        ]
    )
    plain_tf = mt.EnsureTyped("image", dtype=torch.float32, track_meta=False)
    train = DataLoader(Dataset(items("train"), train_tf), batch_size=batch_size, shuffle=True)
    val = DataLoader(Dataset(items("val"), plain_tf), batch_size=64)
    test = DataLoader(Dataset(items("test"), plain_tf), batch_size=64)

    model = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    counts = np.bincount(arrays["train_labels"].ravel(), minlength=2)
    weights = torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def predict(loader):
        model.eval()
        probs, labels = [], []
        with torch.no_grad():
            for batch in loader:
                probs.append(torch.softmax(model(batch["image"]), 1).numpy())
                labels.append(batch["label"].numpy())
        return np.concatenate(probs), np.concatenate(labels)

    best_auc, best_state, best_epoch = -1.0, None, 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in train:
            optimizer.zero_grad()
            loss_fn(model(batch["image"]), batch["label"]).backward()
            optimizer.step()
        probs, labels = predict(val)
        auc = roc_auc_score(labels, probs[:, 1])
        if auc > best_auc:
            best_auc, best_epoch = auc, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    probs, labels = predict(test)
    return {
        "probs": probs,
        "labels": labels,
        "best_epoch": best_epoch,
        "val_auc": float(best_auc),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/breastmnist_64.npz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--positive", type=int, default=0, help="index of the positive class (0: malignant)")
    args = parser.parse_args()
    out = run_peer(args.data, args.seed, args.epochs)
    from medaug.pipelines.evaluate import compute_metrics  # the same metric code as medaug's runs

    scores = compute_metrics(out["labels"], out["probs"], positive_class=args.positive)
    keep = ("auc", "balanced_accuracy", "accuracy", "sensitivity", "specificity")
    print(json.dumps({**{k: round(scores[k], 4) for k in keep}, "best_epoch": out["best_epoch"],
                      "seconds": round(out["seconds"], 1)}))


if __name__ == "__main__":
    main()
