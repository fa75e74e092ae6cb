"""Teachers (CNN, involution) and students (CivT and friends), with a registry."""
