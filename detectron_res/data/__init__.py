"""Datasets (COCO json, PASCAL VOC, YOLO txt), validation, augmentation and loaders.

Modules (import what you need; nothing heavy is imported here):

* ``image_io``   ``read_image``, ``read_image_size``, ``ImageReadError``
* ``dataset``    ``ImageRecord``, ``DetectionDataset``, ``DatasetReport``, ``DatasetError``
* ``coco``, ``voc``, ``yolo``   the three readers
* ``catalog``    ``get_dataset``, ``get_datasets``, ``concat_datasets``, ``datasets_root``
* ``transforms`` ``build_transforms``, ``get_resize_shape``, ``apply_transforms``
* ``loader``     ``Batch``, ``build_train_loader``, ``build_test_loader``, samplers
* ``shapes``     the synthetic demo dataset (``python -m detectron_res.data.shapes``)
* ``preview``    augmented images with ground truth (``tools/visualize_data.py``)
"""
