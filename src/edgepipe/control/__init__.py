"""The control plane: protobuf envelopes in length-prefixed frames over Unix domain sockets.

``framing`` is the handle of ``csrc/ep_frame.c`` (``FrameSocket``), ``server`` the Server/Session/Client built
on it, ``messages`` the public name of the generated ``edgepipe.v1`` classes (``_proto``, checked in).
This layer sits beside the handle modules: it imports them and ``_ffi``, never a stage, the pipeline or the CLI.

>>> from edgepipe.control.messages import Envelope, Hello
>>> Envelope(hello=Hello(stage_name="cam0")).WhichOneof("body")
'hello'
"""
