"""Training and self-supervised fine-tuning of the learned multi-view depth models.

``losses`` (supervised / photometric / smoothness / feature-metric), ``data`` (keyframe samples from scene
folders, the synthetic renderer or rosbag2), ``adapters`` (a differentiable forward per model family
returning multi-scale depth), ``checkpointing`` (official checkpoint formats + resumable state) and
``loop`` (the training loop behind ``mvs-depth train`` / ``mvs-depth finetune``).
"""
