"""Training augmentations: spatial transforms composed into one map, intensity changes.

Not built yet: this plugin registers no components so far.
"""
