"""Evaluation metrics per case and class: overlap, surface distances, volumes.

Not built yet: this plugin registers no components so far.
"""
