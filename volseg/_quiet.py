"""Importing Keras/TensorFlow without its C++ start-up notices on stderr."""

from __future__ import annotations

import os
import sys


def import_keras():
    """Import and return keras, hiding TensorFlow's start-up chatter on file descriptor 2.

    TensorFlow writes oneDNN and CUDA-probing notices from C++ before any Python log
    level applies; on a terminal they bury volseg's own messages (and progress bars).
    Python exceptions from a failed import still propagate.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        import keras

        return keras
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.constant(0)  # CUDA probing happens at the first op: keep it quiet too
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return keras
