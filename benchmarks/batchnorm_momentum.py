"""Why EfficientNet-B0 sat at chance in the study tables: batch-norm momentum against iterations.

MONAI's EfficientNet keeps TensorFlow's momentum (0.01 in torch's convention); medaug builds it with
torch's 0.1 (``medaug.models.classifiers.EFFICIENTNET_NORM``). This trains EfficientNet-B0 at 32 px on
192 PneumoniaMNIST train images (seeded draw) with AdamW for a few iterations and scores the first
300 validation images in eval mode (running statistics) and in train mode (batch statistics).
One thread; about a minute. Writes ``benchmarks/results/batchnorm_momentum.json`` and ``.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medaug.models import build_classifier

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CASES = ((0.01, 36), (0.1, 36), (0.01, 150), (0.1, 150))


def images(array: np.ndarray) -> torch.Tensor:
    return F.interpolate(torch.tensor(array, dtype=torch.float32)[:, None] / 255, size=32, mode="area")


def main() -> None:
    torch.set_num_threads(1)
    data = np.load(REPO / "data" / "pneumoniamnist.npz")
    chosen = np.random.default_rng(0).choice(len(data["train_images"]), 192, replace=False)
    x, y = images(data["train_images"][chosen]), torch.tensor(data["train_labels"][chosen].ravel()).long()
    x_val, y_val = images(data["val_images"][:300]), data["val_labels"][:300].ravel()
    rows = []
    for momentum, iterations in CASES:
        torch.manual_seed(0)
        norm = ("batch", {"eps": 1e-3, "momentum": momentum})
        net = build_classifier("efficientnet-b0", 1, 2, (32, 32), norm=norm)
        optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
        for _ in range(iterations):
            batch = torch.randint(0, len(x), (32,))
            loss = F.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            net.train()
            p_batch = torch.softmax(net(x_val), 1)[:, 1].numpy()
            net.eval()
            p_running = torch.softmax(net(x_val), 1)[:, 1].numpy()
        rows.append(
            {
                "momentum": momentum,
                "iterations": iterations,
                "val_auc_eval_mode": round(float(roc_auc_score(y_val, p_running)), 3),
                "eval_mode_probability_spread": round(float(p_running.max() - p_running.min()), 3),
                "val_auc_train_mode": round(float(roc_auc_score(y_val, p_batch)), 3),
            }
        )
        print(rows[-1], flush=True)
    lines = [
        "# EfficientNet-B0: batch-norm momentum vs iterations (eval mode uses the running statistics)",
        "",
        "192 PneumoniaMNIST train images at 32 px, AdamW 1e-3, batch 32; first 300 val images; "
        f"1 thread, {time.strftime('%Y-%m-%d')}. A spread of 0 = every image gets the same probability.",
        "",
        "| BN momentum (torch) | iterations | val AUC, eval mode | probability spread | val AUC, train mode |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['momentum']} | {r['iterations']} | {r['val_auc_eval_mode']:.3f} "
            f"| {r['eval_mode_probability_spread']:.3f} | {r['val_auc_train_mode']:.3f} |"
        )
    (RESULTS / "batchnorm_momentum.json").write_text(json.dumps({"rows": rows}, indent=2))
    (RESULTS / "batchnorm_momentum.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
