"""Accelerator instances, their peak throughput and list prices, and what a training run costs on them.

Defined for notebook 02 (book chapter 3: how long and how expensive a run will be); notebook 04 (chapter 4,
accelerators) reuses the table. Depends on `utils.sizing` (training_time_seconds) only.

Prices move (AWS cut P4d and P5 on-demand prices by up to 33% and 45% in June 2025), so every price here is the
EC2 launch list price with its date and source, to be replaced by today's figure from
https://aws.amazon.com/ec2/pricing/on-demand/ before planning real money. Pass your own `Instance` for anything else.

A SageMaker job rents `ml.*` instances, which SageMaker bills at its own per-instance-hour rates (listed per region on
its pricing page, SAGEMAKER_PRICING), above EC2's on-demand rate for the same hardware. No dated copy of those rates
is recorded here: `sagemaker_instance` gives the hardware of an `ml.*` type and takes its price from you.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.sizing import training_time_seconds

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Instance:
    """One rentable machine: its accelerators, their dense peak FLOP/s each, and an hourly price.

    `peak_flops_per_device` is the dense (no sparsity) peak in the precision training uses (bf16 for accelerators).
    `hourly_price_usd` is None when the machine is not rented (a laptop).
    """

    name: str
    accelerator: str
    devices: int
    peak_flops_per_device: float
    hourly_price_usd: float | None
    price_note: str


P4D = Instance(
    "p4d.24xlarge",
    "NVIDIA A100 40GB SXM",
    8,
    312e12,
    32.77,
    "launch list price, us-east-1 Linux on-demand, AWS News Blog 2020-11-02; peak: NVIDIA A100 datasheet (bf16 dense)",
)
P5 = Instance(
    "p5.48xlarge",
    "NVIDIA H100 80GB SXM",
    8,
    989e12,
    98.32,
    "launch list price, us-east-1 Linux on-demand, July 2023 (AWS pricing page as reported by The Next Platform "
    "2023-07-27); peak: NVIDIA H100 datasheet (bf16 dense, 1,979 with sparsity)",
)
TRN1 = Instance(
    "trn1.32xlarge",
    "AWS Trainium",
    16,
    190e12,
    21.50,
    "launch list price, us-east-1 Linux on-demand, AWS News Blog 2022-10-10; peak: AWS Neuron docs, Trainium "
    "architecture (190 TFLOP/s bf16 per chip)",
)
CLOUD_INSTANCES = (P4D, P5, TRN1)  # for training
INF2 = Instance(
    "inf2.48xlarge",
    "AWS Inferentia2",
    12,
    190e12,
    12.98,
    "launch list price, us-east-1 Linux on-demand, AWS News Blog 2023-04-13 (Inf2 general availability); peak: AWS "
    "Neuron docs, Inferentia2 architecture (190 TFLOP/s bf16 per chip)",
)
INFERENCE_INSTANCES = (INF2,)  # notebook 04 compares them; chapter 12 serves on them


SAGEMAKER_PRICING = "https://aws.amazon.com/sagemaker-ai/pricing/"  # on-demand rates per ml.* type, per region


def sagemaker_instance(instance_type: str, hourly_price_usd: float | None = None, price_note: str = "") -> Instance:
    """The SageMaker instance type `instance_type` (e.g. "ml.p5.48xlarge") as an `Instance`: the accelerators of the
    EC2 instance it runs on, at SageMaker's own on-demand price if you pass it (with its date and source as
    `price_note`). Without a price the instance is unpriced (costs come out NaN) and its note says where to look:
    SageMaker's rate is not EC2's, so an EC2 price would understate the bill."""
    hardware = {f"ml.{i.name}": i for i in (*CLOUD_INSTANCES, *INFERENCE_INSTANCES)}
    if instance_type not in hardware:
        raise ValueError(f"{instance_type!r} is not one of {sorted(hardware)}; build an Instance for other types")
    if hourly_price_usd is not None and hourly_price_usd <= 0:
        raise ValueError(f"hourly_price_usd must be positive, got {hourly_price_usd}")
    ec2 = hardware[instance_type]
    note = price_note or f"SageMaker price not recorded here; SageMaker's own rate (not EC2's): {SAGEMAKER_PRICING}"
    return Instance(instance_type, ec2.accelerator, ec2.devices, ec2.peak_flops_per_device, hourly_price_usd, note)


def local_instance(measured_peak_flops: float, name: str = "this machine", dtype: str = "fp32") -> Instance:
    """The machine the notebook runs on, with a peak measured by `utils.machine.measure_matmul_throughput` in
    `dtype` (say which: an MFU against an fp32 peak is not comparable with one against a bf16 datasheet peak)."""
    if measured_peak_flops <= 0:
        raise ValueError(f"measured peak must be positive FLOP/s, got {measured_peak_flops}")
    return Instance(name, f"CPU (measured {dtype} matmul)", 1, measured_peak_flops, None, "peak measured in this run")


def training_run_cost(flops: float, instance: Instance, instances: int = 1, mfu: float = 0.4) -> dict[str, float]:
    """Wall time (hours, days) and on-demand cost (USD, NaN when unpriced) to spend `flops` at a given MFU.

    time = FLOPs / (instances x devices x peak x MFU); cost = hours x instances x hourly price. The default MFU of
    0.4 sits just under the 46% PaLM reported for its 540B run (Chowdhery et al. 2022, table 3).
    """
    if flops <= 0:
        raise ValueError(f"flops must be positive, got {flops}")
    if instances < 1:
        raise ValueError(f"need at least one instance, got {instances}")
    seconds = training_time_seconds(flops, instances * instance.devices, instance.peak_flops_per_device, mfu)
    hours = seconds / SECONDS_PER_HOUR
    price = instance.hourly_price_usd
    cost = hours * instances * price if price is not None else float("nan")
    return {"hours": hours, "days": hours / 24, "cost_usd": cost}


@dataclass(frozen=True)
class AcceleratorSpec:
    """One accelerator chip as its maker specifies it (notebook 04): memory (GB) and its bandwidth (GB/s), dense
    peak TFLOP/s in bf16 and fp8 (None: no fp8 units), the links between chips in one instance, and what AWS rents
    it for."""

    name: str
    memory_gb: float
    memory_bandwidth_gbs: float
    bf16_tflops: float
    fp8_tflops: float | None
    chip_interconnect: str
    instance_network: str
    used_for: str
    source: str


ACCELERATOR_SPECS = (
    AcceleratorSpec(
        "NVIDIA A100 40GB SXM",
        40,
        1555,
        312,
        None,
        "NVLink 600 GB/s",
        "p4d: EFA 400 Gb/s",
        "training",
        "NVIDIA A100 datasheet; AWS P4d page",
    ),
    AcceleratorSpec(
        "NVIDIA H100 80GB SXM",
        80,
        3350,
        989,
        1979,
        "NVLink 900 GB/s",
        "p5: EFA 3,200 Gb/s",
        "training",
        "NVIDIA H100 datasheet; AWS P5 page",
    ),
    AcceleratorSpec(
        "AWS Trainium",
        32,
        820,
        190,
        190,
        "NeuronLink-v2",
        "trn1.32xlarge: EFA 800 Gb/s",
        "training",
        "AWS Neuron docs, Trainium architecture",
    ),
    AcceleratorSpec(
        "AWS Inferentia2",
        32,
        820,
        190,
        190,
        "NeuronLink-v2",
        "inf2.48xlarge: 100 Gb/s",
        "inference",
        "AWS Neuron docs, Inferentia2 architecture",
    ),
)
