"""The accelerator catalogue: the one table every layer derives GPU and FPGA facts from.

MIG layouts, hub spawn options, Kueue flavors, offload flavors, policies and accounting labels
all read this module; nothing else in the program lists GPU models. MIG facts follow NVIDIA's
MIG user guide and the GPU operator's default mig-parted config (v26.7.0), which the tests
compare against independently.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MigProfile:
    """One MIG GPU-instance profile: its compute and memory slices and how many fit one GPU."""

    name: str  # e.g. "1g.10gb"
    compute_slices: int
    memory_slices: int
    max_instances: int

    @property
    def memory_gb(self) -> int:
        return int(self.name.split(".")[1].removesuffix("gb"))

    @property
    def resource_suffix(self) -> str:
        """The part after ``nvidia.com/mig-`` in the mixed-strategy resource name."""
        return self.name


@dataclass(frozen=True)
class GpuModel:
    key: str  # the id used in stack files: "a100-80gb"
    display: str
    product_label: str  # nvidia.com/gpu.product as the GPU operator's feature discovery reports it
    memory_gb: int
    pci_device_ids: tuple[str, ...]  # "0x20B510DE": the form mig-parted's device-filter uses
    mig_profiles: tuple[MigProfile, ...] = ()
    compute_slices: int = 0  # MIG compute slices of a whole GPU (7 on A100/H100, 4 on A30)
    memory_slices: int = 0
    tdp_watts: int = 0

    @property
    def supports_mig(self) -> bool:
        return bool(self.mig_profiles)

    def profile(self, name: str) -> MigProfile | None:
        return next((p for p in self.mig_profiles if p.name == name), None)


@dataclass(frozen=True)
class FpgaModel:
    key: str
    display: str
    resource_name: str  # the extended resource the AMD/Xilinx device plugin advertises
    node_label: str  # value of the platform's fpga model label on nodes carrying the board


def _profiles(*rows: tuple[str, int, int, int]) -> tuple[MigProfile, ...]:
    return tuple(MigProfile(n, c, m, k) for n, c, m, k in rows)


_A100_80_PROFILES = _profiles(
    ("1g.10gb", 1, 1, 7),
    ("1g.20gb", 1, 2, 4),
    ("2g.20gb", 2, 2, 3),
    ("3g.40gb", 3, 4, 2),
    ("4g.40gb", 4, 4, 1),
    ("7g.80gb", 7, 8, 1),
)

GPUS: dict[str, GpuModel] = {
    g.key: g
    for g in (
        GpuModel("t4", "NVIDIA T4", "Tesla-T4", 16, ("0x1EB810DE",), tdp_watts=70),
        GpuModel("rtx5000", "Quadro RTX 5000", "Quadro-RTX-5000", 16, ("0x1EB010DE",), tdp_watts=230),
        GpuModel(
            "a30",
            "NVIDIA A30",
            "NVIDIA-A30",
            24,
            ("0x20B710DE",),
            _profiles(("1g.6gb", 1, 1, 4), ("2g.12gb", 2, 2, 2), ("4g.24gb", 4, 4, 1)),
            compute_slices=4,
            memory_slices=4,
            tdp_watts=165,
        ),
        GpuModel(
            "a100-40gb",
            "NVIDIA A100 40GB",
            "NVIDIA-A100-PCIE-40GB",
            40,
            ("0x20B010DE", "0x20B110DE", "0x20F110DE"),
            _profiles(
                ("1g.5gb", 1, 1, 7),
                ("1g.10gb", 1, 2, 4),
                ("2g.10gb", 2, 2, 3),
                ("3g.20gb", 3, 4, 2),
                ("4g.20gb", 4, 4, 1),
                ("7g.40gb", 7, 8, 1),
            ),
            compute_slices=7,
            memory_slices=8,
            tdp_watts=250,
        ),
        GpuModel(
            "a100-80gb",
            "NVIDIA A100 80GB",
            "NVIDIA-A100-80GB-PCIe",
            80,
            ("0x20B210DE", "0x20B510DE"),
            _A100_80_PROFILES,
            compute_slices=7,
            memory_slices=8,
            tdp_watts=300,
        ),
        GpuModel(
            "h100-80gb",
            "NVIDIA H100 80GB",
            "NVIDIA-H100-80GB-HBM3",
            80,
            ("0x233010DE", "0x233110DE"),
            _A100_80_PROFILES,
            compute_slices=7,
            memory_slices=8,
            tdp_watts=700,
        ),
        GpuModel(
            "h200",
            "NVIDIA H200 141GB",
            "NVIDIA-H200",
            141,
            ("0x233510DE",),
            _profiles(
                ("1g.18gb", 1, 1, 7),
                ("1g.35gb", 1, 2, 4),
                ("2g.35gb", 2, 2, 3),
                ("3g.71gb", 3, 4, 2),
                ("4g.71gb", 4, 4, 1),
                ("7g.141gb", 7, 8, 1),
            ),
            compute_slices=7,
            memory_slices=8,
            tdp_watts=700,
        ),
        GpuModel("l40s", "NVIDIA L40S", "NVIDIA-L40S", 48, ("0x26B910DE",), tdp_watts=350),
    )
}

# resource_name: the AMD/Xilinx device plugin advertises ``amd.com/<shell>-<timestamp>`` for a
# board flashed with that shell; the timestamp comes from the flashed platform, so a site sets the
# exact names it sees (``kubectl describe node``) in aiinfn:accelerators.fpgaResourceNames.
FPGAS: dict[str, FpgaModel] = {
    f.key: f
    for f in (
        FpgaModel("alveo-u50", "AMD Alveo U50", "amd.com/xilinx_u50_gen3x16_xdma_base_5", "alveo-u50"),
        FpgaModel("alveo-u250", "AMD Alveo U250", "amd.com/xilinx_u250_gen3x16_xdma_shell_4_1", "alveo-u250"),
        FpgaModel("alveo-u55c", "AMD Alveo U55C", "amd.com/xilinx_u55c_gen3x16_xdma_base_3", "alveo-u55c"),
        FpgaModel("versal-v70", "AMD Versal V70", "amd.com/xilinx_v70_gen5x8_qdma_base_2", "versal-v70"),
    )
}

# Node labels the platform itself sets at registration (the GPU operator adds its own).
LABEL_POOL = "aiinfn.infn.it/pool"
LABEL_ROLE = "aiinfn.infn.it/role"
LABEL_GPU_MODEL = "aiinfn.infn.it/gpu-model"
LABEL_FPGA_MODEL = "aiinfn.infn.it/fpga-model"
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"


def fpga_board_label(board: str) -> str:
    """Set to "true" on every node carrying that board (a pool may mix boards, e.g. U50 + U250)."""
    return f"aiinfn.infn.it/fpga.{board}"


LABEL_MIG_CONFIG = "nvidia.com/mig.config"
LABEL_DEVICE_PLUGIN_CONFIG = "nvidia.com/device-plugin.config"  # per-node device-plugin config (time-slicing)
GPU_TAINT_KEY = "nvidia.com/gpu"
FPGA_TAINT_KEY = "amd.com/fpga"
GPU_RESOURCE = "nvidia.com/gpu"


def gpu(key: str) -> GpuModel:
    return GPUS[key]


def fpga(key: str) -> FpgaModel:
    return FPGAS[key]


@dataclass(frozen=True)
class Offering:
    """Something a user can ask for: a whole GPU, a MIG slice, an FPGA board, or CPU only.

    Built by the accelerator layer from the site's pools; consumed by the hub, Kueue and the job
    service so all three name the same resources.
    """

    key: str  # "a100-80gb", "a100-80gb-1g.10gb", "alveo-u250", "cpu"
    kind: str  # "gpu" | "mig" | "fpga" | "cpu"
    resource_name: str | None  # extended resource requested, None for cpu
    model: str | None  # catalogue key
    profile: str | None = None  # MIG profile
    node_labels: dict[str, str] = field(default_factory=dict)
    count: int = 0  # how many the site advertises (time-sliced devices count once per replica)
    pools: tuple[str, ...] = ()
    physical_count: int = 0  # devices (GPUs, MIG slices, boards) behind ``count``
    time_sliced: bool = False  # shared by device-plugin time-slicing on some pool
