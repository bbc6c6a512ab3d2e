"""Segmentation losses: Tversky, Dice, cross-entropy combinations, focal.

Not built yet: this plugin registers no components so far.
"""
