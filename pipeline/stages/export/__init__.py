"""``civt-pipe export``: trained models as timm / torchvision weights, safetensors, TorchScript."""
