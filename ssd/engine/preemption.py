"""Preemption's names and numbers, in a leaf module (it imports nothing from ssd) so that the
config schema, the hooks and the train command share them without an import cycle; the
behaviour is `ssd.engine.stopping.Preemption`."""

# train.preempt_signal's choices: signals free for it (SIGINT and SIGTERM stop as an interrupt).
PREEMPT_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGHUP")
# `trainer.stop_reason` after the signal.
PREEMPTED = "preempted"
# ssd-train's exit status after a preemption: EX_TEMPFAIL of sysexits.h ("try again later"),
# apart from 0 (done), 1 (a crash), 2 (wrong input), 3 (training failed) and 130 (Ctrl-C).
EXIT_PREEMPTED = 75
