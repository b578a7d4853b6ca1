"""Distributed training, kept apart from the model as torchtitan does: the process group from torchrun's environment,
rank helpers, DDP or FSDP2 (`fully_shard` per block, then the root) with a mixed-precision policy, metric reduction,
and sharded checkpoints through torch.distributed.checkpoint that reload at any world size (docs/distributed.md)."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from llmlab.errors import ConfigError

# torch.distributed's fsdp, tensor and checkpoint packages take seconds to import: they are imported where used, so
# that single-process training does not wait for them.

PARALLEL_MODES = ("none", "ddp", "fsdp")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_joined = False  # whether this process has joined a process group (setup)


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its environment variables)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def setup(backend: str | None = None) -> bool:
    """Join the process group torchrun describes; a no-op without torchrun. Returns whether a process group is up.

    By default torch creates NCCL for GPU tensors (when there are GPUs) and gloo for CPU tensors; each process takes
    the GPU of its LOCAL_RANK.
    """
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    global _joined
    _joined = True
    return True


def teardown() -> None:
    """Leave the process group once every rank is done with it (a no-op when none is up)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def end_process(code: int) -> int:
    """Return code, or, in a process that joined a process group, end it now with that exit code.

    torch keeps a gloo process group alive in C++ after destroy_process_group once DDP or FSDP has used it (torch
    2.13), and its worker threads may still be releasing a finished collective's tensors when the interpreter shuts
    down; taking the GIL then aborts the process ("terminate called without an active exception"), turning a finished
    run into a failed one. So a torchrun worker skips interpreter shutdown, after flushing its output."""
    if not _joined:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def is_distributed() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that writes metrics, samples and the checkpoint's small files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def broadcast(value):
    """Rank 0's value (any picklable object) on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather(value) -> list:
    """Every rank's value, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """The sums over ranks of a few numbers (float64, in one collective on device)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def as_full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (e.g. FSDP2's gradient norm), or the tensor itself."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def rank_rows(batch: dict, rank: int, world_size: int) -> dict:
    """This rank's rows [rank·B/W, (rank+1)·B/W) of a global batch, so that W ranks together see the whole batch."""
    rows = next(iter(batch.values())).shape[0]
    if rows % world_size:
        raise ConfigError(f"the batch of {rows} rows cannot be split evenly over {world_size} processes; "
                          "make data.batch_size a multiple of the number of processes.")
    share = rows // world_size
    return {name: value[rank * share : (rank + 1) * share] for name, value in batch.items()}


class RankRows:
    """Wraps an iterator of global batches (with state_dict/load_state_dict) to yield only this rank's rows."""

    def __init__(self, batches: Iterator[dict]):
        self.batches, self.rank, self.world_size = batches, rank(), world_size()

    def __iter__(self) -> "RankRows":
        return self

    def __next__(self) -> dict:
        return rank_rows(next(self.batches), self.rank, self.world_size)

    def state_dict(self) -> dict:
        """The wrapped iterator's position (the same on every rank)."""
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue the wrapped iterator from a saved position."""
        self.batches.load_state_dict(state)


def parallelize(model: nn.Module, config) -> nn.Module:
    """Apply config.parallel (a TrainConfig) to model when a process group is up; return the module to run.

    "ddp" returns a DistributedDataParallel wrapper; "fsdp" shards each transformer block and then the root in place
    with fully_shard and a MixedPrecisionPolicy(config.param_dtype, config.reduce_dtype), returning model itself.
    Without a process group the model is returned as it is, whatever config.parallel says.
    """
    if not is_distributed():
        return model
    if config.parallel == "none":
        if world_size() > 1:
            raise ConfigError(f"train.parallel is 'none' but {world_size()} processes were started; "
                              "set train.parallel to ddp or fsdp.")
        return model
    device = next(model.parameters()).device
    if config.parallel == "ddp":
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from llmlab.model.transformer import Block

    shard = partial(fully_shard, mesh=init_device_mesh(device.type, (world_size(),)),
                    mp_policy=MixedPrecisionPolicy(param_dtype=config.param_dtype, reduce_dtype=config.reduce_dtype))
    for module in model.modules():
        if isinstance(module, Block):
            shard(module)
    shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether fully_shard has sharded model's parameters."""
    if not is_distributed():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool):
    """Within the body, backward passes reduce gradients across ranks only if enabled (DDP no_sync, FSDP2's
    set_requires_gradient_sync): the micro-batches of an accumulation before the last need no communication."""
    if enabled or not is_distributed():
        yield
    elif isinstance(module, DistributedDataParallel):
        with module.no_sync():
            yield
    elif is_sharded(module):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


@contextlib.contextmanager
def _quiet_without_process_group():
    """Silence DCP's warning that it reads or writes in a single process: that is what a run without one wants."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (load|save) in a single process")
        yield


def save_sharded(directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write model and optimizer state (keyed by parameter name) with torch.distributed.checkpoint: each rank
    writes its own shards, rank 0 the metadata that lets any world size read them back. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _quiet_without_process_group():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=Path(directory),
                 no_dist=not is_distributed())


def load_sharded(directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Read a save_sharded checkpoint into model (and optimizer), resharded to this run's world size. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_state_dict

    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
    with _quiet_without_process_group():
        dcp.load(state, checkpoint_id=Path(directory), no_dist=not is_distributed())
    set_state_dict(model, optimizer or [], model_state_dict=state["model"], optim_state_dict=state.get("optimizer", {}))


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) model state on rank 0's CPU, empty on the other ranks. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a single-process optimizer.state_dict() (keyed by parameter position) into an optimizer over model's
    parameters, sharded or not, by renaming the positions to parameter names as the optimizer's groups list them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(parameter): name for name, parameter in model.named_parameters()}
    fqns = [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]
    positions = [position for group in state["param_groups"] for position in group["params"]]
    by_name = dict(zip(positions, fqns))
    named = {
        "state": {by_name[position]: value for position, value in state["state"].items()},
        "param_groups": [{**group, "params": [by_name[p] for p in group["params"]]} for group in state["param_groups"]],
    }  # fmt: skip
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))
