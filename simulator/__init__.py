"""natten_like's analytical speed-of-light simulator: pure Python + numpy, no torch, no GPU.

For a sparsity config and a tile shape it predicts, without running a kernel, the FLOP-wise and tile-level bounds on the
speedup over dense attention, whether the config is fully block-sparse, end-to-end speedups by Amdahl's law and
roofline times per GPU. ``python -m simulator --help`` for the command line; docs/simulator.md for the model.
"""

from simulator.block_sparse import BlockSparseResult, make_block_mask, simulate_block_sparse
from simulator.common import GPUS, Gpu, amdahl
from simulator.gna import GnaConfig, GnaResult, TileCounts, gna_config, gna_tile_visits, simulate_gna
from simulator.latent import LatentResult, simulate_latent
from simulator.presets import PRESETS, get_preset
from simulator.strided_shard import s2_block_mask, simulate_strided_shard
from simulator.sweep import SweepResult, sweep_gna

__all__ = [
    "GPUS",
    "PRESETS",
    "BlockSparseResult",
    "GnaConfig",
    "GnaResult",
    "Gpu",
    "LatentResult",
    "SweepResult",
    "TileCounts",
    "amdahl",
    "get_preset",
    "gna_config",
    "gna_tile_visits",
    "make_block_mask",
    "s2_block_mask",
    "simulate_block_sparse",
    "simulate_gna",
    "simulate_latent",
    "simulate_strided_shard",
    "sweep_gna",
]
