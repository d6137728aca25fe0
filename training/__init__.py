"""Knowledge transfer: distillation losses and the system that combines teachers."""
