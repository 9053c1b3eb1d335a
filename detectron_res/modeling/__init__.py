"""Model components: ``backbone/`` (ResNet, VGG-16), RPN, RoI heads, Faster R-CNN.

Kept free of imports so that ``import detectron_res.modeling.<module>`` loads only
what it needs; build a detector with ``detectron_res.modeling.build.build_model``.
"""
