"""The Keras backend in a volseg process: imported without its C++ start-up notices on
stderr, with a fixed number of TensorFlow threads (the same numbers on any machine
layout: :data:`volseg.engine.blocks.MODEL_THREADS`)."""

from __future__ import annotations

import os
import sys

from volseg.engine.blocks import MODEL_THREADS


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

            _fix_threads(tf)
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


def fix_model_threads() -> None:
    """Make TensorFlow, when it starts in this process, use :data:`MODEL_THREADS`
    intra-op threads and one inter-op thread, whatever the cores: what prediction
    does, so its numbers do not depend on the machine layout.

    Environment variables, because TensorFlow reads them when it starts (whoever
    imports it); :func:`import_keras` applies the same through ``tf.config``. A
    ``TF_NUM_INTRAOP_THREADS`` already set is kept (:func:`model_threads` reports it).
    """
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(MODEL_THREADS))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


def _fix_threads(tf) -> None:
    """Apply TF_NUM_INTRAOP/INTEROP_THREADS through tf.config too, so that
    :func:`model_threads` can read them back."""
    try:
        threading = tf.config.threading
        for name, apply in (("TF_NUM_INTRAOP_THREADS", threading.set_intra_op_parallelism_threads),
                            ("TF_NUM_INTEROP_THREADS", threading.set_inter_op_parallelism_threads)):
            if os.environ.get(name, "").isdigit():
                apply(int(os.environ[name]))
    except RuntimeError:  # TensorFlow already ran an op: model_threads says what it uses
        pass


def model_threads() -> int | None:
    """TensorFlow's intra-op threads in this process; None when TensorFlow chose
    (it had run before volseg could set them: then it uses every core, and the last
    bits of a prediction depend on how many this process has)."""
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or None
