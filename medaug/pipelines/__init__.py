"""medaug's stages, filed in the order the data flows through a study (imports nothing).

::

    source folder / CSV / NPZ  --medaug.io-->  datalist (train/val/test, leaks, skipped.csv)
        |
        v
    pretrain/     unlabeled pool (study train + shipped train splits + folders) -> SimCLR checkpoint (pretrained_path)
        |
        v
    oversample/   train split -> train split + synthetic minority images (manifest, quality, cost)
        |
        v
    train/        datalist -> loss, sampler, mixing, engine metrics, augmentation grid (for MONAI's trainer)
        |
        v
    evaluate/     checkpoint + test split -> test_<metric> with CIs, per-class scores, predictions, plots
        |
        v
    study/        grid of bundle runs -> MLflow parent + child runs -> report (tables, tests, plots)

    export.py     run's model.pt + model.json -> bundle's models/model.pt, model.json, model.ts (TorchScript)
    validate.py   a bundle run's settings checked first in its initialize (keys, names, dataset_dir, positive_class)
    predict.py    checkpoint + DICOM/image folder -> predictions.csv (no training code loaded)
    tta.py        test-time flip augmentation as a MONAI inferer (test evaluation and predict; imports no stage)
    tracking/     MLflow runs of every stage, the tag vocabulary, a local server (a service, not a stage)
    distributed.py  torchrun/DDP helpers: ranks, rank-0-only handlers (a service, not a stage)

Each subpackage's ``__init__`` is its face: what bundle configs (``medaug.pipelines.<stage>.<name>``)
and the CLI use. This file imports nothing, so ``import medaug.pipelines.predict`` stays light.
"""
