"""2D images (PNG, JPEG, TIFF, BMP) and PNG label masks.

Not built yet: this plugin registers no components so far.
"""
