#!/usr/bin/env python
"""Generate the synthetic "shapes" demo dataset (COCO json, VOC tree, YOLO txt).

    python tools/make_shapes.py                       # -> datasets/shapes (600 train / 100 val)
    python tools/make_shapes.py --out /data/shapes --num-train 2000 --seed 1

Same as ``python -m detectron_res.data.shapes``; see that module for the layout.
Does nothing if the folder already holds a dataset made with the same parameters.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron_res.data.shapes import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
