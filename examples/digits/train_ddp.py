"""The digits MLP with DistributedDataParallel: one trial on a process per slot.

Started by Rung's launcher (``python3 -m rung.launch.torch_distributed -- python3
train_ddp.py``), each process joins torch.distributed (NCCL on GPUs, gloo on the CPU),
takes its share of every batch, and DDP averages the gradients, so the model trains as
on one process with the whole batch. Every rank follows the searcher's operations and
the preemption signal in step; only the chief validates, reports and saves.
"""

import logging
import os

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from train import build, load_data, restore, save, validation_error

import rung as det

log = logging.getLogger("digits-ddp")


def main(
    core_context: det.core.Context, hparams: dict, latest: str | None, device: torch.device
) -> None:
    rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
    x_train, y_train, x_val, y_val = load_data(device)
    model, optimizer = build(
        round(hparams["width"]), hparams["lr"], hparams["weight_decay"], device
    )
    generator = torch.Generator().manual_seed(0)  # the same order on every rank
    epoch = restore(core_context, latest, model, optimizer, generator)  # every rank
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    batch_size = int(hparams["batch_size"])
    chief = rank == 0
    for op in core_context.searcher.operations():
        while epoch < op.length:
            order = torch.randperm(len(x_train), generator=generator).to(device)
            for start in range(0, len(order), batch_size):
                # This rank's share of the batch; DDP averages the ranks' gradients.
                index = order[start : start + batch_size][rank::world]
                if len(index) == 0:
                    index = order[start : start + 1]  # keep every rank in the all-reduce
                optimizer.zero_grad()
                loss = loss_fn(ddp(x_train[index]), y_train[index])
                loss.backward()
                optimizer.step()
            epoch += 1
            if chief:
                op.report_progress(epoch)
                core_context.train.report_training_metrics(epoch, {"loss": float(loss.detach())})
        if chief:
            error = validation_error(model, x_val, y_val)
            core_context.train.report_validation_metrics(epoch, {"validation_error": error})
            save(core_context, model, optimizer, generator, epoch)
            op.report_completed(error)
        if core_context.preempt.should_preempt():  # every rank: they stop together
            return


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl")
        name = torch.cuda.get_device_name(device)
    else:
        device, name = torch.device("cpu"), "cpu"
        torch_dist.init_process_group("gloo")
    log.info(
        "rank %d of %d: device %s (%s), CUDA_VISIBLE_DEVICES=%s, backend %s",
        torch_dist.get_rank(),
        torch_dist.get_world_size(),
        device,
        name,
        os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        torch_dist.get_backend(),
    )
    info = det.get_cluster_info()
    defaults = {"lr": 0.05, "width": 64, "weight_decay": 1e-4, "batch_size": 32}
    distributed = det.core.DistributedContext.from_torch_distributed()
    try:
        with det.core.init(distributed=distributed) as core_context:
            main(
                core_context,
                info.trial.hparams if info else defaults,
                info.latest_checkpoint if info else None,
                device,
            )
    finally:
        torch_dist.destroy_process_group()
