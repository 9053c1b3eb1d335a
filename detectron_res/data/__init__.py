"""Datasets (COCO json, PASCAL VOC, YOLO txt), validation, augmentation and loaders."""
