"""Formats SimpleITK reads and writes (.mha, .mhd, .nrrd, ...), LPS converted to RAS.

Not built yet: this plugin registers no components so far.
"""
