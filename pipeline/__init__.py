"""Command-line tools and glue around the LGG MRI segmentation bundle.

The bundle configs in ``bundles/lgg_mri_segmentation/configs`` define training,
evaluation and inference. This package discovers the Kaggle ``kaggle_3m`` data,
builds datalists, runs the bundle configs and writes reports.
"""

from __future__ import annotations

__version__ = "0.1.0"
