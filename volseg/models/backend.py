"""The Keras backend in a volseg process: imported without its C++ start-up notices on
stderr, with the thread pools sized to the cores the process is given."""

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


def configure_threads() -> None:
    """Size TensorFlow's thread pool to the cores given to this worker process.

    Two intra-op threads on 2 cores are best and one halves throughput
    (docs/decisions.md, "predict"), so one model per process uses every core it is
    given. VOLSEG_THREADS (cores per worker process) is set by open_client; it must
    reach TensorFlow before TensorFlow starts, hence environment variables rather than
    tf.config.
    """
    n = os.environ.get("VOLSEG_THREADS")
    if n:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", n)
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
