"""Image-classification datasets by name: downloaded, verified and decoded by `load_dataset`.

Where the files are read from and cached, what is verified and what each failure says: docs/data.md.
The sequence tasks and the text corpus live in `synthgrad.data.sequence_tasks` and `synthgrad.data.text`.
"""

from synthgrad.data.registry import DATASET_NAMES, IMAGE_SHAPES, load_dataset
from synthgrad.data.splits import ImageSplits
from synthgrad.errors import DatasetError

__all__ = ["DATASET_NAMES", "IMAGE_SHAPES", "DatasetError", "ImageSplits", "load_dataset"]
