"""A real search: an MLP on scikit-learn's bundled digits, with the Core API.

The model is 64 -> width -> ReLU -> 10, trained with SGD (Nesterov momentum 0.9) and L2
weight decay on the weights only. The searcher metric is the validation error. It runs
on the GPU it was pinned to when there is one (CUDA_VISIBLE_DEVICES), else on the CPU.
"""

import logging
import os
import pathlib

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import rung as det

log = logging.getLogger("digits")


def load_data(device: torch.device) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.4, stratify=y, random_state=0
    )
    x_val, _, y_val, _ = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0
    )
    as_x = lambda a: torch.tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long, device=device)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_val), as_y(y_val)


def build(
    width: int, lr: float, weight_decay: float, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, 10)
    ).to(device)
    for layer in (model[0], model[2]):
        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        torch.nn.init.zeros_(layer.bias)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.SGD(
        [
            {"params": weights, "weight_decay": weight_decay},
            {"params": biases, "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
    return model, optimizer


def validation_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(x)
        if not torch.isfinite(logits).all():
            return 1.0  # diverged
        return float((logits.argmax(dim=1) != y).float().mean())


def restore(
    core_context: det.core.Context,
    latest: str | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """Load the latest checkpoint, if any, into the model, optimizer and generator; the
    epochs it had trained (0 without one)."""
    if latest is None:
        return 0
    with core_context.checkpoint.restore_path(latest) as path:
        # Load on the CPU: the generator's state must stay a CPU ByteTensor, and
        # load_state_dict copies the tensors onto the model's device by itself.
        state = torch.load(pathlib.Path(path) / "state.pt", map_location="cpu")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return int(state["epoch"])


def save(
    core_context: det.core.Context,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    epoch: int,
) -> None:
    with core_context.checkpoint.store_path({"steps_completed": epoch}) as (path, _):
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "epoch": epoch,
        }
        torch.save(state, pathlib.Path(path) / "state.pt")


def main(core_context: det.core.Context, hparams: dict, latest: str | None) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log.info(
        "device: %s (%s), CUDA_VISIBLE_DEVICES=%s",
        device,
        name,
        os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    )
    x_train, y_train, x_val, y_val = load_data(device)
    width = round(hparams["width"])
    model, optimizer = build(width, hparams["lr"], hparams["weight_decay"], device)
    generator = torch.Generator().manual_seed(0)
    epoch = restore(core_context, latest, model, optimizer, generator)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch_size = int(hparams["batch_size"])
    for op in core_context.searcher.operations():
        while epoch < op.length:
            order = torch.randperm(len(x_train), generator=generator).to(device)
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(x_train[index]), y_train[index])
                loss.backward()
                optimizer.step()
            epoch += 1
            op.report_progress(epoch)
            core_context.train.report_training_metrics(epoch, {"loss": float(loss.detach())})
        error = validation_error(model, x_val, y_val)
        core_context.train.report_validation_metrics(epoch, {"validation_error": error})
        save(core_context, model, optimizer, generator, epoch)
        op.report_completed(error)
        if core_context.preempt.should_preempt():
            return


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    info = det.get_cluster_info()
    defaults = {"lr": 0.05, "width": 64, "weight_decay": 1e-4, "batch_size": 32}
    with det.core.init() as core_context:
        main(
            core_context,
            info.trial.hparams if info else defaults,
            info.latest_checkpoint if info else None,
        )
