"""NIfTI reader and writer (nibabel): .nii and .nii.gz, 3D and 4D.

Not built yet: this plugin registers no components so far.
"""
