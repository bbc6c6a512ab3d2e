"""Validation schemes: k-fold, leave-one-out, percentage split, explicit lists.

Not built yet: this plugin registers no components so far.
"""
