"""The U-Net family in 2D and 3D as Keras 3 models.

Not built yet: this plugin registers no components so far.
"""
