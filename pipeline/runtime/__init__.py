"""Process-level plumbing: errors, console, devices, torch.distributed, atomic writes."""
