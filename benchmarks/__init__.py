"""The speed benchmarks: ``python benchmarks/run.py`` and the modules it is made of.

A package only so that its modules import each other by one unambiguous name
(``benchmarks.timing``, not a top-level ``timing``); it is not installed with
``detectron_res``. The map of the modules is in ``run.py``'s docstring.
"""
