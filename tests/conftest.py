"""Settings shared by every test (shared helper functions are in ``helpers.py``)."""
import pytest
import torch

# The fast loop, ``make test-fast`` (``pytest -m "not slow and not heavy"``): the tests
# below are marked ``heavy``. Each took 1 s or more (all its parameters together) in
# ``pytest -m "not slow" --durations=0`` on the project's 2-core machine, loaded by
# other jobs (2026-12-07; the whole run: 712 s), except two tests kept in the loop so
# that it still calls into every package module: test_classification_train.py's
# test_layer_response_std_equals_a_manual_forward (classification/diagnostics.py, 2 s)
# and test_outputs.py's test_plot_curves_and_reproduce_tables (classification/plotting.py,
# 1.2 s). Whoever adds a test of that weight adds its name here; a name that is no
# longer a test of its file stops the run.
HEAVY_TESTS = {
    "test_analysis.py": (
        "test_analyze_model_tool_bare_backbone",
        "test_msra_resnet_multiply_adds_match_table1",
    ),
    "test_backbone.py": ("test_resnet_parameter_counts_equal_torchvision",),
    "test_benchmark_report.py": ("test_report_only_rewrites_results_md_and_the_plot",),
    "test_bad_inputs.py": ("test_bad_input",),
    "test_classification_config.py": ("test_cifar_configs_follow_sec_4_2_and_table_6",),
    "test_classification_train.py": (
        "test_cifar_resnet20_and_plain20_write_the_diagnostics_and_plot_them",
        "test_constant_warmup_is_the_resnet110_recipe",
        "test_dropout_switch_keeps_the_weight_names",
        "test_imagenet_classifier_end_to_end_then_initializes_a_detector",
        "test_resume_continues_exactly",
        "test_signal_checkpoints_exits_5_and_resume_finishes",
        "test_stage_gradient_norms_equal_autograd_on_the_same_batch",
    ),
    "test_config.py": (
        "test_command_line_error_is_one_line_without_traceback",
        "test_config_errors",
        "test_round_trip_through_dict_and_yaml",
    ),
    "test_configs.py": (
        "test_config_weights_go_through_the_weight_import",
        "test_detectron2_c4_recipe",
        "test_every_detection_config_is_covered",
        "test_paper_config_trains_one_iteration",
        "test_paper_protocol",
    ),
    "test_data_loader.py": ("test_workers_do_not_deadlock_after_opencv_used_threads",),
    "test_engine_run.py": ("test_a_task_of_its_own_trains_evaluates_and_resumes_exactly",),
    "test_engine_trainer.py": (
        "test_resume_after_crash_gives_identical_weights",
        "test_signal_checkpoints_and_stops",
    ),
    "test_eval_inference.py": ("test_two_gloo_processes_lose_and_double_nothing",),
    "test_eval_voc.py": ("test_vectorized_matches_loop_reference",),
    "test_export.py": (
        "test_export_check_compares_real_detections_and_catches_a_changed_weight",
        "test_export_check_without_detections_is_not_verified",
        "test_export_command_line",
        "test_export_refuses_to_overwrite",
        "test_onnx_matches_pytorch",
        "test_torchscript_matches_pytorch",
    ),
    "test_faults.py": (
        "test_sigkill_during_periodic_evaluation_is_redone_on_resume",
        "test_signal_during_eval_only",
        "test_signal_during_final_evaluation",
        "test_signal_during_periodic_evaluation",
        "test_signal_during_training_checkpoints_and_exits_5",
        "test_sigterm_to_the_process_group_with_loader_workers",
        "test_train_net_disk_full_exits_6_then_resumes",
    ),
    "test_infer.py": (
        "test_all_input_kinds_and_broken_files",
        "test_boxes_are_in_original_image_pixels",
        "test_command_line_uses_latest_trained_model",
    ),
    "test_modeling_faster_rcnn.py": ("test_training_from_loader_batch",),
    "test_outputs.py": ("test_train_net_finished_run_resume_overwrite_and_eval_only",),
    "test_properties.py": (
        "test_box_iou_properties",
        "test_comp4_round_trip",
    ),
    "test_speed_equivalence.py": (
        "test_a_ground_truth_box_off_the_map_takes_the_plain_order_in_training",
        "test_all_speed_options_give_the_plain_detections",
        "test_benchmark_mac_count_matches_a_real_forward_pass",
        "test_convs_stay_after_pooling_with_a_training_batchnorm",
        "test_each_speed_option_alone_gives_the_plain_detections",
        "test_speed_options_give_the_same_training_losses_and_gradients",
        "test_torchvision_c4_gives_our_detections",
        "test_torchvision_c4_has_our_weights_and_features",
    ),
    "test_train_net.py": (
        "test_distributed_matches_single_process",
        "test_finetune_other_classes_reports_skipped_keys_then_eval_only",
        "test_sigkill_and_resume_gives_identical_weights",
    ),
    "test_untrusted_files.py": (
        "test_evaluation_outputs_stay_in_the_output_folder",
        "test_train_net_weights",
    ),
    "test_weights.py": (
        "test_arch_inference_vgg_msra_and_failure",
        "test_arch_is_inferred_from_the_block_counts",
        "test_detectron2_backbone_through_the_tool_infers_its_arch",
        "test_detectron2_c4_detector_converts_to_identical_detections",
        "test_msra_pickle_loads_into_msra_resnet50",
        "test_torchvision_resnet_weights_give_the_same_logits",
        "test_torchvision_vgg16_weights_give_the_same_logits",
    ),
}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config, items):
    checked = set()
    for item in items:
        names = HEAVY_TESTS.get(item.path.name, ())
        if item.path.name not in checked and names:
            checked.add(item.path.name)
            gone = [n for n in names if not hasattr(item.module, n)]
            if gone:
                raise pytest.UsageError(f"tests/conftest.py HEAVY_TESTS[{item.path.name!r}]: no test called "
                                        f"{', '.join(gone)} in that file; remove or rename the entry")
        if getattr(item, "originalname", item.name) in names:
            item.add_marker(pytest.mark.heavy)


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

    ``engine.run.setup_logging`` gives the logger its own handlers and stops propagation
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
