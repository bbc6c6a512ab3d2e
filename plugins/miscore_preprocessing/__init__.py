"""Preprocessing subfunctions: normalisation, clipping, resampling, padding, cropping.

Not built yet: this plugin registers no components so far.
"""
