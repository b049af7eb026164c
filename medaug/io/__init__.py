"""Data sources -> datalists: MedMNIST .npz, folders per class, DICOM folders with a labels CSV."""

from medaug.io.caching import DATASET_TYPES, make_dataset
from medaug.io.loader import LoadDatalistImaged, read_entry_image
from medaug.io.model_record import ModelRecordError, build_model_record, read_model_record, write_model_record
from medaug.io.sources import DATA_FORMATS, LabelsError, detect_format, source_entries
from medaug.io.splits import assign_splits, simulate_imbalance
from medaug.io.study_data import StudyData, TooFewImagesError, build_study_data, shipped_data_path

__all__ = [
    "DATA_FORMATS",
    "DATASET_TYPES",
    "LabelsError",
    "LoadDatalistImaged",
    "ModelRecordError",
    "StudyData",
    "TooFewImagesError",
    "assign_splits",
    "build_model_record",
    "build_study_data",
    "detect_format",
    "make_dataset",
    "read_entry_image",
    "read_model_record",
    "shipped_data_path",
    "simulate_imbalance",
    "source_entries",
    "write_model_record",
]
