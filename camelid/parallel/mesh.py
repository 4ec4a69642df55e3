"""The device mesh from the torchrun environment: (dp_replicate, dp_shard, tp)."""

from __future__ import annotations

from dataclasses import dataclass

from camelid.errors import CamelidError


@dataclass(frozen=True)
class ParallelDims:
    world: int
    tp: int = 1
    dp_shard: int = -1  # -1: every rank TP does not use
    dp_replicate: int = 1

    def resolved(self) -> "ParallelDims":
        tp, rep = self.tp, self.dp_replicate
        if tp < 1 or rep < 1:
            raise CamelidError(f"train.tp ({tp}) and dp_replicate ({rep}) must be >= 1")
        if self.world % (tp * rep):
            raise CamelidError(f"world size {self.world} is not divisible by tp {tp} x dp_replicate {rep}; choose "
                               f"degrees whose product is {self.world}")
        shard = self.dp_shard if self.dp_shard != -1 else self.world // (tp * rep)
        if shard < 1 or rep * shard * tp != self.world:
            raise CamelidError(f"dp_replicate {rep} x dp_shard {shard} x tp {tp} = {rep * shard * tp}, but the world "
                               f"size is {self.world}: the degrees must multiply to the number of ranks")
        return ParallelDims(self.world, tp, shard, rep)

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard


def build_mesh(dims: ParallelDims, device_type: str):
    """(mesh, dp_mesh): a DeviceMesh with named dims `dp_replicate`, `dp_shard`, `tp` (size-1 dims
    included), and the flattened data-parallel mesh used for data loading and loss reduction."""
    from torch.distributed.device_mesh import init_device_mesh

    d = dims.resolved()
    mesh = init_device_mesh(device_type, (d.dp_replicate, d.dp_shard, d.tp),
                            mesh_dim_names=("dp_replicate", "dp_shard", "tp"))
    return mesh, mesh["dp_replicate", "dp_shard"]._flatten(mesh_dim_name="dp")
