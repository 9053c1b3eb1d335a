"""Real signals at chosen points of training and evaluation, for the stop-signal and
kill tests (tests/test_faults.py, tests/test_engine_trainer.py,
tests/test_classification_train.py). Importable from a subprocess too (with tests/ on
PYTHONPATH), so that a child can kill itself at the same points.
"""
import os

from detectron_res.engine.hooks import HookBase


class SignalBeforeIteration(HookBase):
    """Sends ``signum`` to this process before iteration ``at``."""

    def __init__(self, at, signum):
        self.at, self.signum = at, signum

    def before_step(self):
        if self.trainer.iter == self.at:
            os.kill(os.getpid(), self.signum)


def signal_test_loaders(signum, at_batch, *, evaluation=None):
    """Wrap ``detectron_res.data.loader.build_test_loader`` so that its loaders send
    ``signum`` to this process while batch ``at_batch`` is being loaded (in every
    evaluation, or in the ``evaluation``-th only, counting from 1).

    Returns ``(replacement, handed_out)``: the function to put in place of
    ``build_test_loader`` and the list of batches handed out, per evaluation.
    """
    import detectron_res.data.loader as loader_module

    original = loader_module.build_test_loader
    handed_out = []

    class Signalling:
        def __init__(self, loader):
            self.loader = loader

        def __getattr__(self, name):
            return getattr(self.loader, name)

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            handed_out.append(0)
            for i, batch in enumerate(self.loader):
                if i == at_batch and evaluation in (None, len(handed_out)):
                    os.kill(os.getpid(), signum)
                handed_out[-1] += 1
                yield batch

    return (lambda *a, **k: Signalling(original(*a, **k))), handed_out
