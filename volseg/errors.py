"""The one exception type that means "the user's input is wrong"."""


class InputError(Exception):
    """Bad input or usage: the CLI prints the message as one line and exits 2.

    The message must name the file or option and say what is wrong (and, where it
    helps, what to do). Anything else raised is an internal error (exit 1).
    """
