"""DICOM series, RTSTRUCT and SEG reader; NIfTI or DICOM SEG prediction writer.

Not built yet: this plugin registers no components so far.
"""
