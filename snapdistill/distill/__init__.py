"""Guidance and step distillation: student construction, targets, losses, data, and one training loop."""
