import math

import pytest

from utils.accelerators import CLOUD_INSTANCES, P5, TRN1, Instance, local_instance, training_run_cost


def test_cost_is_hours_times_price():
    # 8 x 989e12 x 0.5 FLOP/s for one hour is 1.4242e19 FLOPs; one hour on one P5 costs its hourly price.
    one_hour = 8 * 989e12 * 0.5 * 3600
    run = training_run_cost(one_hour, P5, instances=1, mfu=0.5)
    assert run["hours"] == pytest.approx(1.0)
    assert run["cost_usd"] == pytest.approx(P5.hourly_price_usd)


def test_more_instances_same_cost_less_time():
    single = training_run_cost(1e21, TRN1, instances=1)
    four = training_run_cost(1e21, TRN1, instances=4)
    assert four["hours"] == pytest.approx(single["hours"] / 4)
    assert four["cost_usd"] == pytest.approx(single["cost_usd"])
    assert single["days"] == pytest.approx(single["hours"] / 24)


def test_local_machine_has_no_price():
    laptop = local_instance(190e9)
    run = training_run_cost(190e9 * 3600, laptop, mfu=1.0)
    assert run["hours"] == pytest.approx(1.0) and math.isnan(run["cost_usd"])


def test_every_cloud_instance_documents_its_price():
    for instance in CLOUD_INSTANCES:
        assert instance.hourly_price_usd and "list price" in instance.price_note and "peak" in instance.price_note


@pytest.mark.parametrize(
    "call",
    [
        lambda: training_run_cost(0, P5),
        lambda: training_run_cost(1e20, P5, mfu=0),
        lambda: training_run_cost(1e20, P5, instances=0),
        lambda: local_instance(-1.0),
    ],
)
def test_bad_input_is_rejected(call):
    with pytest.raises(ValueError):
        call()


def test_custom_instance():
    mine = Instance("my-box", "GPU", 2, 100e12, 3.0, "quoted by my provider 2026-11-22")
    assert training_run_cost(2 * 100e12 * 3600, mine, mfu=1.0)["cost_usd"] == pytest.approx(3.0)


def test_accelerator_specs_are_consistent_with_the_instances():
    from utils.accelerators import ACCELERATOR_SPECS

    by_name = {spec.name: spec for spec in ACCELERATOR_SPECS}
    from utils.accelerators import INFERENCE_INSTANCES

    for instance in (*CLOUD_INSTANCES, *INFERENCE_INSTANCES):
        assert by_name[instance.accelerator].bf16_tflops * 1e12 == instance.peak_flops_per_device
    assert all(spec.fp8_tflops is None or spec.fp8_tflops >= spec.bf16_tflops for spec in ACCELERATOR_SPECS)


def test_sagemaker_instance_has_the_hardware_of_its_ec2_type_and_only_the_price_it_is_given():
    from utils.accelerators import SAGEMAKER_PRICING, sagemaker_instance

    unpriced = sagemaker_instance("ml.p5.48xlarge")
    assert (unpriced.devices, unpriced.peak_flops_per_device) == (P5.devices, P5.peak_flops_per_device)
    assert unpriced.hourly_price_usd is None and SAGEMAKER_PRICING in unpriced.price_note
    assert math.isnan(training_run_cost(1e21, unpriced)["cost_usd"])  # never silently EC2's price
    priced = sagemaker_instance("ml.p5.48xlarge", 100.0, "read from the pricing page on 2026-11-28")
    assert training_run_cost(8 * 989e12 * 3600, priced, mfu=1.0)["cost_usd"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="ml.p4d.24xlarge"):
        sagemaker_instance("ml.p5.48xlarg")
    with pytest.raises(ValueError):
        sagemaker_instance("ml.p5.48xlarge", 0.0)


def test_local_instance_names_the_precision_of_its_peak():
    assert "fp32" in local_instance(190e9).accelerator and "bf16" in local_instance(700e9, dtype="bf16").accelerator
