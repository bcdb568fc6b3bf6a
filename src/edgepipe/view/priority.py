"""The view's CPU priority: the pipeline matters more than the picture.

The view stage (drawing, JPEG encoding) and the align stage feeding it run beside the pipeline they
watch, on the same cores. On a busy machine a pipeline process woken by its ring (the 1 kHz IMU
consumer, say) may find a core taken by them and wait for a time slice. So:

- the view's encoder process (edgepipe.view.encoder: where its CPU goes, ~1.3 ms a frame) runs under
  ``SCHED_IDLE`` by default (``sched = "idle"``): the kernel gives it only CPU time nothing else wants, a
  normal task waking up preempts it at once, and a core running only it counts as idle when the kernel
  places a waking task. On a saturated machine the picture freezes (frames skipped, counted) rather than
  the pipeline slowing. It is a process, not a thread, so that no thread of the view waits behind its
  interpreter lock (see edgepipe.view.encoder);
- the align stage's thread runs under ``SCHED_BATCH`` by default (``sched = "batch"``): its waking never
  preempts a running task, yet it keeps a normal share of the CPU, so it keeps up and stops promptly.

The view stage's own process (its loop taking frames, its HTTP server, the stage host's control thread
sending stats and taking Stop) keeps its priority: it must answer promptly whatever the load. Other
choices: ``"nice"`` (normal policy at nice 19) and ``"normal"`` (left as started).

An unprivileged thread may always lower its own priority like this (and, without ``RLIMIT_NICE`` or
privileges, not raise it back), so it is set by those threads themselves, once, as they start: the
thread that called ``open()`` (a program embedding the stage, or a test) keeps its priority. Threads a
lowered thread starts inherit its policy. When the kernel refuses (a container's seccomp policy, say),
the stage runs at the priority it had and says so in its stats (``sched``).

>>> POLICIES
('idle', 'batch', 'nice', 'normal')
>>> check_policy("view", "idle")
'idle'
"""

from __future__ import annotations

import os

from edgepipe.errors import ConfigError

__all__: list[str] = []  # shared inside edgepipe.view (the stages' `sched` parameter is the API), not exported

POLICIES = ("idle", "batch", "nice", "normal")
NICE = 19  # the "nice" policy's nice value (the lowest priority under SCHED_OTHER)


def check_policy(stage: str, policy: object) -> str:
    """``policy`` if it is one of :data:`POLICIES`, else ConfigError naming the stage and the value."""
    if policy not in POLICIES:
        raise ConfigError(f"stage {stage!r}: sched must be one of {', '.join(POLICIES)}; got {policy!r}")
    return policy  # type: ignore[return-value]


def lower_priority(policy: str) -> str:
    """Put the calling thread (and the threads it starts afterwards) under ``policy``; returns what was
    applied: ``policy``, or ``"normal (<reason>)"`` when the kernel refused."""
    try:
        if policy == "idle":
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        elif policy == "batch":
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        elif policy == "nice":
            # setpriority on a thread id (0: the calling thread on Linux) changes that thread only
            os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except (OSError, AttributeError) as e:  # AttributeError: a platform without the SCHED_* constants
        return f"normal ({type(e).__name__}: {e})"
    return policy
