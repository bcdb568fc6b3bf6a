"""Record types a worker sends back on its results ring (shared by ``stage.py`` and ``_worker.py``; kept apart
so that importing the package never imports the worker's ``__main__`` module).

Every payload except READY and FATAL starts with the frame's seq in the worker ring (u64 little-endian).
"""

import struct

T_RESULT = 1  # u64 seq + serialized edgepipe.v1.InferenceResult (frame_seq and stamps completed by the stage)
T_READY = 2  # json {"model_id", "pid"}
T_DROPPED = 3  # u64 seq + reason (utf-8)
T_BAD = 4  # u64 seq + message (utf-8)
T_FATAL = 5  # message (utf-8); the worker exits after it

SEQ = struct.Struct("<Q")
