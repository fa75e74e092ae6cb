"""Cross-architecture knowledge distillation (Liu et al., ACCV 2022): a ViT teacher's features
(``features``), the student's projectors into them (``projectors``) and multi-view adversarial
training (``adversary``). See docs/method.md."""
