"""When to drop the training loader's last batch.

A training epoch whose sample count leaves a remainder of one against the batch size ends on a
one-image batch. In training mode a BatchNorm layer normalises each channel over the batch and the
spatial positions; once a network's feature map has shrunk to 1 x 1 (Inception-V3 at its minimum
75 px input: ``Mixed_7a`` reduces 3 x 3 to 1 x 1) that is one value per channel, and torch refuses it
("Expected more than 1 value per channel when training"). Even where it runs, a one-image step is
the noisiest gradient of the epoch. BreastMNIST hits this: after the two conflicting duplicates are
excluded its train split holds 545 images, 17 x 32 + 1. torch's ``DataLoader(drop_last=True)`` would
throw away up to ``batch_size - 1`` images every epoch on every dataset; dropping only the lone
image loses at most one (a different one each epoch, the order being shuffled).
"""

from __future__ import annotations


def drop_single_sample_batch(num_samples: int, batch_size: int) -> bool:
    """``drop_last`` for a training loader of ``num_samples`` per epoch (per rank under DDP): True
    exactly when the last batch would hold a single sample."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive number, got {batch_size}")
    return int(batch_size) > 1 and int(num_samples) % int(batch_size) == 1
