"""Settings shared by every test (shared helper functions are in ``helpers.py``)."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """One intra-op thread for every test module, its module-scoped fixtures included.

    On the 2 shared CPU cores, OpenMP threads waiting for each other make the small
    forward passes of the tests up to 10x slower; one thread also makes in-process
    runs reduce floats in the same order as the tools' subprocesses, which the tests
    start with ``OMP_NUM_THREADS=1`` (bitwise comparisons rely on it).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def full_fp32_precision_on_cuda(request):
    """CUDA tests compare GPU results with CPU ones: run them in true fp32.

    cuDNN convolutions use TF32 (10-bit mantissa) by default on Ampere and Hopper,
    which moves boxes by a few hundredths of a pixel (seen on an H200); that is a
    precision setting, not a bug, so parity tests switch it off.
    """
    if request.node.get_closest_marker("cuda") is None:
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(autouse=True)
def restore_package_logger():
    """Undo what an in-process tool run did to the ``detectron_res`` logger.

    ``launch.setup_logging`` gives the logger its own handlers and stops propagation
    (so a training run does not print every line twice); left in place, that hides
    later tests' records from pytest's ``caplog``, and its console handler writes to a
    test's captured stream. Its handlers (marked ``_detectron_res``) go even when a
    module-scoped fixture's run added them before the test; they hold log files open.
    """
    import logging

    logger = logging.getLogger("detectron_res")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    logger.propagate = True  # pytest's caplog listens on the root logger
    try:
        yield
    finally:
        for handler in logger.handlers[:]:
            if handler not in saved[0] or getattr(handler, "_detectron_res", False):
                logger.removeHandler(handler)
                handler.close()
        logger.propagate, logger.level = saved[1], saved[2]
