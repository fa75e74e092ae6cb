"""`civt-pipe train-cakd`: cross-architecture distillation of a ViT teacher into a CNN student."""
