"""Training throughput on this machine: images/s of supervised steps and of semi-supervised
steps, and the share of a semi-supervised step spent in the batched strong augmentation.

Two semi-supervised steps, as in ``defectssft.training.loop``: ``ssl`` (``ssl.pseudo_from:
student``, the default for projects of defect types only: one forward pass over labeled + weak + strong views) and
``ssl_ema`` (``ssl.pseudo_from: ema``: the EMA teacher labels the weak view without gradients,
the student sees labeled + strong; the default for projects with an OK class). Same optimizer and the same autocast
as training (bf16/fp16 on CUDA, none on the CPU). Synthetic uint8 batches already on the device,
so decoding is not measured here.

    .venv/bin/python benchmarks/train_speed.py --quick --threads 1
    .venv/bin/python benchmarks/train_speed.py --sizes 96 128 224 --batch 32 --device cuda

Writes benchmarks/results/train_speed[_NAME].json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import write_results  # noqa: E402
from defectssft.inspection import to_model_input  # noqa: E402
from defectssft.modeling import LAYOUTS, build_model, default_normalization, fast_layout  # noqa: E402
from defectssft.training import objectives as obj  # noqa: E402
from defectssft.training.augment import StrongAugment  # noqa: E402
from defectssft.training.config import Config, resolve_config, resolve_for_data  # noqa: E402
from defectssft.training.loop import amp_dtype, ema_update, make_optimizer  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    model_name: str,
    size: int,
    batch: int,
    mu: int,
    steps: int,
    device: torch.device,
    amp: str = "auto",
    layout: str = "auto",
) -> dict:
    model = fast_layout(build_model(model_name, 6, weights="none").to(device), device, layout)
    model.train()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    mean, std = default_normalization(model_name, "none")
    opt = make_optimizer(
        model, Config.from_dict(resolve_for_data(resolve_config(), has_ok_class=False)).train
    )
    dtype = amp_dtype(amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    strong = StrongAugment().to(device)
    x_l = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    y_l = torch.randint(0, 6, (batch,), device=device)
    x_u = torch.randint(0, 256, (batch * mu, 3, size, size), dtype=torch.uint8, device=device)
    aug_time = [0.0]

    def autocast():  # noqa: ANN202
        return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    def update(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def sup_step() -> None:
        with autocast():
            logits = model(to_model_input(x_l, mean, std))
        update(obj.supervised_loss(logits, y_l))

    def strong_view() -> torch.Tensor:
        sync(device)
        t = time.perf_counter()
        out = to_model_input(strong(x_u), mean, std)
        sync(device)
        aug_time[0] += time.perf_counter() - t
        return out

    def ssl_step(pseudo_from: str) -> None:
        u_strong = strong_view()
        u_weak = to_model_input(x_u, mean, std)
        with autocast():
            if pseudo_from == "ema":
                with torch.no_grad():
                    logits_weak = teacher(u_weak)
                logits = model(torch.cat([to_model_input(x_l, mean, std), u_strong]))
                logits_l, logits_s = logits[:batch], logits[batch:]
            else:
                logits = model(torch.cat([to_model_input(x_l, mean, std), u_weak, u_strong]))
                logits_l, logits_weak, logits_s = (
                    logits[:batch],
                    logits[batch : batch + len(x_u)],
                    logits[batch + len(x_u) :],
                )
        loss_u, _ = obj.fixmatch_loss(logits_weak.float().softmax(1).detach(), logits_s, 0.95)
        update(obj.supervised_loss(logits_l, y_l) + loss_u)
        ema_update(teacher, model, 0.99)

    out: dict = {
        "model": model_name,
        "size": size,
        "batch": batch,
        "mu": mu,
        "device": str(device),
        "autocast": str(dtype).replace("torch.", "") if dtype else "off",
        "layout": layout,
    }
    modes: tuple[tuple[str, Callable[[], None], int], ...] = (
        ("supervised", sup_step, batch),
        ("ssl", lambda: ssl_step("student"), batch * (1 + mu)),
        ("ssl_ema", lambda: ssl_step("ema"), batch * (1 + mu)),
    )
    for name, fn, images in modes:
        fn()  # warm-up
        aug_time[0] = 0.0
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        dt = (time.perf_counter() - t) / steps
        out[f"{name}_step_s"] = dt
        out[f"{name}_img_s"] = images / dt
        if name != "supervised":
            out[f"{name}_strong_aug_share"] = aug_time[0] / steps / dt
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="lite0 at 64 and 96 px, 3 steps each")
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mu", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "off", "bf16", "fp16"],
        help="autocast as train.amp (auto: bf16/fp16 on CUDA, off on the CPU)",
    )
    ap.add_argument(
        "--layouts",
        nargs="+",
        default=["auto"],
        choices=LAYOUTS,
        help="the weights' memory layout, as train.layout (auto: channels_last on the CPU)",
    )
    ap.add_argument("--name", default=None, help="results file suffix")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.steps = [64, 96], 3
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [
        measure(args.model, s, args.batch, args.mu, args.steps, device, args.amp, layout)
        for s in args.sizes
        for layout in args.layouts
    ]
    print(
        f"{'size':>5} {'layout':>13} {'autocast':>9} {'sup img/s':>10} {'ssl img/s':>10} {'ssl s/step':>11} "
        f"{'aug share':>10} {'ssl_ema img/s':>14} {'aug share':>10}"
    )
    for r in rows:
        print(
            f"{r['size']:>5} {r['layout']:>13} {r['autocast']:>9} {r['supervised_img_s']:>10.1f} {r['ssl_img_s']:>10.1f} "
            f"{r['ssl_step_s']:>11.2f} {100 * r['ssl_strong_aug_share']:>9.1f}% "
            f"{r['ssl_ema_img_s']:>14.1f} {100 * r['ssl_ema_strong_aug_share']:>9.1f}%"
        )
    name = f"train_speed_{args.name}" if args.name else "train_speed"
    out = write_results(name, {"args": vars(args), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
