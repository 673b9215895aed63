"""For the tests that press Ctrl-C on a child they start."""

import signal


def default_ctrl_c() -> None:
    """Popen's preexec_fn: Ctrl-C acts in the child even when the suite runs as a
    background job (`scripts/test &`, nohup), which starts every process with SIGINT
    ignored; an ignored SIGINT is inherited through exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
