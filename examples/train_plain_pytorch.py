"""Train any timm or torchvision model from a civt-pipe store in a plain PyTorch loop:
python examples/train_plain_pytorch.py --data SHARDS --store STORE --model timm:resnet18"""

import argparse

import torch

import civt_pipe

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--data", required=True, help="the shards the store was dumped from")
p.add_argument("--store", required=True, help="the dump-logits store")
p.add_argument("--model", default="timm:resnet18", help="timm:NAME or torchvision:NAME")
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--steps", type=int, default=None, help="stop each epoch after N steps")
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--tau", type=float, default=1.0, help="distillation temperature")
p.add_argument("--workers", type=int, default=0, help="decoding processes")
p.add_argument("--out", help="save the trained state dict here")
args = p.parse_args()

views = civt_pipe.ReplayedViews(
    args.data, args.store, batch_size=args.batch_size, workers=args.workers
)
classes = views.num_classes
library, name = args.model.split(":", 1)
if library == "timm":
    import timm

    model = timm.create_model(name, num_classes=classes, in_chans=views.channels)
else:  # torchvision models take RGB: gray views are repeated to three channels below
    import torchvision

    model = torchvision.models.get_model(name, num_classes=classes)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
model.to(device).train()
mean = torch.tensor(views.mean, device=device).view(1, -1, 1, 1)
std = torch.tensor(views.std, device=device).view(1, -1, 1, 1)
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
for epoch in range(args.epochs):
    views.set_epoch(epoch)  # epoch e replays the store's view e mod V
    for step, batch in enumerate(views):
        if step == args.steps:
            break
        x = (batch.images.to(device) - mean) / std  # views are in [0, 1], not normalized
        if library == "torchvision" and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        teachers = {  # each teacher's stored top-k as a distribution at τ
            t: civt_pipe.dense_targets(k, args.tau, num_classes=classes).to(device)
            for t, k in batch.teachers.items()
        }
        labels = batch.label_targets.to(device)  # mixed views: the λ-mix of both labels
        loss = civt_pipe.distillation_loss(model(x), labels, teachers, taus=args.tau)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        print(f"epoch {epoch} step {step} loss {loss.total.item():.4f}", flush=True)
if args.out:
    torch.save(model.state_dict(), args.out)
